"""A short real training run: Mamba [-1, 1] learns parity and generalises past its training lengths; the
evaluation CLI reads its checkpoint."""
import json
from pathlib import Path

import pytest

from eval import state_tracking
from trainer.config import load_config
from trainer.run import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    cfg = load_config(ROOT / "configs/state_tracking/parity.yaml", [
        f"out_dir={out}", "model.mixer=mamba", "model.allow_neg_eigval=true", "model.hidden_size=32",
        "train.max_steps=400", "train.micro_batch_size=32", "train.lr=1e-2", "train.eval_every=0",
        "task.eval_min_len=41", "task.eval_max_len=80", "task.eval_samples=64", "log.progress_bar=false"])
    summary = train(cfg, log=lambda m: None)
    return out, summary


def test_mamba_neg_learns_parity_beyond_training_lengths(parity_run):
    out, summary = parity_run
    result = json.loads((out / "task_result.json").read_text())
    assert result["step"] == 400 and result["accuracy"] == summary.task_result["accuracy"]
    assert min(int(k) for k in result["by_length"]) > 40  # every test length is longer than any trained one
    assert result["accuracy"] >= 0.9, result


def test_eval_cli_json(parity_run, capsys):
    out, summary = parity_run
    code = state_tracking.main(["--checkpoint", str(out), "--min-len", "41", "--max-len", "80",
                                "--num-samples", "64", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("task", "accuracy", "scaled_accuracy", "by_length"):
        assert key in result
    assert result["task"] == "parity"
    assert result["accuracy"] == summary.task_result["accuracy"]  # same model, same fixed evaluation set
    assert result["scaled_accuracy"] == pytest.approx(2 * result["accuracy"] - 1)


def test_eval_cli_errors(parity_run, tmp_path, capsys):
    out, _ = parity_run
    assert state_tracking.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert state_tracking.main(["--checkpoint", str(out), "--task", "s5", "--num-samples", "4"]) == 2
    assert "needs vocab_size >= 241" in capsys.readouterr().err
