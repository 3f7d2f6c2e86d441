"""Per-token cross-attention maps recorded during a generation: dense (softmax) and PLADIS, from the same scores.

`recording_attention_maps(unet, ...)` wraps the chosen cross-attention layers' processors (the PLADIS ones
when λ > 0) in `AttentionMapRecorder`s, which return exactly the wrapped output and add head-averaged maps
of the conditional batch rows to an `AttentionMapStore`; installation and restore go through
`swapped_attn_processors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from ..integration.attn_processor_parts import unet_attention_heads
from ..integration.install import attention_modules, pladis_processors, swapped_attn_processors
from ..integration.latent_grid import LatentSize, recording_latent_size, token_grid
from ..kernels.masks import additive_mask
from ..kernels.sparse_maps import pladis_weights_, softmax_attention
from ..settings import PLADISSettings

LAYER_GROUPS = ("down", "mid", "up")
MAP_KINDS = ("dense", "pladis")


def layer_group(name: str) -> str | None:
    """`"down"`, `"mid"` or `"up"` for a U-Net attention layer name (`down_blocks.1...`), else None."""
    prefix = name.split(".", 1)[0]
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(prefix)


def attention_logits(
    attn: Attention,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
) -> torch.Tensor:
    """`z = QKᵀ/√d + mask` in float32, shape (batch, heads, queries, keys), computed as `AttnProcessor2_0` does."""
    query, key, _, attention_mask, layout = unet_attention_heads(
        attn, hidden_states, encoder_hidden_states, attention_mask, temb
    )
    # SDPA's default scale (as AttnProcessor2_0 and the PLADIS processor use), not attn.scale
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * layout.head_dim**-0.5
    attention_mask = additive_mask(attention_mask)
    return logits if attention_mask is None else logits + attention_mask.float()


class AttentionMapStore:
    """Sums of per-token maps by kind (`dense` / `pladis`) and layer group, at the latent resolution.

    `steps` = the denoising step indices to record (None: all). A step starts at each call of the
    hooked U-Net; maps of lower-resolution layers are upsampled (bilinear) to the latent grid.
    """

    def __init__(self, steps: Iterable[int] | None = None) -> None:
        self.steps = None if steps is None else frozenset(steps)
        self.step = -1
        self.latent_size = LatentSize()
        self.sums: dict[tuple[str, str], torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def start_step(self) -> None:
        self.step += 1

    @property
    def recording(self) -> bool:
        """True while the current step is one to record."""
        return self.step >= 0 and (self.steps is None or self.step in self.steps)

    def _on_latent_grid(self, maps: torch.Tensor) -> torch.Tensor:
        """(keys, queries) → (keys, latent height, latent width)."""
        height, width = self.latent_size.height, self.latent_size.width
        if height is None:
            raise RuntimeError(
                "AttentionMapStore does not know the latent size: record inside recording_attention_maps"
            )
        grid_height, grid_width = token_grid(maps.shape[-1], height, width)
        maps = maps.reshape(maps.shape[0], grid_height, grid_width)
        if (grid_height, grid_width) == (height, width):
            return maps
        return F.interpolate(maps[None], size=(height, width), mode="bilinear", align_corners=False)[0]

    def add(self, group: str, dense: torch.Tensor, pladis: torch.Tensor) -> None:
        """Add one layer call's head- and row-averaged maps, each (queries, keys)."""
        for kind, maps in (("dense", dense), ("pladis", pladis)):
            grid = self._on_latent_grid(maps.transpose(0, 1).float()).cpu()
            key = (kind, group)
            self.sums[key] = grid if key not in self.sums else self.sums[key] + grid
        self.counts[group] = self.counts.get(group, 0) + 1

    def maps(self, kind: str, groups: Iterable[str] | None = None) -> torch.Tensor:
        """The mean (keys, latent height, latent width) map of `kind` over the recorded calls of `groups`."""
        if kind not in MAP_KINDS:
            raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
        groups = [group for group in (groups or LAYER_GROUPS) if group in self.counts]
        if not groups:
            raise ValueError("no attention maps were recorded (check the layer groups and steps)")
        total = sum(self.sums[(kind, group)] for group in groups)
        return total / sum(self.counts[group] for group in groups)


