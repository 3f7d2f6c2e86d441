"""PLADIS attention: exact sparse maps, the model-family registry, the PLADIS processors, and their install/restore.

The user API is what the README's "The `attention` API" section lists: `from attention import apply_pladis,
PLADISAttnProcessor`. Everything else is internal and imported from its submodule by the code that uses it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the submodule that defines it. They are imported on first use (PEP 562), so importing a
# light submodule such as `attention.validation` (what the command-line tools need to build and check their
# options) loads neither torch nor diffusers: `--help` answers at once.
_EXPORTS = {
    "TextLength": "integration.text_layout",
    "FAMILIES": "integration.diffusers_families",
    "Family": "integration.diffusers_families",
    "TextAttention": "integration.diffusers_families",
    "family_of": "integration.diffusers_families",
    "register_family": "integration.diffusers_families",
    "recorded_text_length": "integration.text_layout",
    "pladis_scaled_dot_product_attention": "kernels.cross_attention",
    "PLADISSettings": "settings",
    "apply_pladis": "integration.install",
    "pladis_processors": "integration.install",
    "swapped_attn_processors": "integration.install",
    "text_block_pladis_attention": "kernels.text_block",
    "PLADISAttnProcessor": "integration.processors",
    "PLADISFluxAttnProcessor": "integration.processors",
    "PLADISJointAttnProcessor": "integration.processors",
    "PLADISProcessor": "integration.processors",
    "PLADISSanaAttnProcessor": "integration.processors",
    "pladis_processor_class": "integration.processors",
    "entmax_attention": "kernels.sparse_maps",
    "pladis_weights": "kernels.sparse_maps",
    "softmax_attention": "kernels.sparse_maps",
}
__all__ = sorted(_EXPORTS)
_READ_WHEN_ASKED = {"FAMILIES"}  # the registered families now: `register_family` adds to them


def __getattr__(name: str) -> Any:
    """The public name `name`, imported from its submodule the first time it is asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name not in _READ_WHEN_ASKED:
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
