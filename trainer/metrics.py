"""metrics.jsonl (one JSON object per logged step) and the same scalars to TensorBoard."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .loop import Callback, StepResult, Trainer

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl; a line cut off by a crash is skipped."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records up to `last_step`, so a resumed run neither duplicates nor skips steps."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


class MetricsLogger(Callback):
    """Writes a record on every log step (and on steps where another callback added values)."""

    def __init__(self, out_dir: Path, tensorboard: bool = True):
        self.path = out_dir / METRICS_FILE
        self.tensorboard = tensorboard
        self.writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        # run.py has already cut the file back to the resumed step (truncate_metrics)
        self.file = open(self.path, "a", buffering=1)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=trainer.step + 1)
        self._tokens_at_log = trainer.tokens_seen
        self._time_since_log = 0.0

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self._time_since_log += result.step_time
        if not (trainer.is_log_step(result.step) or result.extra):
            return
        tokens_per_s = (result.tokens - self._tokens_at_log) / max(self._time_since_log, 1e-9)
        self._tokens_at_log, self._time_since_log = result.tokens, 0.0
        record = {"step": result.step, "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                  "tokens": result.tokens, "tokens_per_s": round(tokens_per_s, 1)}
        record.update(result.extra)
        self.file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key.replace(".", "/"), value, result.step)

    def on_train_end(self, trainer: Trainer) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
