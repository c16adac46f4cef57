"""Data-loader throughput against the training step it feeds, both measured in this run.

Measures, at configs/default.yaml's batch geometry (micro_batch_size x (seq_len + 1) tokens per batch):
- one reader's rate (reading + on-the-fly tokenization, the work each DataLoader worker does), in tokens/s;
- PackedBatches end to end with data.num_workers = 0, 1, 2 (tokens/s in total and per worker);
- a pre-tokenized copy of the same data (built first with data.pretokenize, whose rate is printed too);
- a mixture of the embedded corpus' three parts with a shuffle buffer;
- a few training steps of the default model (forward, backward, AdamW) with one thread on the CPU, or on
  CUDA when available, and the share of each step the loader would take.

    python bench/data_loader.py [--batches 300] [--steps 4] [--device auto|cpu|cuda]
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import MixtureSource, PackedBatches, load_tokenizer  # noqa: E402
from data.pretokenize import pretokenize  # noqa: E402
from data.sources import resolve_sources  # noqa: E402
from data.stream import open_reader  # noqa: E402
from model import build_model  # noqa: E402
from trainer.config import load_config  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")


def reader_rate(data_cfg, tokenizer, min_tokens: int) -> float:
    """Tokens/s of one reader of the training data: what a single worker can deliver."""
    reader = open_reader(resolve_sources(data_cfg, "train"), tokenizer, seed=0, node=0, num_nodes=1)
    reader.next()  # opening the dataset is not part of the steady state
    tokens, start = 0, time.perf_counter()
    while tokens < min_tokens:
        tokens += len(reader.next()[0])
    return tokens / (time.perf_counter() - start)


def loader_rate(data_cfg, tokenizer, batch_size: int, seq_len: int, batches: int) -> float:
    """Tokens/s of PackedBatches over `batches` batches, after a first one (which starts the workers)."""
    it = PackedBatches(data_cfg, tokenizer, seq_len=seq_len, batch_size=batch_size)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size * (seq_len + 1) / (time.perf_counter() - start)


def step_seconds(cfg, steps: int, device: torch.device) -> float:
    """Median seconds of a training step (forward, loss, backward, AdamW) of the config's model."""
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    batch = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.train.seq_len + 1), device=device)
    times = []
    for _ in range(steps + 1):  # the first step warms up (allocations, kernel compilation)
        start = time.perf_counter()
        logits = model(batch[:, :-1])
        logits = getattr(logits, "logits", logits)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300, help="batches timed per loader setting")
    parser.add_argument("--steps", type=int, default=4, help="training steps timed (after one warm-up step)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(CONFIG)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    B, T = cfg.train.micro_batch_size, cfg.train.seq_len
    tokenizer = load_tokenizer(cfg.data)
    block = B * (T + 1)
    print(f"configs/default.yaml: batch {B} x {T + 1} = {block} tokens, data.dataset={cfg.data.dataset!r}, "
          f"tokenizer {tokenizer.name} (vocab {tokenizer.vocab_size}), torch threads 1")

    rows = [("one reader (tokenizing on the fly)", reader_rate(cfg.data, tokenizer, args.batches * block), 1)]
    for workers in (0, 1, 2):
        data = dataclasses.replace(cfg.data, num_workers=workers)
        rows.append((f"PackedBatches, num_workers={workers}", loader_rate(data, tokenizer, B, T, args.batches),
                     max(1, workers)))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index = pretokenize(cfg.data.dataset, tokenizer, os.path.join(tmp, "pt"), cache_dir=cfg.data.cache_dir,
                            progress=False)
        build = index["num_tokens"] / (time.perf_counter() - start)
        data = dataclasses.replace(cfg.data, dataset=os.path.join(tmp, "pt"))
        rows.append(("pre-tokenized shards, num_workers=0", loader_rate(data, tokenizer, B, T, args.batches), 1))
    parts = [MixtureSource(p, f"embedded:{p}", w) for p, w in (("code", 0.5), ("prose", 0.3), ("math", 0.2))]
    data = dataclasses.replace(cfg.data, mixture=parts, shuffle_buffer=1000)
    rows.append(("mixture code/prose/math + shuffle buffer 1000", loader_rate(data, tokenizer, B, T, args.batches), 1))

    step = step_seconds(cfg, args.steps, device)
    train_rate = B * T / step
    print(f"\ntraining step of the default model on {device}: {step * 1e3:.0f} ms "
          f"({train_rate:,.0f} tokens/s)\n")
    print(f"{'setting':<48} {'tokens/s':>12} {'per worker':>12} {'x training':>11} {'loader share of a step':>23}")
    for name, rate, workers in rows:
        print(f"{name:<48} {rate:>12,.0f} {rate / workers:>12,.0f} {rate / train_rate:>10.1f}x "
              f"{block / rate / step:>22.1%}")
    print(f"\npretokenize (one process): {build:,.0f} tokens/s; {index['num_tokens']:,} tokens in "
          f"{len(index['shards'])} shard(s)")
    per_reader = rows[0][1]
    print(f"workers needed to keep up with training: {train_rate / per_reader:.3f} (one reader does "
          f"{per_reader / train_rate:.0f}x the training rate)")


if __name__ == "__main__":
    main()
