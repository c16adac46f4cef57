"""The `custom_dataset` the task YAMLs name: reads a .jsonl shipped next to them, from any working directory
(lm-eval would resolve a relative `data_files` path against the current directory instead)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets

TASKS_DIR = Path(__file__).resolve().parent


def load(data_file: str, **_metadata) -> datasets.DatasetDict:
    """{"test": the documents of eval/tasks/<data_file>}; lm-eval also passes task and model metadata, unused."""
    path = TASKS_DIR / data_file
    if not path.is_file():
        raise FileNotFoundError(f"task data file {path} is missing; regenerate it with python -m eval.tasks.make_data")
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
