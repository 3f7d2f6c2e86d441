"""An independent float64 formulation of both PLADIS rules (materialised maps, the `entmax` package), and a
way to run a stock denoiser with it in the attention calls of chosen layers.

`materialised_pladis(model, module, layouts, λ, α)` replaces the stock processors' attention function
(`module.dispatch_attention_fn`, or torch's SDPA) while the body runs: calls inside the layers named in `layouts` use the
rule their layout names, every other call dense softmax attention, all materialised in float64. Which layer
is running is tracked with forward hooks on the attention modules, so nothing of `attention/` is used.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
from entmax import entmax15, sparsemax

_MASKED = -1e9  # stands for a masked key in the sparse maps (the entmax package cannot take -inf)


def additive(mask: torch.Tensor | None) -> torch.Tensor | None:
    """SDPA mask semantics (bool True = attend; float = added) as a float64 additive mask with -inf."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    return mask.double()


def maps(scores: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax, entmax_α) over the last axis of float64 `scores` (-inf = masked; fully masked rows give 0,
    as SDPA gives)."""
    assert alpha in (1.5, 2.0), "the reference covers entmax15 and sparsemax"
    masked = torch.isneginf(scores)
    finite = scores.masked_fill(masked, _MASKED)
    dense = torch.softmax(finite, dim=-1)
    sparse = entmax15(finite, dim=-1) if alpha == 1.5 else sparsemax(finite, dim=-1)
    masked_row = masked.all(-1, keepdim=True)
    return dense.masked_fill(masked_row, 0.0), sparse.masked_fill(masked_row, 0.0)


def scores_of(query, key, mask, scale) -> torch.Tensor:
    """z = scale·QKᵀ + mask in float64, (B, H, Nq, Nk)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    z = query.double() @ key.double().transpose(-1, -2) * scale
    mask = additive(mask)
    return z if mask is None else z + mask


def dense_reference(query, key, value, mask=None, scale=None) -> torch.Tensor:
    weights, _ = maps(scores_of(query, key, mask, scale), 1.5)
    return weights @ value.double()


def cross_reference(query, key, value, pladis_scale, alpha, mask=None, scale=None) -> torch.Tensor:
    """`(softmax + λ·(entmax_α − softmax))·V` over every key."""
    dense, sparse = maps(scores_of(query, key, mask, scale), alpha)
    return (dense + pladis_scale * (sparse - dense)) @ value.double()


def joint_reference(query, key, value, text: slice, pladis_scale, alpha, mask=None, scale=None) -> torch.Tensor:
    """Joint attention over one sequence whose image-query × text-key block is
    `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`, `m` the dense mass of the row on the text keys."""
    z = scores_of(query, key, mask, scale)
    z = z.expand(*query.shape[:2], query.shape[2], key.shape[2])
    weights, _ = maps(z, alpha)
    dense_text, sparse_text = maps(z[..., text], alpha)
    mass = weights[..., text].sum(-1, keepdim=True)
    changed = weights.clone()
    changed[..., text] = mass * (pladis_scale * sparse_text + (1 - pladis_scale) * dense_text)
    image_rows = torch.ones(query.shape[2], dtype=torch.bool)
    image_rows[text] = False
    weights = torch.where(image_rows[:, None], changed, weights)
    return weights @ value.double()


def packed_reference(query, key, value, segments, pladis_scale, alpha, scale=None) -> torch.Tensor:
    """Per sample `[img ; txt ; pad]`: the joint rule on its own `[img ; txt]` tokens (text last), batch padding
    masked out as keys; padding query rows attend densely to the sample's tokens."""
    outputs = []
    for sample, (image_tokens, text_tokens) in enumerate(segments):
        tokens = image_tokens + text_tokens
        q, k, v = (t[sample : sample + 1] for t in (query, key, value))
        valid = torch.zeros(1, 1, 1, k.shape[2], dtype=torch.bool)
        valid[..., :tokens] = True
        out = dense_reference(q, k, v, valid, scale)
        out[:, :, :tokens] = joint_reference(q[:, :, :tokens], k[:, :, :tokens], v[:, :, :tokens],
                                             slice(image_tokens, tokens), pladis_scale, alpha, scale=scale)
        outputs.append(out)
    return torch.cat(outputs)


def layout_rule(layout: tuple, query, key, value, pladis_scale, alpha, mask, scale) -> torch.Tensor:
    """The reference of one attention call (B, H, N, D) in a layer with `layout`: ("cross", text tokens) — the
    cross rule on calls whose keys are the text, dense otherwise (Wan's image context) —, ("leading" |
    "trailing", text tokens) or ("packed", segments)."""
    kind, text = layout
    if kind == "cross":
        if key.shape[2] != text:
            return dense_reference(query, key, value, mask, scale)
        return cross_reference(query, key, value, pladis_scale, alpha, mask, scale)
    if kind == "packed":
        return packed_reference(query, key, value, text, pladis_scale, alpha, scale)
    n = key.shape[2]
    text_slice = slice(0, text) if kind == "leading" else slice(n - text, n)
    return joint_reference(query, key, value, text_slice, pladis_scale, alpha, mask, scale)


@contextmanager
def materialised_pladis(model, module, layouts: dict[str, tuple], pladis_scale: float, alpha: float) -> Iterator[None]:
    """Run `model` with the float64 reference in every `dispatch_attention_fn` call of `module` (see above)."""
    running: list[str] = []

    def reference_call(q, k, v, attn_mask, scale):  # (B, H, N, D)
        if attn_mask is not None and attn_mask.ndim == 2:
            attn_mask = attn_mask[:, None, None, :]
        if running and running[-1] in layouts:
            return layout_rule(layouts[running[-1]], q, k, v, pladis_scale, alpha, attn_mask, scale)
        return dense_reference(q, k, v, attn_mask, scale)

    def dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                              enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        return reference_call(q, k, v, attn_mask, scale).to(query.dtype).transpose(1, 2)

    def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                     enable_gqa=False):
        return reference_call(query, key, value, attn_mask, scale).to(query.dtype)

    with ExitStack() as stack:
        for name, submodule in model.named_modules():
            if hasattr(submodule, "processor"):
                enter = submodule.register_forward_pre_hook(lambda m, args, name=name: running.append(name) and None)
                leave = submodule.register_forward_hook(lambda m, args, output: running.pop() and None)
                stack.callback(enter.remove)
                stack.callback(leave.remove)
        # Processors calling `dispatch_attention_fn` get it replaced in their module; those calling
        # `F.scaled_dot_product_attention` (CogView4) get torch's replaced while the body runs.
        target, name, replacement = (
            (module, "dispatch_attention_fn", dispatch_attention_fn) if hasattr(module, "dispatch_attention_fn")
            else (torch.nn.functional, "scaled_dot_product_attention", scaled_dot_product_attention)
        )
        stack.callback(setattr, target, name, getattr(target, name))
        setattr(target, name, replacement)
        yield
