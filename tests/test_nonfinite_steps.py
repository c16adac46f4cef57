"""Non-finite losses: the update is skipped and flagged in metrics.jsonl; too many in a row stop the run with
the checkpoints intact. Loss spikes are flagged."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import trainer.loop
from trainer.config import load_config
from trainer.errors import TrainingError
from trainer.run import train

TINY = ["task.supervision=final", "task.eval_samples=16", "task.eval_max_len=48", "model.hidden_size=32",
        "train.micro_batch_size=8", "train.max_steps=8", "train.warmup_steps=1", "train.log_every=1",
        "train.save_every=2", "log.progress_bar=false", "log.tensorboard=false", "log.plot=false"]


def nan_at(monkeypatch, steps):
    """Make the loss of the given (1-based) optimizer steps NaN, as a diverging model would produce."""
    real, calls = trainer.loop.lm_loss, {"n": 0}

    def loss(logits, targets):
        calls["n"] += 1
        value = real(logits, targets)
        return value * float("nan") if calls["n"] in steps else value

    monkeypatch.setattr(trainer.loop, "lm_loss", loss)


def run(out_dir, *overrides, messages=None):
    cfg = load_config("configs/state_tracking/parity.yaml", [*TINY, f"out_dir={out_dir}", *overrides])
    return train(cfg, log=messages.append if messages is not None else (lambda m: None))


def records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def weights(out_dir, step):
    return load_file(out_dir / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def test_a_nan_step_is_skipped_and_training_goes_on(monkeypatch, tmp_path):
    nan_at(monkeypatch, {3, 4})
    messages = []
    run(tmp_path, messages=messages)
    logged = records(tmp_path)
    assert [r.get("skipped_step", 0) for r in logged] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert all(math.isnan(r["loss"]) for r in logged[2:4]) and all(math.isfinite(r["loss"]) for r in logged[4:])
    assert sum("the update was skipped" in m for m in messages) == 2
    # steps 3 and 4 changed nothing: the weights saved after step 4 are those after step 2
    before, after = weights(tmp_path, 2), weights(tmp_path, 4)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and the schedule did not advance either: step 5 uses step 3's learning rate
    assert logged[4]["lr"] == logged[2]["lr"]
    assert all(torch.isfinite(t).all() for t in weights(tmp_path, 8).values())


def test_too_many_in_a_row_stop_the_run_with_checkpoints_intact(monkeypatch, tmp_path):
    nan_at(monkeypatch, set(range(3, 100)))
    with pytest.raises(TrainingError, match=r"3 non-finite steps in a row \(steps 3-5; train.max_skipped_steps=2\)"):
        run(tmp_path, "train.max_skipped_steps=2")
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert all(torch.isfinite(t).all() for t in weights(tmp_path, 4).values())


def test_loss_spike_is_flagged(monkeypatch, tmp_path):
    real, calls = trainer.loop.lm_loss, {"n": 0}

    def loss(logits, targets):
        calls["n"] += 1
        return real(logits, targets) * (3.0 if calls["n"] == 6 else 1.0)

    monkeypatch.setattr(trainer.loop, "lm_loss", loss)
    messages = []
    run(tmp_path, messages=messages)
    flagged = [r["step"] for r in records(tmp_path) if "loss_spike" in r]
    assert flagged == [6]
    assert any("step 6: loss spike" in m and "standard deviations above the running mean" in m for m in messages)
