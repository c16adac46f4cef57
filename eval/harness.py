"""Run lm-eval tasks on a checkpoint (CLI) or on a model in memory (`run_harness`, also used during training).

    python -m eval.harness --checkpoint runs/default --tasks lrnn_local [--limit 50]

writes lm-eval's results as JSON (default: <run dir>/lm_eval/<checkpoint name>.json) and a markdown summary
table next to it, and prints the table. Tasks are names or tags from eval/tasks/ (always included, from any
working directory), from --include-path directories, or lm-eval's built-in tasks (these fetch their datasets
from the Hugging Face Hub or its local cache).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def build_task_manager(tasks: list[str], include_path: list[str | Path] = ()):
    """A TaskManager that knows eval/tasks/ and `include_path`, plus lm-eval's built-in tasks only when a name is
    not found locally (indexing those takes seconds). Unknown names raise ValueError with suggestions."""
    from lm_eval.tasks import TaskManager

    paths = [TASKS_DIR, *map(Path, include_path)]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if any(name not in manager.all_tasks for name in tasks):
        manager = TaskManager(include_path=paths)
    missing = [name for name in tasks if name not in manager.all_tasks and not Path(name).is_file()]
    if missing:
        hints = {name: difflib.get_close_matches(name, manager.all_tasks, n=3) for name in missing}
        raise ValueError(f"unknown lm-eval task(s) {missing} (closest: {hints}); local tasks: "
                         f"{sorted(TaskManager(include_path=TASKS_DIR, include_defaults=False).all_tasks)}")
    return manager


@contextlib.contextmanager
def _preserved_rng():
    """lm-eval seeds Python's, NumPy's and torch's global generators; keep the caller's (the trainer's) streams."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def run_harness(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 8, *,
                max_length: int | None = None, device=None, autocast=None, num_fewshot: int | None = None,
                bootstrap_iters: int = 0, log_samples: bool = False, include_path: list[str | Path] = (),
                task_manager=None) -> dict | None:
    """lm-eval's results dict for `model` (a LanguageModel) with our `tokenizer` on `tasks`, `limit` documents
    each; None on processes whose LOCAL_RANK is not 0 (lm-eval assembles results on local rank 0 only, after
    every process has run every request). The global random generators are left as they were."""
    from lm_eval import simple_evaluate

    from eval.lm_eval_model import LRNNEvalModel

    lm = LRNNEvalModel(model=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                       device=device, autocast=autocast)
    with _preserved_rng():
        return simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                               bootstrap_iters=bootstrap_iters, log_samples=log_samples,
                               task_manager=task_manager or build_task_manager(tasks, include_path))


def flat_metrics(results: dict) -> dict[str, float]:
    """{"<task>.<metric>": value} for every numeric metric (".<filter>" appended unless the filter is "none");
    standard errors are left out."""
    flat = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if "_stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            flat[f"{task}.{metric}" + (f".{filt}" if filt not in ("", "none") else "")] = float(value)
    return flat


def summary_table(results: dict) -> str:
    """lm-eval's markdown table of the results (and of groups, if any)."""
    from lm_eval.utils import make_table

    table = make_table(results)
    return table + ("\n" + make_table(results, "groups") if results.get("groups") else "")


def default_output(checkpoint: Path) -> Path:
    """<run dir>/lm_eval/<checkpoint name>.json for a checkpoint inside a run's checkpoints/ folder."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "lm_eval" / f"{checkpoint.name}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, its `latest` file or a run dir")
    parser.add_argument("--tasks", required=True, help="comma-separated task or tag names, e.g. lrnn_local")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None, help="default: the run's train.seq_len")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--include-path", action="append", default=[], help="another directory of task YAMLs")
    parser.add_argument("--bootstrap-iters", type=int, default=1000, help="for standard errors (0: none)")
    parser.add_argument("--log-samples", action="store_true", help="keep every document's inputs and outputs")
    parser.add_argument("--output", default=None, help="results JSON path (the table goes next to it as .md)")
    args = parser.parse_args(argv)

    from lm_eval.utils import handle_non_serializable

    from eval.generation import load_checkpoint
    from model.loading import read_config_section

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or (args.limit is not None and args.limit < 1):
        parser.error("--tasks needs at least one name and --limit must be positive")
    manager = build_task_manager(tasks, args.include_path)  # fails on a typo before the model loads
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, checkpoint = load_checkpoint(args.checkpoint, device)
    seq_len = read_config_section(checkpoint, "train").get("seq_len")
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) \
        if args.precision == "bf16" else None
    max_length = seq_len if args.max_length is None else args.max_length
    results = run_harness(model, tokenizer, tasks, args.limit, args.batch_size, max_length=max_length, device=device,
                          autocast=autocast, num_fewshot=args.num_fewshot, bootstrap_iters=args.bootstrap_iters,
                          log_samples=args.log_samples, task_manager=manager)
    if results is None:  # a non-zero LOCAL_RANK under a launcher
        return 0
    results["config"]["checkpoint"] = str(checkpoint)
    output = Path(args.output) if args.output else default_output(checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1, default=handle_non_serializable))
    table = summary_table(results)
    output.with_suffix(".md").write_text(table)
    print(table)
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
