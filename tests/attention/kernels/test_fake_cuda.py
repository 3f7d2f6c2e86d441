"""Every CUDA branch, run on this CPU with fake tensors on "cuda" (`tests/fake_cuda.py`, NOTES §7): the dense
joint op each card runs, the two PLADIS rules, SEG, and every family's processor kinds. A call that completes
made no host sync (fake tensors raise on data-dependent ops; host–device copies are counted); launches are
counted against stock: the Triton path adds one launch per call where the budget says so, the `torch` path
stays within its op budgets."""

from __future__ import annotations

import contextlib

import pytest
import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    JointAttnProcessor2_0,
    SD3IPAdapterJointAttnProcessor2_0,
)
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor, FluxIPAdapterAttnProcessor

from attention import (
    PLADISAttnProcessor,
    PLADISFluxAttnProcessor,
    PLADISJointAttnProcessor,
    PLADISSanaAttnProcessor,
    apply_pladis,
    pladis_processor_class,
)
from attention.integration.diffusers_families import ATTENTION_MODULES, class_path, registered_families
from attention.integration.latent_grid import LatentSize
from attention.integration.text_layout import CROSS, LEADING, TRAILING, TextLength
from attention.kernels.cross_attention import pladis_scaled_dot_product_attention
from attention.kernels.sdpa_backend import prefers_cudnn_attention, stock_sdpa_backend
from attention.kernels.text_block import text_block_pladis_attention
from attention.perturbation.seg_processor import SmoothedEnergyAttnProcessor
from attention.settings import PLADISSettings
from tests.fake_cuda import CARDS, building_on_cuda, count_launches, fake_cuda
from tests.tiny_denoisers import DENOISERS

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FLASH_OP, CUDNN_OP, EFFICIENT_OP = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_efficient_attention",
)
SDPA = "scaled_dot_product_attention"  # SDPA itself, on the padded text channel: no fused op returns the LSE
DENSE_OPS = {FLASH_OP, CUDNN_OP, EFFICIENT_OP, SDPA}
# FLUX at 1000² px: 512 text + 62² image tokens, a joint length that is not a multiple of 32 (the
# memory-efficient op pads its log-sum-exp to one).
JOINT_SHAPE, TEXT_TOKENS = (1, 24, 512 + 62 * 62, 128), 512


def _dense_op_on(capability: tuple[int, int], dtype: str) -> str:
    """The op stock SDPA runs for unmasked joint attention: cuDNN first on sm90/sm100 (cuDNN > 9.15), flash
    from sm80 in half precision, the memory-efficient kernel for float32 and for float16 below sm80,
    torch's unfused math for bfloat16 below sm80."""
    if dtype == "float32":
        return EFFICIENT_OP
    if capability < (8, 0):
        return EFFICIENT_OP if dtype == "float16" else SDPA
    return CUDNN_OP if capability[0] in (9, 10) else FLASH_OP


def _dense_ops(count) -> set[str]:
    return {name for name in count.by_name if name in DENSE_OPS}


@pytest.fixture
def kernel(request):
    """The kernel a test asks for, by the call's own choice (`PLADISSettings.kernel`)."""
    return request.param


@pytest.mark.parametrize("kernel", ["triton", "torch"], indirect=True)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("capability", sorted(CARDS), ids=[f"sm{a}{b}" for a, b in sorted(CARDS)])
def test_joint_rule_runs_the_dense_op_stock_sdpa_runs_on_each_card(capability, dtype, kernel):
    """No flash op below sm80 (it raises there), cuDNN where torch prefers it, and the log-sum-exp of each
    op in the (B, H, N) layout the correction reads (the `torch` kernel indexes it per row)."""
    with fake_cuda(capability) as launches:
        query, key, value = (torch.randn(JOINT_SHAPE, device="cuda", dtype=DTYPES[dtype]) for _ in range(3))
        settings = PLADISSettings(2.0, kernel=kernel)
        output, count = count_launches(lambda: text_block_pladis_attention(query, key, value, TEXT_TOKENS, settings))
    assert count.syncs == 0
    assert _dense_ops(count) == {_dense_op_on(capability, dtype)}, count.by_name
    assert output.shape == JOINT_SHAPE and output.dtype == DTYPES[dtype] and output.device.type == "cuda"
    assert len(launches) == (kernel == "triton")


