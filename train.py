"""Train a language model: `python train.py --config configs/default.yaml [dotted.key=value ...]`."""
from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog="Overrides use the YAML's dotted keys, e.g. model.mixer=mamba train.max_steps=100")
    parser.add_argument("--config", help="YAML recipe under configs/ (defaults apply to keys it omits)")
    parser.add_argument("--list-keys", action="store_true", help="print every valid config key and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def print_summary(summary) -> None:
    lines = ["", "done."]
    if summary.last_checkpoint:
        lines.append(f"  checkpoint:   {summary.last_checkpoint}")
    lines.append(f"  metrics:      {summary.out_dir / 'metrics.jsonl'}")
    if (summary.out_dir / "tensorboard").is_dir():
        lines.append(f"  tensorboard:  tensorboard --logdir {summary.out_dir / 'tensorboard'}")
    if summary.plot:
        lines.append(f"  loss curve:   {summary.plot}")
    if summary.final_loss is not None:
        lines.append(f"  train loss (mean of the last 5 logged steps): {summary.final_loss:.3f} nats/token")
    if summary.val_loss is not None:
        lines.append(f"  validation loss:                              {summary.val_loss:.3f} nats/token")
    if summary.unigram_loss is not None:
        lines.append(f"  unigram model of the corpus (validation):     {summary.unigram_loss:.3f} nats/token")
    if summary.task_result is not None:
        r = summary.task_result
        lengths = list(r["by_length"])
        lines.append(f"  {r['task']}: accuracy {r['accuracy']:.3f}, scaled {r['scaled_accuracy']:.3f} (chance "
                     f"{r['chance']:.3f}) at lengths {lengths[0]}-{lengths[-1]}")
    if summary.sample is not None:
        lines.append(f"  greedy sample: {summary.sample!r}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from data.errors import DataError
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError, load_config, valid_keys
    from trainer.errors import TrainingError

    if args.list_keys:
        print("\n".join(valid_keys()))
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
        from trainer.run import train

        summary = train(cfg)
    except (ConfigError, CheckpointError, DataError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.is_main:
        print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
