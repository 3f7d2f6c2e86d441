"""The web demo (`scripts/demo.py`) on the embedded toy, served in this process: its `/compare` API through
`gradio_client`, its events' sweep, maps and settings, its page in a real headless Chromium, and no connection
leaving the machine."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from scripts import compare, demo
from scripts.attention_maps import TOY_TOKENS
from scripts.cli.assets import TOY_PROMPT

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4  # enough for λ to change the toy's picture; a generation takes a fraction of a second
OTHER_PROMPT = "a blue circle on the left and a red square on the right"
SCREENSHOT_VARIABLE = "PLADIS_DEMO_SCREENSHOT"  # also save the browser's screenshot there (the README's picture)


@pytest.fixture(scope="module")
def connections():
    """Every host name this process looks up and every address its sockets connect to while the module's tests
    run (a look-up comes first: without network, telemetry would fail there, before any connection)."""
    seen: list[tuple[str, object]] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def recorded(method):
        def record(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                seen.append(("connect", address[0]))
            return method(self, address)

        return record

    def look_up(host, *args, **kwargs):
        seen.append(("look-up", host))
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", recorded(connect))
        patch.setattr(socket.socket, "connect_ex", recorded(connect_ex))
        patch.setattr(socket, "getaddrinfo", look_up)
        yield seen


def is_this_machine(host: object) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(connections, tmp_path_factory):
    """The demo as `python -m scripts.demo --steps 4` serves it, on a free local port, with a client."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(demo.ARGUMENTS_VARIABLE, raising=False)
        where, args, sweep = demo.parse_args(["--steps", str(STEPS)])
    pipe = demo.load_pipeline(args)
    app = demo.build_demo(pipe, args, sweep)
    _, url, _ = demo.launch(app, "127.0.0.1", free_port(), prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("client")))
    yield SimpleNamespace(url=url, pipe=pipe, args=args, app=app, client=client, where=where)
    client.close()
    app.close()


def pixels(path_or_image) -> np.ndarray:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(image.convert("RGB")).astype(np.int16)


def compare_via_api(served, **options) -> tuple[np.ndarray, np.ndarray]:
    without, pladis = served.client.predict(**{"seed": 0, **options}, api_name="/compare")
    return pixels(without), pixels(pladis)


@pytest.mark.slow  # the served demo
def test_compare_endpoint_returns_both_images_and_pladis_changes_the_picture(served):
    without, pladis = compare_via_api(served, prompt=TOY_PROMPT, pladis_scale=2.0)
    assert without.shape == pladis.shape == (32, 32, 3)  # the toy's resolution
    assert np.abs(without - pladis).max() > 0


@pytest.mark.slow  # the served demo
def test_compare_endpoint_at_scale_zero_returns_two_identical_images(served):
    without, pladis = compare_via_api(served, prompt=TOY_PROMPT, pladis_scale=0.0)
    np.testing.assert_array_equal(without, pladis)


@pytest.mark.slow  # the served demo
def test_compare_endpoint_names_prompt_scale_and_seed_first_and_defaults_the_rest(served):
    endpoints = served.client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == {"/compare"}  # the page's other events are not callable
    parameters = endpoints["/compare"]["parameters"]
    assert [parameter["parameter_name"] for parameter in parameters][:3] == ["prompt", "pladis_scale", "seed"]
    assert all(parameter["parameter_has_default"] for parameter in parameters[3:])
    assert len(endpoints["/compare"]["returns"]) == 2


@pytest.mark.slow  # the served demo
def test_the_step_window_and_layers_reach_pladis_through_the_api(served):
    """A window with no step in it is the stock image; a half window or one layer group is PLADIS on part of the
    run only (other images). (A bad value's refusal: tests/project/test_bad_values.py, through the requests' checks.)"""
    without, pladis = compare_via_api(served, prompt=TOY_PROMPT, pladis_scale=2.0)
    empty = compare_via_api(served, prompt=TOY_PROMPT, pladis_scale=2.0, pladis_start=0.5, pladis_stop=0.5)
    np.testing.assert_array_equal(*empty)
    np.testing.assert_array_equal(empty[0], without)
    for partial in ({"pladis_start": 0.5}, {"pladis_layers": "mid"}):
        half_without, half_pladis = compare_via_api(served, prompt=TOY_PROMPT, pladis_scale=2.0, **partial)
        np.testing.assert_array_equal(half_without, without)
        assert np.abs(half_pladis - without).max() > 0 and np.abs(half_pladis - pladis).max() > 0, partial


