"""A save that fails for lack of space leaves the previous checkpoint intact and stops with a clear message."""
import errno

import pytest
import torch

import trainer.checkpointing
from trainer.checkpoint import CheckpointError, find_latest, verify
from trainer.config import load_config
from trainer.run import train

TINY = ["task.eval_samples=16", "task.eval_max_len=48", "model.hidden_size=32", "train.micro_batch_size=8",
        "train.max_steps=6", "train.warmup_steps=1", "train.save_every=2", "log.progress_bar=false",
        "log.tensorboard=false", "log.plot=false"]


def test_disk_full_during_a_save(monkeypatch, tmp_path):
    real_save, calls = torch.save, {"n": 0}

    def save(obj, path, *args, **kwargs):  # the second checkpoint runs out of space half way through
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(trainer.checkpointing.torch, "save", save)
    cfg = load_config("configs/state_tracking/parity.yaml", [*TINY, f"out_dir={tmp_path}"])
    with pytest.raises(CheckpointError, match=r"could not write checkpoint step-00000004 .*No space left on device.*"
                                              r"the newest complete one is step-00000002.*Free disk space"):
        train(cfg, log=lambda m: None)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]  # no half-written directory
    verify(root / "step-00000002")
    assert find_latest(root) == root / "step-00000002"
    monkeypatch.setattr(trainer.checkpointing.torch, "save", real_save)  # space freed: the run resumes
    summary = train(cfg, log=lambda m: None)
    assert summary.last_checkpoint == root / "step-00000006"
