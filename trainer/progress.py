"""A tqdm progress bar with loss, tokens/s and ETA."""
from __future__ import annotations

import math

from tqdm import tqdm

from .loop import Callback, StepResult, Trainer


class ProgressBar(Callback):
    def on_train_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.stop_step, initial=trainer.step, unit="step", dynamic_ncols=True,
                        mininterval=1.0)
        self._loss = None
        self._tokens = trainer.tokens_seen

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        # an exponential moving average keeps the displayed loss readable at small batch sizes
        if math.isfinite(result.loss):  # a skipped non-finite step must not poison the displayed average
            self._loss = result.loss if self._loss is None else 0.9 * self._loss + 0.1 * result.loss
        tokens_per_s = (result.tokens - self._tokens) / max(result.step_time, 1e-9)
        self._tokens = result.tokens
        shown = f"{self._loss:.3f}" if self._loss is not None else "-"
        self.bar.set_postfix(loss=shown, tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer: Trainer) -> None:
        self.bar.close()
