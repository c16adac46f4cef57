"""Evaluation during training, every `train.eval_every` steps and at the stop step: validation loss for
language modelling, length-generalisation accuracy for state-tracking tasks."""
from __future__ import annotations

from .loop import Callback, StepResult, Trainer


class PeriodicEvaluation(Callback):
    """Calls `evaluate(trainer, result)` on due steps; subclasses add their numbers to `result.extra`."""

    def __init__(self, batches, eval_every: int):
        self.batches = batches
        self.eval_every = eval_every
        self.last = None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        due = self.eval_every and result.step % self.eval_every == 0
        if due or result.step == trainer.stop_step:
            self.evaluate(trainer, result)

    def evaluate(self, trainer: Trainer, result: StepResult) -> None:
        raise NotImplementedError


class ValidationLoss(PeriodicEvaluation):
    """Mean loss on fixed held-out batches, as `val_loss` (so it reaches metrics.jsonl and TensorBoard)."""

    def evaluate(self, trainer: Trainer, result: StepResult) -> None:
        self.last = trainer.evaluate(self.batches)
        result.extra["val_loss"] = self.last


class TaskAccuracy(PeriodicEvaluation):
    """State-tracking accuracy on a fixed length-generalisation set, as `val_acc` and `val_scaled_acc`."""

    def __init__(self, task, batches, eval_every: int):
        super().__init__(batches, eval_every)
        self.task = task

    def evaluate(self, trainer: Trainer, result: StepResult) -> None:
        from eval.state_tracking import evaluate_task

        self.last = evaluate_task(trainer.model, self.task, self.batches, trainer.device, trainer.autocast)
        result.extra["val_acc"] = self.last["accuracy"]
        result.extra["val_scaled_acc"] = self.last["scaled_accuracy"]