@pytest.mark.slow  # the served demo
def test_bad_input_gets_the_command_lines_message_and_leaves_the_demo_usable(served, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--steps", "0"])
    cli_error = capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(AppError) as refused:
        served.client.predict(prompt=TOY_PROMPT, pladis_scale=2.0, seed=0, steps=0, api_name="/compare")
    assert str(refused.value) == "--steps must be >= 1, got 0"
    assert cli_error.endswith(f"error: {refused.value}")
    without, pladis = compare_via_api(served, prompt=TOY_PROMPT, pladis_scale=2.0)
    assert np.abs(without - pladis).max() > 0


@pytest.mark.slow  # the served demo
def test_the_page_checks_the_sweep_and_map_words_before_generating(served):
    requests = demo.DemoRequests(served.pipe, served.args)
    page = dict(prompt=TOY_PROMPT, pladis_scale=2.0, seed=0, negative_prompt="", pladis_alpha=1.5, steps=STEPS)
    page.update(pladis_start=None, pladis_stop=None, pladis_layers=None)
    page["guidance_scale"] = served.args.guidance_scale
    with pytest.raises(gr.Error, match=r"--scales: expected comma-separated numbers, got '0,x'"):
        requests.check(**page, scales="0,x", maps=False, tokens="")
    with pytest.raises(gr.Error, match=r"none of --tokens \['zebra'\] is a token of the prompt"):
        requests.check(**page, scales="", maps=True, tokens="zebra")
    requests.check(**page, scales="0, 1.5", maps=True, tokens="red circle")


@pytest.mark.slow  # the served demo
def test_sweep_maps_and_settings_reproduce_with_the_command_line_tool(served, tmp_path):
    requests = demo.DemoRequests(served.pipe, served.args)
    steps_seen: list[tuple[int, int]] = []

    def progress(fraction, desc=None, unit="steps"):
        steps_seen.append(fraction)

    page = dict(prompt=TOY_PROMPT, pladis_scale=2, seed=3, negative_prompt="", pladis_alpha=1.5, steps=STEPS)
    without, pladis, request = requests.compare_images(
        **page, guidance_scale=served.args.guidance_scale, progress=progress
    )
    assert steps_seen == [(done, 2 * STEPS) for done in range(1, 2 * STEPS + 1)]  # one report per denoising step
    gallery, maps, settings, path = requests.extras(request, "0,1,2", True, "", progress=progress)

    images, labels = zip(*gallery["value"], strict=True)
    assert labels == ("CFG 5 (no PLADIS)", "CFG 5 + PLADIS scale=1", "CFG 5 + PLADIS scale=2")
    assert images[0] is without and images[2] is pladis  # the pair's panels are reused, not regenerated
    assert len(steps_seen) == 2 * STEPS + STEPS + STEPS  # then the λ = 1 panel and the maps' generation
    columns = len(TOY_TOKENS) + 1  # the image, then a map per content word of the toy caption
    assert maps["visible"] and maps["value"].size[1] == 2 * (24 + 256)  # two rows: softmax, PLADIS
    assert maps["value"].size[0] % columns == 0

    assert json.loads(Path(path).read_text()) == settings
    assert settings["script"] == "scripts.compare" and settings["seed"] == 3
    assert settings["arguments"]["scales"] == [0.0, 2.0, 1.0] and "--scales=0.0,2.0,1.0" in settings["command"]
    assert isinstance(settings["arguments"]["pladis_scale"], float)  # the slider's whole 2, recorded as the CLI does
    assert settings["panels"] == ["CFG 5 (no PLADIS)", "CFG 5 + PLADIS scale=2", "CFG 5 + PLADIS scale=1"]
    assert settings["attention_map_tokens"] == list(TOY_TOKENS)
    reparsed = vars(compare.parse_args(settings["command"][3:]))  # the recorded command gives the same arguments
    assert {name: value for name, value in reparsed.items() if name not in ("out", "settings")} == settings["arguments"]

    grid = compare.main(["--settings", path, "--out", str(tmp_path / "rerun.png")])
    rerun = pixels(grid)[24 : 24 + 256, :, :]  # under the label strip (over the caption): 32×32 panels enlarged 8×
    for index, image in enumerate((without, pladis, images[1])):
        np.testing.assert_array_equal(rerun[::8, index * 256 : (index + 1) * 256 : 8], pixels(image))


@pytest.mark.slow  # the served demo
def test_two_requests_at_once_run_one_generation_at_a_time(served):
    inside, most = [], []  # threads inside the denoiser now; the most seen at once

    def enter(module, args):
        inside.append(threading.get_ident())
        most.append(len(inside))

    def leave(module, args, output):
        inside.remove(threading.get_ident())

    hooks = [served.pipe.unet.register_forward_pre_hook(enter), served.pipe.unet.register_forward_hook(leave)]
    try:
        jobs = [
            served.client.submit(prompt=TOY_PROMPT, pladis_scale=scale, seed=0, api_name="/compare")
            for scale in (1.0, 3.0)
        ]
        results = [job.result(timeout=300) for job in jobs]
    finally:
        for hook in hooks:
            hook.remove()
    assert len(results) == 2 and len(most) == 2 * 2 * STEPS  # both requests ran, each two images
    assert max(most) == 1


@pytest.mark.slow  # the served demo
def test_a_stock_pipeline_is_shared_through_apply_pladis_and_gives_the_pladis_pipelines_images(served, monkeypatch):
    where, args, sweep = demo.parse_args(["--pipeline", "auto", "--model", "asset/toy-sdxl", "--steps", str(STEPS)])
    stock = demo.load_pipeline(args)
    assert type(stock).__name__ == "StableDiffusionXLPipeline"
    processors = dict(stock.unet.attn_processors)
    monkeypatch.setattr("scripts.cli.loading.load_pipeline", lambda *args: pytest.fail("a request loaded a model"))
    page = dict(prompt=TOY_PROMPT, pladis_scale=2.0, seed=0, negative_prompt="", pladis_alpha=1.5, steps=STEPS)
    page.update(pladis_start=None, pladis_stop=None, pladis_layers=None)
    progress = lambda *args, **kwargs: None  # noqa: E731
    results = []
    for requests in (demo.DemoRequests(stock, args), demo.DemoRequests(served.pipe, served.args)):
        *pair, request = requests.compare_images(**page, guidance_scale=5.0, progress=progress)
        maps = requests.extras(request, "", True, "", progress=progress)[1]["value"]  # recorded on the shared U-Net
        results.append([*pair, maps])
    for stock_image, pladis_image in zip(*results, strict=True):  # without, PLADIS, attention maps
        np.testing.assert_array_equal(pixels(stock_image), pixels(pladis_image))
    assert all(stock.unet.attn_processors[name] is processor for name, processor in processors.items())


@pytest.mark.slow  # the served demo
def test_nothing_connects_beyond_this_machine(served, connections):
    compare_via_api(served, prompt=TOY_PROMPT, pladis_scale=1.0)
    assert ("connect", "127.0.0.1") in connections  # the recorder sees the client's connections to the server
    assert [(kind, host) for kind, host in connections if not is_this_machine(host)] == []


@pytest.mark.slow  # subprocesses
def test_importing_attention_pipeline_or_the_scripts_does_not_import_gradio():
    modules = "attention, pipeline, pipeline.pipeline_sdxl, pipeline.pipeline_flux_pladis, scripts.compare"
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'selenium')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_serving_options_come_from_the_command_line_the_environment_or_the_defaults(monkeypatch, capsys):
    monkeypatch.delenv(demo.HOST_VARIABLE, raising=False)
    monkeypatch.delenv(demo.PORT_VARIABLE, raising=False)
    monkeypatch.delenv(demo.ARGUMENTS_VARIABLE, raising=False)
    where, args, sweep = demo.parse_args([])
    assert (where.host, where.port, sweep) == ("127.0.0.1", 7860, "")
    assert args.model == "asset/toy-sdxl" and args.pladis_scale == 2.0 and not hasattr(args, "host")
    monkeypatch.setenv(demo.HOST_VARIABLE, "0.0.0.0")  # what a hosted Space sets
    monkeypatch.setenv(demo.ARGUMENTS_VARIABLE, "--pladis-scale 1.5 --scales 0,1,2")
    where, args, sweep = demo.parse_args(["--port", "8000"])
    assert (where.host, where.port, args.pladis_scale, sweep) == ("0.0.0.0", 8000, 1.5, "0,1,2")
    with pytest.raises(SystemExit):
        demo.parse_args(["--port", "0"])
    assert "--port must be between 1 and 65535, got 0" in capsys.readouterr().err


