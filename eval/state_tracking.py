"""Evaluate a checkpoint on a state-tracking task at chosen lengths; prints accuracy, scaled accuracy, by length.

    python -m eval.state_tracking --checkpoint runs/parity --task parity --min-len 40 --max-len 256 \
        --num-samples 8192 --json

`accuracy` is the paper's metric: per sequence, the answer at its last answer position (the parity or the value
of the whole string; for permutations the composition of the whole sequence). `token_accuracy` counts every
answer position. scaled accuracy = (acc - chance) / (1 - chance).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import torch

from data.state_tracking import Task, fixed_eval_set, get_task, scaled_accuracy


def predict(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Token ids of the most likely answer class at every position ([B, T, V] -> [B, T])."""
    answer_ids = torch.tensor(task.answer_ids, device=logits.device)
    return answer_ids[logits[..., answer_ids].argmax(-1)]


def final_answer_correct(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] bool: is each row's last answer position right?"""
    positions = torch.arange(labels.shape[1], device=labels.device)
    last = torch.where(labels != -100, positions, -1).max(dim=1).values  # [B]
    rows = torch.arange(labels.shape[0], device=labels.device)
    return pred[rows, last] == labels[rows, last]


@torch.no_grad()
def evaluate_task(model, task: Task, batches, device: torch.device | str = "cpu", autocast=None) -> dict:
    """Accuracy of `model` on fixed evaluation batches (from data.state_tracking.fixed_eval_set)."""
    was_training = model.training
    model.eval()
    seq_correct, seq_total = defaultdict(int), defaultdict(int)
    tok_correct = tok_total = 0
    for batch in batches:
        input_ids, labels = batch[0].to(device), batch[1].to(device)
        if autocast is not None:
            with autocast():
                logits = model(input_ids)
        else:
            logits = model(input_ids)
        logits = getattr(logits, "logits", logits)
        pred = predict(logits.float(), task)
        mask = labels != -100
        tok_correct += (pred[mask] == labels[mask]).sum().item()
        tok_total += mask.sum().item()
        length = getattr(batch, "length", input_ids.shape[1])
        seq_correct[length] += final_answer_correct(pred, labels).sum().item()
        seq_total[length] += labels.shape[0]
    model.train(was_training)
    accuracy = sum(seq_correct.values()) / max(1, sum(seq_total.values()))
    return {"task": task.name, "accuracy": accuracy, "scaled_accuracy": scaled_accuracy(accuracy, task.chance),
            "chance": task.chance, "token_accuracy": tok_correct / max(1, tok_total),
            "num_samples": sum(seq_total.values()),
            "by_length": {int(k): seq_correct[k] / seq_total[k] for k in sorted(seq_total)}}


def task_from_checkpoint(checkpoint, name: str | None) -> Task:
    """The task a checkpoint was trained on (with its options), or `name` with the checkpoint's options."""
    from data.state_tracking.config import TaskConfig
    from model.loading import read_config_section

    cfg = TaskConfig(**read_config_section(checkpoint, "task"))
    if name is not None and name != cfg.name:
        cfg = TaskConfig(name=name, supervision=cfg.supervision, modulus=cfg.modulus)
    if cfg.name is None:
        raise ValueError(f"checkpoint {checkpoint} was not trained on a state-tracking task; pass --task")
    return get_task(cfg.name, **cfg.options())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir, checkpoints/latest or run dir")
    parser.add_argument("--task", help="task name (default: the one the checkpoint was trained on)")
    parser.add_argument("--min-len", type=int, default=40)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--num-samples", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from model.loading import model_from_dir
    from trainer.checkpoint import CheckpointError, resolve

    try:
        checkpoint = resolve(args.checkpoint)
        task = task_from_checkpoint(checkpoint, args.task)
        model = model_from_dir(checkpoint, device=args.device)
        if task.vocab_size > model.config.vocab_size:
            raise ValueError(f"task {task.name} needs vocab_size >= {task.vocab_size}, the model has "
                             f"{model.config.vocab_size}: it was trained on another task")
        batches = fixed_eval_set(task, args.num_samples, args.min_len, args.max_len, args.seed)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = evaluate_task(model, task, batches, args.device)
    result.update(min_len=args.min_len, max_len=args.max_len, checkpoint=str(checkpoint))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{task.name}: accuracy {result['accuracy']:.4f}, scaled {result['scaled_accuracy']:.4f} "
              f"(chance {task.chance:.4f}) over {result['num_samples']} sequences of length "
              f"{args.min_len}-{args.max_len}")
        for length, acc in result["by_length"].items():
            print(f"  length {length:5d}: {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
