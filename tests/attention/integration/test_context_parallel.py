"""PLADIS on several GPUs with diffusers' context parallelism, on CPU ranks: every family whose transformer has a
`_cp_plan` (FLUX.1, FLUX.2, Qwen-Image, LTX-Video, Wan 2.x) under Ulysses and ring attention, with the text masks
these families take, gives the single-process output to float32 rounding, stock and with PLADIS (also in the
single-stream blocks); λ = 0 leaves the stock parallel output bit for bit; what cannot be exact raises, naming the
family and the parallel config. Ranks are forked gloo processes (`tests/context_parallel_ranks.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import ContextParallelConfig, ParallelConfig, TensorParallelConfig
from diffusers.models._modeling_parallel import ContextParallelInput
from PIL import Image
from torch._subclasses.fake_tensor import FakeTensorMode

from attention import apply_pladis
from attention.integration.call_context import LayerCall
from attention.integration.context_parallel import context_parallel_attention, forward_op_with_log_normaliser
from attention.settings import PLADISSettings
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from scripts.dev.build_tiny_assets import build_tiny_flux, tiny_flux_transformer
from tests.context_parallel_ranks import as_numpy, parallelise, run_on_ranks
from tests.family_runs import one_thread  # noqa: F401
from tests.scripts.examples.test_examples import LABEL_HEIGHT
from tests.tiny import processors_by_name, same_processor_objects
from tests.tiny_denoisers import DENOISERS, _seeded
from tests.tiny_pipelines import PIPELINES, build_tiny_wan

TEXT, IMAGE = 8, 16  # tokens: both divide into 2 and 4 equal shards
PADDED = 3  # the second sample's last text tokens are padding where the family takes a text mask
TOLERANCE = 1e-5  # float32 rounding of a different summation order
MODES = {"ulysses": {"ulysses_degree": 2}, "ring": {"ring_degree": 2}}


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def _text_mask() -> torch.Tensor:
    mask = torch.ones(2, TEXT, dtype=torch.bool)
    mask[1, TEXT - PADDED :] = False  # only the last shard of sample 1 holds padding: the shards' masks differ
    return mask


def _grid_ids(axes: int) -> torch.Tensor:
    axis = torch.arange(4, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    return torch.cat([torch.zeros(IMAGE, axes - 2), grid], dim=1)


def _flux_inputs() -> dict:
    generator = _generator()
    return {
        "hidden_states": torch.randn(2, IMAGE, 64, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 32, generator=generator),
        "pooled_projections": torch.randn(2, 32, generator=generator),
        "timestep": torch.tensor([0.5, 0.5]),
        "img_ids": _grid_ids(3),
        "txt_ids": torch.zeros(TEXT, 3),
    }


def _flux2_inputs() -> dict:
    generator = _generator()
    return {
        "hidden_states": torch.randn(2, IMAGE, 16, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 32, generator=generator),
        "timestep": torch.tensor([0.5, 0.5]),
        "img_ids": _grid_ids(4)[None],  # (1, N, 4): its plan splits the ids along dim 1
        "txt_ids": torch.zeros(1, TEXT, 4),
    }


def _qwen_inputs() -> dict:
    generator = _generator()
    return {
        "hidden_states": torch.randn(2, IMAGE, 16, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 32, generator=generator),
        "encoder_hidden_states_mask": _text_mask(),
        "timestep": torch.tensor([0.5, 0.5]),
        "img_shapes": [[(1, 4, 4)]] * 2,
    }


def _ltx_inputs() -> dict:
    generator = _generator()
    return {
        "hidden_states": torch.randn(2, IMAGE, 8, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 16, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "encoder_attention_mask": _text_mask().long(),
        "num_frames": 1,
        "height": 4,
        "width": 4,
    }


def _wan_inputs() -> dict:
    generator = _generator()
    return {
        "hidden_states": torch.randn(2, 4, 1, 8, 8, generator=generator),  # 16 video tokens after 1×2×2 patches
        "timestep": torch.tensor([500, 500]),
        "encoder_hidden_states": torch.randn(2, 7, 16, generator=generator),  # whole on every rank: any length
    }


@dataclass(frozen=True)
class Family:
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], dict]
    single_blocks: bool = False
    text_mask: str | None = None  # the call argument holding the text mask, for families that take one


FAMILIES = {
    "FLUX.1": Family(_seeded(lambda: tiny_flux_transformer(False)), _flux_inputs, single_blocks=True),
    "FLUX.2": Family(DENOISERS["flux2"].build, _flux2_inputs, single_blocks=True),
    "Qwen-Image": Family(DENOISERS["qwen-image"].build, _qwen_inputs, text_mask="encoder_hidden_states_mask"),
    "LTX-Video": Family(DENOISERS["ltx-video"].build, _ltx_inputs, text_mask="encoder_attention_mask"),
    "Wan 2.x": Family(DENOISERS["wan"].build, _wan_inputs),
}
# diffusers 0.42.1's own context-parallel attention with a text mask whose shards differ: its ring pass applies
# each rank's mask to every rank's keys (a wrong output), and its Ulysses pass keeps LTX-Video's per-head mask
# whole while it splits the heads (an error). PLADIS layers do not go through that path and are exact there.
STOCK_WRONG_WITH_TEXT_MASK = {("Qwen-Image", "ring"), ("LTX-Video", "ring"), ("LTX-Video", "ulysses")}


def without_text_mask(family: Family, inputs: dict) -> dict:
    return inputs if family.text_mask is None else {**inputs, family.text_mask: None}


def variants(family: Family) -> dict[str, tuple[dict | None, bool]]:
    """The calls compared: name → (`apply_pladis` options or None for stock, with the text mask)."""
    calls = {
        "stock": (None, False),
        "pladis": ({"pladis_scale": 2.0}, True),
        "sparsemax": ({"pladis_scale": 1.5, "pladis_alpha": 2.0}, True),
    }
    if family.single_blocks:
        calls["single blocks"] = ({"pladis_scale": 2.0, "pladis_single_blocks": True}, True)
    if family.text_mask is not None:
        calls["stock, text mask"] = (None, True)
    return calls


def forward(model: torch.nn.Module, inputs: dict, options: dict | None) -> torch.Tensor:
    with torch.no_grad():
        if options is None:
            return model(**inputs, return_dict=False)[0]
        with apply_pladis(model, **options):
            return model(**inputs, return_dict=False)[0]


def outputs(model: torch.nn.Module, family: Family) -> dict:
    """Every variant's output (a failing stock call as its error message)."""
    results = {}
    for call, (options, masked) in variants(family).items():
        inputs = family.inputs() if masked else without_text_mask(family, family.inputs())
        try:
            results[call] = as_numpy(forward(model, inputs, options))
        except RuntimeError as error:
            if options is not None:
                raise
            results[call] = f"{type(error).__name__}: {error}"
    return results


