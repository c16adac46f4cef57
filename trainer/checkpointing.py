"""Saving the full training state every `train.save_every` steps and at the end, and restoring it exactly."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from . import checkpoint as ckpt
from .config import save_config
from .loop import Callback, StepResult, Trainer

# model keys that choose how, not what, is computed: a run may resume with another value
RUNTIME_MODEL_KEYS = {"kernel_backend"}


def save_training_state(trainer: Trainer, root: Path, rank: int = 0) -> Path:
    """Write one checkpoint of everything needed to continue bit for bit."""

    def write(tmp: Path) -> None:
        save_model(trainer.model, str(tmp / "model.safetensors"))
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"step": trainer.step, "tokens_seen": trainer.tokens_seen,
                 "scheduler": trainer.scheduler.state_dict()}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        (tmp / f"data_state_rank{rank}.json").write_text(json.dumps(trainer.data.state_dict()))
        torch.save(ckpt.rng_state(), tmp / f"rng_state_rank{rank}.pt")
        save_config(trainer.cfg, tmp / "config.yaml")
        if trainer.tokenizer is not None:
            trainer.tokenizer.save(tmp / "tokenizer")

    return ckpt.write_checkpoint(root, trainer.step, trainer.tokens_seen, write)


def restore_training_state(trainer: Trainer, path: Path, rank: int = 0) -> None:
    """Load a verified checkpoint into the trainer, its model, optimizer, scheduler, data and RNGs."""
    from model.loading import read_model_config

    saved, current = vars(read_model_config(path)), vars(trainer.cfg.model)
    diff = {k: (saved[k], current[k]) for k in saved if saved[k] != current[k] and k not in RUNTIME_MODEL_KEYS}
    if diff:
        raise ckpt.CheckpointError(
            f"checkpoint {path} was trained with a different model (checkpoint vs config: {diff}); resume with "
            f"the same model settings, or start a new run in another out_dir (train.resume=never)")
    load_model(trainer.model, str(path / "model.safetensors"), strict=True, device=str(trainer.device))
    trainer.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=trainer.device,
                                                 weights_only=True))
    state = json.loads((path / "trainer_state.json").read_text())
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step, trainer.tokens_seen = state["step"], state["tokens_seen"]
    data_state = path / f"data_state_rank{rank}.json"
    if not data_state.is_file():
        raise ckpt.CheckpointError(f"checkpoint {path} has no data state for rank {rank}; it was written with "
                                   f"a different number of processes")
    trainer.data.load_state_dict(json.loads(data_state.read_text()))
    ckpt.set_rng_state(torch.load(path / f"rng_state_rank{rank}.pt", weights_only=True))


class CheckpointSaver(Callback):
    """Saves every `save_every` steps and at the stop step; rotates old checkpoints."""

    def __init__(self, root: Path, save_every: int, keep_last_n: int | None, log=print):
        self.root = root
        self.save_every = save_every
        self.keep_last_n = keep_last_n
        self.log = log
        self.last_saved: Path | None = None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if result.step % self.save_every == 0 or result.step == trainer.stop_step:
            self.last_saved = save_training_state(trainer, self.root)
            ckpt.rotate(self.root, self.keep_last_n)
