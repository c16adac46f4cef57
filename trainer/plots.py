"""The loss-curve PNG written at the end of a run."""
from __future__ import annotations

from pathlib import Path

from .loop import Callback, Trainer
from .metrics import read_metrics

PLOT_FILE = "loss.png"


def plot_loss(metrics_path: Path, out_path: Path, baseline: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="unigram model")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


class LossPlot(Callback):
    def __init__(self, out_dir: Path, baseline: float | None = None):
        self.out_dir = out_dir
        self.baseline = baseline
        self.path: Path | None = None

    def on_train_end(self, trainer: Trainer) -> None:
        self.path = plot_loss(self.out_dir / "metrics.jsonl", self.out_dir / PLOT_FILE, self.baseline)