@pytest.fixture(scope="module")
def built() -> dict:
    """Each family's model (built once; the ranks fork from it) and its single-process outputs."""
    models = {}
    for name, family in FAMILIES.items():
        model = family.build()
        models[name] = (model, outputs(model, family))
    return models


def parallel_outputs(models: dict, config) -> Callable[[int], dict]:
    """The work of one rank: each family's variants under `config`, then λ = 0 and stock again."""

    def work(rank: int) -> dict:
        results = {}
        for name, model in models.items():
            family = FAMILIES[name]
            parallelise(model, config)
            before = processors_by_name(model)
            results[name] = outputs(model, family)
            stock_inputs = without_text_mask(family, family.inputs())
            results[name]["λ = 0"] = as_numpy(forward(model, stock_inputs, {"pladis_scale": 0.0}))
            results[name]["stock after"] = as_numpy(forward(model, stock_inputs, None))
            assert same_processor_objects(model, before)
        return results

    return work


def max_error(got: np.ndarray | str, want: np.ndarray) -> float:
    return float("inf") if isinstance(got, str) else float(np.abs(got - want).max())


def assert_single_process_outputs(ranks: list[dict], built: dict, mode: str | None) -> None:
    """Every rank has the same outputs, those of one process (stock with a text mask: where diffusers' own
    attention is right), PLADIS changes them, and λ = 0 and stock after PLADIS calls are stock bit for bit."""
    for rank in ranks[1:]:
        assert rank.keys() == ranks[0].keys()
        for name, results in rank.items():
            for call, output in results.items():
                np.testing.assert_array_equal(output, ranks[0][name][call], err_msg=f"{name}: ranks differ: {call}")
    for name, got in ranks[0].items():
        single = built[name][1]
        for call, want in single.items():
            error = max_error(got[call], want)
            if call == "stock, text mask" and (name, mode) in STOCK_WRONG_WITH_TEXT_MASK:
                assert error > 1e-2, f"{name}: diffusers' own {mode} attention now takes the text mask right"
                continue
            assert error <= TOLERANCE, f"{name}, {call}: max |parallel − one process| = {error:.2e}"
            if call not in ("stock", "stock, text mask"):
                assert max_error(want, single["stock"]) > 1e-2  # PLADIS changes this model
        np.testing.assert_array_equal(got["λ = 0"], got["stock"])
        np.testing.assert_array_equal(got["stock after"], got["stock"])


