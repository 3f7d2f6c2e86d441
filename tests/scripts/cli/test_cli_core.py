"""The guidance arguments are defined once (pipeline/guidance.py) and everything else is derived from that table:
the pipelines' signatures, defaults and docstrings, and the scripts' options. The CLI core writes every file
through one atomic writer, and no script edits `sys.path`."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.guidance import CONTROLNET, FLUX, GUIDANCE_ARGUMENTS, GUIDANCE_BY_NAME, SDXL, SDXL_SEG
from pipeline.pipeline_controlnet import PLADISStableDiffusionXLControlNetPipeline
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts import compare
from scripts.cli.assets import TINY_SDXL
from scripts.cli.loading import CALL_OPTIONS, guidance_call_arguments
from scripts.cli.options import add_guidance_options
from scripts.cli.records import write_atomically, write_image, write_json
from scripts.cli.registry import call_parameters

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "cls,pipeline",
    [
        (PLADISStableDiffusionXLPipeline, SDXL),
        (PLADISStableDiffusionXLSEGPipeline, SDXL_SEG),
        (PLADISStableDiffusionXLControlNetPipeline, CONTROLNET),
        (PLADISFluxPipeline, FLUX),
    ],
)
def test_pipeline_calls_take_the_tables_keywords_with_its_defaults_and_help(cls, pipeline):
    names = [argument.name for argument in GUIDANCE_ARGUMENTS if pipeline in argument.pipelines]
    parameters = inspect.signature(cls.__call__).parameters
    assert all(parameters[name].default == GUIDANCE_BY_NAME[name].default for name in names)
    # What the scripts read to know which options a pipeline takes: its keywords, and no other pipeline's.
    assert call_parameters(cls) & {argument.name for argument in GUIDANCE_ARGUMENTS} == set(names)
    doc = " ".join(inspect.getdoc(cls.__call__).split())
    assert all(" ".join(GUIDANCE_BY_NAME[name].help.split()) in doc for name in names)


def test_unknown_keywords_still_fail_as_in_diffusers():
    pipe = PLADISStableDiffusionXLSEGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    with pytest.raises(TypeError, match="seg_scal"):
        pipe("a cat", seg_scal=3.0, num_inference_steps=1, height=64, width=64)


def test_every_guidance_option_of_the_scripts_comes_from_the_table():
    parser = argparse.ArgumentParser()
    add_guidance_options(parser, pag_scale=3.0)
    offered = [a for a in GUIDANCE_ARGUMENTS if a.option is not None]
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert sorted(actions) == sorted(a.option for a in offered)
    for argument in offered:
        action = actions[argument.option]
        assert action.option_strings == [f"--{argument.option.replace('_', '-')}"]
        assert action.help.startswith(argument.help) and CALL_OPTIONS[argument.option] == argument.name
    assert actions["pag_scale"].default == 3.0 and actions["seg_scale"].default is None
    args = parser.parse_args(["--seg-layers", "mid,up_blocks.0", "down_blocks.2", "--pladis-controlnet"])
    assert args.seg_layers == ["mid", "up_blocks.0", "down_blocks.2"]  # commas, spaces or both
    assert guidance_call_arguments(args) == {
        "pag_scale": 3.0,
        "seg_applied_layers": args.seg_layers,
        "pladis_controlnet": True,
    }


def test_a_guidance_option_new_to_the_command_line_is_checked_and_forwarded(capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--pipeline", "sdxl-seg", "--pag-adaptive-scale", "-1"])
    assert "--pag-adaptive-scale must be finite and >= 0" in capsys.readouterr().err
    args = compare.parse_args(["--pipeline", "sdxl-seg", "--pag-scale", "2", "--pag-adaptive-scale", "0.5"])
    assert guidance_call_arguments(args) == {"pag_scale": 2.0, "pag_adaptive_scale": 0.5}


def test_the_atomic_writer_leaves_nothing_behind_when_writing_fails(tmp_path):
    target = tmp_path / "out" / "results.json"
    write_json(target, {"a": 1})

    def fail(partial: Path) -> None:
        (partial / "model.json" if partial.is_dir() else partial).write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomically(target, fail)
    assert target.read_text() == '{\n  "a": 1\n}\n' and sorted(p.name for p in target.parent.iterdir()) == [
        "results.json"
    ]
    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "folder", fail, folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_atomic_writer_saves_images_in_the_format_of_their_name(tmp_path):
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    for name, image_format in (("grid.png", "PNG"), ("grid.jpg", "JPEG"), ("grid.webp", "WEBP")):
        with Image.open(write_image(tmp_path / name, image)) as saved:
            assert saved.format == image_format


def test_no_script_edits_sys_path_and_one_module_replaces_files():
    sources = {path.relative_to(ROOT).as_posix(): path.read_text() for path in (ROOT / "scripts").rglob("*.py")}
    assert [name for name, text in sources.items() if "sys.path" in text] == []
    assert [name for name, text in sources.items() if "os.replace(" in text] == ["scripts/cli/records.py"]


# What each room of scripts/ may import: the CLI core only itself; the developer tools and the toy world the
# core and their own room; the examples only the core; the user tools (the top) the core, the toy and each other.
ALLOWED_IMPORTS = {
    "cli": {"cli"},
    "dev": {"cli", "dev"},
    "toy": {"cli", "toy"},
    "examples": {"cli"},
    "tools": {"cli", "toy", "tools"},
}


def scripts_room(module: str) -> str:
    """The room of a `scripts` module: its first sub-package (`cli`, `dev`, `toy`, `examples`), else `tools`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / "scripts" / parts[1]).is_dir()) else "tools"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (also the imports inside functions), relative ones resolved,
    and `from package import name` read as the module `package.name` where that is a module."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            for alias in node.names:
                candidate = ROOT.joinpath(*f"{source}.{alias.name}".split("."))
                submodule = candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file()
                found.add(f"{source}.{alias.name}" if submodule else source)
    return found


