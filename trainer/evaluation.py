"""Validation loss on fixed held-out batches, every `train.eval_every` steps and at the end."""
from __future__ import annotations

from .loop import Callback, StepResult, Trainer


class ValidationLoss(Callback):
    """Adds `val_loss` to the step's record (so it reaches metrics.jsonl and TensorBoard)."""

    def __init__(self, batches, eval_every: int):
        self.batches = batches
        self.eval_every = eval_every
        self.last: float | None = None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        due = self.eval_every and result.step % self.eval_every == 0
        if due or result.step == trainer.stop_step:
            self.last = trainer.evaluate(self.batches)
            result.extra["val_loss"] = self.last