@pytest.mark.slow  # forked gloo ranks
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_context_parallel_output_is_the_single_process_output(built, name, mode):
    ranks = run_on_ranks(2, parallel_outputs({name: built[name][0]}, ContextParallelConfig(**MODES[mode])))
    assert_single_process_outputs(ranks, built, mode)


@pytest.mark.slow  # forked gloo ranks
def test_ring_and_ulysses_together_on_four_ranks(built):
    config = ContextParallelConfig(ring_degree=2, ulysses_degree=2)
    ranks = run_on_ranks(4, parallel_outputs({name: model for name, (model, _) in built.items()}, config))
    assert_single_process_outputs(ranks, built, "ring")  # the ring pass takes each rank's text mask as is


TENSOR_PARALLEL = ("FLUX.1", "FLUX.2", "Qwen-Image")  # the families with a `_tp_plan` in diffusers 0.42


@pytest.mark.slow  # forked gloo ranks
def test_tensor_parallelism_gives_the_single_process_output(built):
    """Each rank runs whole attention on its own heads, so the rules need nothing there."""
    models = {name: built[name][0] for name in TENSOR_PARALLEL}
    ranks = run_on_ranks(2, parallel_outputs(models, TensorParallelConfig(tp_degree=2)))
    assert_single_process_outputs(ranks, built, None)


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - set(TENSOR_PARALLEL)))
def test_diffusers_has_no_tensor_parallelism_for_the_other_families(name):
    model = FAMILIES[name].build()
    with pytest.raises(ValueError, match="`_tp_plan` must be set"):
        model.enable_parallelism(config=TensorParallelConfig(tp_degree=2))


@pytest.mark.slow  # forked gloo ranks
@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_pladis_kernel_paths_run_per_rank(built, kernel):
    """The joint rule (FLUX.1 with its single-stream blocks) and the cross-attention rule (LTX-Video, text mask)
    with the call's settings forcing the sync-free torch path or the Triton kernels (Triton's interpreter here)."""
    calls = {
        "FLUX.1": PLADISSettings(2.0, pladis_single_blocks=True, kernel=kernel),
        "LTX-Video": PLADISSettings(2.0, kernel=kernel),
    }

    def work(rank: int) -> dict:
        results = {}
        for name, settings in calls.items():
            model = parallelise(built[name][0], ContextParallelConfig(ring_degree=2))
            results[name] = as_numpy(forward(model, FAMILIES[name].inputs(), {"pladis_scale": settings}))
        return results

    got = run_on_ranks(2, work)[0]
    assert max_error(got["FLUX.1"], built["FLUX.1"][1]["single blocks"]) <= TOLERANCE
    assert max_error(got["LTX-Video"], built["LTX-Video"][1]["pladis"]) <= TOLERANCE


