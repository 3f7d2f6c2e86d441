"""The overhead measurement compares like with like: its processor variants compute the same attention output
(the copied processor of before, the stock one under a TorchFunctionMode, the installed PLADIS processor)."""

from __future__ import annotations

import torch

from attention import apply_pladis
from scripts.dev import processor_overhead


def test_the_variants_compute_the_same_output():
    attn, hidden, text = processor_overhead.tiny_case()
    with torch.no_grad():
        outputs = {name: call() for name, call in processor_overhead.variants(attn, hidden, text, 2.0, 1.5).items()}
        with apply_pladis(processor_overhead._single_layer_denoiser(attn), 2.0, 1.5):
            outputs["installed"] = attn.processor(attn, hidden, text)
    stock = outputs.pop("stock AttnProcessor2_0")
    for name, output in outputs.items():
        torch.testing.assert_close(output, outputs["installed"], atol=1e-6, rtol=1e-5, msg=name)
    assert (stock - outputs["installed"]).abs().max() > 1e-4  # PLADIS really ran in every variant


def test_measure_reports_every_variant():
    assert set(processor_overhead.measure(calls=1, rounds=1)) == {
        "stock AttnProcessor2_0",
        "copied processor (before)",
        "TorchFunctionMode around stock",
        "installed PLADISAttnProcessor (now)",
    }