def test_cudnn_first_only_where_torch_prefers_it(monkeypatch):
    """torch 2.15 puts cuDNN attention first on sm90/sm100 with cuDNN > 9.15 (CUDA ≥ 13 builds: any minor),
    unless `TORCH_CUDNN_SDPA_DEPRIORITIZED` is set."""
    monkeypatch.delenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 92600)
    preferred = {capability: prefers_cudnn_attention(capability) for capability in [*CARDS, (10, 3), (12, 1)]}
    assert {capability for capability, first in preferred.items() if first} == {(9, 0), (10, 0), (10, 3)}
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert prefers_cudnn_attention((9, 0)) and not prefers_cudnn_attention((10, 1))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91500)
    assert not prefers_cudnn_attention((9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 92600)
    monkeypatch.setenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", "1")
    assert not prefers_cudnn_attention((9, 0))


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("deprioritized", FLASH_OP),
        ("cudnn switched off", FLASH_OP),
        ("sdpa_kernel efficient", EFFICIENT_OP),
        ("sdpa_kernel flash first", FLASH_OP),
        ("math only", SDPA),
    ],
)
def test_the_dense_op_follows_torchs_sdpa_settings_on_an_h100(monkeypatch, setting, expected):
    """What makes stock SDPA leave cuDNN on sm90 makes PLADIS's dense op leave it too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    contexts = {
        "deprioritized": lambda: monkeypatch.setenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", "1"),
        "cudnn switched off": lambda: monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False),
        "sdpa_kernel efficient": lambda: sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]),
        "sdpa_kernel flash first": lambda: sdpa_kernel(
            [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION], set_priority=True
        ),
        "math only": lambda: sdpa_kernel([SDPBackend.MATH]),
    }
    context = contexts[setting]() or contextlib.nullcontext()
    with fake_cuda((9, 0)), context:
        query, key, value = (torch.randn(JOINT_SHAPE, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        settings = PLADISSettings(2.0, kernel="torch")
        _, count = count_launches(lambda: text_block_pladis_attention(query, key, value, TEXT_TOKENS, settings))
    assert count.syncs == 0 and _dense_ops(count) == {expected}, count.by_name


@pytest.mark.parametrize("capability", sorted(CARDS), ids=[f"sm{a}{b}" for a, b in sorted(CARDS)])
def test_masked_joint_attention_goes_through_sdpa_on_every_card(capability, monkeypatch):
    """With a text mask (Qwen-Image, Chroma, HunyuanVideo) SDPA itself prepares the mask for the kernel it
    picks; the text mass comes from its padded channel."""
    settings = PLADISSettings(2.0, kernel="torch")
    with fake_cuda(capability):
        query, key, value = (torch.randn(2, 24, 4352, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        mask = torch.ones(2, 1, 1, 4352, device="cuda", dtype=torch.bool)
        _, count = count_launches(lambda: text_block_pladis_attention(query, key, value, 256, settings, attn_mask=mask))
    assert count.syncs == 0 and _dense_ops(count) == {SDPA}, count.by_name


def test_stock_sdpa_backend_mirrors_torchs_gates_on_an_a100():
    with fake_cuda((8, 0)):
        half = torch.randn(1, 2, 64, 128, device="cuda", dtype=torch.float16)
        assert stock_sdpa_backend(half, half, half) == "flash"
        assert stock_sdpa_backend(half, half, half, torch.zeros(1, 1, 64, 64, device="cuda")) == "efficient"
        assert stock_sdpa_backend(half.float(), half.float(), half.float()) == "efficient"
        wide = torch.randn(1, 2, 64, 320, device="cuda", dtype=torch.float16)
        assert stock_sdpa_backend(wide, wide, wide) == "efficient"  # flash takes head dims ≤ 256
        odd = torch.randn(1, 2, 64, 100, device="cuda", dtype=torch.float16)
        assert stock_sdpa_backend(odd, odd, odd) == "flash"  # SDPA pads it to 104 for flash
        assert stock_sdpa_backend(odd.float(), odd.float(), odd.float()) == "efficient"
        strided = torch.randn(1, 2, 128, 64, device="cuda", dtype=torch.float16).transpose(-1, -2)
        assert stock_sdpa_backend(strided, strided, strided) == "math"  # the fused kernels need last stride 1
        offset = torch.randn(2 * 64 * 128 + 4, device="cuda", dtype=torch.float16)[4:].view(1, 2, 64, 128)
        mask = torch.zeros(1, 1, 64, 64, device="cuda")
        assert stock_sdpa_backend(offset, offset, offset, mask) == "math"  # on sm80 math comes before cuDNN


@pytest.mark.slow  # torch.compile
def test_the_dense_op_choice_traces_into_one_compiled_graph(monkeypatch):
    """Under `torch.compile` the choice reads torch's switches once per graph (no graph break)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    query = torch.randn(1, 2, 64, 128, dtype=torch.bfloat16)
    compiled = torch.compile(lambda q: q + len(stock_sdpa_backend(q, q, q)), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(query), query + len("cudnn"))


