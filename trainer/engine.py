"""How one optimizer step is computed and how the model and optimizer are saved: one process or DDP here,
DeepSpeed ZeRO in deepspeed_engine.py. The trainer talks only to this interface.

    with engine.micro_batch(last):     # per micro-batch: forward and backward
        loss = lm_loss(engine.forward(inputs), targets); engine.backward(loss)
    grad_norm, applied = engine.step() # clip, update, schedule, zero the gradients (skipped if non-finite)
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from .distributed import DistContext
from .optim import build_optimizer, build_scheduler

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"


class PlainEngine:
    """Our AdamW, clipping and schedule on one process, or under DDP when the world has several (gradients
    all-reduced on the last micro-batch only). Every rank holds the same weights, so rank 0 saves them."""

    def __init__(self, cfg, model: torch.nn.Module, ctx: DistContext):
        self.module = model
        self.ctx = ctx
        self.accum = cfg.train.grad_accum_steps
        self.grad_clip = cfg.optim.grad_clip
        self.optimizer = build_optimizer(model, cfg.optim, cfg.train.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.warmup_steps, cfg.train.max_steps)
        self.model = model
        self.manages_precision = False  # the trainer's autocast decides
        if ctx.world_size > 1:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def micro_batch(self, last: bool):
        """Skip DDP's gradient all-reduce on every micro-batch but the last."""
        if last or self.model is self.module:
            return contextlib.nullcontext()
        return self.model.no_sync()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> tuple[float, bool]:
        """Clip, update and schedule; returns (gradient norm before clipping, whether the update was applied:
        a non-finite norm skips the update and the schedule, as DeepSpeed's ZeRO optimizers do)."""
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm).item()
        applied = math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, applied

    def save(self, directory: Path) -> dict:
        """Write weights and optimizer (rank 0); return what goes into trainer_state.json."""
        if self.ctx.is_main:
            save_model(self.module, str(directory / WEIGHTS))
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER)
        return {"scheduler": self.scheduler.state_dict()}

    def load(self, directory: Path, trainer_state: dict) -> None:
        load_model(self.module, str(directory / WEIGHTS), strict=True, device=str(self.ctx.device))
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER, map_location=self.ctx.device,
                                                  weights_only=True))
        self.scheduler.load_state_dict(trainer_state["scheduler"])

    def close(self) -> None:
        pass


def build_engine(cfg, model: torch.nn.Module, ctx: DistContext):
    """The DeepSpeed engine when `train.deepspeed` names a config, else the plain (or DDP) one."""
    if cfg.train.deepspeed:
        from .deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, model, ctx)
    return PlainEngine(cfg, model.to(ctx.device), ctx)
