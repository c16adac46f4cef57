"""Saving the full training state every `train.save_every` steps and at the end, and restoring it exactly."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import save_config
from .loop import Callback, StepResult, Trainer

# model keys that choose how, not what, is computed: a run may resume with another value
RUNTIME_MODEL_KEYS = {"kernel_backend"}
# keys that change no parameter's shape: a new run (train.init_from) may start from weights trained with another
# value, e.g. a published [0, 1] model continued with allow_neg_eigval=true
INIT_FROM_FREE_KEYS = RUNTIME_MODEL_KEYS | {"allow_neg_eigval", "initializer_range", "dt_min", "dt_max",
                                            "dt_init_floor"}
TRAINER_STATE = "trainer_state.json"


def engine_kind(trainer: Trainer) -> str:
    return "deepspeed" if trainer.cfg.train.deepspeed else "plain"


def save_training_state(trainer: Trainer, root: Path) -> Path:
    """Write one checkpoint of everything needed to continue bit for bit (a collective call under a process
    group: every rank adds its data position and RNG states, rank 0 the rest)."""
    dist, rank = trainer.dist, trainer.dist.rank

    def write(tmp: Path) -> None:
        extra = trainer.engine.save(tmp)
        torch.save(trainer.data.state_dict(), tmp / f"data_state_rank{rank}.pt")
        torch.save(ckpt.rng_state(), tmp / f"rng_state_rank{rank}.pt")
        if dist.is_main:
            state = {"step": trainer.step, "tokens_seen": trainer.tokens_seen, "world_size": dist.world_size,
                     "engine": engine_kind(trainer), "loss_stats": trainer.loss_stats, **extra}
            (tmp / TRAINER_STATE).write_text(json.dumps(state))
            save_config(trainer.cfg, tmp / "config.yaml")
            if trainer.tokenizer is not None:
                trainer.tokenizer.save(tmp / "tokenizer")

    return ckpt.write_checkpoint(root, trainer.step, trainer.tokens_seen, write, dist=dist)


def check_same_model(path: Path, model_cfg, free: set = RUNTIME_MODEL_KEYS) -> dict:
    """CheckpointError unless the checkpoint's model settings equal `model_cfg` apart from the `free` keys;
    returns the free keys that differ, as {key: (checkpoint's, config's)}."""
    from model.loading import read_model_config

    saved, current = vars(read_model_config(path)), vars(model_cfg)
    changed = {k: (saved[k], current[k]) for k in saved if saved[k] != current[k]}
    diff = {k: v for k, v in changed.items() if k not in free}
    if diff:
        raise ckpt.CheckpointError(
            f"checkpoint {path} was trained with a different model (checkpoint vs config: {diff}); resume with "
            f"the same model settings, or start a new run in another out_dir (train.resume=never)")
    return {k: v for k, v in changed.items() if k in free}


def restore_training_state(trainer: Trainer, path: Path) -> None:
    """Load a verified checkpoint into the trainer: engine (model, optimizer, schedule), data and RNGs."""
    check_same_model(path, trainer.cfg.model)
    state = json.loads((path / TRAINER_STATE).read_text())
    saved_world, world = state.get("world_size", 1), trainer.dist.world_size
    if saved_world != world:
        raise ckpt.CheckpointError(
            f"checkpoint {path} was written by {saved_world} processes but this run has {world}: each process's "
            f"position in the data stream cannot be mapped to another count. Resume with {saved_world} processes, "
            f"or start a new run (new out_dir) from its weights with train.init_from={path}")
    saved_engine, engine = state.get("engine", "plain"), engine_kind(trainer)
    if saved_engine != engine:
        how = "with train.deepspeed set" if saved_engine == "deepspeed" else "without DeepSpeed"
        raise ckpt.CheckpointError(
            f"checkpoint {path} was written {how}; resume the same way, or start a new run (new out_dir) from "
            f"its weights with train.init_from={path}")
    trainer.engine.load(path, state)
    trainer.step, trainer.tokens_seen = state["step"], state["tokens_seen"]
    trainer.loss_stats = state.get("loss_stats")
    rank = trainer.dist.rank
    data_state = path / f"data_state_rank{rank}.pt"
    if not data_state.is_file():
        raise ckpt.CheckpointError(f"checkpoint {path} has no data state for rank {rank}; it is incomplete")
    trainer.data.load_state_dict(torch.load(data_state, weights_only=True))
    ckpt.set_rng_state(torch.load(path / f"rng_state_rank{rank}.pt", weights_only=True))


class CheckpointSaver(Callback):
    """Saves every `save_every` steps and at the stop step; rotates old checkpoints (rank 0)."""

    def __init__(self, root: Path, save_every: int, keep_last_n: int | None, log=print):
        self.root = root
        self.save_every = save_every
        self.keep_last_n = keep_last_n
        self.log = log
        self.last_saved: Path | None = None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if result.step % self.save_every == 0 or result.step == trainer.stop_step:
            self.last_saved = save_training_state(trainer, self.root)
            if trainer.dist.is_main:
                ckpt.rotate(self.root, self.keep_last_n)
