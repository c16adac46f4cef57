"""Training throughput of configs/default.yaml and the data loader's share of a step (issue 7, case 4).

- End to end: train.py's own loop (trainer.run.train) for a few steps, tokens/s as its metrics.jsonl logs them
  (the logged step time includes fetching the batch); the median of the log records after the first (warm-up).
- The loader alone (bench/data_loader.loader_rate: PackedBatches at the config's data.num_workers) and a training
  step alone on a synthetic batch (bench/data_loader.step_seconds). With num_workers=0 (the default) the batch is
  made inside the step, so the loader's share of a step is load / (load + compute).
"""
import json
import os
import tempfile

import torch

from bench.data_loader import CONFIG, loader_rate, step_seconds
from data import load_tokenizer
from trainer.config import load_config
from trainer.run import train

RUN = ["train.eval_every=0", "log.progress_bar=false", "log.tensorboard=false", "log.plot=false",
       "log.sample_tokens=0", "log.unigram_baseline=false"]


def trainer_tokens_per_s(overrides, steps, log_every):
    """Median tokens/s the trainer logs over `steps` steps, first log record (warm-up) left out."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(CONFIG, [*overrides, *RUN, f"out_dir={tmp}", f"train.max_steps={steps}",
                                   f"train.warmup_steps={max(1, steps // 10)}", f"train.log_every={log_every}",
                                   f"train.save_every={steps}"])
        train(cfg, log=lambda message: None)
        with open(os.path.join(tmp, "metrics.jsonl")) as f:
            rates = sorted(json.loads(line)["tokens_per_s"] for line in f if line.strip())[1:] or [0.0]
    return rates[len(rates) // 2], cfg


def training_rows(overrides=(), steps=40, batches=100, step_repeats=5):
    """One row: tokens/s end to end, tokens/s of the step alone, loader tokens/s and its share of a step."""
    end_to_end, cfg = trainer_tokens_per_s(list(overrides), steps, log_every=max(1, steps // 8))
    B, T = cfg.train.micro_batch_size, cfg.train.seq_len
    load_s = B * (T + 1) / loader_rate(cfg.data, load_tokenizer(cfg.data), B, T, batches)
    compute_s = step_seconds(cfg, step_repeats, torch.device("cpu"))
    row = dict(name="configs/default.yaml", shape=(B, T), mixer=cfg.model.mixer, trainer_tokens_per_s=end_to_end,
               step_tokens_per_s=B * T / compute_s, step_ms=1e3 * compute_s, load_ms=1e3 * load_s,
               loader_share=load_s / (load_s + compute_s), num_workers=cfg.data.num_workers)
    print(f"training, {row['name']} ({cfg.model.mixer}, batch {B} x {T}): trainer {end_to_end:,.0f} tokens/s; "
          f"step alone {row['step_ms']:.0f} ms ({row['step_tokens_per_s']:,.0f} tokens/s); loader "
          f"{row['load_ms']:.1f} ms per batch (num_workers={cfg.data.num_workers}): {row['loader_share']:.2%} of a "
          f"step", flush=True)
    return [row]
