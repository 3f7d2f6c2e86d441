"""Saved PLADIS pipelines name their stock diffusers class, so any diffusers install loads the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path


def stock_pipeline_class(cls: type) -> type:
    """The nearest diffusers class in `cls`'s MRO: what a PLADIS pipeline is, minus the call-time change."""
    for base in cls.__mro__:
        if base.__module__.split(".")[0] == "diffusers":
            return base
    raise TypeError(f"{cls.__name__} does not subclass a diffusers pipeline")


class SavesAsStockPipeline:
    """Mixin: `save_pretrained` writes the stock class as `model_index.json`'s `_class_name`.

    PLADIS changes no weights, components or config, only the call. A folder naming the PLADIS
    class would make `DiffusionPipeline.from_pretrained` fail (diffusers does not know it), while
    the stock name loads everywhere, and the PLADIS classes load it as they load hub folders.
    """

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write the pipeline config (`model_index.json`) as diffusers does, naming the stock class."""
        config = json.loads(self.to_json_string())
        config["_class_name"] = stock_pipeline_class(type(self)).__name__
        Path(json_file_path).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
