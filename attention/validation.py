"""The one place where PLADIS arguments are checked.

Every public entry (processors, `apply_pladis`, pipelines) calls these before doing any work, so a
bad value fails fast with a message naming the argument and leaves the model untouched.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable


def check_real(name: str, value: object, accepted: str) -> float:
    """Return `value` as a float, or raise TypeError if it is not a real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number ({accepted}), got {type(value).__name__}: {value!r}")
    return float(value)


# The largest λ accepted. Each PLADIS map row is (1 − λ)·softmax + λ·entmax, so its entries lie in [1 − λ, λ] and
# its absolute sum is at most 2λ − 1 = 199: fp16 attention outputs (max 65504) stay finite while |V| < 329, with
# room to spare in bf16/fp32. Measured on the tiny SDXL and the toy in fp16, NaN appears only at λ = 1e5–1e6 (and
# at λ = 1e30 in every dtype); the paper's λ is 2, and images saturate long before 100.
MAX_PLADIS_SCALE = 100.0


def check_pladis_scale(pladis_scale: object) -> float:
    """Validate λ: a real number in [0, `MAX_PLADIS_SCALE`] (0 = off, 1 = pure sparse, > 1 extrapolates)."""
    accepted = f"in [0, {MAX_PLADIS_SCALE:g}]"
    value = check_real("pladis_scale", pladis_scale, accepted)
    if not 0.0 <= value <= MAX_PLADIS_SCALE:  # also refuses NaN and ±inf
        raise ValueError(
            f"pladis_scale must be {accepted} (0 disables PLADIS; 1.5-2.0 is typical; above {MAX_PLADIS_SCALE:g} "
            f"half-precision attention overflows), got {pladis_scale!r}"
        )
    return value


def check_pladis_alpha(pladis_alpha: object) -> float:
    """Validate α: a real number in (1, 2] (1.5 = entmax15, 2 = sparsemax)."""
    value = check_real("pladis_alpha", pladis_alpha, "in (1, 2]")
    if not math.isfinite(value) or not 1.0 < value <= 2.0:
        raise ValueError(f"pladis_alpha must be in (1, 2] (1.5 = entmax15, 2 = sparsemax), got {pladis_alpha!r}")
    return value


def check_flag(name: str, value: object) -> bool:
    """Validate an on/off option such as `pladis_controlnet` or `pladis_single_blocks`: exactly a bool
    (a string like "no" is truthy, so anything else is refused rather than guessed)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}: {value!r}")
    return value


def check_guidance_scale(name: str, value: object) -> float:
    """Validate a guidance strength such as `pag_scale`, `pag_adaptive_scale` or `seg_scale`: finite, ≥ 0."""
    scale = check_real(name, value, "finite and >= 0")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{name} must be finite and >= 0 (0 disables it), got {value!r}")
    return scale


def check_pladis_window(
    pladis_start: object, pladis_stop: object, names: tuple[str, str] = ("pladis_start", "pladis_stop")
) -> tuple[float, float]:
    """Validate the step window: fractions of the denoising steps with 0 <= pladis_start <= pladis_stop <= 1
    (PLADIS acts on step i of N iff int(start·N) <= i < int(stop·N), as diffusers' guiders' start/stop);
    `names` are the names to report (the command line's options, for instance)."""
    start_name, stop_name = names
    start = check_real(start_name, pladis_start, "in [0, 1]")
    stop = check_real(stop_name, pladis_stop, "in [0, 1]")
    if not 0.0 <= start <= stop <= 1.0:  # NaN fails too
        raise ValueError(
            f"{start_name} and {stop_name} must satisfy 0 <= {start_name} <= {stop_name} <= 1 (fractions of the "
            f"denoising steps), got {start_name}={pladis_start!r}, {stop_name}={pladis_stop!r}"
        )
    return start, stop


def _layer_ids(name: str, layers: object) -> list[str]:
    """Layer ids as a non-empty list of valid regular expressions (one id may be given as a string)."""
    ids = [layers] if isinstance(layers, str) else layers
    if not isinstance(ids, (list, tuple)) or not all(isinstance(layer, str) for layer in ids):
        raise TypeError(f"{name} must be a layer id or a list of layer ids (strings), got {layers!r}")
    if not ids:
        raise ValueError(f"{name} must name at least one layer, e.g. ['mid']")
    for layer_id in ids:
        try:
            re.compile(layer_id)
        except re.error as error:
            raise ValueError(f"{name}: {layer_id!r} is not a valid regular expression ({error})") from None
    return list(ids)


def check_pladis_layers(pladis_layers: object) -> tuple[str, ...] | None:
    """Validate `pladis_layers`: None (the family's default layers), a layer id or a list of them (PAG's
    syntax); which layers they name is checked against the model when PLADIS is installed."""
    return None if pladis_layers is None else tuple(_layer_ids("pladis_layers", pladis_layers))


def _names_layer(layer_id: str, module_name: str) -> bool:
    """PAGMixin's matching rule: a regex search of the id in the module name, except where both end in
    the same number (diffusers' "fake integral match": "blocks.1" names the container `…blocks.1` itself,
    which is no attention layer), so only layers inside the named block match."""
    last_id, last_name = layer_id.split(".")[-1], module_name.split(".")[-1]
    fake_integral_match = last_id.isnumeric() and last_name.isnumeric() and last_id == last_name
    return re.search(layer_id, module_name) is not None and not fake_integral_match


def names_matching(layer_ids: Iterable[str], layer_names: Iterable[str]) -> list[str]:
    """The names among `layer_names` that any of the (valid) `layer_ids` names, by the rule diffusers' PAG applies."""
    ids = list(layer_ids)
    return [name for name in layer_names if any(_names_layer(layer_id, name) for layer_id in ids)]


def layers_named(name: str, layers: object, layer_names: Iterable[str], kind: str, examples: str) -> list[str]:
    """The names among `layer_names` that the ids `layers` name by the rule diffusers' PAG applies; an id
    naming none of them (a typo, the docstring style "down.block_1") raises, naming it and the `kind` of
    layer it was matched against."""
    ids = _layer_ids(name, layers)
    candidates = list(layer_names)
    named = []
    for layer_id in ids:
        matched = names_matching([layer_id], candidates)
        if not matched:
            raise ValueError(
                f"{name}: {layer_id!r} matches no {kind} layer; use module-name patterns such as {examples} "
                f"(e.g. {candidates[:2]})"
            )
        named += [module_name for module_name in matched if module_name not in named]
    return named


def check_applied_layers(name: str, layers: object, self_attention_names: Iterable[str]) -> list[str]:
    """Validate layer ids (PAG's regex syntax: "mid", "down_blocks.2", "up_blocks.0.attentions.1").

    Each id must match at least one of `self_attention_names` by the rule diffusers' PAG applies,
    so a typo (or the docstring style "down.block_1") fails before any work. Returns them as a list.
    """
    layers_named(name, layers, self_attention_names, "self-attention", PAG_LAYER_EXAMPLES)
    return _layer_ids(name, layers)


PAG_LAYER_EXAMPLES = "'mid', 'down_blocks.2', 'up_blocks.0.attentions.1'"
