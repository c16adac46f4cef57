"""Run options: train.max_minutes (a launch that runs out of wall time stops at a step boundary with a
checkpoint, and the next launch continues exactly where it stopped) and train.init_from."""
import json

from trainer.config import load_config
from trainer.run import train

TINY = ["task.supervision=final", "task.eval_samples=16", "task.eval_max_len=48", "model.hidden_size=32",
        "train.micro_batch_size=8", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=1",
        "train.save_every=100", "log.progress_bar=false", "log.tensorboard=false", "log.plot=false"]


def run(out_dir, *overrides, messages=None):
    cfg = load_config("configs/state_tracking/parity.yaml", [*TINY, f"out_dir={out_dir}", *overrides])
    return train(cfg, log=(messages.append if messages is not None else lambda m: None))


def steps(out_dir):
    return [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_budget_stops_with_a_checkpoint_and_the_next_launch_continues(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(whole)
    messages = []
    summary = run(split, "train.max_minutes=1e-9", messages=messages)  # out of time after the first step
    assert summary.last_checkpoint.name == "step-00000001"
    assert any("train.max_minutes=1e-09 reached" in m for m in messages)
    run(split)
    assert steps(split) == [1, 2, 3, 4]
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (whole, split)]
    assert losses[0] == losses[1]


def test_init_from_may_switch_the_eigenvalue_range_but_not_shapes(tmp_path):
    """A new run starts from [0, 1] weights with allow_neg_eigval=true (same shapes); a width change is refused."""
    import pytest
    import torch
    from safetensors.torch import load_file

    from trainer.checkpoint import CheckpointError

    run(tmp_path / "base", "model.allow_neg_eigval=false", "train.max_steps=2")
    messages = []
    run(tmp_path / "neg", "model.allow_neg_eigval=true", "train.max_steps=1", "train.warmup_steps=0",
        f"train.init_from={tmp_path / 'base'}", "optim.grad_clip=0", "train.lr=1e-12", messages=messages)
    assert any("allow_neg_eigval changes from False to True" in m for m in messages)
    base = load_file(tmp_path / "base/checkpoints/step-00000002/model.safetensors")
    neg = load_file(tmp_path / "neg/checkpoints/step-00000001/model.safetensors")
    assert all(torch.allclose(base[k], neg[k], atol=1e-9) for k in base)  # started from those weights
    with pytest.raises(CheckpointError, match="different model"):
        run(tmp_path / "wide", "model.hidden_size=64", f"train.init_from={tmp_path / 'base'}")
