"""PLADIS with `fuse_qkv_projections`: the fused processors (`FusedAttnProcessor2_0`, SD3's
`FusedJointAttnProcessor2_0`) are replaced on the text-attention layers for the call, the image equals the
unfused PLADIS image (diffusers keeps the separate projections PLADIS reads), and the fused ones come back."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.models.attention_processor import FusedAttnProcessor2_0, FusedJointAttnProcessor2_0

from attention import PLADISAttnProcessor, PLADISJointAttnProcessor, apply_pladis
from tests.family_runs import build, denoiser, layers_of_type, one_thread, processors_seen, run_family  # noqa: F401
from tests.tiny import processors_by_name, same_processor_objects

# SD3 without dual attention: on SD3.5's self-attention `attn2`, diffusers 0.42's FusedJointAttnProcessor2_0
# itself fails (it needs text), with or without PLADIS.
CASES = {
    "sd15": (FusedAttnProcessor2_0, PLADISAttnProcessor),
    "sd3": (FusedJointAttnProcessor2_0, PLADISJointAttnProcessor),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_fused_projections_give_the_unfused_pladis_image(family):
    fused_type, pladis_type = CASES[family]
    pipe = build(family)
    with apply_pladis(pipe, 2.0):
        unfused = run_family(pipe, family)
    stock = run_family(pipe, family)
    denoiser(pipe).fuse_qkv_projections()
    assert layers_of_type(denoiser(pipe).attn_processors, fused_type)
    before = processors_by_name(denoiser(pipe))
    with apply_pladis(pipe, 2.0), processors_seen(denoiser(pipe)) as seen:
        fused = run_family(pipe, family)
    np.testing.assert_allclose(fused, unfused, atol=1e-5)
    assert np.abs(fused - stock).max() > 1e-3
    assert layers_of_type(seen, pladis_type)
    assert layers_of_type(seen, pladis_type) == layers_of_type(before, fused_type) - layers_of_type(seen, fused_type)
    assert same_processor_objects(denoiser(pipe), before)  # still fused after the call
    denoiser(pipe).unfuse_qkv_projections()
    np.testing.assert_allclose(run_family(pipe, family), stock, atol=1e-5)