class AttentionMapRecorder:
    """Wraps one cross-attention layer's processor: returns exactly its output, and while the store is
    recording adds the dense `softmax(z)` and PLADIS `softmax(z) + λ·(entmax_α(z) − softmax(z))` maps of
    the rows `condition_rows` (the conditional chunk of the batch), averaged over heads and rows.
    """

    def __init__(
        self,
        processor: object,
        store: AttentionMapStore,
        group: str,
        settings: PLADISSettings,
        condition_rows: slice = slice(None),
    ) -> None:
        if not isinstance(settings, PLADISSettings):
            raise TypeError(f"settings must be a PLADISSettings, got {type(settings).__name__}")
        self.processor = processor
        self.store = store
        self.group = group
        self.settings = settings  # checked where it was made, trusted by every record
        self.condition_rows = condition_rows

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r}, group={self.group!r}, rows={self.condition_rows})"

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.store.recording:
            self.record(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask, temb=temb)

    @torch.no_grad()
    def record(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> None:
        """Both maps from one set of logits of the conditional rows."""
        rows = self.condition_rows

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is not None and tensor.shape[0] != hidden_states.shape[0]:
                raise ValueError(
                    f"cannot select rows {rows} of a tensor with batch {tensor.shape[0]} "
                    f"next to hidden states with batch {hidden_states.shape[0]}"
                )
            return None if tensor is None else tensor[rows]

        logits = attention_logits(
            attn, hidden_states[rows], pick(encoder_hidden_states), pick(attention_mask), pick(temb)
        )
        dense = softmax_attention(logits)
        pladis = pladis_weights_(logits.clone(), self.settings.pladis_scale, self.settings.pladis_alpha)
        self.store.add(self.group, dense.mean(dim=(0, 1)), pladis.mean(dim=(0, 1)))


@contextmanager
def recording_attention_maps(
    unet: torch.nn.Module,
    store: AttentionMapStore,
    pladis_scale: float,
    pladis_alpha: float = 1.5,
    groups: Iterable[str] = LAYER_GROUPS,
    condition_rows: slice = slice(None),
    *,
    install_pladis: bool = True,
) -> Iterator[AttentionMapStore]:
    """Run the body with PLADIS (λ = `pladis_scale`; λ = 0: the current processors) on every
    cross-attention layer of `unet`, recording maps of the layers in `groups` into `store`.

    The generation is the one the pipeline gives with `pladis_scale` (call it with `pladis_scale=0`
    inside this block, so it does not swap the recorders out). With `install_pladis=False` the recorders
    wrap the current processors as they are: those an enclosing `apply_pladis` installed (its step window
    and layers) or the stock ones; call the pipeline without PLADIS keywords then. Processors and hooks are
    restored on exit, also when the body raises.
    """
    groups = tuple(groups)
    unknown = sorted(set(groups) - set(LAYER_GROUPS))
    if unknown:
        raise ValueError(f"unknown layer groups {unknown}; accepted: {', '.join(LAYER_GROUPS)}")
    settings = PLADISSettings(pladis_scale, pladis_alpha)
    current = {name[: -len(".processor")]: processor for name, processor in unet.attn_processors.items()}
    table = pladis_processors(unet, settings) if settings.pladis_scale > 0 and install_pladis else {}
    for name, module in attention_modules(unet).items():
        group = layer_group(name)
        if isinstance(module, Attention) and module.is_cross_attention and group in groups:
            table[name] = AttentionMapRecorder(table.get(name, current[name]), store, group, settings, condition_rows)
    if not any(isinstance(processor, AttentionMapRecorder) for processor in table.values()):
        raise ValueError(f"{type(unet).__name__} has no cross-attention layer in the groups {groups}")
    with ExitStack() as stack:
        store.latent_size = stack.enter_context(recording_latent_size(unet))
        step_hook = unet.register_forward_pre_hook(lambda module, args: store.start_step())
        stack.callback(step_hook.remove)
        stack.enter_context(swapped_attn_processors(unet, table))
        yield store
