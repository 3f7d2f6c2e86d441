"""Cross-attention statistics of a U-Net pipeline on toy prompts: entropy, largest weight, where the mass goes, entmax
support.

It answers "does this model attend like a pretrained one?" before any PLADIS effect is trusted: the
dense softmax maps of every cross-attention layer (conditional batch rows, all heads, queries and steps
of a stock generation) are summarised per layer, with the mass split over the start token, the word
tokens, the end token and the padding after it, and the number of keys entmax15 keeps:

    python -m scripts.toy.attention_stats --out outputs/toy_attention_stats.json
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from attention.diagnostics.attention_maps import attention_logits
from attention.integration.install import attention_modules, swapped_attn_processors
from attention.kernels.sparse_maps import entmax_attention, softmax_attention
from scripts.cli.assets import TOY_MODEL, model_source, repository_relative
from scripts.cli.parsers import command_parser
from scripts.cli.records import write_json
from scripts.toy.data import evaluation_scenes

KEY_KINDS = ("start", "words", "end", "padding")


def key_kinds(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(prompts, keys) codes into KEY_KINDS: position 0, prompt tokens, the first end token, what follows it."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    kinds = torch.full(ids.shape, KEY_KINDS.index("padding"))
    kinds[:, 0] = KEY_KINDS.index("start")
    for row, sequence in enumerate(ids.tolist()):
        end = sequence.index(tokenizer.eos_token_id, 1)
        kinds[row, 1:end] = KEY_KINDS.index("words")
        kinds[row, end] = KEY_KINDS.index("end")
    return kinds


class StatisticsRecorder:
    """Wraps one cross-attention processor: returns exactly its output and adds per-call statistics of the
    softmax map of the conditional rows (the last `len(kinds)` batch rows) to `sums[layer]`."""

    def __init__(self, processor: object, layer: str, kinds: torch.Tensor, sums: dict) -> None:
        self.processor, self.layer, self.sums = processor, layer, sums
        self.one_hot = torch.nn.functional.one_hot(kinds, len(KEY_KINDS)).float()  # (prompts, keys, kinds)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        rows = slice(hidden_states.shape[0] - self.one_hot.shape[0], None)
        with torch.no_grad():
            logits = attention_logits(
                attn, hidden_states[rows], encoder_hidden_states[rows], None, None if temb is None else temb[rows]
            )
            weights = softmax_attention(logits)  # (prompts, heads, queries, keys)
            support = (entmax_attention(logits, 1.5) > 0).sum(-1).float()
            entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
            mass = torch.einsum("bhqk,bkc->c", weights, self.one_hot) / weights[..., 0].numel()
            entry = self.sums.setdefault(
                self.layer,
                {
                    "calls": 0,
                    "entropy": 0.0,
                    "max_weight": 0.0,
                    "entmax15_support": 0.0,
                    **{kind: 0.0 for kind in KEY_KINDS},
                },
            )
            entry["calls"] += 1
            entry["entropy"] += entropy.mean().item()
            entry["max_weight"] += weights.amax(-1).mean().item()
            entry["entmax15_support"] += support.mean().item()
            for index, kind in enumerate(KEY_KINDS):
                entry[kind] += mass[index].item()
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask, temb=temb)


def attention_statistics(pipe, prompts: list[str], steps: int, guidance: float, seed: int) -> dict:
    """Per-layer means over calls, and the summary over layers (mean, min, max), of one stock generation."""
    from diffusers.models.attention_processor import Attention

    kinds = key_kinds(pipe.tokenizer, prompts)
    sums: dict = {}
    current = {name[: -len(".processor")]: processor for name, processor in pipe.unet.attn_processors.items()}
    table = {
        name: StatisticsRecorder(current[name], name, kinds, sums)
        for name, module in attention_modules(pipe.unet).items()
        if isinstance(module, Attention) and module.is_cross_attention
    }
    generators = [torch.Generator("cpu").manual_seed(seed + index) for index in range(len(prompts))]
    with swapped_attn_processors(pipe.unet, table):
        pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators)
    layers = {
        name: {key: value / entry["calls"] for key, value in entry.items() if key != "calls"}
        for name, entry in sums.items()
    }
    summary = {
        key: {
            "mean": sum(layer[key] for layer in layers.values()) / len(layers),
            "min": min(layer[key] for layer in layers.values()),
            "max": max(layer[key] for layer in layers.values()),
        }
        for key in next(iter(layers.values()))
    }
    return {
        "keys": int(kinds.shape[1]),
        "max_entropy": math.log(kinds.shape[1]),
        "key_counts": {kind: float((kinds == index).sum(1).float().mean()) for index, kind in enumerate(KEY_KINDS)},
        "layers": layers,
        "summary": summary,
        "cross_attention_layers": len(layers),
    }


def summary_lines(stats: dict) -> list[str]:
    """Readable lines: entropy, largest weight, mass by key kind, entmax15 support (mean over layers, range)."""
    summary = stats["summary"]

    def span(key: str, scale: float = 1.0, digits: int = 2) -> str:
        item = summary[key]
        return f"{item['mean'] * scale:.{digits}f} ({item['min'] * scale:.{digits}f}–{item['max'] * scale:.{digits}f})"

    counts = stats["key_counts"]
    return [
        f"{stats['cross_attention_layers']} cross-attention layers, {stats['keys']} keys "
        f"({counts['words']:.0f} words, {counts['padding']:.0f} padding after the end token)",
        f"entropy {span('entropy')} nats of a possible {stats['max_entropy']:.2f}; largest weight {span('max_weight')}",
        "mass: " + ", ".join(f"{kind} {span(kind, 100, 0)} %" for kind in KEY_KINDS),
        f"entmax15 keeps {span('entmax15_support', digits=1)} of {stats['keys']} keys",
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser(__doc__)
    parser.add_argument("--model", default=repository_relative(TOY_MODEL))
    parser.add_argument("--count", type=int, default=32, help="two-object toy prompts (default 32)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_attention_stats.json"))
    args = parser.parse_args(argv)
    if args.count < 1 or args.steps < 1:
        parser.error("--count and --steps must be >= 1")
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        model_source(args.model), dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = [scene.caption(swap=swap) for scene, _, swap in evaluation_scenes(args.count)]
    stats = attention_statistics(pipe, prompts, args.steps, args.guidance_scale, args.seed)
    stats["settings"] = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    write_json(args.out, {"arguments": stats["settings"], **stats})
    print("\n".join(summary_lines(stats)))
    return stats


if __name__ == "__main__":
    main()
