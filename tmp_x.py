import copy, numpy as np, torch
from diffusers import StableDiffusionXLPipeline
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, AttentionBackendName, attention_backend
from attention import apply_pladis
from scripts.build_tiny_assets import build_tiny_flux
from scripts.cli.assets import TINY_SDXL
from tests.tiny import run_pipe, processors_by_name, same_processor_objects
torch.set_num_threads(1)
pipe = build_tiny_flux(guidance_embeds=False); pipe.set_progress_bar_config(disable=True)
opts = dict(max_sequence_length=16, guidance_scale=0.0, num_inference_steps=2)
name = AttentionBackendName._NATIVE_MATH
orig = _AttentionBackendRegistry._backends[name]
count = [0]
def counting(*a, **k):
    count[0] += 1; return orig(*a, **k)
_AttentionBackendRegistry._backends[name] = counting
pipe.transformer.set_attention_backend("_native_math")
a = run_pipe(pipe, **opts); print("stock calls", count[0]); count[0]=0
with apply_pladis(pipe, 2.0): b = run_pipe(pipe, **opts)
print("pladis calls", count[0]); count[0]=0
pipe.transformer.reset_attention_backend()
with attention_backend("_native_math"):
    c = run_pipe(pipe, **opts); print("ctx stock", count[0]); count[0]=0
    with apply_pladis(pipe, 2.0): d = run_pipe(pipe, **opts)
    print("ctx pladis", count[0])
_AttentionBackendRegistry._backends[name] = orig
print(np.abs(a-c).max(), np.abs(b-d).max())
# group offload
sd = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL); sd.set_progress_bar_config(disable=True)
with apply_pladis(sd, 2.0): ref = run_pipe(sd)
before = processors_by_name(sd.unet)
sd.unet.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
with apply_pladis(sd, 2.0): go = run_pipe(sd)
print("group offload eq", np.array_equal(ref, go), np.abs(ref-go).max(), same_processor_objects(sd.unet, before))
sd2 = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL); sd2.set_progress_bar_config(disable=True)
sd2.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
cast_stock = run_pipe(sd2)
with apply_pladis(sd2, 2.0): cast = run_pipe(sd2)
with apply_pladis(sd2, 0.0): cast0 = run_pipe(sd2)
print("cast", np.isfinite(cast).all(), np.abs(cast-cast_stock).max(), np.array_equal(cast0, cast_stock))
dtypes = {p.dtype for p in sd2.unet.parameters()}; print(dtypes)
hooked = [n for n, m in sd2.unet.named_modules() if getattr(m, "_diffusers_hook", None) is not None and "layerwise_casting" in m._diffusers_hook.hooks]
print(len(hooked), hooked[:3])
