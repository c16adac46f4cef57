"""A tqdm progress bar with loss, tokens/s and ETA."""
from __future__ import annotations

from tqdm import tqdm

from .loop import Callback, StepResult, Trainer


class ProgressBar(Callback):
    def on_train_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.stop_step, initial=trainer.step, unit="step", dynamic_ncols=True,
                        mininterval=1.0)
        self._loss = None

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        # an exponential moving average keeps the displayed loss readable at small batch sizes
        self._loss = result.loss if self._loss is None else 0.9 * self._loss + 0.1 * result.loss
        tokens_per_step = trainer.cfg.train.micro_batch_size * trainer.cfg.train.grad_accum_steps \
            * trainer.cfg.train.seq_len * trainer.world_size
        self.bar.set_postfix(loss=f"{self._loss:.3f}", tok_s=f"{tokens_per_step / result.step_time:,.0f}",
                             refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer: Trainer) -> None:
        self.bar.close()
