"""Train `asset/toy-sdxl`: a 6 M-parameter SDXL-architecture text-to-image model of coloured shapes, on CPU.

Real diffusers/transformers classes end to end (AutoencoderKL, two CLIP text encoders, an SDXL-topology
UNet2DConditionModel, EulerDiscreteScheduler), saved with `save_pretrained` in safetensors (UNet and VAE in
fp16, the small text encoders in fp32), so the stock `StableDiffusionXLPipeline` and the PLADIS pipelines load
it offline, in float32 unless given a dtype. Stages, each seeded:

1. draw the training images (`scripts/toy/data.py`; 60 of the 324 left/right object pairs held out);
2. train the VAE (32×32×3 ↔ 16×16×4) and store per-channel latent mean/std in its config;
3. pretrain both text encoders contrastively against a small image encoder (a tiny CLIP), then freeze
   them, as SDXL's CLIP encoders are frozen; the tokenizers stop at 16 tokens (captions have ≤ 15),
   so padding cannot carry the sentence;
4. train the UNet (ε-prediction, SDXL noise schedule, min-SNR-5, EMA) on the frozen text embeddings.

`python -m scripts.toy.train --unet-steps N` rebuilds the committed model exactly (same thread count and
package versions); `--minutes M` trains the UNet for M minutes of wall time instead and records the steps
it reached (the UNet learning rate is constant after warm-up, so that run equals `--unet-steps <reached>`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scripts.cli.assets import TOY_MODEL
from scripts.cli.parsers import command_parser
from scripts.cli.records import package_versions, repository_commit, write_atomically
from scripts.toy.data import SIZE, WORDS, all_captions, training_samples

MAX_TOKENS = 16  # BOS + 13 words + EOS fit; SDXL's 77 would leave 62 padding keys
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)  # original size, crop top-left, target size
TIME_EMBED_DIM = 8
TEXT_HIDDEN = (64, 64)  # hidden sizes of text_encoder and text_encoder_2 (context = 128 dims)
POOLED_DIM = 64  # text_encoder_2's projection (the pooled vector)
THREADS = 2
UNET_LR = 5e-4


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- components -------------------------------------------------------------------------------------------


def toy_tokenizer():
    """A CLIP BPE tokenizer whose vocabulary makes each toy word one token, built deterministically.

    Each word is merged left to right by its own chain of merges; longer words' chains rank first, so a
    shorter word's merge (e.g. "r"+"e" of "red") never splits a longer word containing it ("green"),
    which is checked. (`tokenizers`' BpeTrainer would find such merges too, but its ids vary between runs.)
    """
    from transformers import CLIPTokenizer

    words = sorted(set(WORDS), key=lambda word: (-len(word), word))
    letters = sorted({letter for word in words for letter in word})
    vocab_list = ["<|startoftext|>", "<|endoftext|>", *letters, *(letter + "</w>" for letter in letters)]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab_list.append(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=MAX_TOKENS)
    for word in WORDS:  # each word must be exactly one token, or the attention statistics mean nothing
        if len(tokenizer(word, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"toy tokenizer splits {word!r}")
    return tokenizer


def toy_text_encoders(tokenizer):
    """`text_encoder` (CLIPTextModel) and `text_encoder_2` (CLIPTextModelWithProjection), 3 layers each."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(hidden: int, heads: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=3,
            num_attention_heads=heads,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=POOLED_DIM,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    return CLIPTextModel(config(TEXT_HIDDEN[0], 2)), CLIPTextModelWithProjection(config(TEXT_HIDDEN[1], 4))


def toy_vae():
    """2-level AutoencoderKL: 32×32×3 images ↔ 16×16×4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=SIZE,
    )


def toy_unet():
    """SDXL topology (DownBlock2D, CrossAttnDownBlock2D ×2, mirrored; mid cross-attention), head dim 64 as in SDXL."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 128),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=1,
        attention_head_dim=(1, 1, 2),  # diffusers' name for the head count
        use_linear_projection=True,
        cross_attention_dim=sum(TEXT_HIDDEN),
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=len(TIME_IDS) * TIME_EMBED_DIM + POOLED_DIM,
    )


