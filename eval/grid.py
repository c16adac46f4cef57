"""Train and evaluate a grid of (task, model, learning rate, seed) runs; write the paper's Table 3 and a plot.

    python -m eval.grid --grid configs/state_tracking/grids/cpu.yaml [--jobs 2] [--dry-run]

Each run is `train.py --config <task config> <model overrides> train.lr=<lr> seed=<seed>` in its own process
(finished runs are skipped, so an interrupted grid continues where it stopped). For every (task, model) the
best learning rate is taken per seed, then the median and the best over seeds are reported, as scaled accuracy
(acc - chance) / (1 - chance) at the task config's evaluation lengths.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULT_FILE = "task_result.json"


@dataclass
class Run:
    task: str
    model: str
    lr: float
    seed: int
    config: Path
    overrides: list[str]
    out_dir: Path

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "train.py"), "--config", str(self.config), *self.overrides,
                f"train.lr={self.lr}", f"seed={self.seed}", f"out_dir={self.out_dir}", "log.progress_bar=false"]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def load_grid(path: Path) -> tuple[dict, list[Run]]:
    """Parse a grid file into its settings and the list of runs (clear errors for unknown names)."""
    grid = yaml.safe_load(path.read_text())
    models = grid.get("models") or {}
    out_root = Path(grid.get("out_dir", f"runs/grid_{path.stem}"))
    runs = []
    for task, spec in (grid.get("tasks") or {}).items():
        config = (path.parent / spec["config"]).resolve()
        if not config.is_file():
            raise ValueError(f"{path}: task {task}: config {config} does not exist")
        chosen = spec.get("models", "all")
        names = list(models) if chosen == "all" else chosen
        unknown = [n for n in names if n not in models]
        if unknown:
            raise ValueError(f"{path}: task {task} names unknown models {unknown}; defined: {list(models)}")
        for name, lr, seed in itertools.product(names, spec.get("lrs", [None]), spec.get("seeds", [0])):
            overrides = [*spec.get("overrides", []), *models[name]]
            lr_value = lr if lr is not None else yaml.safe_load(config.read_text())["train"]["lr"]
            out_dir = out_root / task / slug(name) / f"lr{lr_value:g}_seed{seed}"
            runs.append(Run(task, name, float(lr_value), seed, config, overrides, out_dir))
    return grid, runs


def execute(run: Run, threads: int) -> dict | None:
    result_path = run.out_dir / RESULT_FILE
    if not result_path.is_file():
        run.out_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(run.out_dir / "train.log", "w") as log:
            done = subprocess.run(run.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if done.returncode != 0:
            print(f"FAILED ({done.returncode}): {run.task} {run.model} lr={run.lr} seed={run.seed}; "
                  f"see {run.out_dir / 'train.log'}", flush=True)
            return None
    return json.loads(result_path.read_text())


def summarise(runs: list[Run], results: list[dict | None]) -> dict:
    """{(task, model): {"median": x, "best": y, "by_length": {...of the best run...}, "seeds": n}}."""
    per_seed: dict = {}
    for run, result in zip(runs, results):
        if result is None:
            continue
        key = (run.task, run.model, run.seed)
        if key not in per_seed or result["scaled_accuracy"] > per_seed[key]["scaled_accuracy"]:
            per_seed[key] = result  # best learning rate for this seed
    table: dict = {}
    for (task, model, _), result in per_seed.items():
        table.setdefault((task, model), []).append(result)
    return {key: {"median": statistics.median(r["scaled_accuracy"] for r in rs),
                  "best": max(r["scaled_accuracy"] for r in rs),
                  "by_length": max(rs, key=lambda r: r["scaled_accuracy"])["by_length"],
                  "seeds": len(rs)}
            for key, rs in table.items()}


def markdown_table(summary: dict, models: list[str], tasks: list[str]) -> str:
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for model in models:
        cells = []
        for task in tasks:
            entry = summary.get((task, model))
            cells.append("—" if entry is None else f"{entry['median']:.3f} / {entry['best']:.3f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCells: scaled accuracy, median / best over seeds (best learning rate per seed).\n"


def binned(by_length: dict, bins: int = 12) -> tuple[list[float], list[float]]:
    """Mean accuracy in equal-width length bins (each length has the same number of samples)."""
    lengths = sorted(int(k) for k in by_length)
    lo, hi = lengths[0], lengths[-1]
    width = max(1, (hi - lo + 1) / bins)
    groups: dict = {}
    for length in lengths:
        groups.setdefault(int((length - lo) / width), []).append((length, by_length[str(length)]))
    centers = [sum(x for x, _ in g) / len(g) for _, g in sorted(groups.items())]
    means = [sum(a for _, a in g) / len(g) for _, g in sorted(groups.items())]
    return centers, means


def plot(summary: dict, models: list[str], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for model in models:
            entry = summary.get((task, model))
            if entry:
                ax.plot(*binned(entry["by_length"]), marker="o", markersize=3, label=model)
        ax.set_title(task)
        ax.set_xlabel("sequence length (binned)")
        ax.set_ylabel("accuracy (best seed)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, type=Path)
    parser.add_argument("--jobs", type=int, default=None, help="runs in parallel (default: the grid's `jobs`)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    if not args.grid.is_file():
        print(f"error: grid file {args.grid} does not exist (see configs/state_tracking/grids/)", file=sys.stderr)
        return 2
    try:
        grid, runs = load_grid(args.grid)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(" ".join(r.command()) for r in runs))
        return 0
    jobs = args.jobs or grid.get("jobs", 1)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start = time.time()
    print(f"{len(runs)} runs, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda r: execute(r, threads), runs))
    summary = summarise(runs, results)
    models, tasks = list(grid["models"]), list(grid["tasks"])
    out_root = Path(grid.get("out_dir", f"runs/grid_{args.grid.stem}"))
    table = markdown_table(summary, models, tasks)
    (out_root / "table.md").write_text(table)
    plot(summary, models, tasks, out_root / "accuracy_vs_length.png")
    print(table)
    print(f"wrote {out_root / 'table.md'} and {out_root / 'accuracy_vs_length.png'} "
          f"({(time.time() - start) / 60:.1f} min)")
    return 0 if all(r is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
