"""The training loop: micro-batches, accumulation, clipping, the schedule, and hooks for callbacks.

Everything else (logging, checkpoints, evaluation, plots) hangs off the loop as a callback; see callbacks.py.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


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
    """Runs optimizer steps from `step + 1` to the stop step, calling each callback after every step."""

    def __init__(self, cfg, model, optimizer, scheduler, data, device: torch.device, callbacks=(),
                 tokenizer=None, world_size: int = 1):
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data = data
        self.device = device
        self.callbacks = list(callbacks)
        self.tokenizer = tokenizer
        self.world_size = world_size
        self.step = 0
        self.tokens_seen = 0
        self.stop_step = cfg.train.stop_at_step or cfg.train.max_steps
        self.autocast = self._autocast_context()

    def _autocast_context(self):
        precision = self.cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "bf16":
            return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext

    def is_log_step(self, step: int) -> bool:
        return step % self.cfg.train.log_every == 0 or step == self.stop_step

    def fit(self) -> None:
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.step < self.stop_step:
            result = self.train_step()
            for callback in self.callbacks:
                callback.on_step_end(self, result)
        for callback in self.callbacks:
            callback.on_train_end(self)

    def train_step(self) -> StepResult:
        train = self.cfg.train
        step = self.step + 1
        start = time.perf_counter()
        self.model.train()
        track = self.is_log_step(step) and hasattr(self.model, "track_eigenvalues")
        if track:
            self.model.track_eigenvalues(True)
        total_loss, eig_stats, tokens = 0.0, {}, 0
        for micro in range(train.grad_accum_steps):
            inputs, targets = (t.to(self.device, non_blocking=True) for t in split_batch(next(self.data)))
            tokens += inputs.numel()
            with self.autocast():
                logits = self.model(inputs)
            loss = lm_loss(logits, targets) / train.grad_accum_steps
            loss.backward()
            total_loss += loss.item()
            if track and micro == 0:  # statistics of the first micro-batch are enough
                eig_stats = self.model.eigenvalue_stats()
                self.model.track_eigenvalues(False)
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        self.tokens_seen += tokens * self.world_size
        result = StepResult(step=step, loss=total_loss, grad_norm=grad_norm, lr=lr, tokens=self.tokens_seen,
                            step_time=time.perf_counter() - start)
        result.extra.update(eig_stats)
        return result

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