def test_scripts_rooms_import_only_downwards_and_the_cli_core_nothing_above_it():
    """`scripts/cli/` is the core every command builds on: no module in it imports a tool, a developer tool,
    the toy or an example (parsed with `ast`, relative and function-level imports included)."""
    arrows = {}
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        targets = {target for target in imported_modules(path) if target.split(".")[0] == "scripts"}
        arrows[module] = {scripts_room(target) for target in targets if target != "scripts"}
    assert {module for module in arrows if scripts_room(module) == "cli"} >= {"scripts.cli.grid", "scripts.cli.recipes"}
    assert arrows["scripts.cli.recipes"] == {"cli"}  # the grid writer it uses lives in the core
    wrong = {m: rooms - ALLOWED_IMPORTS[scripts_room(m)] for m, rooms in arrows.items()}
    assert {module: rooms for module, rooms in wrong.items() if rooms} == {}


def test_console_entry_points_run_each_scripts_main_and_exit_zero_on_success():
    import importlib

    from scripts.cli import entry_points

    runners = [value for value in vars(entry_points).values() if callable(value) and hasattr(value, "module")]
    commands = re.findall(
        r'^(pladis-[\w-]+) = "scripts\.cli\.entry_points:', (ROOT / "pyproject.toml").read_text(), re.M
    )
    scripts = [command for command in commands if command != "pladis-example"]  # that one runs scripts/examples/*
    assert len(runners) == len(scripts) == 5  # one per console command: the user tools
    for runner in runners:
        main = importlib.import_module(runner.module).main
        assert (
            list(inspect.signature(main).parameters) == ["argv"]
            and inspect.signature(main).parameters["argv"].default is None
        )
    assert entry_points.exit_code(Path("grid.png")) is None and entry_points.exit_code({"rows": []}) is None
    assert entry_points.exit_code(2) == 2 and entry_points.exit_code(0) == 0 and entry_points.exit_code(True) is None


@pytest.mark.parametrize(
    "name", sorted(path.stem for path in (ROOT / "scripts" / "examples").glob("*.py") if path.stem != "__init__")
)
def test_each_example_is_a_recipe_over_the_core(name):
    text = (ROOT / "scripts" / "examples" / f"{name}.py").read_text()
    assert "scripts.cli.recipes" in text and "load_pipeline" in text
    for own in ("argparse", "DTYPES", "TINY_STEPS", "load_lora_weights", "from_config", "ASSET_DIR", "from_pretrained"):
        assert own not in text, own


@pytest.mark.parametrize(
    "argv",
    [
        ["--pipeline", "sdxl-seg", "--pag-scale", "2", "--pag-layers", "mid", "down_blocks.1", "--scales", "0,1.5"],
        ["--freeu", "1.1", "1.2", "0.9", "0.2", "--timesteps", "999,499", "--negative-prompt", "-blurry, dark"],
        ["--pipeline", "flux", "--pladis-single-blocks", "--prompt", "a cat", "--seed", "7", "--dtype", "bfloat16"],
    ],
)
def test_command_line_of_parsed_arguments_parses_back_to_the_same_arguments(argv):
    from scripts.cli.options import command_line

    args = compare.parse_args(argv)
    again = compare.parse_args(command_line(compare.build_parser(), args))
    assert vars(again) == vars(args)


def test_raising_parser_turns_the_command_lines_usage_errors_into_value_errors():
    from scripts.cli.options import RaisingParser

    args = compare.parse_args([])
    args.steps = 0
    with pytest.raises(ValueError, match=r"^--steps must be >= 1, got 0$"):
        compare.check_args(RaisingParser(), args)
