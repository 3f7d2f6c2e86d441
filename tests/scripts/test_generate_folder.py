"""`scripts/generate.py` never lets images of different settings share a folder: runs started together
claim the folder one at a time, λ values that name one folder are refused, and an explicit empty negative
prompt of a prompt file is kept (not replaced by `--negative-prompt`)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from scripts import generate


@pytest.fixture
def one_prompt(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a photo of a cat\n")
    return path


@pytest.mark.slow  # two concurrent runs
def test_runs_with_different_settings_started_together_are_not_both_accepted(one_prompt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    both_checked = threading.Barrier(2)
    original = generate.check_same_settings

    def check_then_wait(*args, **kwargs):
        """Hold each run after its check until the other has checked too (or 2 s pass): without an exclusive
        claim both runs see an empty folder and both go on."""
        problem = original(*args, **kwargs)
        try:
            both_checked.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        return problem

    monkeypatch.setattr(generate, "check_same_settings", check_then_wait)
    outcomes: dict[int, object] = {}

    def run(steps: int) -> None:
        try:
            outcomes[steps] = generate.main(
                [
                    "--prompts",
                    str(one_prompt),
                    "--out",
                    str(out),
                    "--scales",
                    "0",
                    "--steps",
                    str(steps),
                    "--guidance-scale",
                    "1",
                ]
            )
        except (SystemExit, Exception) as stop:  # noqa: BLE001 - any failure is reported by the assertion below
            outcomes[steps] = stop

    threads = [threading.Thread(target=run, args=(steps,)) for steps in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    refused = [steps for steps, outcome in outcomes.items() if isinstance(outcome, SystemExit)]
    assert len(outcomes) == 2 and len(refused) == 1, outcomes
    accepted = 3 - refused[0]
    assert "other settings (steps:" in str(outcomes[refused[0]])
    assert json.loads((out / "settings.json").read_text())["arguments"]["steps"] == accepted
    assert outcomes[accepted] == [out / "pladis_0" / "00000.png"]


@pytest.mark.parametrize(
    "scales,clash",
    [
        ("1,1.0000001", "1.0, 1.0000001 -> pladis_1"),
        ("0,2,2", "2.0, 2.0 -> pladis_2"),
        ("0.5,0.50000001,3", "0.5, 0.50000001 -> pladis_0.5"),
    ],
)
def test_scales_that_share_a_folder_name_are_a_usage_error(one_prompt, tmp_path, capsys, scales, clash):
    with pytest.raises(SystemExit) as stop:
        generate.main(["--prompts", str(one_prompt), "--out", str(tmp_path / "out"), "--scales", scales])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "--scales: these values would write into one folder" in error and clash in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_explicit_empty_negative_prompt_is_kept(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a photo of a cat", "negative_prompt": ""}\n')
    options = ["--prompts", str(prompts), "--steps", "1", "--scales", "0"]
    generate.main([*options, "--out", str(tmp_path / "file-only")])
    generate.main([*options, "--out", str(tmp_path / "with-option"), "--negative-prompt", "a blue dog"])
    plain = np.asarray(Image.open(tmp_path / "file-only" / "pladis_0" / "00000.png"))
    with_option = np.asarray(Image.open(tmp_path / "with-option" / "pladis_0" / "00000.png"))
    np.testing.assert_array_equal(with_option, plain)  # the file's "" wins over --negative-prompt

    prompts.write_text('{"prompt": "a photo of a cat"}\n')  # no field: --negative-prompt applies
    generate.main([*options, "--out", str(tmp_path / "option-applies"), "--negative-prompt", "a blue dog"])
    applied = np.asarray(Image.open(tmp_path / "option-applies" / "pladis_0" / "00000.png"))
    assert np.abs(applied.astype(int) - plain).max() > 0


def test_a_damaged_settings_file_in_the_folder_is_named_not_overwritten(one_prompt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text('{"arguments": {"steps": 1,')
    with pytest.raises(SystemExit, match=r"out cannot be resumed: .*settings.json, line 1 column 27: not valid JSON"):
        generate.main(["--prompts", str(one_prompt), "--out", str(out), "--scales", "0", "--steps", "1"])
    assert (out / "settings.json").read_text() == '{"arguments": {"steps": 1,'
