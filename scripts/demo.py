"""A web page to try PLADIS: one prompt, one seed, the image without PLADIS and the PLADIS image side by side.

`python -m scripts.demo` (console command `pladis-demo`) loads one pipeline (by default the embedded toy SDXL,
`asset/toy-sdxl`, which runs on a CPU in seconds) and serves a Gradio page on http://127.0.0.1:7860; it takes
`compare.py`'s options (`--model`, `--pipeline` incl. `auto`, `--device`, `--dtype`, ...), which choose the model
and the page's defaults, plus `--host` and `--port`. Every request shares the loaded pipeline through the
per-call settings (the pipeline's `pladis_scale` argument, or `apply_pladis` around a stock pipeline's call),
one generation at a time. The button's event is also the API endpoint `/compare` (prompt, pladis_scale, seed and
optional others → the two images). No share link and no telemetry: nothing leaves the machine.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file (a Space's app_file): as the module, from the root
    import os
    import sys
    from pathlib import Path

    os.chdir(Path(__file__).resolve().parents[1])
    os.execv(sys.executable, [sys.executable, "-m", "scripts.demo", *sys.argv[1:]])

import argparse
import copy
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from attention.diagnostics.attention_maps import LAYER_GROUPS
from scripts import compare
from scripts.attention_maps import TOY_TOKENS, chosen_tokens, map_panels, recorded_generation
from scripts.cli.assets import TOY_PROMPT, is_toy_model
from scripts.cli.grid import labelled_grid
from scripts.cli.loading import call_options, image_size, load_pipeline
from scripts.cli.options import RaisingParser, comma_words, command_line, parse_scales, parse_with_settings
from scripts.cli.records import run_settings, write_json

try:
    import gradio as gr
except ImportError as error:
    raise ImportError(
        f"the demo needs Gradio ({error}): pip install -e '.[demo]', or pip install -r requirements.txt"
    ) from error

HOST_VARIABLE, DEFAULT_HOST = "GRADIO_SERVER_NAME", "127.0.0.1"  # hosted Spaces set the variable to 0.0.0.0
PORT_VARIABLE, DEFAULT_PORT = "GRADIO_SERVER_PORT", "7860"
ARGUMENTS_VARIABLE = "PLADIS_DEMO_ARGS"  # options for a host that runs the file without any (a Space)
ALPHAS = (1.5, 2.0)  # entmax15 and sparsemax
SLIDER_MAX_SCALE = 5.0
MAX_MAP_TOKENS = 8
IMAGE_HEIGHT = 360  # pixels on the page
# The images fill their frames (the toy's are 32×32), enlarged without blur.
CSS = ".pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
INTRODUCTION = """\
# PLADIS: the same seed without and with PLADIS
Inside every cross-attention layer PLADIS moves the usual dense (softmax) attention towards a sparse one
(α-entmax), `A = softmax(z) + λ·(entmax_α(z) − softmax(z))`: each part of the picture attends to fewer words, more
sharply. No training, no extra model evaluations; λ = 0 is the stock pipeline bit for bit.
"""
TOY_NOTE = """\
This page runs the embedded toy (32×32 coloured shapes, trained on a CPU): on it PLADIS does not improve prompt
following (README, "What PLADIS does to it"). Start the page with `--model` on a GPU for a real model.
"""


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace, str]:
    """(where to serve: host and port, the loaded model's comparison arguments, the default λ sweep text).

    The options are `compare.py`'s (`--settings FILE` included) plus `--host` and `--port`, checked by the same
    code; `$PLADIS_DEMO_ARGS` (split like a shell line) comes before the command line's own."""
    parser = compare.build_parser(__doc__.splitlines()[0])
    serving = parser.add_argument_group("serving")
    serving.add_argument(
        "--host",
        default=os.environ.get(HOST_VARIABLE, DEFAULT_HOST),
        help=f"address to listen on (default ${HOST_VARIABLE} or {DEFAULT_HOST}: this machine only)",
    )
    serving.add_argument(
        "--port", type=int, default=os.environ.get(PORT_VARIABLE, DEFAULT_PORT), help=f"default {DEFAULT_PORT}"
    )
    argv = [*shlex.split(os.environ.get(ARGUMENTS_VARIABLE, "")), *(sys.argv[1:] if argv is None else argv)]
    args = parse_with_settings(parser, argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    where = argparse.Namespace(host=args.host, port=args.port)
    del args.host, args.port
    sweep = args.scales if isinstance(args.scales, str) else ",".join(map(str, args.scales or []))  # list: --settings
    return where, compare.check_args(parser, args), sweep


def request_arguments(
    loaded: argparse.Namespace,
    prompt: str,
    pladis_scale: float,
    seed: int,
    negative_prompt: str | None,
    pladis_alpha: float,
    steps: int | None,
    guidance_scale: float | None,
    pladis_start: float | None = None,
    pladis_stop: float | None = None,
    pladis_layers: str | None = None,
) -> argparse.Namespace:
    """One request's comparison arguments: the loaded model's, with the page's values, checked and completed by
    `compare.py`'s own code (a problem raises ValueError with the command line's message). λ = 0 and `pladis_scale`
    are its two panels. The step window and layers default to the loaded ones (`--pladis-start`, `--pladis-stop`,
    `--pladis-layers`); layer ids are comma- or space-separated, empty for the model's usual layers."""
    args = copy.deepcopy(loaded)
    args.prompt, args.negative_prompt = prompt, negative_prompt or None
    args.pladis_scale, args.pladis_alpha, args.seed = as_float(pladis_scale), as_float(pladis_alpha), seed
    args.steps, args.guidance_scale, args.scales = steps, as_float(guidance_scale), None
    if pladis_start is not None:
        args.pladis_start = as_float(pladis_start)
    if pladis_stop is not None:
        args.pladis_stop = as_float(pladis_stop)
    if pladis_layers is not None:
        args.pladis_layers = comma_words(pladis_layers.replace(" ", ",")) or None
    return compare.check_args(RaisingParser(), args)


def as_float(value: Any) -> Any:
    """A whole number as the float the command line would have parsed (Gradio hands a slider's 2 as an int), so the
    recorded settings read as `compare.py`'s; anything else unchanged, for the checks to judge."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def map_arguments(args: argparse.Namespace, tokens: str) -> argparse.Namespace:
    """`attention_maps.py`'s arguments for a request: every layer group and step, the given prompt words (comma- or
    space-separated; none: the toy's content words for the toy caption, else the first prompt tokens)."""
    maps = copy.deepcopy(args)
    words = comma_words(tokens.replace(" ", ","))
    toy_caption = is_toy_model(args.model) and args.prompt == TOY_PROMPT
    maps.tokens = words or (list(TOY_TOKENS) if toy_caption else None)
    maps.layer_groups, maps.record_steps, maps.max_tokens = list(LAYER_GROUPS), None, MAX_MAP_TOKENS
    return maps


class StepProgress:
    """A tqdm-like bar (`update(n)`, what the scripts' step callbacks call) that moves a Gradio progress bar."""

    def __init__(self, progress: Any, total: int, desc: str) -> None:
        self.progress, self.total, self.desc, self.done = progress, total, desc, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        self.progress((self.done, self.total), desc=self.desc, unit="steps")


@contextmanager
def shown_as_gradio_errors() -> Iterator[None]:
    """The scripts' clear errors (ValueError/TypeError naming the option and what it accepts) as `gr.Error`, which
    the page and the API show with their message."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise gr.Error(str(error), print_exception=False) from None


def settings_record(
    args: argparse.Namespace, scales: list[float], folder: Path, **extra: Any
) -> tuple[dict[str, Any], Path]:
    """The JSON `compare.py` writes for these arguments and λ values (its `command` the equivalent command line,
    `--settings` reruns it), and the file it is written to (named by its content) for download."""
    record = copy.deepcopy(args)
    record.scales = scales
    argv = command_line(compare.build_parser(), record)
    labels = [compare.panel_label(args, scale) for scale in scales]
    settings = run_settings("scripts.compare", record, argv, panels=labels, **extra)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return settings, write_json(folder / f"pladis-compare-{digest}.json", settings)


class DemoRequests:
    """What the page's events run, on one loaded pipeline shared by every request through per-call settings.

    `loaded` holds the comparison arguments the pipeline was loaded with; a request replaces the page's values in
    a copy of them. The only other thing kept is a scratch folder for the settings files handed out for download.
    """

    def __init__(self, pipe: Any, loaded: argparse.Namespace) -> None:
        self.pipe, self.loaded = pipe, loaded
        self.has_maps = getattr(pipe, "unet", None) is not None and getattr(pipe, "tokenizer", None) is not None
        self.scratch = Path(tempfile.mkdtemp(prefix="pladis-demo-"))
        weakref.finalize(self, shutil.rmtree, self.scratch, ignore_errors=True)  # also at exit

    def generate(self, args: argparse.Namespace, scales: list[float], progress: Any, desc: str) -> list[Image.Image]:
        """One image per λ from `args.seed`, with a progress step per denoising step."""
        options = call_options(self.pipe, args, *image_size(self.pipe, args))
        bar = StepProgress(progress, len(scales) * args.steps, desc)
        return compare.scale_images(self.pipe, args, options, scales, bar)

    def check(
        self,
        prompt: str,
        pladis_scale: float,
        seed: int,
        negative_prompt: str,
        pladis_alpha: float,
        steps: int | None,
        guidance_scale: float | None,
        pladis_start: float | None,
        pladis_stop: float | None,
        pladis_layers: str | None,
        scales: str,
        maps: bool,
        tokens: str,
    ) -> None:
        """Every input checked before anything is generated (a `gr.Error` stops the button's chain)."""
        with shown_as_gradio_errors():
            args = request_arguments(
                self.loaded,
                prompt,
                pladis_scale,
                seed,
                negative_prompt,
                pladis_alpha,
                steps,
                guidance_scale,
                pladis_start,
                pladis_stop,
                pladis_layers,
            )
            if scales.strip():
                parse_scales(scales)
            if maps and self.has_maps:
                chosen_tokens(self.pipe.tokenizer, args.prompt, map_arguments(args, tokens).tokens, MAX_MAP_TOKENS)

    def compare_images(
        self,
        prompt: str,
        pladis_scale: float,
        seed: int,
        negative_prompt: str,
        pladis_alpha: float,
        steps: int | None,
        guidance_scale: float | None,
        pladis_start: float | None = None,
        pladis_stop: float | None = None,
        pladis_layers: str | None = None,
        progress: Any = gr.Progress(),  # noqa: B008 (how Gradio hands a function its progress bar)
    ) -> tuple[Image.Image, Image.Image, dict[str, Any]]:
        """The image without PLADIS (λ = 0) and the PLADIS image (λ = pladis_scale) from one seed, and the request
        (its arguments and images) for `extras`; the step window and layers default to the loaded ones."""
        with shown_as_gradio_errors():
            args = request_arguments(
                self.loaded,
                prompt,
                pladis_scale,
                seed,
                negative_prompt,
                pladis_alpha,
                steps,
                guidance_scale,
                pladis_start,
                pladis_stop,
                pladis_layers,
            )
            without, with_pladis = self.generate(args, args.scales, progress, "without PLADIS, then PLADIS")
        return without, with_pladis, {"args": args, "images": [without, with_pladis]}

    def extras(
        self,
        request: dict[str, Any],
        scales: str,
        maps: bool,
        tokens: str,
        progress: Any = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, Any, dict[str, Any], str]:
        """For the request `compare_images` made: the λ sweep (its λ = 0 and λ panels reused, the others generated
        from the same seed), the attention maps (one more generation at λ, recording them), and the settings of
        the result, shown and as a file."""
        args = request["args"]
        images = dict(zip(args.scales, request["images"], strict=True))
        with shown_as_gradio_errors():
            sweep = parse_scales(scales) if scales.strip() else []
            missing = [scale for scale in dict.fromkeys(sweep) if scale not in images]
            if missing:
                images.update(zip(missing, self.generate(args, missing, progress, "λ sweep"), strict=True))
            gallery = [(images[scale], compare.panel_label(args, scale)) for scale in sweep]
            extra, grid = {}, None
            if maps and self.has_maps:
                map_args = map_arguments(args, tokens)
                bar = StepProgress(progress, args.steps, "attention maps")
                image, store, chosen = recorded_generation(self.pipe, map_args, bar)
                grid = labelled_grid(*map_panels(map_args, image, store, chosen), columns=len(chosen) + 1)
                extra["attention_map_tokens"] = [text for _, text in chosen]
            settings, path = settings_record(args, [*args.scales, *missing], self.scratch, **extra)
        return (
            gr.update(value=gallery, visible=bool(gallery)),
            gr.update(value=grid, visible=grid is not None),
            settings,
            str(path),
        )


def build_demo(pipe: Any, loaded: argparse.Namespace, sweep: str = "") -> gr.Blocks:
    """The page for a loaded pipeline and the comparison arguments it was loaded with (their prompt, λ, α, steps,
    guidance, seed and `sweep` are the page's defaults)."""
    requests = DemoRequests(pipe, loaded)
    has_maps = requests.has_maps

    # Gradio sends telemetry (version check, launch data) only where a Blocks allows it: this one does not.
    with gr.Blocks(title="PLADIS", analytics_enabled=False) as demo:
        gr.Markdown(INTRODUCTION + (TOY_NOTE if is_toy_model(loaded.model) else ""))
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", value=loaded.prompt, lines=2, elem_id="prompt")
                negative_prompt = gr.Textbox(label="negative prompt", value=loaded.negative_prompt or "")
                pladis_scale = gr.Slider(
                    0.0,
                    max(SLIDER_MAX_SCALE, loaded.pladis_scale),
                    value=loaded.pladis_scale,
                    step=0.1,
                    label="λ, PLADIS scale (--pladis-scale)",
                    info="0 = off, 1 = sparse attention, > 1 extrapolates; the paper uses 2",
                )
                pladis_alpha = gr.Radio(
                    sorted({*ALPHAS, loaded.pladis_alpha}),
                    value=loaded.pladis_alpha,
                    label="α, sparsity (--pladis-alpha)",
                    info="1.5 = entmax15, 2 = sparsemax",
                )
                with gr.Row():
                    steps = gr.Number(value=loaded.steps, precision=0, label="steps (--steps)")
                    guidance_scale = gr.Number(value=loaded.guidance_scale, label="guidance (--guidance-scale)")
                    seed = gr.Number(value=loaded.seed, precision=0, label="seed (--seed)")
                with gr.Accordion("when and where PLADIS acts", open=False):
                    with gr.Row():
                        pladis_start = gr.Slider(
                            0.0, 1.0, value=loaded.pladis_start, step=0.05, label="start (--pladis-start)"
                        )
                        pladis_stop = gr.Slider(
                            0.0, 1.0, value=loaded.pladis_stop, step=0.05, label="stop (--pladis-stop)"
                        )
                    pladis_layers = gr.Textbox(
                        value=",".join(loaded.pladis_layers or []),
                        label="layers (--pladis-layers)",
                        placeholder="e.g. mid,up_blocks.0 (empty: every cross-attention layer)",
                        info="fractions of the denoising steps: PLADIS acts on step i of N iff int(start·N) ≤ i < "
                        "int(stop·N)",
                    )
                with gr.Accordion("λ sweep and attention maps", open=False):
                    scales = gr.Textbox(value=sweep, label="λ sweep (--scales)", placeholder="e.g. 0,1,1.5,2,3")
                    maps = gr.Checkbox(False, label="per-token cross-attention maps, dense vs PLADIS", visible=has_maps)
                    tokens = gr.Textbox(label="prompt words to map (default: the first tokens)", visible=has_maps)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                with gr.Row(elem_classes="pixelated"):
                    without = gr.Image(
                        label="without PLADIS", type="pil", format="png", height=IMAGE_HEIGHT, elem_id="without-pladis"
                    )
                    with_pladis = gr.Image(
                        label="PLADIS", type="pil", format="png", height=IMAGE_HEIGHT, elem_id="pladis"
                    )
                gallery = gr.Gallery(label="λ sweep", format="png", visible=False, elem_classes="pixelated")
                attention = gr.Image(label="cross-attention maps", format="png", visible=False)
                with gr.Accordion("settings of this result (compare.py's JSON: --settings reruns it)", open=False):
                    settings = gr.JSON(label="settings")
                    settings_file = gr.File(label="download")
        request = gr.State()
        pair_inputs = [
            prompt,
            pladis_scale,
            seed,
            negative_prompt,
            pladis_alpha,
            steps,
            guidance_scale,
            pladis_start,
            pladis_stop,
            pladis_layers,
        ]
        gr.on(
            [button.click, prompt.submit],
            requests.check,
            inputs=[*pair_inputs, scales, maps, tokens],
            outputs=None,
            queue=False,
            api_visibility="private",
        ).success(
            requests.compare_images,
            inputs=pair_inputs,
            outputs=[without, with_pladis, request],
            api_name="compare",
            concurrency_id="pipeline",
        ).success(
            requests.extras,
            inputs=[request, scales, maps, tokens],
            outputs=[gallery, attention, settings, settings_file],
            api_visibility="private",
            concurrency_id="pipeline",
        )
    return demo


def launch(demo: gr.Blocks, host: str, port: int, **options: Any) -> tuple[Any, str, str]:
    """Serve `demo`, one generation at a time (the queue), with no share link; `options` go to `launch`."""
    return demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, ssr_mode=False, css=CSS, **options
    )


def main(argv: list[str] | None = None) -> None:
    """Load the pipeline once and serve the page until interrupted."""
    where, args, sweep = parse_args(argv)
    pipe = load_pipeline(args)
    launch(build_demo(pipe, args, sweep), where.host, where.port)


if __name__ == "__main__":
    main()
