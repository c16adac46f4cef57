"""kill -9 at random moments (mid-step, mid-checkpoint, mid-log-line), several times, then resume: the per-step
losses equal an uninterrupted run's bit for bit, and metrics.jsonl has every step exactly once."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = 120


def command(out_dir, cache):
    # saving every step keeps the process inside a checkpoint write much of the time, so kills land there too
    return [sys.executable, "train.py", "--config", "configs/default.yaml", f"out_dir={out_dir}",
            f"data.cache_dir={cache}", "data.corpus_code_mb=0.3", "data.corpus_prose_mb=0.2", "data.corpus_math_mb=0.1",
            "data.tokenizer_vocab_size=512", "model.vocab_size=512", "model.hidden_size=32", "model.num_layers=2",
            "model.num_heads=2", "train.seq_len=32", "train.micro_batch_size=2", f"train.max_steps={STEPS}",
            "train.warmup_steps=2", "train.log_every=1", "train.save_every=1", "train.eval_batches=1",
            "log.keep_last_n=2", "log.progress_bar=false", "log.tensorboard=false", "log.plot=false",
            "log.sample_tokens=0"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def logged(out_dir):
    records = []
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        records.append(json.loads(line))  # after a resume no line may be cut off
    return [(r["step"], r["loss"]) for r in records]


def test_kill_nine_repeatedly_then_resume(tmp_path):
    cache = tmp_path / "cache"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole, cache), cwd=REPO, env=env(), check=True, capture_output=True, timeout=600)
    rng = random.Random(0)
    kills = 0
    while kills < 4:
        process = subprocess.Popen(command(killed, cache), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        # wait until this launch has made progress (a step logged past the previous launch's last), then kill
        # at a random moment within the next few steps
        start_steps = _count_lines(killed) if (killed / "metrics.jsonl").exists() else 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (killed / "metrics.jsonl").exists() and _count_lines(killed) > start_steps:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is not None:
            break  # finished before we could kill it
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        with open(killed / "metrics.jsonl", "a") as f:  # as if the kill cut a line in half
            f.write('{"step": 99, "lo')
    assert kills >= 3, "the run finished before it could be killed three times"
    subprocess.run(command(killed, cache), cwd=REPO, env=env(), check=True, capture_output=True, timeout=600)
    assert logged(killed) == logged(whole)
    assert [step for step, _ in logged(killed)] == list(range(1, STEPS + 1))


def _count_lines(out_dir) -> int:
    return (out_dir / "metrics.jsonl").read_bytes().count(b"\n")
