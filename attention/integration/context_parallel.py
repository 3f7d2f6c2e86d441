"""PLADIS under diffusers' context parallelism (`enable_parallelism(config=ContextParallelConfig(...))`), exact.

Each rank holds a shard of the token sequence, and the processors hand `parallel_config` to
`dispatch_attention_fn`, whose Ulysses all-to-all or ring pass gives every query row all keys. The PLADIS
rules need more than the dense result: entmax needs every text key of a row. So, per layer kind
(`attention.integration.call_context`), on this rank's query rows:

- joint layers (the text a leading or trailing slice of each rank's shard: FLUX.1/.2, Qwen-Image): the dense
  result and its log-sum-exp come from diffusers' own context-parallel attention
  (`_templated_context_parallel_attention`: Ulysses, ring, or both) run with a forward op that returns the
  log-sum-exp (`dense_attention_with_log_normaliser`); the text keys and values of all ranks are gathered
  and the image rows' correction is added here, by the kernel the kernel table picks for the call;
- cross-attention layers whose text is sharded (LTX-Video): the text keys, values and mask are gathered and
  the unchanged cross-attention rule runs; Wan's cross-attention is called without `parallel_config` (its
  text is whole on every rank), so it needs nothing here.

Single-stream layers are not told their text length; it is recorded from the denoiser call, where the text
is still whole, and `rank_text_length` turns it into this rank's shard. What cannot be exact (uneven
"anything" shards, packed per-sample sequences, autograd, per-query masks) raises a `ValueError` naming the
family and the parallel config, at `apply_pladis` where it can be known there, else at the attention call.
Tensor parallelism (`TensorParallelConfig`) needs nothing: each rank runs whole attention on its own heads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from diffusers.hooks.context_parallel import ContextParallelSplitHook, EquipartitionSharder
from diffusers.models import attention_dispatch

from ..kernels.cross_attention import pladis_scaled_dot_product_attention
from ..kernels.dense_attention import dense_attention_and_log_normaliser
from ..kernels.kernel_calls import TextBlockCall
from ..kernels.masks import additive_mask
from ..kernels.table import TEXT_BLOCK, KernelCase, choose_kernel, needs_autograd, run_kernel
from ..kernels.text_block import joint_token_slices
from .call_context import LayerCall
from .text_layout import CROSS, LEADING, PACKED, TextLength

# The denoiser-call argument the single-stream layers' text length is recorded from (`text_layout.joint_text_tokens`).
JOINT_TEXT_ARGUMENT = "encoder_hidden_states"
# Scores per chunk of the materialised dense fallback (float32): 2^26, as the sync-free path.
_CHUNK_ELEMENTS = 1 << 26


def sequence_parallel_config(parallel_config: object) -> object | None:
    """The `ContextParallelConfig` inside a processor's `parallel_config` (None: no sequence sharding)."""
    return getattr(parallel_config, "context_parallel_config", None)


def model_sequence_parallel_config(model: torch.nn.Module) -> object | None:
    """The `ContextParallelConfig` `enable_parallelism` gave `model` (None when it shards no sequence)."""
    return sequence_parallel_config(getattr(model, "_parallel_config", None))


def describe(config: object) -> str:
    """A context-parallel config as the user wrote it (its degrees and the modes that are on)."""
    fields = [f"ring_degree={config.ring_degree}", f"ulysses_degree={config.ulysses_degree}"]
    fields += [f"{mode}=True" for mode in ("ulysses_anything", "ring_anything") if getattr(config, mode, False)]
    return f"ContextParallelConfig({', '.join(fields)})"


def _not_exact(family: str, config: object, reason: str) -> ValueError:
    return ValueError(f"PLADIS cannot be exact on {family} under {describe(config)}: {reason}")


def uncovered(config: object, text_keys: str) -> str | None:
    """Why PLADIS on layers laid out as `text_keys` cannot be exact under `config`, or None when it is."""
    if config.ulysses_anything or config.ring_anything:
        return (
            "uneven shards (the *_anything modes) are not covered; use even shards (sequence lengths and heads "
            "divisible by the degrees)"
        )
    if text_keys == PACKED:
        return "per-sample packed sequences are not covered; run this model without context parallelism"
    return None


def _text_split_at(model: torch.nn.Module) -> str | None:
    """Where the applied plan splits the text across ranks: "" at the denoiser call (FLUX.1/.2's own plans split
    `encoder_hidden_states` there), a submodule's name, or None when the text stays whole."""
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        hooks = () if registry is None else registry.hooks.values()
        if any(isinstance(hook, ContextParallelSplitHook) and JOINT_TEXT_ARGUMENT in hook.metadata for hook in hooks):
            return name
    return None


