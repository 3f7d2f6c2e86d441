"""What a picture says about the run that made it: the guidance method of its panels, a caption line (prompt,
steps, guidance, model) and, for the random-weight assets, a warning that their images are noise.

Every grid the scripts write carries `run_caption` under its panels, and `random_weights_note` is printed once
by every command that runs one of those assets, so nobody mistakes a plumbing test for a result.
"""

from __future__ import annotations

import argparse
import sys

from .assets import TOY_MODEL, is_tiny_asset, repository_relative
from .records import recorded_path


def guidance_method(
    guidance_scale: float | None,
    *,
    pag_scale: float | None = None,
    seg_scale: float | None = None,
    flux: bool = False,
) -> str:
    """The guidance a run uses, as its panels are labelled: "CFG 5", "SEG 3", "PAG 3 + CFG 5", "no CFG
    (guidance 1)", "FLUX guidance 3.5" (FLUX.1 embeds its guidance; it runs no CFG) or "default guidance"."""
    if flux:
        return f"FLUX guidance {guidance_scale:g}" if guidance_scale is not None else "FLUX default guidance"
    if guidance_scale is None:
        cfg = "default guidance"
    else:
        cfg = f"CFG {guidance_scale:g}" if guidance_scale > 1 else f"no CFG (guidance {guidance_scale:g})"
    for name, scale in (("PAG", pag_scale), ("SEG", seg_scale)):
        if scale:
            return f"{name} {scale:g}" + (f" + {cfg}" if cfg.startswith("CFG") else "")
    return cfg


def method_of(args: argparse.Namespace) -> str:
    """`guidance_method` of parsed script or example options."""
    return guidance_method(
        args.guidance_scale,
        pag_scale=getattr(args, "pag_scale", None),
        seg_scale=getattr(args, "seg_scale", None),
        flux=getattr(args, "pipeline", None) == "flux",
    )


def scale_label(method: str, scale: float) -> str:
    """A panel's label: the method alone at λ = 0 ("SEG 3 (no PLADIS)"), else with its PLADIS scale."""
    return f"{method} (no PLADIS)" if scale == 0 else f"{method} + PLADIS scale={scale:g}"


def random_weights_note(model: str) -> str | None:
    """The warning for a random-weight asset (`asset/tiny-*`), or None for any other model."""
    if not is_tiny_asset(model):
        return None
    return (
        f"{recorded_path(str(model))} has random weights: it checks the plumbing in seconds and its images are "
        f"noise (the trained toy {repository_relative(TOY_MODEL)} draws real shapes; real models: --model)"
    )


def print_random_weights_note(model: str) -> None:
    """Print `random_weights_note(model)` on stderr, when there is one."""
    if note := random_weights_note(model):
        print(f"note: {note}", file=sys.stderr, flush=True)


def run_caption(args: argparse.Namespace, method: str | None = None) -> list[str]:
    """The caption lines of a grid: the prompt; steps, guidance method, seed, PLADIS α and model; and the
    random-weights warning when it applies."""
    steps = f"{len(args.timesteps)} steps" if getattr(args, "timesteps", None) else f"{args.steps} steps"
    model = recorded_path(str(args.model))
    lines = [
        f'prompt: "{args.prompt}"',
        f"{steps}, {method or method_of(args)}, seed {args.seed}, PLADIS alpha {args.pladis_alpha:g}, model {model}",
    ]
    if note := random_weights_note(args.model):
        lines.append(f"Note: {note}.")
    return lines