def test_run_as_a_file_as_a_space_runs_it_the_demo_reruns_itself_as_the_module_from_the_root(monkeypatch, tmp_path):
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "chdir", lambda folder: calls.append(("chdir", Path(folder))))

    def execv(program, argv):
        calls.append(("execv", argv))
        raise SystemExit(0)  # where the real execv replaces the process

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(sys, "argv", ["scripts/demo.py", "--port", "8000"])
    monkeypatch.setattr("scripts.cli.loading.load_pipeline", lambda *args: pytest.fail("ran in place, not re-run"))
    with pytest.raises(SystemExit):
        runpy.run_path(str(ROOT / "scripts" / "demo.py"), run_name="__main__")  # how `python scripts/demo.py` runs
    assert calls == [("chdir", ROOT), ("execv", [sys.executable, "-m", "scripts.demo", "--port", "8000"])]


def chromium() -> object:
    """Debian's headless Chromium through its chromedriver (`bash .ci/run` installs both when missing)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    return webdriver.Chrome(service=Service(driver), options=options)  # a given driver: nothing is downloaded


@pytest.mark.slow  # the served demo in a real browser
def test_a_real_browser_types_a_prompt_presses_the_button_and_sees_two_different_images(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        browser.get(served.url)
        prompt = WebDriverWait(browser, 60).until(lambda page: page.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        prompt.clear()
        prompt.send_keys(OTHER_PROMPT)
        browser.find_element(By.CSS_SELECTOR, "#generate").click()

        def shown(page):
            images = [page.find_elements(By.CSS_SELECTOR, f"#{name} img") for name in ("without-pladis", "pladis")]
            loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
            if all(found and page.execute_script(loaded, found[0]) for found in images):
                return [found[0] for found in images]
            return False

        images = WebDriverWait(browser, 120).until(shown)
        browser.execute_script("window.scrollTo(0, 0)")
        assert browser.save_screenshot(str(tmp_path / "demo.png"))
        rendered = [pixels(Image.open(io.BytesIO(image.screenshot_as_png))) for image in images]
        assert rendered[0].shape == rendered[1].shape and rendered[0].shape[0] >= 128  # enlarged on the page
        assert np.abs(rendered[0] - rendered[1]).max() > 0

        served_files = [pixels(urllib.request.urlopen(image.get_attribute("src"))) for image in images]
        expected = compare_via_api(served, prompt=OTHER_PROMPT, pladis_scale=2.0)  # the typed prompt, page defaults
        for shown_file, image in zip(served_files, expected, strict=True):
            np.testing.assert_array_equal(shown_file, image)
        requested = [
            json.loads(entry["message"])["message"]["params"]["request"]["url"]
            for entry in browser.get_log("performance")
            if '"Network.requestWillBeSent"' in entry["message"]
        ]
    finally:
        browser.quit()
    assert requested
    assert [url for url in requested if url.split(":")[0] not in ("data", "blob") and "//127.0.0.1:" not in url] == []
    if os.environ.get(SCREENSHOT_VARIABLE):
        Image.open(tmp_path / "demo.png").convert("RGB").quantize(64).save(os.environ[SCREENSHOT_VARIABLE])
