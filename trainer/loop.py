"""The training loop: micro-batches, accumulation, clipping, the schedule, and hooks for callbacks.

Everything else (logging, checkpoints, evaluation, plots) hangs off the loop as a callback; see callbacks.py.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import TrainingError


@dataclass
class StepResult:
    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens: int  # tokens seen so far, all ranks
    step_time: float
    extra: dict = field(default_factory=dict)  # callbacks add entries (val_loss, eigenvalue stats, ...)


class Callback:
    """Hooks the trainer calls; override what you need."""

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", result: StepResult) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from a packed LM block [B, T + 1] or an (input_ids, labels) pair of [B, T]."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch[:, :-1], batch[:, 1:]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32; targets < 0 are ignored."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


class Trainer:
    """Runs optimizer steps from `step + 1` to the stop step, calling each callback after every step.

    `engine` (engine.py) computes the step: one process, DDP or DeepSpeed; `model` is the bare module, for
    evaluation, sampling and statistics. Every rank runs the same loop; the logged loss is the mean over ranks.
    """

    def __init__(self, cfg, engine, data, dist, callbacks=(), tokenizer=None, log=lambda message: None):
        self.cfg = cfg
        self.engine = engine
        self.model = engine.module
        self.data = data
        self.dist = dist
        self.device = dist.device
        self.world_size = dist.world_size
        self.callbacks = list(callbacks)
        self.tokenizer = tokenizer
        self.step = 0
        self.tokens_seen = 0
        self.stop_step = cfg.train.stop_at_step or cfg.train.max_steps
        self.autocast = self._autocast_context()
        self.log = log
        self.skipped_in_a_row = 0
        self.loss_stats = None  # running mean, variance and count of finite losses, for spike detection

    def _autocast_context(self):
        precision = self.cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "bf16" and not self.engine.manages_precision:
            return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext

    def is_log_step(self, step: int) -> bool:
        return step % self.cfg.train.log_every == 0 or step == self.stop_step

    def fit(self) -> None:
        for callback in self.callbacks:
            callback.on_train_start(self)
        started = time.monotonic()
        while self.step < self.stop_step:
            result = self.train_step()
            self._watch_numerics(result)
            if self._out_of_time(started):
                self.stop_step = self.step  # callbacks now treat this as the last step: evaluate, save, log
            for callback in self.callbacks:
                callback.on_step_end(self, result)
        for callback in self.callbacks:
            callback.on_train_end(self)

    def _watch_numerics(self, result: StepResult) -> None:
        """Flag skipped (non-finite) steps and loss spikes in the metrics; stop after too many skips in a row."""
        if "skipped_step" in result.extra:
            self.skipped_in_a_row += 1
            limit = self.cfg.train.max_skipped_steps
            self.log(f"warning: step {result.step}: non-finite loss ({result.loss}) or gradient norm "
                     f"({result.grad_norm}); the update was skipped ({self.skipped_in_a_row} in a row)")
            if self.skipped_in_a_row > limit:
                first = result.step - self.skipped_in_a_row + 1
                raise TrainingError(
                    f"{self.skipped_in_a_row} non-finite steps in a row (steps {first}-{result.step}; "
                    f"train.max_skipped_steps={limit}): stopping. The weights were not updated by "
                    f"them and the checkpoints are intact; lower train.lr or check the data, then resume")
            return
        self.skipped_in_a_row = 0
        # Batches differ (code vs generated math can differ by 3 nats), so a spike is measured in running standard
        # deviations, not as a ratio; 5 steps of history come first.
        sigmas, stats = self.cfg.train.spike_sigmas, self.loss_stats
        if stats is None:
            self.loss_stats = [result.loss, 0.0, 1]
            return
        mean, var, count = stats
        excess = (result.loss - mean) / max(var ** 0.5, 1e-3)
        if sigmas and count >= 5 and excess > sigmas:
            result.extra["loss_spike"] = excess
            self.log(f"warning: step {result.step}: loss spike, {result.loss:.4f} is {excess:.1f} standard "
                     f"deviations above the running mean {mean:.4f}")
        delta = result.loss - mean  # exponentially weighted mean and variance (weight 0.05 per step)
        mean += 0.05 * delta
        self.loss_stats = [mean, 0.95 * (var + 0.05 * delta * delta), count + 1]

    def _out_of_time(self, started: float) -> bool:
        """Whether train.max_minutes has passed on any rank (all ranks must stop at the same step)."""
        budget = self.cfg.train.max_minutes
        if budget is None:
            return False
        late = (time.monotonic() - started) / 60 >= budget
        return self.dist.mean(float(late)) > 0

    def train_step(self) -> StepResult:
        accum = self.cfg.train.grad_accum_steps
        step = self.step + 1
        start = time.perf_counter()
        self.model.train()
        track = self.is_log_step(step) and hasattr(self.model, "track_eigenvalues")
        if track:
            self.model.track_eigenvalues(True)
        total_loss, eig_stats, tokens = 0.0, {}, 0
        for micro in range(accum):
            inputs, targets = (t.to(self.device, non_blocking=True) for t in split_batch(next(self.data)))
            tokens += inputs.numel()
            with self.engine.micro_batch(last=micro == accum - 1):
                with self.autocast():
                    logits = self.engine.forward(inputs)
                loss = lm_loss(logits, targets)
                self.engine.backward(loss)
            total_loss += loss.item() / accum
            if track and micro == 0:  # statistics of the first micro-batch are enough
                eig_stats = self.model.eigenvalue_stats()
                self.model.track_eigenvalues(False)
        lr = self.engine.lr()
        grad_norm, applied = self.engine.step()
        self.step = step
        self.tokens_seen += tokens * self.world_size
        result = StepResult(step=step, loss=self.dist.mean(total_loss), grad_norm=grad_norm, lr=lr,
                            tokens=self.tokens_seen, step_time=time.perf_counter() - start)
        result.extra.update(eig_stats)
        if not applied:
            result.extra["skipped_step"] = 1
        if self.is_log_step(step):
            result.extra.update(self._tokens_per_source())
        return result

    def _tokens_per_source(self) -> dict:
        """`tokens.<source>`: tokens drawn from each data source so far, all ranks (LM streams only)."""
        counts = getattr(self.data, "tokens_per_source", None)
        if counts is None:
            return {}
        counts = counts()
        names = sorted(counts)
        return {f"tokens.{name}": total for name, total in zip(names, self.dist.sum_ints([counts[n] for n in names]))}

    @torch.no_grad()
    def evaluate(self, batches: list[torch.Tensor]) -> float:
        """Mean validation loss over fixed batches."""
        self.model.eval()
        losses = []
        for batch in batches:
            inputs, targets = (t.to(self.device) for t in split_batch(batch))
            with self.autocast():
                logits = self.model(inputs)
            losses.append(lm_loss(logits, targets).item())
        self.model.train()
        return sum(losses) / max(1, len(losses))
