"""End to end on CPU: train, stop, resume bit for bit, the run-directory contract, and every mixer training."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import CheckpointError
from trainer.config import load_config
from trainer.metrics import read_metrics
from trainer.run import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def tiny(cache_dir, out_dir, *overrides, recipe="configs/default.yaml"):
    """A model and corpus small enough for a few seconds per run."""
    return load_config(ROOT / recipe, [
        f"out_dir={out_dir}", f"data.cache_dir={cache_dir}", "data.corpus_code_mb=0.3", "data.corpus_prose_mb=0.2",
        "data.corpus_math_mb=0.1", "data.tokenizer_vocab_size=512", "model.vocab_size=512",
        "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "train.seq_len=32",
        "train.micro_batch_size=2", "train.max_steps=12", "train.warmup_steps=2", "train.log_every=1",
        "train.save_every=4", "train.eval_every=0", "train.eval_batches=2", "log.progress_bar=false",
        "log.tensorboard=false", "log.plot=false", "log.sample_tokens=4", "log.unigram_baseline=false",
        *overrides])


def losses(out_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(out_dir) / "metrics.jsonl")]


@pytest.mark.parametrize("mixer", ["deltanet", "mamba"])
def test_stop_and_resume_is_bit_exact(cache_dir, tmp_path, mixer):
    full = tiny(cache_dir, tmp_path / "full", f"model.mixer={mixer}", "train.grad_accum_steps=2")
    train(full, log=lambda m: None)
    split = tiny(cache_dir, tmp_path / "split", f"model.mixer={mixer}", "train.grad_accum_steps=2",
                 "train.stop_at_step=6")
    train(split, log=lambda m: None)
    assert [s for s, _ in losses(tmp_path / "split")] == list(range(1, 7))
    resumed = tiny(cache_dir, tmp_path / "split", f"model.mixer={mixer}", "train.grad_accum_steps=2")
    train(resumed, log=lambda m: None)
    assert losses(tmp_path / "split") == losses(tmp_path / "full")  # floats compared exactly
    a = torch.load(tmp_path / "full/checkpoints/step-00000012/optimizer.pt", weights_only=True)
    b = torch.load(tmp_path / "split/checkpoints/step-00000012/optimizer.pt", weights_only=True)
    assert all(torch.equal(a["state"][k]["exp_avg"], b["state"][k]["exp_avg"]) for k in a["state"])


def test_run_directory_contract(cache_dir, tmp_path):
    cfg = tiny(cache_dir, tmp_path / "run", "log.tensorboard=true", "log.plot=true", "train.log_every=5",
               "train.eval_every=6")
    summary = train(cfg, log=lambda m: None)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and load_config(run / "config.yaml") == cfg
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 6, 10, 12]  # log steps, an eval step, the last step
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"):
        assert all(key in r for r in records), key
    assert "val_loss" in records[1] and "val_loss" in records[3]
    assert records[0]["tokens"] == 5 * 2 * 32
    assert records[0]["tokens.dataset"] == 5 * 2 * 33  # drawn from the stream: inputs plus the shifted target
    assert "layer0.neg_eig_frac" in records[0] and "layer1.min_eig" in records[0]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "loss.png").stat().st_size > 1000 and summary.plot == run / "loss.png"
    latest = (run / "checkpoints/latest").read_text().strip()
    assert latest == "step-00000012" and summary.last_checkpoint == run / "checkpoints" / latest
    files = {p.name for p in (run / "checkpoints" / latest).iterdir()}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "data_state_rank0.pt",
            "rng_state_rank0.pt", "config.yaml", "manifest.json", "tokenizer"} <= files
    manifest = json.loads((run / "checkpoints" / latest / "manifest.json").read_text())
    assert manifest["step"] == 12 and manifest["tokens_seen"] == 12 * 2 * 32
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [
        "step-00000004", "step-00000008", "step-00000012"]
    assert isinstance(summary.sample, str)


def test_mixture_logs_tokens_per_source_and_resumes_exactly(cache_dir, tmp_path):
    """configs/examples/mixture.yaml (three weighted sources, a shuffle buffer) at tiny size."""
    mixture = {"recipe": "configs/examples/mixture.yaml"}
    full = tiny(cache_dir, tmp_path / "full", "data.shuffle_buffer=20", **mixture)
    assert [m.name for m in full.data.mixture] == ["code", "prose", "math"]
    train(full, log=lambda m: None)
    train(tiny(cache_dir, tmp_path / "split", "data.shuffle_buffer=20", "train.stop_at_step=5", **mixture),
          log=lambda m: None)
    train(tiny(cache_dir, tmp_path / "split", "data.shuffle_buffer=20", **mixture), log=lambda m: None)
    assert losses(tmp_path / "split") == losses(tmp_path / "full")
    last = read_metrics(tmp_path / "full" / "metrics.jsonl")[-1]
    per_source = [last[f"tokens.{name}"] for name in ("code", "prose", "math")]
    assert sum(per_source) == 12 * 2 * 33  # one document can fill all 12 tiny steps, so a source may be at 0


def test_from_checkpoint_matches_trained_model(cache_dir, tmp_path):
    from model import from_checkpoint

    train(tiny(cache_dir, tmp_path / "run"), log=lambda m: None)
    ids = torch.randint(0, 512, (2, 16))
    by_run = from_checkpoint(tmp_path / "run")(ids)
    by_step = from_checkpoint(tmp_path / "run/checkpoints/step-00000008")(ids)
    by_latest = from_checkpoint(tmp_path / "run/checkpoints/latest")(ids)
    logits = getattr(by_run, "logits", by_run)
    assert logits.shape == (2, 16, 512)
    assert torch.equal(logits, getattr(by_latest, "logits", by_latest))
    assert not torch.equal(logits, getattr(by_step, "logits", by_step))


def test_resume_refuses_a_different_model(cache_dir, tmp_path):
    train(tiny(cache_dir, tmp_path / "run", "train.stop_at_step=4"), log=lambda m: None)
    saved = (tmp_path / "run/config.yaml").read_text()
    with pytest.raises(CheckpointError, match="different model"):
        train(tiny(cache_dir, tmp_path / "run", "model.hidden_size=64"), log=lambda m: None)
    assert (tmp_path / "run/config.yaml").read_text() == saved  # the refused run overwrote nothing


@pytest.mark.parametrize("overrides", [
    ["model.mixer=mamba"], ["model.mixer=attention"], ["model.mixer=lstm"], ["model.allow_neg_eigval=false"],
    ["model.mixer=mamba", "model.mlp=false"],
], ids=lambda o: ",".join(o))
def test_every_mixer_learns(cache_dir, tmp_path, overrides):
    cfg = tiny(cache_dir, tmp_path / "run", "train.max_steps=30", "train.lr=1e-2", "train.save_every=30",
               *overrides)
    train(cfg, log=lambda m: None)
    values = [loss for _, loss in losses(tmp_path / "run")]
    assert sum(values[-5:]) / 5 < values[0] - 0.5, values


def test_cli_reports_bad_config_cleanly(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/default.yaml"),
                          "model.hiden_size=3"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "model.hiden_size: unknown key; did you mean model.hidden_size?" in out.stderr
    assert "Traceback" not in out.stderr


def test_make_demo_runs_a_valid_command():
    """The Makefile's demo recipe must parse (train.py's CLI) and name a config that loads."""
    import shlex

    import train as train_cli

    recipe = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "train.py" in line)
    args = shlex.split(recipe.split("train.py", 1)[1])
    parsed = train_cli.parse_args(args)
    assert load_config(ROOT / parsed.config, parsed.overrides).out_dir == "runs/default"


def test_resume_refuses_another_tokenizer(cache_dir, tmp_path):
    """Same model, but a tokenizer that maps text to other ids: resuming would silently change the data."""
    run = tmp_path / "run"
    train(tiny(cache_dir, run, "model.vocab_size=600", "train.stop_at_step=4"), log=lambda m: None)
    with pytest.raises(CheckpointError, match=r"trained with tokenizer .*\(512 ids\) but data.tokenizer gives "
                                              r".*\(520 ids\).*resume with data.tokenizer="):
        train(tiny(cache_dir, run, "model.vocab_size=600", "data.tokenizer_vocab_size=520"), log=lambda m: None)
    assert len(losses(run)) == 4  # nothing was overwritten
    train(tiny(cache_dir, run, "model.vocab_size=600"), log=lambda m: None)  # the original tokenizer resumes
    assert len(losses(run)) == 12