def test_what_cannot_be_exact_raises_naming_the_family_and_the_config(built):
    """Uneven shards (`ulysses_anything`), packed per-sample sequences (Z-Image under a plan of one's own) and a
    plan splitting the text below the call its length is recorded from (with single-stream blocks on) raise at
    `apply_pladis`, before any step, and leave the model as it was."""
    flux = built["FLUX.1"][0]
    deeper = {  # a plan of one's own that splits FLUX's text in its first block instead of at the call
        "transformer_blocks.0": {"encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
    }
    cases = {
        "FLUX.1, ulysses_anything": (flux, ContextParallelConfig(ulysses_degree=2, ulysses_anything=True), None, {}),
        "Z-Image": (DENOISERS["z-image"].build(), ContextParallelConfig(ring_degree=2), {"": {}}, {}),
        "FLUX.1, text split deeper": (
            FAMILIES["FLUX.1"].build(),
            ContextParallelConfig(ulysses_degree=2),
            deeper,
            {"pladis_single_blocks": True},
        ),
    }

    def work(rank: int) -> dict:
        errors = {}
        for case, (model, config, plan, options) in cases.items():
            with mock.patch.object(torch.accelerator, "device_count", return_value=1):
                model.enable_parallelism(config=config, cp_plan=plan)
            before = {name: module.processor for name, module in model.named_modules() if hasattr(module, "processor")}
            with pytest.raises(ValueError) as raised:
                with apply_pladis(model, 2.0, **options):
                    pass
            for name, module in model.named_modules():
                assert getattr(module, "processor", None) is before.get(name)
            errors[case] = str(raised.value)
            if options:  # the double-stream blocks alone are told their (sharded) text: nothing to refuse
                with apply_pladis(model, 2.0):
                    pass
        return errors

    errors = run_on_ranks(2, work)[0]
    assert "FLUX.1" in errors["FLUX.1, ulysses_anything"]
    assert (
        "ContextParallelConfig(ring_degree=1, ulysses_degree=2, ulysses_anything=True)"
        in errors["FLUX.1, ulysses_anything"]
    )
    assert "Z-Image" in errors["Z-Image"] and "ring_degree=2" in errors["Z-Image"]
    assert "packed" in errors["Z-Image"]
    assert "transformer_blocks.0" in errors["FLUX.1, text split deeper"]


def _parallel_config(**degrees) -> ParallelConfig:
    return ParallelConfig(context_parallel_config=ContextParallelConfig(**degrees))


def test_per_query_masks_and_autograd_raise_before_any_collective():
    layer = LayerCall(PLADISSettings(2.0), "leading", 2, family="FLUX.1")
    query, key, value = (torch.randn(1, 2, 4, 8) for _ in range(3))
    with pytest.raises(ValueError, match=r"FLUX\.1 under ContextParallelConfig\(ring_degree=2, ulysses_degree=1\)"):
        context_parallel_attention(
            layer, query, key, value, torch.zeros(1, 1, 4, 4), None, _parallel_config(ring_degree=2)
        )
    with pytest.raises(ValueError, match="autograd"):
        context_parallel_attention(
            layer, query.requires_grad_(), key, value, None, None, _parallel_config(ulysses_degree=2)
        )


PIPELINE_CALL = {"prompt": "a photo of a red cube", "num_inference_steps": 2, "output_type": "np"}


def pipeline_images(pipe, calls: dict[str, Callable], config) -> Callable[[int], dict]:
    def work(rank: int) -> dict:
        parallelise(pipe.transformer, config)
        return {name: call(pipe) for name, call in calls.items()}

    return work


@pytest.mark.slow  # forked gloo ranks
def test_flux_pipeline_on_two_ranks_gives_the_single_process_image():
    """`PLADISFluxPipeline(..., pladis_scale=2)` and `apply_pladis(pipe)` with single-stream blocks, Ulysses."""
    pipe = PLADISFluxPipeline(**build_tiny_flux(False).components)
    pipe.set_progress_bar_config(disable=True)
    options = {**PIPELINE_CALL, "height": 64, "width": 64, "max_sequence_length": 16}  # 256 image, 16 text tokens

    def apply(pipe):
        with apply_pladis(pipe, 2.0, pladis_single_blocks=True):
            return pipe(**options, generator=torch.Generator().manual_seed(0)).images

    calls = {
        "stock": lambda pipe: pipe(**options, generator=torch.Generator().manual_seed(0)).images,
        "pipeline": lambda pipe: pipe(**options, pladis_scale=2.0, generator=torch.Generator().manual_seed(0)).images,
        "apply_pladis": apply,
    }
    single = {name: call(pipe) for name, call in calls.items()}
    got = run_on_ranks(2, pipeline_images(pipe, calls, ContextParallelConfig(ulysses_degree=2)))[0]
    for name, image in single.items():
        assert np.abs(got[name] - image).max() <= TOLERANCE, name
    assert np.abs(single["pipeline"] - single["stock"]).max() > 1e-3


@pytest.mark.slow  # forked gloo ranks
def test_wan_pipeline_on_two_ranks_gives_the_single_process_video():
    """`apply_pladis(pipe)` on Wan 2.x text-to-video (cross-attention on whole text), ring attention."""
    pipe = build_tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    options = {**PIPELINE_CALL, **PIPELINES["wan"][1]}

    def apply(pipe):
        with apply_pladis(pipe, 2.0):
            return pipe(**options, generator=torch.Generator().manual_seed(0)).frames

    calls = {"stock": lambda pipe: pipe(**options, generator=torch.Generator().manual_seed(0)).frames, "apply": apply}
    single = {name: call(pipe) for name, call in calls.items()}
    got = run_on_ranks(2, pipeline_images(pipe, calls, ContextParallelConfig(ring_degree=2)))[0]
    for name, video in single.items():
        assert np.abs(got[name] - video).max() <= TOLERANCE, name
    assert np.abs(single["apply"] - single["stock"]).max() > 1e-3


@pytest.mark.slow  # forked gloo ranks
def test_many_gpus_example_on_two_ranks_writes_the_single_process_grid(tmp_path):
    """`scripts/examples/flux_dev_many_gpus.py` (what `torchrun` runs on each GPU) on two CPU ranks, Ulysses:
    process 0 writes the grid one process writes (PNG pixels, ±1 for float rounding), the others none."""
    from scripts.examples import flux_dev_many_gpus

    options = ["--tiny", "--steps", "1", "--device", "cpu"]
    single = np.asarray(Image.open(flux_dev_many_gpus.main([*options, "--out", str(tmp_path / "one.png")])))

    def work(rank: int) -> np.ndarray | None:
        out = tmp_path / "ulysses.png"
        with mock.patch.object(torch.accelerator, "device_count", return_value=1):
            written = flux_dev_many_gpus.main([*options, "--parallel", "ulysses", "--out", str(out)])
        assert (written == out) if rank == 0 else written is None
        return None if written is None else np.asarray(Image.open(written))

    grid = run_on_ranks(2, work)[0]
    panels, single_panels = (grid_panels(image).astype(int) for image in (grid, single))  # labels name the mode
    assert panels.shape == single_panels.shape and np.abs(panels - single_panels).max() <= 1


def grid_panels(grid: np.ndarray, count: int = 2, side: int = 256) -> np.ndarray:
    """The `count` side-by-side panels of a grid (each `side` pixels: the tiny 64×64 images enlarged ×4), side by
    side, without the labels above them, the caption below or the label-widened cells' margins."""
    cell = grid.shape[1] // count
    return np.concatenate(
        [grid[LABEL_HEIGHT : LABEL_HEIGHT + side, index * cell : index * cell + side] for index in range(count)], axis=1
    )


@pytest.mark.slow  # forked gloo ranks
@pytest.mark.parametrize("mode", sorted(MODES))
def test_cost_script_times_the_layer_and_the_text_gather(mode):
    from scripts.dev import context_parallel_cost

    sizes = ["--heads", "2", "--head-dim", "8", "--text", "8", "--image", "16", "--repeats", "1", "--mode", mode]
    timings = run_on_ranks(2, lambda rank: context_parallel_cost.main(sizes))[0]
    assert timings["gather_mb"] == 0.5 * 8 * 2 * (8 + 8) * 4 / 2**20  # half the text's K and V come from the other
    assert timings["pladis_ms"] > 0 and timings["gather_ms"] > 0
    assert ("stock_ms" in timings) == (mode == "ulysses")


def test_dense_op_of_a_ring_step_on_cuda_makes_no_host_sync():
    """The forward op PLADIS gives diffusers' context-parallel attention, on CUDA tensors under `FakeTensorMode`
    (any op reading a value back to the host raises there): bfloat16 without a mask through CUDA's flash kernel,
    with a text mask (the ring step's block of it) through the materialised path; both return the log-sum-exp."""
    config = SimpleNamespace(_ring_local_rank=1, ring_degree=2, _ulysses_local_rank=0)
    with mock.patch.object(torch.cuda, "get_device_capability", return_value=(9, 0)), FakeTensorMode():
        query, key, value = (torch.randn(2, 8, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        whole_mask = torch.zeros(2, 1, 1, 16, device="cuda", dtype=torch.bfloat16)  # the keys of both ring blocks
        for mask in (None, whole_mask):
            output, log_normaliser = forward_op_with_log_normaliser(mask, config)(
                None, query, key, value, scale=0.125, return_lse=True
            )
            assert output.shape == query.shape and output.dtype == torch.bfloat16 and output.is_cuda
            assert log_normaliser.shape == (2, 8, 4) and log_normaliser.dtype == torch.float32
