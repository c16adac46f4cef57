"""Load a trained model from a checkpoint directory, its `latest` file, or a run directory."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_model

WEIGHTS = "model.safetensors"


def read_config_section(checkpoint: Path, section: str) -> dict:
    """One top-level section (model, data, train, task, ...) of a checkpoint's resolved config.yaml, raw.
    Reading only the section a tool needs keeps checkpoints with since-renamed keys elsewhere usable."""
    raw = yaml.safe_load((checkpoint / "config.yaml").read_text()) or {}
    return raw.get(section) or {}


def read_model_config(checkpoint: Path):
    """The ModelConfig stored in a checkpoint's resolved config.yaml."""
    from .config import ModelConfig

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model_raw = read_config_section(checkpoint, "model")
    unknown = sorted(set(model_raw) - fields)
    if unknown:
        raise ValueError(f"{checkpoint}/config.yaml has model keys this code does not know: {unknown}; "
                         f"it was written by a newer version of the code")
    cfg = ModelConfig(**model_raw)
    cfg.validate()
    return cfg


def load_weights(model: torch.nn.Module, checkpoint: Path, strict: bool = True) -> None:
    """Load a verified checkpoint's weights into `model`: model.safetensors, or DeepSpeed's files of any ZeRO
    stage consolidated to fp32 (which needs deepspeed installed)."""
    from trainer.checkpoint import CheckpointError

    if (checkpoint / WEIGHTS).is_file():
        load_model(model, str(checkpoint / WEIGHTS), strict=strict)
        return
    from trainer.deepspeed_engine import consolidated_state_dict, is_deepspeed_checkpoint

    if not is_deepspeed_checkpoint(checkpoint):
        raise CheckpointError(f"checkpoint {checkpoint} has neither {WEIGHTS} nor a deepspeed/ directory")
    state = consolidated_state_dict(checkpoint)
    tied = {name for name in model.state_dict() if name not in state and _tied_source(model, name) in state}
    for name in tied:  # weights tied to another parameter are stored once
        state[name] = state[_tied_source(model, name)]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this model: missing {missing}, unexpected "
                              f"{unexpected}")


def _tied_source(model: torch.nn.Module, name: str) -> str | None:
    """The first state-dict name sharing storage with `name`, if another one does."""
    state = model.state_dict(keep_vars=True)
    target = state[name]
    for other, tensor in state.items():
        if other != name and tensor is target:
            return other
    return None


def from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", strict: bool = True):
    """Build the model a checkpoint describes and load its weights (verified against the manifest)."""
    from trainer.checkpoint import resolve

    return model_from_dir(resolve(path), device, strict)


def model_from_dir(checkpoint: Path, device: str | torch.device = "cpu", strict: bool = True):
    """from_checkpoint for a directory `trainer.checkpoint.resolve` already returned (verified once: verifying
    hashes every file, which is slow for large checkpoints)."""
    from .lm import LanguageModel

    model = LanguageModel(read_model_config(checkpoint))
    load_weights(model, checkpoint, strict=strict)
    return model.to(device).eval()
