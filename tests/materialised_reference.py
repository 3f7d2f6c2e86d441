"""A stock denoiser run with the float64 reference formulation in the attention calls of chosen layers.

Why it exists beside `attention/kernels/reference.py`: the family tests check PLADIS on a whole denoiser, so the
reference must reach every attention call of a stock model with no PLADIS processor, rule or family record
involved. `materialised_pladis(model, module, layouts, λ, α)` replaces the stock processors' attention function
(`module.dispatch_attention_fn`, or torch's SDPA) while the body runs: calls inside the layers named in `layouts` use
the rule their layout names (cross, leading/trailing text of a joint sequence, per-sample packed), every other call of
`model` dense softmax attention, all materialised in float64 (calls outside `model`, a pipeline's encoders, stay
torch's). Which layer is running is tracked with forward hooks on the attention modules; the maps themselves are
`attention/kernels/reference.py`'s (the `entmax` package on materialised scores), the one reference formulation,
which uses none of the fast paths it checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from attention.kernels.reference import (
    reference_pladis_weights,
    reference_scores,
    reference_softmax,
    reference_text_block_weights,
)


def as_double(value):
    """A denoiser's call inputs in float64 (tensors inside lists and dicts too)."""
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, list):
        return [as_double(item) for item in value]
    if isinstance(value, dict):
        return {name: as_double(item) for name, item in value.items()}
    return value


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def scores_of(query, key, mask, scale) -> torch.Tensor:
    """z = scale·QKᵀ + mask in float64, (B, H, Nq, Nk)."""
    return reference_scores(query, key, mask, scale, float64=True)


def dense_reference(query, key, value, mask=None, scale=None) -> torch.Tensor:
    return reference_softmax(scores_of(query, key, mask, scale)) @ value.double()


def cross_reference(query, key, value, pladis_scale, alpha, mask=None, scale=None) -> torch.Tensor:
    """`(softmax + λ·(entmax_α − softmax))·V` over every key."""
    return reference_pladis_weights(scores_of(query, key, mask, scale), pladis_scale, alpha) @ value.double()


def joint_reference(
    query, key, value, text_length, pladis_scale, alpha, mask=None, scale=None, *, text_first: bool
) -> torch.Tensor:
    """Joint attention over one sequence whose `text_length` text tokens come first or last and whose
    image-query × text-key block is `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`, `m` the dense mass of
    the row on the text keys."""
    z = scores_of(query, key, mask, scale)
    z = z.expand(*query.shape[:2], query.shape[2], key.shape[2])
    weights = reference_text_block_weights(z, text_length, pladis_scale, alpha, text_first=text_first)
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
        out[:, :, :tokens] = joint_reference(
            q[:, :, :tokens],
            k[:, :, :tokens],
            v[:, :, :tokens],
            text_tokens,
            pladis_scale,
            alpha,
            scale=scale,
            text_first=False,
        )
        outputs.append(out)
    return torch.cat(outputs)


def layout_rule(layout: tuple, query, key, value, pladis_scale, alpha, mask, scale) -> torch.Tensor:
    """The reference of one attention call (B, H, N, D) in a layer with `layout`: ("cross", text tokens) — the
    cross rule on calls whose keys are the text, dense otherwise (Wan's image context, an IP-Adapter's image
    prompt); text None: on every call —, ("leading" | "trailing", text tokens) — the joint rule on the call over
    the joint sequence, dense on calls whose queries and keys are not one sequence (an IP-Adapter's image
    prompt) — or ("packed", segments)."""
    kind, text = layout
    if kind == "cross":
        if text is not None and key.shape[2] != text:
            return dense_reference(query, key, value, mask, scale)
        return cross_reference(query, key, value, pladis_scale, alpha, mask, scale)
    if kind == "packed":
        return packed_reference(query, key, value, text, pladis_scale, alpha, scale)
    if key.shape[2] != query.shape[2]:
        return dense_reference(query, key, value, mask, scale)
    return joint_reference(query, key, value, text, pladis_scale, alpha, mask, scale, text_first=kind == "leading")


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

    def dispatch_attention_fn(
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
        attention_kwargs=None,
        *,
        backend=None,
        parallel_config=None,
    ):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        return reference_call(q, k, v, attn_mask, scale).to(query.dtype).transpose(1, 2)

    torch_sdpa = torch.nn.functional.scaled_dot_product_attention

    def scaled_dot_product_attention(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
    ):
        if not running:  # outside `model` (a pipeline's text or image encoder): torch's own
            return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        # Laid out in memory as torch's SDPA returns it, (B, N, H, D): SD3's IP-Adapter processor `.view`s it.
        return (
            reference_call(query, key, value, attn_mask, scale)
            .to(query.dtype)
            .transpose(1, 2)
            .contiguous()
            .transpose(1, 2)
        )

    with ExitStack() as stack:
        for name, submodule in model.named_modules():
            if hasattr(submodule, "processor"):
                enter = submodule.register_forward_pre_hook(lambda m, args, name=name: running.append(name) and None)
                leave = submodule.register_forward_hook(lambda m, args, output: running.pop() and None)
                stack.callback(enter.remove)
                stack.callback(leave.remove)
        # Processors calling `dispatch_attention_fn` get it replaced in their module; those calling
        # `F.scaled_dot_product_attention` (CogView4, the U-Nets' IP-Adapter) get torch's replaced while the body runs.
        target, name, replacement = (
            (module, "dispatch_attention_fn", dispatch_attention_fn)
            if hasattr(module, "dispatch_attention_fn")
            else (torch.nn.functional, "scaled_dot_product_attention", scaled_dot_product_attention)
        )
        stack.callback(setattr, target, name, getattr(target, name))
        setattr(target, name, replacement)
        yield