def rank_text_length(model: torch.nn.Module, family: str, recorded: TextLength) -> TextLength:
    """The text layout recorded from a denoiser call, as this rank's layers see it: under context parallelism
    whose plan splits the text at the call, each rank holds `tokens / ranks` of it (diffusers' even shards)."""
    config = model_sequence_parallel_config(model)
    if config is None or recorded.tokens is None or _text_split_at(model) != "":
        return recorded
    ranks = config.ring_degree * config.ulysses_degree
    if recorded.tokens % ranks:
        raise _not_exact(family, config, f"{recorded.tokens} text tokens do not split into {ranks} equal shards")
    return TextLength(tokens=recorded.tokens // ranks, segments=recorded.segments)


def check_context_parallel(model: torch.nn.Module, family: str, text_keys: set[str], recorded_text: bool) -> None:
    """Raise, before any step runs, when PLADIS on `model` (its layers laid out as `text_keys`; `recorded_text`:
    some read the text length recorded from the denoiser call) cannot be exact under its context parallelism."""
    config = model_sequence_parallel_config(model)
    if config is None:
        return
    for layout in sorted(text_keys):
        reason = uncovered(config, layout)
        if reason is not None:
            raise _not_exact(family, config, reason)
    split = _text_split_at(model) if recorded_text else None
    if split:  # the single-stream blocks' length is recorded where the text is still whole
        raise _not_exact(
            family,
            config,
            f"the parallel plan splits the text at {split}, below the call its length is recorded from; split it "
            "where the transformer is called (as its own plan does) or leave pladis_single_blocks off",
        )


def _gather_tokens(tensor: torch.Tensor, dim: int, config: object) -> torch.Tensor:
    """The whole sequence from every rank's shard along `dim`: diffusers' own inverse of its even split."""
    return attention_dispatch._wait_tensor(EquipartitionSharder.unshard(tensor, dim, config._flattened_mesh))


def gather_text(
    key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, config: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Every rank's text keys and values ((B, H, L, D) shards, one collective) and additive key mask: what
    each rank receives beyond diffusers' own attention (`scripts/dev/context_parallel_cost.py` times it)."""
    gathered = _gather_tokens(torch.cat([key, value], dim=-1), -2, config)
    key, value = gathered.split([key.shape[-1], value.shape[-1]], dim=-1)
    return key, value, None if mask is None else _gather_tokens(mask, -1, config)


def _materialised_dense_and_log_normaliser(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(softmax(z)·V, logsumexp(z))` from float32 scores (float64 kept), query chunks of bounded size: the
    dense op where no fused kernel returns the log-sum-exp (CUDA with a mask or in float32)."""
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    key_t, value_c = key.to(dtype).transpose(-1, -2) * scale, value.to(dtype)
    rows = max(1, _CHUNK_ELEMENTS // max(1, query.shape[:-2].numel() * key.shape[-2]))
    outputs, normalisers = [], []
    for start in range(0, query.shape[-2], rows):
        scores = query[..., start : start + rows, :].to(dtype) @ key_t
        if mask is not None:
            scores = scores + (mask if mask.shape[-2] == 1 else mask[..., start : start + rows, :])
        normaliser = torch.logsumexp(scores, dim=-1)
        outputs.append(torch.exp(scores - normaliser[..., None]) @ value_c)
        normalisers.append(normaliser)
    return torch.cat(outputs, dim=-2).to(query.dtype), torch.cat(normalisers, dim=-1).float()


def dense_attention_with_log_normaliser(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(softmax(z)·V, logsumexp(z))` on (B, H, N, D): the fused op of the single-process text-block rule
    where one serves the case, else materialised."""
    dense = dense_attention_and_log_normaliser(query, key, value, mask, scale)
    return dense if dense is not None else _materialised_dense_and_log_normaliser(query, key, value, mask, scale)


def _mask_for_keys(mask: torch.Tensor | None, keys: int, heads: int, step: int, config: object) -> torch.Tensor | None:
    """The part of the whole additive key mask (B, 1|H, 1, N) that one forward-op call of diffusers'
    context-parallel attention sees: after a Ulysses all-to-all every key (this rank's block of heads); in
    a ring pass, step `step` holds the keys of ring block `(ring rank + step) % ring degree`."""
    if mask is None:
        return None
    if mask.shape[-1] != keys:
        block = (config._ring_local_rank + step) % config.ring_degree
        mask = mask[..., block * keys : (block + 1) * keys]
    if mask.shape[1] not in (1, heads):
        first = config._ulysses_local_rank * heads
        mask = mask[:, first : first + heads]
    return mask


def forward_op_with_log_normaliser(mask: torch.Tensor | None, config: object) -> Callable:
    """A forward op for diffusers' templated context-parallel attention ((B, N, H, D) in and out) returning the
    log-sum-exp (B, N, H), with `mask` (whole, additive) applied to the keys of each call. One per attention call."""
    steps = itertools.count()

    def forward_op(
        ctx,
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
        return_lse=False,
        _save_ctx=True,
        _parallel_config=None,
    ):
        keys_mask = _mask_for_keys(mask, key.shape[1], query.shape[2], next(steps), config)
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        output, log_normaliser = dense_attention_with_log_normaliser(q, k, v, keys_mask, scale)
        output, log_normaliser = output.transpose(1, 2), log_normaliser.transpose(1, 2)
        return (output, log_normaliser) if return_lse else output

    return forward_op


def _inference_only(*args, **kwargs):
    raise RuntimeError("PLADIS under context parallelism computes inference only (no backward pass)")


def _dense_context_parallel(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    parallel_config: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense attention of this rank's query rows over every rank's keys, and its log-sum-exp ((B, H, N, D)
    and (B, H, N)), from diffusers' context-parallel attention (Ulysses, ring, or both, as configured)."""
    config = sequence_parallel_config(parallel_config)
    whole_mask = None if mask is None else _gather_tokens(mask, -1, config)
    output, log_normaliser = attention_dispatch._templated_context_parallel_attention(
        *(t.transpose(1, 2) for t in (query, key, value)),
        None,
        0.0,
        False,
        scale,
        False,
        True,
        forward_op=forward_op_with_log_normaliser(whole_mask, config),
        backward_op=_inference_only,
        _parallel_config=parallel_config,
    )
    return output.transpose(1, 2), log_normaliser.transpose(1, 2)


def _key_mask(attn_mask: torch.Tensor | None, keys: int, dtype: torch.dtype) -> torch.Tensor | None:
    """An additive mask over this rank's keys, (B|1, H|1, 1, keys), or None; a mask with per-query rows raises
    (`ValueError`'s message is completed by the caller). A boolean mask becomes 0/−inf in the query's `dtype`
    (exact in any float dtype), which the fused dense kernels take."""
    mask = additive_mask(attn_mask)
    if mask is None:
        return None
    if attn_mask.dtype == torch.bool and dtype.is_floating_point:
        mask = mask.to(dtype)
    while mask.dim() < 4:
        mask = mask[None]
    if mask.shape[-2] != 1 or mask.shape[-1] != keys:
        raise ValueError(
            f"a mask of shape {tuple(attn_mask.shape)} (not one over the {keys} keys of this rank) is not covered"
        )
    return mask


def context_parallel_attention(
    layer: LayerCall,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    parallel_config: object,
) -> torch.Tensor:
    """One attention call of a PLADIS `layer` on this rank's (B, H, N, D) shards, by the layer's rule over the
    whole sequence: equal to the single-process call's rows for this shard, to float rounding."""
    config = sequence_parallel_config(parallel_config)
    reason = uncovered(config, layer.text_keys)
    if reason is None and needs_autograd(query, key, value):
        reason = (
            "autograd is not covered (PLADIS under context parallelism computes inference only); use torch.no_grad()"
        )
    try:
        mask = _key_mask(attn_mask, key.shape[-2], query.dtype)
    except ValueError as error:
        reason = reason or str(error)
    if reason is not None:
        raise _not_exact(layer.family, config, reason)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if layer.text_keys == CROSS:
        key, value, mask = gather_text(key, value, mask, config)
        return pladis_scaled_dot_product_attention(query, key, value, layer.settings, attn_mask=mask, scale=scale)

    text, image = joint_token_slices(query.shape[-2], layer.text_tokens, layer.text_keys == LEADING)
    output, log_normaliser = _dense_context_parallel(query, key, value, mask, scale, parallel_config)
    if layer.settings.pladis_scale == 0.0 or text.start == text.stop or image.start == image.stop:
        return output  # equal shards: every rank takes this branch, or none does
    key_text, value_text, mask_text = gather_text(
        key[..., text, :], value[..., text, :], None if mask is None else mask[..., text], config
    )
    case = KernelCase(TEXT_BLOCK, query, key_text.shape[-2], value.shape[-1], mask_text, layer.settings, sharded=True)
    text_keys = slice(0, key_text.shape[-2])
    call = TextBlockCall(
        query, key_text, value_text, text_keys, image, layer.settings, None, mask_text, scale, output, log_normaliser
    )
    return run_kernel(choose_kernel(case), case, call)
