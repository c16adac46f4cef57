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


class TaskAccuracy(Callback):
    """State-tracking accuracy on a fixed length-generalisation set; adds val_acc and val_scaled_acc."""

    def __init__(self, task, batches, eval_every: int):
        self.task = task
        self.batches = batches
        self.eval_every = eval_every
        self.last: dict | None = None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        from eval.state_tracking import evaluate_task

        due = self.eval_every and result.step % self.eval_every == 0
        if due or result.step == trainer.stop_step:
            self.last = evaluate_task(trainer.model, self.task, self.batches, trainer.device, trainer.autocast)
            result.extra["val_acc"] = self.last["accuracy"]
            result.extra["val_scaled_acc"] = self.last["scaled_accuracy"]
