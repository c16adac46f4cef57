"""Under DeepSpeed with 2 processes, one rank killed with SIGKILL: the launcher stops the job (no hang) and a
relaunch resumes from the newest checkpoint, ending with the uninterrupted run's losses."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def command(out_dir):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "train.py", "--config", "configs/state_tracking/parity.yaml", f"out_dir={out_dir}",
            "task.supervision=final", "task.eval_samples=16", "task.eval_max_len=48", "model.hidden_size=32",
            "train.micro_batch_size=8", f"train.max_steps={STEPS}", "train.warmup_steps=1", "train.log_every=1",
            "train.save_every=5", "train.deepspeed=configs/deepspeed/zero2.json", "train.dist_timeout_minutes=1",
            "log.progress_bar=false", "log.tensorboard=false", "log.plot=false"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def workers(launcher_pid: int) -> list[int]:
    """The training processes torchrun started (its children)."""
    out = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_one_rank_killed_stops_the_job_and_it_resumes_exactly(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), cwd=REPO, env=env(), check=True, capture_output=True, timeout=600)
    launcher = subprocess.Popen(command(killed), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (killed / "checkpoints" / "step-00000010").exists():
        time.sleep(0.1)
    ranks = workers(launcher.pid)
    assert len(ranks) == 2 and launcher.poll() is None
    os.kill(ranks[1], signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = launcher.communicate(timeout=120)  # torchrun notices and stops the other rank
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 60, "the job took too long to stop after losing a rank"
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks), "a rank outlived the job"
    assert "SIGKILL" in stderr or "Signal 9" in stderr, stderr[-2000:]
    subprocess.run(command(killed), cwd=REPO, env=env(), check=True, capture_output=True, timeout=600)
    assert losses(killed) == losses(whole)
