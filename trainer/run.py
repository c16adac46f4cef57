"""Build every component from a Config, resume if asked, train, and report where everything went."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .checkpointing import INIT_FROM_FREE_KEYS, CheckpointSaver, check_same_model, restore_training_state
from .config import Config, ConfigError, save_config
from .distributed import DistContext, init_distributed
from .engine import build_engine
from .evaluation import TaskAccuracy, ValidationLoss
from .loop import Trainer
from .metrics import METRICS_FILE, MetricsLogger, read_metrics, truncate_metrics
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
    is_main: bool = True  # rank 0 (the one that prints the summary)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def build_lm_data(cfg: Config, dist: DistContext):
    """Tokenizer, this rank's packed training stream, validation-loss callback and unigram baseline."""
    from data import PackedBatches, check_vocab, eval_batches, load_tokenizer, unigram_loss

    tokenizer = load_tokenizer(cfg.data)
    check_vocab(tokenizer, cfg.model.vocab_size)
    data = PackedBatches(cfg.data, tokenizer, seq_len=cfg.train.seq_len, batch_size=cfg.train.micro_batch_size,
                         seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    validation = None
    if cfg.data.eval_dataset:
        validation = ValidationLoss(eval_batches(cfg.data, tokenizer, cfg.train.seq_len,
                                                 cfg.train.micro_batch_size, cfg.train.eval_batches),
                                    cfg.train.eval_every)
    baseline = unigram_loss(cfg.data, tokenizer) if cfg.log.unigram_baseline else None
    return tokenizer, data, validation, baseline


def build_task_data(cfg: Config, dist: DistContext):
    """This rank's share of the state-tracking task's batches and the length-generalisation accuracy callback."""
    from data.state_tracking import TaskBatches, fixed_eval_set, get_task

    task = get_task(cfg.task.name, **cfg.task.options())
    if task.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than task {task.name}'s vocabulary "
                          f"({task.vocab_size} ids); set model.vocab_size={task.vocab_size}")
    data = TaskBatches(task, cfg.train.micro_batch_size, cfg.task.min_len, cfg.task.max_len, cfg.seed,
                       rank=dist.rank, world_size=dist.world_size)
    batches = fixed_eval_set(task, cfg.task.eval_samples, cfg.task.eval_min_len, cfg.task.eval_max_len,
                             cfg.task.eval_seed)
    return data, TaskAccuracy(task, batches, cfg.train.eval_every)


def train(cfg: Config, log=print) -> RunSummary:
    """Train on this process's share of the job (every rank of a torchrun/deepspeed launch calls this)."""
    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes, need_group=bool(cfg.train.deepspeed))
    engine, clean = None, False
    try:
        main_log = log if dist.is_main else (lambda message: None)
        summary, engine = _train(cfg, dist, main_log)
        clean = True
        return summary
    finally:
        if engine is not None and clean:
            engine.close()
        dist.shutdown(clean)


