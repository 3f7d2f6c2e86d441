"""Per-call Python overhead of the ways a PLADIS processor can take the stock processor's attention call.

On a tiny cross-attention module (where Python, not arithmetic, dominates) it times, interleaved in one run:
the copied processor this project had before the family registry (`AttnProcessor2_0`'s prologue, the PLADIS
seam, its epilogue), the stock `AttnProcessor2_0` under a `TorchFunctionMode` that swaps its
`F.scaled_dot_product_attention` (what diffusers' `hooks/layer_skip.py` does), and the installed
`PLADISAttnProcessor` (the stock code with its attention name bound to PLADIS, settings read per call).
`python -m scripts.dev.processor_overhead` prints median µs per call and each ratio to the copied processor.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch.overrides import TorchFunctionMode

from attention.integration.attn_processor_parts import unet_attention_heads, unet_attention_output
from attention.integration.install import apply_pladis
from attention.kernels.cross_attention import pladis_scaled_dot_product_attention
from scripts.cli.parsers import command_parser


class CopiedProcessor:
    """The pre-registry design: `AttnProcessor2_0` rewritten around the PLADIS seam."""

    def __init__(self, pladis_scale: float, pladis_alpha: float) -> None:
        self.pladis_scale, self.pladis_alpha = pladis_scale, pladis_alpha

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        query, key, value, mask, layout = unet_attention_heads(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        out = pladis_scaled_dot_product_attention(
            query, key, value, self.pladis_scale, self.pladis_alpha, attn_mask=mask
        )
        return unet_attention_output(attn, out.to(query.dtype), layout)


class PLADISAttentionMode(TorchFunctionMode):
    """Every `F.scaled_dot_product_attention` call inside the mode becomes the PLADIS seam; every other torch
    call passes through (torch disables the mode inside its own handler, so the seam's calls do not recurse)."""

    def __init__(self, pladis_scale: float, pladis_alpha: float) -> None:
        super().__init__()
        self.pladis_scale, self.pladis_alpha = pladis_scale, pladis_alpha

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = args[:3]
        return pladis_scaled_dot_product_attention(
            query,
            key,
            value,
            self.pladis_scale,
            self.pladis_alpha,
            attn_mask=kwargs.get("attn_mask"),
            scale=kwargs.get("scale"),
        )


class ModeProcessor:
    """The stock processor run under `PLADISAttentionMode`."""

    def __init__(self, pladis_scale: float, pladis_alpha: float) -> None:
        self.stock, self.mode = AttnProcessor2_0(), PLADISAttentionMode(pladis_scale, pladis_alpha)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        with self.mode:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def tiny_case(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A cross-attention module of 2 heads × 16 on 64 queries and 16 text keys, batch 2."""
    torch.manual_seed(seed)
    attn = Attention(32, cross_attention_dim=32, heads=2, dim_head=16).eval()
    return attn, torch.randn(2, 64, 32), torch.randn(2, 16, 32)


def variants(attn, hidden, text, pladis_scale: float, pladis_alpha: float) -> dict[str, Callable[[], object]]:
    """name → a zero-argument call of each variant that needs no installation."""
    copied, mode = CopiedProcessor(pladis_scale, pladis_alpha), ModeProcessor(pladis_scale, pladis_alpha)
    stock = AttnProcessor2_0()
    return {
        "stock AttnProcessor2_0": lambda: stock(attn, hidden, text),
        "copied processor (before)": lambda: copied(attn, hidden, text),
        "TorchFunctionMode around stock": lambda: mode(attn, hidden, text),
    }


def measure(calls: int, rounds: int, pladis_scale: float = 2.0, pladis_alpha: float = 1.5) -> dict[str, float]:
    """Median µs per call of each variant, the variants alternating round by round."""
    attn, hidden, text = tiny_case()
    table = variants(attn, hidden, text, pladis_scale, pladis_alpha)
    timings: dict[str, list[float]] = {name: [] for name in [*table, "installed PLADISAttnProcessor (now)"]}
    # The installed processor runs inside apply_pladis, reading this call's settings as in a real call.
    with torch.no_grad(), apply_pladis(_single_layer_denoiser(attn), pladis_scale, pladis_alpha):
        installed = attn.processor
        table["installed PLADISAttnProcessor (now)"] = lambda: installed(attn, hidden, text)
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            for name, call in table.items():
                start = time.perf_counter()
                for _ in range(calls):
                    call()
                timings[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(values[1:]) for name, values in timings.items()}


def _single_layer_denoiser(attn: torch.nn.Module) -> torch.nn.Module:
    """A minimal diffusers-style model holding `attn`, so `apply_pladis` installs its processor there."""
    from diffusers.models.attention import AttentionMixin
    from diffusers.models.modeling_utils import ModelMixin

    class OneLayer(ModelMixin, AttentionMixin):
        def __init__(self) -> None:
            super().__init__()
            self.attn2 = attn

    return OneLayer()


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--calls", type=int, default=300, help="calls per variant and round (default 300)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds after a warm-up (default 9)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(args.calls, args.rounds)
    baseline = results["copied processor (before)"]
    for name, microseconds in results.items():
        print(f"{name:40s} {microseconds:8.1f} µs   ×{microseconds / baseline:.3f}")


if __name__ == "__main__":
    main()
