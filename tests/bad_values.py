"""The bad values of the PLADIS arguments, in one place, and the message each refusal must show: every entry
point's bad-value table (tests/project/test_bad_values.py) pushes these same values through its own door.

A row is `(keywords, error, argument)`: the keywords of a call (λ = 2 where λ is not the bad value), the error
type the check raises, and the argument its message must name together with the values it accepts
(`refusal(argument)`)."""

from __future__ import annotations

import math
import re

import pytest

from attention.validation import MAX_PLADIS_SCALE

SCALE = 2.0  # a good λ, for the rows whose bad value is another argument's

BAD_SCALES: list[tuple[object, type[Exception]]] = [
    (-0.5, ValueError),
    (-1.0, ValueError),
    (-2.0, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-math.inf, ValueError),
    (MAX_PLADIS_SCALE * 1.001, ValueError),  # beyond it half-precision attention overflows
    (1e6, ValueError),
    (1e30, ValueError),
    (1.7e308, ValueError),
    ("2.0", TypeError),
    ("2", TypeError),
    ("big", TypeError),
    (None, TypeError),
    (True, TypeError),
    ([2.0], TypeError),
]
BAD_ALPHAS: list[tuple[object, type[Exception]]] = [
    (1.0, ValueError),  # softmax itself: no extrapolation
    (0.5, ValueError),
    (-1.0, ValueError),
    (2.5, ValueError),
    (3.0, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    ("1.5", TypeError),
    ("2", TypeError),
    (None, TypeError),
    (True, TypeError),
]
# (pladis_start, pladis_stop): each outside [0, 1], reversed, or not a real number.
BAD_WINDOWS: list[tuple[tuple[object, object], type[Exception]]] = [
    ((-0.1, 1.0), ValueError),
    ((0.0, 1.5), ValueError),
    ((math.nan, 1.0), ValueError),
    ((0.8, 0.2), ValueError),
    ((0.9, 0.1), ValueError),
    ((0.0, "1"), TypeError),
    ((True, 1.0), TypeError),
]
FLAGS = ("pladis_controlnet", "pladis_single_blocks")
BAD_FLAGS: list[tuple[object, type[Exception]]] = [
    ("yes", TypeError),
    ("no", TypeError),
    (1, TypeError),
    (None, TypeError),
]
# Layer ids refused for what they are, whatever the model: an empty list, no strings, a broken regular expression.
MALFORMED_LAYERS: list[tuple[object, type[Exception]]] = [
    ([], ValueError),
    ([3], TypeError),
    ("mid[", ValueError),
    (type(None), TypeError),
]
# Well-formed ids naming no text-attention layer of the tiny SDXL: a typo, a block without attention
# (down_blocks.0), a self-attention layer (attn1).
UNKNOWN_SDXL_LAYERS: list[object] = ["midd", "nowhere", ["mid", "down_blocks.0"], ["up_blocks.0.attn1"]]
BAD_TEXT_LENGTHS: list[tuple[object, type[Exception]]] = [
    (-1, ValueError),
    (5, ValueError),
    (2.0, TypeError),
    (True, TypeError),
]


def _named(argument: str) -> str:
    """The argument as a call (pladis_start) or the command line (--pladis-start) spells it."""
    return "(--)?" + argument.replace("_", "[_-]")


def refusal(argument: str) -> str:
    """A regular expression for the message refusing a bad `argument`: it names the argument and the values
    it accepts (`window` is the pair pladis_start/pladis_stop)."""
    if argument == "window":
        start, stop = _named("pladis_start"), _named("pladis_stop")
        return (
            rf"{start} and {stop} must satisfy 0 <= {start} <= {stop} <= 1"
            rf"|({start}|{stop}) must be a real number \(in \[0, 1\]\)"
        )
    name = _named(argument)
    accepted = {
        "pladis_scale": rf"{name} must be (a real number \()?in \[0, {MAX_PLADIS_SCALE:g}\]",
        "pladis_alpha": rf"{name} must be (a real number \()?in \(1, 2\]",
        "pladis_layers": rf"{name}( must be a layer id or a list of layer ids \(strings\)"
        rf"| must name at least one layer, e\.g\. \['mid'\]|: '[^']*' is not a valid regular expression"
        rf"|: '[^']*' matches no text-attention layer; use module-name patterns such as 'mid')",
        "text_length": rf"{name} must be (an int|in \[0, \d+\] \(the joint length\)|a TextLength)",
    }
    return accepted.get(argument, rf"{name} must be True or False")


def _identifier(value: object) -> str:
    return re.sub(r"\s+", "", repr(value))


def rows(*arguments: str, scale: float = SCALE) -> list:
    """The bad-value rows of `arguments` (pladis_scale, pladis_alpha, window, the FLAGS, pladis_layers) as
    pytest params `(keywords, error, argument)`: the keywords of a PLADIS call with one bad value, λ = `scale`
    where λ is not the bad value (0: the other arguments are checked when PLADIS is off too)."""
    table = []
    for argument in arguments:
        if argument == "pladis_scale":
            cases = [(value, {"pladis_scale": value}, error) for value, error in BAD_SCALES]
        elif argument == "window":
            cases = [
                (window, {"pladis_scale": scale, "pladis_start": window[0], "pladis_stop": window[1]}, error)
                for window, error in BAD_WINDOWS
            ]
        else:
            values = {"pladis_alpha": BAD_ALPHAS, "pladis_layers": MALFORMED_LAYERS, **dict.fromkeys(FLAGS, BAD_FLAGS)}
            cases = [(value, {"pladis_scale": scale, argument: value}, error) for value, error in values[argument]]
        off = "" if scale == SCALE or argument == "pladis_scale" else f"λ={scale:g}-"
        table += [
            pytest.param(keywords, error, argument, id=f"{off}{argument}={_identifier(value)}")
            for value, keywords, error in cases
        ]
    return table