def _train(cfg: Config, dist: DistContext, log):
    from model import build_model

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = resume_source(cfg, out_dir, log)
    if not dist.all_equal(ckpt.checkpoint_step(source)):
        raise ckpt.CheckpointError(f"ranks chose different checkpoints to resume from under {out_dir}; is "
                                   f"out_dir on a filesystem every node shares?")
    if cfg.train.deepspeed:  # a bad DeepSpeed JSON fails here, before data and model are built
        from .deepspeed_engine import build_ds_config

        build_ds_config(cfg, dist.world_size, dist.device)
    seed_everything(cfg.seed)

    tokenizer = baseline = None
    if cfg.task.name:
        data, evaluation = build_task_data(cfg, dist)
    else:
        tokenizer, data, evaluation, baseline = build_lm_data(cfg, dist)
    model = build_model(cfg.model)
    if cfg.train.init_from and source is None:
        init_weights(model, cfg, log)
    engine = build_engine(cfg, model, dist)
    trainer = Trainer(cfg, engine, data, dist, tokenizer=tokenizer, log=log)
    if source is not None:
        if tokenizer is not None:
            check_resume_tokenizer(source, tokenizer)
        restore_training_state(trainer, source)
        log(f"resumed from {source} (step {trainer.step})")
    if dist.is_main:
        save_config(cfg, out_dir / "config.yaml")  # after the resume checks, so a refused run leaves the old one
        # records past the checkpoint (and a line cut by a kill) go: the steps are about to be redone
        truncate_metrics(out_dir / METRICS_FILE, trainer.step)
    parallel = f", {dist.world_size} processes" if dist.world_size > 1 else ""
    log(f"model: {cfg.model.mixer}, allow_neg_eigval={cfg.model.allow_neg_eigval}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; device {dist.device}{parallel}"
        + (f"; DeepSpeed ZeRO stage {engine.stage}" if cfg.train.deepspeed else ""))

    saver = CheckpointSaver(out_dir / "checkpoints", cfg.train.save_every, cfg.log.keep_last_n, log=log)
    plot = LossPlot(out_dir, baseline) if cfg.log.plot and dist.is_main else None
    # Order matters: evaluations add to a step's record, the record is logged, and only then is the step
    # checkpointed, so a run killed after a save never resumes past a step whose record was not written.
    # Evaluations and saving are collective (every rank); logging is rank 0's.
    harness = None
    if cfg.harness.tasks and tokenizer is not None:  # lm-eval tasks need a language model
        from eval.harness_callback import HarnessEvaluation

        harness = HarnessEvaluation(cfg.harness, tokenizer)
    main_only = dist.is_main
    callbacks = [evaluation, harness, MetricsLogger(out_dir, cfg.log.tensorboard) if main_only else None,
                 ProgressBar() if cfg.log.progress_bar and main_only else None, saver, plot]
    trainer.callbacks = [c for c in callbacks if c is not None]
    if trainer.step < trainer.stop_step:
        trainer.fit()
        if trainer.step < (cfg.train.stop_at_step or cfg.train.max_steps):
            log(f"stopped at step {trainer.step} (train.max_minutes={cfg.train.max_minutes} reached) with a "
                f"checkpoint; run the same command again to continue")
    else:
        log(f"nothing to do: the checkpoint is at step {trainer.step}, the stop step is {trainer.stop_step}")

    losses = [r["loss"] for r in read_metrics(out_dir / METRICS_FILE) if "loss" in r]
    sample = None
    if cfg.log.sample_tokens and tokenizer is not None:  # every rank: ZeRO-3 gathers weights collectively
        prompt = torch.tensor([tokenizer.encode(cfg.log.sample_prompt)], device=dist.device)
        sample = tokenizer.decode(trainer.model.generate(prompt, max_new_tokens=cfg.log.sample_tokens)[0].tolist())
    last_eval = evaluation.last if evaluation is not None else None
    if isinstance(last_eval, dict) and dist.is_main:
        (out_dir / TASK_RESULT_FILE).write_text(json.dumps({**last_eval, "step": trainer.step}, indent=1))
    summary = RunSummary(out_dir=out_dir, last_checkpoint=saver.last_saved or source,
                         final_loss=sum(losses[-5:]) / len(losses[-5:]) if losses else None,
                         val_loss=last_eval if isinstance(last_eval, float) else None, unigram_loss=baseline,
                         task_result=last_eval if isinstance(last_eval, dict) else None,
                         plot=plot.path if plot else None, sample=sample, is_main=dist.is_main)
    return summary, engine


def check_resume_tokenizer(source: Path, tokenizer) -> None:
    """Refuse to resume with a tokenizer other than the checkpoint's: the same ids would mean other text."""
    from data import load_tokenizer
    from data.config import DataConfig
    from data.tokenizer import tokenizer_fingerprint

    saved_dir = source / "tokenizer"
    if not saved_dir.is_dir():
        return
    saved = tokenizer_fingerprint(load_tokenizer(DataConfig(tokenizer=str(saved_dir))))
    current = tokenizer_fingerprint(tokenizer)
    if {k: v for k, v in saved.items() if k != "tokenizer"} != {k: v for k, v in current.items() if k != "tokenizer"}:
        raise ckpt.CheckpointError(
            f"checkpoint {source} was trained with tokenizer {saved['tokenizer']!r} ({saved['vocab_size']} ids) but "
            f"data.tokenizer gives {current['tokenizer']!r} ({current['vocab_size']} ids), which encodes text "
            f"differently; resume with data.tokenizer={saved_dir} (or the original setting), or start a new run")


def init_weights(model, cfg: Config, log) -> None:
    """Start from another run's weights (train.init_from): same model settings, fresh optimizer and data."""
    from model.loading import load_weights

    source = ckpt.resolve(cfg.train.init_from)
    changed = check_same_model(source, cfg.model, free=INIT_FROM_FREE_KEYS)
    load_weights(model, source)
    log(f"initialised the weights from {source}")
    if "allow_neg_eigval" in changed:
        log(f"note: allow_neg_eigval changes from {changed['allow_neg_eigval'][0]} to "
            f"{changed['allow_neg_eigval'][1]}: the same weights compute a different function (DeltaNet's beta "
            f"doubles, Mamba's decay becomes 2 exp(delta A) - 1), so expect the loss to rise at first")
