"""AdamW with decay only on matrices, and the learning-rate schedules (linear warm-up, then cosine, WSD or flat)."""
from __future__ import annotations

import math

import torch

from .config import OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: norms, biases, embeddings and params flagged `_no_weight_decay` are exempt."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():  # deduplicates tied weights
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or id(param) in embedding_params or getattr(param, "_no_weight_decay", False)
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    # foreach=False keeps CPU runs bit-identical across resume regardless of how tensors are grouped.
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, foreach=False)


def lr_factor(step: int, cfg: OptimConfig, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based: the first update uses step 0)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: warm-up, stable at the peak, then a linear decay over the last decay_fraction of training
    decay_steps = max(1, round(cfg.decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1 - floor) * min(1.0, (step - decay_start + 1) / decay_steps)


def build_scheduler(optimizer, cfg: OptimConfig, warmup_steps: int, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, warmup_steps, max_steps))
