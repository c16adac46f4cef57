"""Load a trained model from a checkpoint directory, its `latest` file, or a run directory."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_model

WEIGHTS = "model.safetensors"


def read_model_config(checkpoint: Path):
    """The ModelConfig stored in a checkpoint's resolved config.yaml."""
    from .config import ModelConfig

    raw = yaml.safe_load((checkpoint / "config.yaml").read_text()) or {}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model_raw = raw.get("model", {})
    unknown = sorted(set(model_raw) - fields)
    if unknown:
        raise ValueError(f"{checkpoint}/config.yaml has model keys this code does not know: {unknown}; "
                         f"it was written by a newer version of the code")
    cfg = ModelConfig(**model_raw)
    cfg.validate()
    return cfg


def from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", strict: bool = True):
    """Build the model a checkpoint describes and load its weights (verified against the manifest)."""
    from trainer.checkpoint import resolve

    from .lm import LanguageModel

    checkpoint = resolve(path)
    model = LanguageModel(read_model_config(checkpoint))
    load_model(model, str(checkpoint / WEIGHTS), strict=strict)
    return model.to(device).eval()