# ---- the two rules on every CUDA branch ---------------------------------------------------------------------


def _mask(kind: str, rows: int, keys: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "bool":
        mask = torch.ones(2, 1, 1, keys, device="cuda", dtype=torch.bool)
        return mask.index_fill_(-1, torch.arange(keys - 5, keys, device="cuda"), False)
    mask = torch.zeros(2, 1, rows, keys, device="cuda")  # additive, with fully masked rows
    return mask.index_fill_(-2, torch.arange(0, rows, 3, device="cuda"), float("-inf"))


@pytest.mark.parametrize("kernel", ["auto", "torch"], indirect=True)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_cross_attention_rule_makes_no_host_sync(kernel, alpha, mask, dtype):
    with fake_cuda() as launches:
        query = torch.randn(2, 4096, 10, 64, device="cuda", dtype=DTYPES[dtype]).transpose(1, 2)
        key, value = (torch.randn(2, 10, 77, 64, device="cuda", dtype=DTYPES[dtype]) for _ in range(2))
        output, count = count_launches(
            lambda: pladis_scaled_dot_product_attention(
                query,
                key,
                value,
                PLADISSettings(2.0, alpha, kernel=kernel),
                attn_mask=_mask(mask, 4096, 77),
                scale=0.125,
            )
        )
    assert count.syncs == 0 and output.shape == query.shape and output.dtype == query.dtype
    assert len(launches) == (kernel == "auto" and alpha != 1.25)  # α = 1.25: the torch path, under auto too


@pytest.mark.parametrize("kernel", ["auto", "torch"], indirect=True)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("mask", ["none", "bool"])
@pytest.mark.parametrize("text_first", [True, False], ids=["text-first", "text-last"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_text_block_rule_makes_no_host_sync(kernel, alpha, mask, text_first, dtype):
    with fake_cuda() as launches:
        query, key, value = (torch.randn(2, 24, 1280, 128, device="cuda", dtype=DTYPES[dtype]) for _ in range(3))
        output, count = count_launches(
            lambda: text_block_pladis_attention(
                query,
                key,
                value,
                256,
                PLADISSettings(2.0, alpha, kernel=kernel),
                text_first=text_first,
                attn_mask=_mask(mask, 1280, 1280),
            )
        )
    assert count.syncs == 0 and output.shape == query.shape and output.dtype == query.dtype
    assert len(launches) == (kernel == "auto" and alpha != 1.25)


@pytest.mark.parametrize("rule", ["cross-attention", "text-block"])
def test_gradient_guidance_on_cuda_makes_no_host_sync(rule):
    """With autograd recording (inputs requiring grad) both rules take the materialised path."""
    with fake_cuda():
        query = torch.randn(2, 2, 320, 64, device="cuda", requires_grad=True)
        key, value = (torch.randn(2, 2, 320, 64, device="cuda") for _ in range(2))
        if rule == "cross-attention":
            call = lambda: pladis_scaled_dot_product_attention(query, key[..., :77, :], value[..., :77, :], 2.0)  # noqa: E731
        else:
            call = lambda: text_block_pladis_attention(query, key, value, 77, 2.0)  # noqa: E731
        output, count = count_launches(call)
    assert count.syncs == 0 and output.requires_grad  # (the backward pass needs a real CUDA context)


# ---- the processors of each kind at production shapes: launch budgets ------------------------------------


def _sdxl_attn2(mask: bool = False):
    """SDXL's widest `attn2` call: 2 × 4096 queries of 640 channels (10 heads × 64), 77 text keys
    (with `mask`: PixArt-style padded text, an additive (B, 1, L) mask as the model passes it)."""
    attn = Attention(640, cross_attention_dim=2048, heads=10, dim_head=64).eval()
    inputs = (torch.randn(2, 4096, 640), torch.randn(2, 77, 2048))
    extra = {"attention_mask": torch.zeros(2, 1, 77).index_fill_(-1, torch.arange(60, 77), -10000.0)} if mask else {}
    return attn, inputs, extra


def _sana_attn2():
    """SANA 1600M's cross-attention at 1024²: 1024 image tokens of 2240 channels (20 heads × 112), 300 text
    tokens with a padding mask."""
    attn = Attention(
        2240, cross_attention_dim=2240, heads=20, dim_head=112, bias=True, out_bias=True, processor=None
    ).eval()
    mask = torch.zeros(2, 1, 300).index_fill_(-1, torch.arange(250, 300), -10000.0)
    return attn, (torch.randn(2, 1024, 2240), torch.randn(2, 300, 2240)), {"attention_mask": mask}


def _sd3_joint():
    """SD3.5 Medium's joint attention at 1024²: 24 heads × 64, 4096 image + 333 text tokens (text last)."""
    attn = Attention(
        query_dim=1536,
        added_kv_proj_dim=1536,
        dim_head=64,
        heads=24,
        out_dim=1536,
        context_pre_only=False,
        bias=True,
        qk_norm="rms_norm",
        eps=1e-6,
    ).eval()
    return attn, (torch.randn(2, 4096, 1536), torch.randn(2, 333, 1536)), {}


def _flux_double_block():
    """A FLUX.1 double-stream attention at 1024²: 24 heads × 128, 512 text + 4096 image tokens."""
    attn = FluxAttention(
        query_dim=3072,
        heads=24,
        dim_head=128,
        added_kv_proj_dim=3072,
        out_dim=3072,
        context_pre_only=False,
        bias=True,
        added_proj_bias=True,
    ).eval()
    return attn, (torch.randn(1, 4096, 3072), torch.randn(1, 512, 3072)), {}


def _flux_single_block():
    """A FLUX.1 single-stream attention at 1024²: the block's own `[txt ; img]` sequence of 4608 tokens."""
    attn = FluxAttention(query_dim=3072, heads=24, dim_head=128, out_dim=3072, bias=True, pre_only=True).eval()
    return attn, (torch.randn(1, 4608, 3072),), {}


def _flux_text(settings: PLADISSettings) -> PLADISFluxAttnProcessor:
    return PLADISFluxAttnProcessor(settings, text_length=TextLength(tokens=512))


# (build, dtype, stock processor, PLADIS processor, `torch`-path launches per processor call: the issue's
# budgets for SDXL attn2 and the FLUX double block, else `TORCH_EXTRA_PER_CALL` over stock)
MODULES = {
    "sdxl-attn2": (_sdxl_attn2, torch.float16, AttnProcessor2_0, PLADISAttnProcessor, 50),
    "pixart-attn2-masked": (lambda: _sdxl_attn2(mask=True), torch.float16, AttnProcessor2_0, PLADISAttnProcessor, None),
    "sana-attn2": (_sana_attn2, torch.bfloat16, SanaAttnProcessor2_0, PLADISSanaAttnProcessor, None),
    "sd3-joint": (_sd3_joint, torch.float16, JointAttnProcessor2_0, PLADISJointAttnProcessor, None),
    "flux-double-block": (_flux_double_block, torch.bfloat16, FluxAttnProcessor, PLADISFluxAttnProcessor, 80),
    "flux-single-block": (_flux_single_block, torch.bfloat16, FluxAttnProcessor, _flux_text, None),
}
TORCH_EXTRA_PER_CALL = 45  # the sync-free path's launches in place of SDPA's one
MODULE_FAMILIES = {"FLUX.1": ("flux-double-block", "flux-single-block")}  # families without a tiny denoiser


def _module_counts(name: str, capability: tuple[int, int]) -> dict:
    """Stock, Triton-path and torch-path launches of one processor call of module case `name`."""
    build, dtype, stock, pladis, _ = MODULES[name]
    counts = {}
    with fake_cuda(capability), torch.no_grad():
        with building_on_cuda(dtype):
            attn, inputs, extra = build()
        variants = {
            "stock": stock(),
            "triton": pladis(PLADISSettings(2.0, kernel="auto")),
            "torch": pladis(PLADISSettings(2.0, kernel="torch")),
        }
        for variant, processor in variants.items():
            attn.set_processor(processor)
            counts[variant] = count_launches(lambda: attn(*inputs, **extra))[1]
    return counts


@pytest.mark.parametrize("capability", [(8, 0), (9, 0)], ids=["sm80", "sm90"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_processor_kind_launches_stock_plus_one_with_triton_and_stays_in_budget_with_torch(
    monkeypatch, name, capability
):
    """Triton: the kernel replaces SDPA (cross-attention) or joins the dense op that replaces it (joint),
    so at most one launch more than stock; the `torch` path within its budget (SDXL attn2 ≤ 50, FLUX
    double block ≤ 80); no host sync anywhere."""
    counts = _module_counts(name, capability)
    assert all(count.syncs == 0 for count in counts.values()), {k: c.syncs for k, c in counts.items()}
    assert counts["triton"].ops <= counts["stock"].ops + 1, (counts["stock"].by_name, counts["triton"].by_name)
    assert sum(v for k, v in counts["triton"].by_name.items() if k.startswith("triton:")) == 1
    budget = MODULES[name][4] or counts["stock"].ops + TORCH_EXTRA_PER_CALL
    assert counts["torch"].ops <= budget, counts["torch"].by_name


def _sdxl_attn2_ip_adapter():
    """SDXL's widest `attn2` with an IP-Adapter Plus: the text call, then one over 16 image-prompt tokens."""
    attn, (hidden, text), _ = _sdxl_attn2()
    attn.set_processor(IPAdapterAttnProcessor2_0(640, 2048, num_tokens=(16,)).eval())
    return attn, (hidden, (text, [torch.randn(2, 16, 2048)])), {}


def _sd35_joint_ip_adapter():
    """SD3.5's joint attention with its IP-Adapter: the joint call, then image queries over image + 64 prompt keys."""
    attn, inputs, _ = _sd3_joint()
    attn.set_processor(SD3IPAdapterJointAttnProcessor2_0(1536, 1152, 64, timesteps_emb_dim=1280).eval())
    return attn, inputs, {"ip_hidden_states": torch.randn(2, 64, 1152), "temb": torch.randn(2, 1280)}


def _flux_double_block_ip_adapter():
    """A FLUX.1 double-stream attention with an IP-Adapter: the joint call, then image queries over 16 prompt keys."""
    attn, inputs, _ = _flux_double_block()
    attn.set_processor(FluxIPAdapterAttnProcessor(3072, 4096, num_tokens=(16,)).eval())
    return attn, inputs, {"ip_hidden_states": [torch.randn(1, 16, 4096)]}


# Processors with weights (IP-Adapters), built on their layer; PLADIS runs on them: (build, dtype, stock, text keys)
ADAPTER_MODULES = {
    "sdxl-attn2-ip-adapter": (_sdxl_attn2_ip_adapter, torch.float16, IPAdapterAttnProcessor2_0, CROSS),
    "sd35-joint-ip-adapter": (_sd35_joint_ip_adapter, torch.float16, SD3IPAdapterJointAttnProcessor2_0, TRAILING),
    "flux-double-block-ip-adapter": (
        _flux_double_block_ip_adapter,
        torch.bfloat16,
        FluxIPAdapterAttnProcessor,
        LEADING,
    ),
}


@pytest.mark.parametrize("capability", [(8, 0), (9, 0)], ids=["sm80", "sm90"])
@pytest.mark.parametrize("name", sorted(ADAPTER_MODULES))
def test_ip_adapter_processors_launch_stock_plus_one_with_triton_and_make_no_host_sync(monkeypatch, name, capability):
    """The text call as for the plain processor kinds; the image-prompt calls stay stock SDPA launches."""
    build, dtype, stock, text_keys = ADAPTER_MODULES[name]
    counts = {}
    with fake_cuda(capability), torch.no_grad():
        with building_on_cuda(dtype):
            attn, inputs, extra = build()
        adapter = attn.processor
        pladis = pladis_processor_class(stock)
        variants = {
            "stock": adapter,
            **{
                variant: pladis(PLADISSettings(2.0, kernel=kernel), text_keys=text_keys, original=adapter)
                for variant, kernel in (("triton", "auto"), ("torch", "torch"))
            },
        }
        for variant, processor in variants.items():
            attn.set_processor(processor)
            counts[variant] = count_launches(lambda: attn(*inputs, **extra))[1]
    assert all(count.syncs == 0 for count in counts.values()), {k: c.syncs for k, c in counts.items()}
    assert counts["triton"].ops <= counts["stock"].ops + 1, (counts["stock"].by_name, counts["triton"].by_name)
    assert sum(v for k, v in counts["triton"].by_name.items() if k.startswith("triton:")) == 1
    assert counts["torch"].ops <= counts["stock"].ops + TORCH_EXTRA_PER_CALL, counts["torch"].by_name


@pytest.mark.parametrize("sigma", [10.0, 1e7], ids=["gaussian", "infinite"])
def test_seg_processor_makes_no_host_sync(sigma):
    """SEG's perturbed self-attention on an SDXL layer at 1024² (64 × 64 tokens, CFG + perturbed batch)."""
    with fake_cuda(), torch.no_grad():
        with building_on_cuda(torch.float16):
            attn = Attention(640, heads=10, dim_head=64).eval()
            hidden = torch.randn(3, 4096, 640)
        attn.set_processor(SmoothedEnergyAttnProcessor(sigma, LatentSize(128, 128), batch_chunks=3))
        output, count = count_launches(lambda: attn(hidden))
    assert count.syncs == 0 and output.shape == hidden.shape


# ---- every family's denoiser, whole -------------------------------------------------------------------------

# Launches the Triton path adds to stock per PLADIS attention call. Cross-attention: the kernel replaces
# SDPA (0). Joint, unmasked: the dense op with its log-sum-exp and the kernel replace SDPA (1). Joint with a
# text mask: SDPA over Q/K/V padded with the text channel (pads, a fill), the additive mask (2) and the
# kernel (8). Packed (Z-Image): per sample the dense op and the kernel, and copies into the batch (≤ 4).
TRITON_EXTRA_PER_CALL = {"cross": 0, "joint": 1, "joint-masked": 8, "packed": 4}


def _pladis_calls(tiny, model, inputs) -> tuple[str, int]:
    """(kind of the family's PLADIS calls, how many one denoiser call makes)."""
    layouts = tiny.layouts(model, inputs, tiny.has_single_blocks)
    kinds = {layout[0] for layout in layouts.values()}
    assert len(kinds) == 1, kinds
    kind = kinds.pop()
    calls = sum(len(layout[1]) if kind == "packed" else 1 for layout in layouts.values())
    if kind in ("leading", "trailing"):
        kind = "joint-masked" if tiny.has_text_mask else "joint"
    return kind, calls


@pytest.mark.slow  # every family's denoiser
@pytest.mark.parametrize("family", sorted(DENOISERS))
def test_every_family_on_cuda_makes_no_host_sync_and_one_launch_per_pladis_call(monkeypatch, family):
    tiny = DENOISERS[family]
    counts = {}
    with fake_cuda((9, 0)) as launches, torch.no_grad():
        with building_on_cuda(torch.bfloat16):
            model, inputs = tiny.build(), tiny.inputs(0)
        kind, calls = _pladis_calls(tiny, model, inputs)
        model(**inputs)  # first calls fill caches (RoPE tables) that later calls reuse
        counts["stock"] = count_launches(lambda: model(**inputs))[1]
        for kernel in ("triton", "torch"):
            launches.clear()
            settings = PLADISSettings(2.0, pladis_single_blocks=tiny.has_single_blocks, kernel=kernel)
            with apply_pladis(model, settings):
                counts[kernel] = count_launches(lambda: model(**inputs))[1]
            assert len(launches) == (calls if kernel == "triton" else 0)
    stock, triton, torch_path = counts["stock"], counts["triton"], counts["torch"]
    assert triton.syncs == torch_path.syncs == stock.syncs  # PLADIS adds none (the stock code's own remain)
    assert triton.ops <= stock.ops + TRITON_EXTRA_PER_CALL[kind] * calls, (stock.by_name, triton.by_name)
    masked_extra = TRITON_EXTRA_PER_CALL[kind] - TRITON_EXTRA_PER_CALL["joint"] if kind == "joint-masked" else 0
    assert torch_path.ops <= stock.ops + (TORCH_EXTRA_PER_CALL + masked_extra) * calls


def test_the_fake_cuda_tests_cover_every_family_and_processor_kind():
    """Each family record has a tiny denoiser above, and each stock processor the generic `Attention`
    record runs with PLADIS has a module case (an IP-Adapter's, an adapter case)."""
    built = {class_path(type(DENOISERS[name].build())) for name in DENOISERS}
    uncovered = [family.name for family in registered_families() if not set(family.denoisers) & built]
    assert set(uncovered) == set(MODULE_FAMILIES)
    assert all(set(cases) <= set(MODULES) for cases in MODULE_FAMILIES.values())
    module_kinds = {MODULES[name][2] for name in MODULES} | {ADAPTER_MODULES[name][2] for name in ADAPTER_MODULES}
    runs = {stock for kind in ATTENTION_MODULES.text_attention for stock in kind.processors.values()}
    assert runs <= {class_path(kind) for kind in module_kinds}


def test_a_host_sync_on_fake_cuda_raises_or_is_counted():
    """What these tests rely on: data-dependent ops raise, host–device copies count as syncs."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    with fake_cuda():
        scores = torch.randn(4, 77, device="cuda")
        with pytest.raises(DataDependentOutputException):
            scores.amax().item()
        with pytest.raises(DynamicOutputShapeException):
            scores[scores > 0]
        assert count_launches(lambda: scores.cpu())[1].syncs == 1
        assert count_launches(lambda: torch.ones(4).to("cuda"))[1].syncs == 1
        assert count_launches(lambda: scores.softmax(-1))[1].syncs == 0