def toy_scheduler():
    """SDXL's EulerDiscreteScheduler settings."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        num_train_timesteps=1000,
        prediction_type="epsilon",
    )


class ToyImageEncoder(nn.Module):
    """The tiny CLIP's image tower (used only to pretrain the text encoders; not saved)."""

    def __init__(self, out_dims: tuple[int, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 128, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(128, 128, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(128 * (SIZE // 8) ** 2, 256),
            nn.GELU(),
        )
        self.heads = nn.ModuleList(nn.Linear(256, dim) for dim in out_dims)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(images)
        return [head(features) for head in self.heads]


# --- data -------------------------------------------------------------------------------------------------


def render_dataset(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`count` drawn training images (uint8 N×3×H×W), their caption indices into `all_captions()`, the captions."""
    captions = all_captions()
    index = {caption: i for i, caption in enumerate(captions)}
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    caption_ids = np.empty(count, dtype=np.int64)
    for i, (image, caption) in enumerate(training_samples(count, seed)):
        images[i] = image
        caption_ids[i] = index[caption]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(caption_ids), captions


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 → float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def scene_keys(captions: list[str]) -> torch.Tensor:
    """Per caption an id of the scene it describes (both clause orders of a scene share it)."""
    keys: dict[frozenset, int] = {}
    ids = []
    for caption in captions:
        clauses = frozenset(caption.split(" and "))
        ids.append(keys.setdefault(clauses, len(keys)))
    return torch.tensor(ids)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """LR factor: linear warm-up, then cosine from 1 to `floor` (the warm-up does not depend on `total`)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# --- stages -----------------------------------------------------------------------------------------------


def train_vae(images: torch.Tensor, steps: int, batch: int, seed: int) -> tuple[nn.Module, dict]:
    """Fit the VAE (MSE + L1 + 1e-4·KL per latent element); return it with its reconstruction MSE and latent stats."""
    torch.manual_seed(seed)
    vae = toy_vae()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = 1e-3 * warmup_cosine(step, 20, steps)
        x = to_unit(images[torch.randint(len(images), (batch,), generator=generator)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = F.mse_loss(recon, x) + F.l1_loss(recon, x) + 1e-4 * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({(time.time() - start) / (step + 1):.2f} s/step)")
    vae.eval()
    with torch.no_grad():
        x = to_unit(images[:2048])
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in x.split(256)])
        recon = torch.cat([vae.decode(chunk).sample for chunk in means[:512].split(256)])
        mse = F.mse_loss(recon.clamp(-1, 1), x[:512]).item()
    stats = {
        "latents_mean": means.mean(dim=(0, 2, 3)).tolist(),
        "latents_std": means.std(dim=(0, 2, 3)).tolist(),
        "reconstruction_mse": mse,
        "seconds": time.time() - start,
    }
    log(f"vae done: reconstruction MSE {mse:.4f} on [-1, 1], latent std {[round(s, 3) for s in stats['latents_std']]}")
    return vae, stats


def text_features(te1: nn.Module, te2: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `StableDiffusionXLPipeline.encode_prompt` takes: context (both `hidden_states[-2]`), pooled, te1's EOS."""
    out1 = te1(ids, output_hidden_states=True)
    out2 = te2(ids, output_hidden_states=True)
    context = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    return context, out2.text_embeds, out1.pooler_output


def pretrain_text_encoders(
    tokenizer, images: torch.Tensor, caption_ids: torch.Tensor, captions: list[str], steps: int, batch: int, seed: int
) -> tuple[nn.Module, nn.Module, dict]:
    """A tiny CLIP: both text encoders against one image tower, symmetric InfoNCE with every same-scene pair
    positive."""
    torch.manual_seed(seed)
    te1, te2 = toy_text_encoders(tokenizer)
    tower = ToyImageEncoder((TEXT_HIDDEN[0], POOLED_DIM))
    te1_head = nn.Linear(TEXT_HIDDEN[0], TEXT_HIDDEN[0], bias=False)  # CLIPTextModel has no projection of its own
    logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
    parameters = [*te1.parameters(), *te2.parameters(), *tower.parameters(), *te1_head.parameters(), logit_scale]
    optimiser = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    all_ids = tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    keys = scene_keys(captions)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    accuracy = float("nan")
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = 1e-3 * warmup_cosine(step, 50, steps)
        pick = torch.randint(len(images), (batch,), generator=generator)
        ids = all_ids[caption_ids[pick]]
        scene = keys[caption_ids[pick]]
        positive = (scene[:, None] == scene[None, :]).float()
        target = positive / positive.sum(1, keepdim=True)
        image_embeds = tower(to_unit(images[pick]))
        _, pooled, eos = text_features(te1, te2, ids)
        loss = 0.0
        for text, image in ((te1_head(eos), image_embeds[0]), (pooled, image_embeds[1])):
            logits = logit_scale.exp().clamp(max=100) * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
            loss = loss + 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            accuracy = positive.gather(1, logits.argmax(1, keepdim=True)).mean().item()
            log(
                f"clip step {step}/{steps} loss {loss.item():.3f} te2 text→image top-1 {accuracy:.2f} "
                f"({(time.time() - start) / (step + 1):.2f} s/step)"
            )
    te1.eval().requires_grad_(False)
    te2.eval().requires_grad_(False)
    return te1, te2, {"final_loss": loss.item(), "te2_top1_in_batch": accuracy, "seconds": time.time() - start}


def encode_latents(vae: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised latent means of every training image (scaling_factor 1, per-channel mean/std as in the config)."""
    with torch.no_grad():
        latents = torch.cat([vae.encode(to_unit(chunk)).latent_dist.mean for chunk in images.split(512)])
    return (latents - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def train_unet(
    latents: torch.Tensor,
    caption_ids: torch.Tensor,
    context_table: torch.Tensor,
    pooled_table: torch.Tensor,
    steps: int | None,
    minutes: float | None,
    batch: int,
    seed: int,
    snapshot: Callable[[nn.Module, dict], None] | None = None,
    snapshot_every: int = 500,
    warmup: int = 100,
) -> tuple[nn.Module, dict]:
    """ε-prediction with min-SNR-5 weights, 10 % caption dropout (context and pooled zeroed), AdamW, EMA 0.999.

    The learning rate is constant after a linear warm-up (the EMA does the annealing), so the weights after
    N steps do not depend on when training stops: a `minutes` run equals `steps=<the steps it reached>`.
    `snapshot(ema, stats)` is called every `snapshot_every` steps (a usable model while training goes on).
    """
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = toy_unet()
    ema = toy_unet()
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    noise_schedule = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=UNET_LR, weight_decay=0.01)
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(batch, 1)
    generator = torch.Generator().manual_seed(seed)
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    start = time.time()
    running: list[float] = []
    step = 0

    def stats() -> dict:
        return {"steps": step, "loss_mean_last_200": float(np.mean(running[-200:])), "seconds": time.time() - start}

    while (step < steps) if steps is not None else (time.time() - start < minutes * 60):
        for group in optimiser.param_groups:
            group["lr"] = UNET_LR * min(1.0, (step + 1) / warmup)
        pick = torch.randint(len(latents), (batch,), generator=generator)
        x0 = latents[pick]
        context, pooled = context_table[caption_ids[pick]], pooled_table[caption_ids[pick]]
        keep = (torch.rand(batch, generator=generator) >= 0.1).float()
        context, pooled = context * keep[:, None, None], pooled * keep[:, None]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        noisy = noise_schedule.add_noise(x0, noise, t)
        prediction = unet(
            noisy, t, encoder_hidden_states=context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
        ).sample
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (weight * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        running.append(loss.item())
        step += 1
        if step % 50 == 0:
            elapsed = time.time() - start
            log(
                f"unet step {step}{f'/{steps}' if steps else ''} loss {np.mean(running[-50:]):.4f} "
                f"({elapsed / step:.2f} s/step, {elapsed / 60:.1f} min)"
            )
        if snapshot is not None and step % snapshot_every == 0:
            snapshot(ema, stats())
    ema.eval()
    return ema, stats()


# --- saving -----------------------------------------------------------------------------------------------


def save_toy(out: Path, vae, te1, te2, tokenizer, unet, record: dict) -> Path:
    """Save the pipeline in safetensors with `save_pretrained`, plus `training.json`; replaces `out` whole.

    The UNet and VAE are stored in fp16 (diffusers loads them in float32 unless told otherwise), the text
    encoders in fp32: transformers loads a checkpoint in its stored dtype, so fp16 text encoders would make a
    plain `from_pretrained` a mixed-dtype pipeline that fails on its first call."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=toy_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.to(torch.float16)
    te1.to(torch.float32)
    te2.to(torch.float32)

    def write(staging: Path) -> None:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "training.json").write_text(json.dumps(record, indent=2) + "\n")

    return write_atomically(Path(out), write, folder=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--unet-steps", type=int, default=None, help="UNet training steps (exact rebuild)")
    budget.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="UNet training wall-time budget; the steps reached are recorded for the exact rebuild",
    )
    parser.add_argument(
        "--snapshot-every", type=int, default=500, help="save the model every N UNet steps while training (default 500)"
    )
    parser.add_argument("--images", type=int, default=48_000, help="training images drawn (default 48000)")
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--clip-steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64, help="UNet batch")
    parser.add_argument("--clip-batch", type=int, default=128, help="tiny-CLIP batch (more in-batch negatives)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (results depend on it)")
    parser.add_argument("--out", type=Path, default=TOY_MODEL)
    args = parser.parse_args(argv)
    if args.unet_steps is None and args.minutes is None:
        parser.error("give --unet-steps N (exact rebuild) or --minutes M (time budget)")
    for name in (
        "unet_steps",
        "images",
        "vae_steps",
        "vae_batch",
        "clip_steps",
        "batch",
        "clip_batch",
        "threads",
        "snapshot_every",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.minutes is not None and args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    started = time.time()
    tokenizer = toy_tokenizer()
    images, caption_ids, captions = render_dataset(args.images, args.seed)
    log(f"drew {len(images)} training images ({time.time() - started:.0f} s)")
    vae, vae_stats = train_vae(images, args.vae_steps, args.vae_batch, args.seed + 1)
    mean, std = torch.tensor(vae_stats["latents_mean"]), torch.tensor(vae_stats["latents_std"])
    vae.register_to_config(
        latents_mean=vae_stats["latents_mean"], latents_std=vae_stats["latents_std"], scaling_factor=1.0
    )
    te1, te2, clip_stats = pretrain_text_encoders(
        tokenizer, images, caption_ids, captions, args.clip_steps, args.clip_batch, args.seed + 2
    )
    latents = encode_latents(vae, images, mean, std)
    ids = tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        context_table, pooled_table, _ = text_features(te1, te2, ids)
    log(f"encoded latents and {len(captions)} caption embeddings ({time.time() - started:.0f} s)")

    def training_record(unet_stats: dict) -> dict:
        return {
            "rebuild": f"python -m scripts.toy.train --unet-steps {unet_stats['steps']} --images {args.images} "
            f"--vae-steps {args.vae_steps} --vae-batch {args.vae_batch} --clip-steps {args.clip_steps} "
            f"--clip-batch {args.clip_batch} --batch {args.batch} --seed {args.seed} --threads {args.threads}",
            "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "unet_steps": unet_stats["steps"],
            "vae": vae_stats,
            "text_encoders": clip_stats,
            "unet": unet_stats,
            "total_minutes": (time.time() - started) / 60,
            "torch_threads": torch.get_num_threads(),
            "versions": package_versions(),
            "repository_commit": repository_commit(),
        }

    def snapshot(ema: nn.Module, unet_stats: dict) -> None:
        copy = toy_unet()
        copy.load_state_dict(ema.state_dict())
        save_toy(args.out, vae, te1, te2, tokenizer, copy.eval(), {**training_record(unet_stats), "snapshot": True})
        log(f"snapshot at UNet step {unet_stats['steps']} saved to {args.out}")

    unet, unet_stats = train_unet(
        latents,
        caption_ids,
        context_table,
        pooled_table,
        args.unet_steps,
        args.minutes,
        args.batch,
        args.seed + 3,
        snapshot,
        args.snapshot_every,
    )
    record = training_record(unet_stats)
    record["unet_parameters"] = sum(p.numel() for p in unet.parameters())
    out = save_toy(args.out, vae, te1, te2, tokenizer, unet, record)
    log(f"saved {out} ({record['total_minutes']:.1f} min); rebuild: {record['rebuild']}")
    return out


if __name__ == "__main__":
    main()
