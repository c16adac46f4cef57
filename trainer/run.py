"""Build every component from a Config, resume if asked, train, and report where everything went."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .checkpointing import CheckpointSaver, restore_training_state
from .config import Config, ConfigError, save_config
from .evaluation import TaskAccuracy, ValidationLoss
from .loop import Trainer
from .metrics import METRICS_FILE, MetricsLogger, read_metrics
from .optim import build_optimizer, build_scheduler
from .plots import LossPlot
from .progress import ProgressBar


TASK_RESULT_FILE = "task_result.json"  # final state-tracking accuracy, by length


@dataclass
class RunSummary:
    out_dir: Path
    last_checkpoint: Path | None
    final_loss: float | None
    val_loss: float | None
    unigram_loss: float | None
    task_result: dict | None  # state-tracking accuracy at the end (eval.state_tracking.evaluate_task)
    plot: Path | None
    sample: str | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resume_source(cfg: Config, out_dir: Path, log) -> Path | None:
    """The checkpoint to continue from, per `train.resume` (auto | never | PATH)."""
    root = out_dir / "checkpoints"
    mode = cfg.train.resume
    if mode == "never":
        if ckpt.list_checkpoints(root):
            raise ConfigError(f"{out_dir} already holds checkpoints and train.resume=never would overwrite its "
                              f"run; use train.resume=auto to continue it or choose another out_dir")
        return None
    if mode == "auto":
        return ckpt.find_latest(root, log=log)
    return ckpt.resolve(mode)


def build_lm_data(cfg: Config):
    """Tokenizer, packed training stream, validation-loss callback and unigram baseline for language modelling."""
    from data import PackedBatches, check_vocab, eval_batches, load_tokenizer, unigram_loss

    tokenizer = load_tokenizer(cfg.data)
    check_vocab(tokenizer, cfg.model.vocab_size)
    data = PackedBatches(cfg.data, tokenizer, seq_len=cfg.train.seq_len, batch_size=cfg.train.micro_batch_size,
                         seed=cfg.seed)
    validation = None
    if cfg.data.eval_dataset:
        validation = ValidationLoss(eval_batches(cfg.data, tokenizer, cfg.train.seq_len,
                                                 cfg.train.micro_batch_size, cfg.train.eval_batches),
                                    cfg.train.eval_every)
    baseline = unigram_loss(cfg.data, tokenizer) if cfg.log.unigram_baseline else None
    return tokenizer, data, validation, baseline


def build_task_data(cfg: Config):
    """The state-tracking task's training stream and its length-generalisation accuracy callback."""
    from data.state_tracking import TaskBatches, fixed_eval_set, get_task

    task = get_task(cfg.task.name, **cfg.task.options())
    if task.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than task {task.name}'s vocabulary "
                          f"({task.vocab_size} ids); set model.vocab_size={task.vocab_size}")
    data = TaskBatches(task, cfg.train.micro_batch_size, cfg.task.min_len, cfg.task.max_len, cfg.seed)
    batches = fixed_eval_set(task, cfg.task.eval_samples, cfg.task.eval_min_len, cfg.task.eval_max_len,
                             cfg.task.eval_seed)
    return data, TaskAccuracy(task, batches, cfg.train.eval_every)


def train(cfg: Config, log=print) -> RunSummary:
    from model import build_model

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = resume_source(cfg, out_dir, log)
    seed_everything(cfg.seed)
    device = pick_device(cfg.train.device)

    tokenizer = baseline = None
    if cfg.task.name:
        data, evaluation = build_task_data(cfg)
    else:
        tokenizer, data, evaluation, baseline = build_lm_data(cfg)
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim, cfg.train.lr)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.warmup_steps, cfg.train.max_steps)
    trainer = Trainer(cfg, model, optimizer, scheduler, data, device, tokenizer=tokenizer)
    if source is not None:
        restore_training_state(trainer, source)
        log(f"resumed from {source} (step {trainer.step})")
    save_config(cfg, out_dir / "config.yaml")  # after the resume checks, so a refused run leaves the old one
    log(f"model: {cfg.model.mixer}, allow_neg_eigval={cfg.model.allow_neg_eigval}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; device {device}")

    saver = CheckpointSaver(out_dir / "checkpoints", cfg.train.save_every, cfg.log.keep_last_n, log=log)
    plot = LossPlot(out_dir, baseline) if cfg.log.plot else None
    callbacks = [evaluation, MetricsLogger(out_dir, cfg.log.tensorboard),
                 ProgressBar() if cfg.log.progress_bar else None, saver, plot]
    trainer.callbacks = [c for c in callbacks if c is not None]
    if trainer.step < trainer.stop_step:
        trainer.fit()
    else:
        log(f"nothing to do: the checkpoint is at step {trainer.step}, the stop step is {trainer.stop_step}")

    losses = [r["loss"] for r in read_metrics(out_dir / METRICS_FILE) if "loss" in r]
    sample = None
    if cfg.log.sample_tokens and tokenizer is not None:
        prompt = torch.tensor([tokenizer.encode(cfg.log.sample_prompt)], device=device)
        sample = tokenizer.decode(model.generate(prompt, max_new_tokens=cfg.log.sample_tokens)[0].tolist())
    last_eval = evaluation.last if evaluation is not None else None
    if isinstance(last_eval, dict):
        (out_dir / TASK_RESULT_FILE).write_text(json.dumps({**last_eval, "step": trainer.step}, indent=1))
    return RunSummary(out_dir=out_dir, last_checkpoint=saver.last_saved or source,
                      final_loss=sum(losses[-5:]) / len(losses[-5:]) if losses else None,
                      val_loss=last_eval if isinstance(last_eval, float) else None, unigram_loss=baseline,
                      task_result=last_eval if isinstance(last_eval, dict) else None,
                      plot=plot.path if plot else None, sample=sample)
