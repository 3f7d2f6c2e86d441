"""The kernels that materialise the maps: the differentiable one autograd needs, and the paper's reference.

The fast kernels overwrite reused buffers, which autograd cannot follow, so a call autograd records takes
`autograd_pladis_attention` / `autograd_text_block`: the same values from `torch.softmax` and the `entmax`
package's maps (which carry their own backward), in float32 (float64 kept). `reference_*` run the float64-able
reference formulation (`reference.py`, independent of every fast path) in place of a kernel: what the benchmark
times as "reference" and tests compare with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dense_attention import dense_attention_and_text_mass
from .kernel_calls import CrossAttentionCall, TextBlockCall
from .masks import mask_for_rows
from .reference import reference_pladis_sdpa, reference_text_block
from .sparse_maps import differentiable_maps


def differentiable_score_maps(
    query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(softmax(z), entmax_α(z))` for `z = scale·QKᵀ + mask`, materialised and differentiable, in
    float32 (float64 kept): what both PLADIS rules use when autograd records the call."""
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    scores = query.to(dtype) @ key.to(dtype).transpose(-1, -2) * scale
    return differentiable_maps(scores if mask is None else scores + mask, alpha)


def autograd_pladis_attention(call: CrossAttentionCall) -> torch.Tensor:
    """The cross-attention rule from materialised, differentiable maps, in `query`'s dtype."""
    dense, sparse = differentiable_score_maps(call.query, call.key, call.scale, call.mask, call.settings.pladis_alpha)
    weights = dense + call.settings.pladis_scale * (sparse - dense)
    return (weights @ call.value.to(weights.dtype)).to(call.query.dtype)


def autograd_text_block(call: TextBlockCall) -> torch.Tensor:
    """The joint rule, differentiable: dense attention and text mass from one SDPA call, and the image rows'
    correction from materialised maps, added out of place."""
    query, key, value, text, image = call.query, call.key, call.value, call.text, call.image
    output, text_mass = dense_attention_and_text_mass(query, key, value, text, call.attn_mask, call.scale)
    dense, sparse = differentiable_score_maps(
        query[..., image, :], key[..., text, :], call.scale, mask_for_rows(call.mask, image), call.settings.pladis_alpha
    )
    shift = text_mass[..., image, None].to(dense.dtype) * call.settings.pladis_scale * (sparse - dense)
    correction = shift @ value[..., text, :].to(dense.dtype)
    # Zero rows for the text queries line the correction up with the joint sequence.
    padding = (0, 0, text.stop - text.start, 0) if text.start == 0 else (0, 0, 0, text.stop - text.start)
    return output + F.pad(correction, padding).to(output.dtype)


def reference_cross_attention(call: CrossAttentionCall) -> torch.Tensor:
    """The cross-attention rule by the reference formulation (`reference.reference_pladis_sdpa`)."""
    settings = call.settings
    return reference_pladis_sdpa(
        call.query, call.key, call.value, settings.pladis_scale, settings.pladis_alpha, call.mask, call.scale
    )


def reference_joint_text_block(call: TextBlockCall) -> torch.Tensor:
    """The joint rule by the reference formulation on the full (N × N) map (`reference.reference_text_block`)."""
    return reference_text_block(
        call.query,
        call.key,
        call.value,
        call.text.stop - call.text.start,
        call.settings.pladis_scale,
        call.settings.pladis_alpha,
        text_first=call.text.start == 0,
        attn_mask=call.attn_mask,
        scale=call.scale,
    )
