"""train.max_minutes: a launch that runs out of wall time stops at a step boundary with a checkpoint, and the
next launch continues exactly where it stopped."""
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
