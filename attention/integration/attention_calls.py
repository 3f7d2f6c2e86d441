"""The attention call of a stock processor, computed by the PLADIS rule of the layer it runs in.

A PLADIS processor runs the stock processor's own code with its attention function
(`F.scaled_dot_product_attention` or diffusers' `dispatch_attention_fn`) bound to the replacements
here. They read the running layer (`ActiveCalls.running`) and hand the call, with the layer's `PLADISSettings`
(checked where they were made), to one of the two kernel seams: the cross-attention rule
(`pladis_scaled_dot_product_attention`, every key is text) or the joint text-block rule
(`text_block_pladis_attention`, the text keys a leading or trailing slice of a joint sequence). Per-sample packed
sequences (Z-Image: `[img ; txt ; pad]` per sample) are cut into samples and each handed to the joint
seam with its text last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn as _diffusers_dispatch

from ..kernels.cross_attention import pladis_scaled_dot_product_attention
from ..kernels.text_block import text_block_pladis_attention
from .call_context import LayerCall, active_calls
from .composition import perturbed_by_layer_skip
from .context_parallel import context_parallel_attention, sequence_parallel_config
from .text_layout import CROSS, LEADING, PACKED

_sdpa = F.scaled_dot_product_attention  # the real one, for the calls that stay dense


def _packed_attention(layer: LayerCall, query, key, value, attn_mask, scale) -> torch.Tensor:
    """Each sample's `[img ; txt]` prefix through the joint seam (text last); the batch-padding query
    rows attend densely to the sample's own tokens, as the stock call with its padding mask does."""
    if layer.segments is None or len(layer.segments) != query.shape[0]:
        raise RuntimeError(
            "a packed-sequence PLADIS layer needs the per-sample image/text lengths of the current denoiser "
            "call; install it with apply_pladis"
        )
    output = torch.empty_like(query, dtype=query.dtype)
    for sample, (image_tokens, text_tokens) in enumerate(layer.segments):
        tokens = image_tokens + text_tokens
        if tokens > query.shape[2]:
            raise RuntimeError(
                f"sample {sample} was recorded with {tokens} tokens, but the packed sequence has {query.shape[2]}"
            )
        q, k, v = (t[sample : sample + 1, :, :tokens] for t in (query, key, value))
        output[sample : sample + 1, :, :tokens] = text_block_pladis_attention(
            q, k, v, text_tokens, layer.settings, text_first=False, scale=scale
        )
        if tokens < query.shape[2]:
            output[sample : sample + 1, :, tokens:] = _sdpa(query[sample : sample + 1, :, tokens:], k, v, scale=scale)
    return output


def _off_text(layer: LayerCall) -> bool:
    """Whether this attention call of `layer` is not on the text (it stays stock attention): one of the leading
    calls on other keys (Wan's image context) or a call after the text call (an IP-Adapter's image prompt)."""
    if layer.dense_calls > 0:
        layer.dense_calls -= 1
        return True
    if layer.text_done:
        return True
    layer.text_done = True
    return False


def pladis_attention(layer: LayerCall, query, key, value, attn_mask=None, scale=None) -> torch.Tensor:
    """One attention call of `layer` on (B, H, N, D) tensors, by the layer's rule (SDPA mask semantics)."""
    if _off_text(layer):
        return _sdpa(query, key, value, attn_mask=attn_mask, scale=scale)
    if layer.text_keys == CROSS:
        return pladis_scaled_dot_product_attention(query, key, value, layer.settings, attn_mask=attn_mask, scale=scale)
    if layer.text_keys == PACKED:
        return _packed_attention(layer, query, key, value, attn_mask, scale)
    return text_block_pladis_attention(
        query,
        key,
        value,
        layer.text_tokens,
        layer.settings,
        text_first=layer.text_keys == LEADING,
        attn_mask=attn_mask,
        scale=scale,
    )


def _running_layer(dropout_p: float, is_causal: bool, enable_gqa: bool) -> LayerCall:
    calls = active_calls()
    if calls is None or calls.running is None:
        raise RuntimeError("a PLADIS attention call ran outside a PLADIS processor call")
    if dropout_p or is_causal or enable_gqa:
        raise ValueError(
            f"PLADIS supports non-causal attention without dropout or grouped heads, got dropout_p={dropout_p}, "
            f"is_causal={is_causal}, enable_gqa={enable_gqa}"
        )
    return calls.running


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` ((B, H, N, D) tensors) as a PLADIS processor's attention call; in the
    pass a layer-skip guider perturbs, the stock call (which the guider's mode turns into the identity)."""
    if perturbed_by_layer_skip():
        return _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    layer = _running_layer(dropout_p, is_causal, enable_gqa)
    return pladis_attention(layer, query, key, value, attn_mask, scale)


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
) -> torch.Tensor:
    """diffusers' `dispatch_attention_fn` ((B, N, H, D) tensors) as a PLADIS processor's attention call.
    The changed layers run PyTorch SDPA whatever attention backend was chosen. Under context parallelism
    (`parallel_config` shards the sequence) the rule runs over every rank's keys (`context_parallel`); in the pass
    a layer-skip guider perturbs, diffusers' own call (which the guider's mode turns into the identity on the native
    backend)."""
    if perturbed_by_layer_skip():
        return _diffusers_dispatch(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
            attention_kwargs=attention_kwargs,
            backend=backend,
            parallel_config=parallel_config,
        )
    layer = _running_layer(dropout_p, is_causal, enable_gqa)
    sharded = sequence_parallel_config(parallel_config) is not None
    if sharded and _off_text(layer):  # not on text (Wan's image context, an IP-Adapter's image): diffusers' own
        return _diffusers_dispatch(
            query, key, value, attn_mask, scale=scale, backend=backend, parallel_config=parallel_config
        )
    if attn_mask is not None and attn_mask.ndim == 2 and attn_mask.shape == (query.shape[0], key.shape[1]):
        attn_mask = attn_mask[:, None, None, :]  # (batch, keys), as diffusers' native backend reads it
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    if sharded:
        return context_parallel_attention(layer, query, key, value, attn_mask, scale, parallel_config).transpose(1, 2)
    return pladis_attention(layer, query, key, value, attn_mask, scale).transpose(1, 2)
