"""Synthetic state-tracking tasks from the negative-eigenvalue paper: parity, modular arithmetic, permutations.

`get_task(name, **options)` builds a task; `TASKS` holds each with default options. Every task's token ids,
answer positions and chance level are documented on its class.
"""
from __future__ import annotations

import difflib
import inspect
from functools import partial

from .batches import (EvalBatch, TaskBatches, accuracy, fixed_eval_set, make_batch, scaled_accuracy,
                      sequence_accuracy)
from .modular import ModularArithmetic, ModularArithmeticBrackets, evaluate
from .parity import Parity
from .permutations import GROUPS, PermutationComposition
from .task import IGNORE_INDEX, Task

_FACTORIES = {
    "parity": Parity,
    "mod_arith": ModularArithmetic,
    "mod_arith_brackets": ModularArithmeticBrackets,
    **{group: partial(PermutationComposition, group) for group in GROUPS},
}

TASKS: dict[str, Task] = {name: factory() for name, factory in _FACTORIES.items()}


def get_task(name: str, **options) -> Task:
    """The task `name` built with `options` (e.g. get_task("parity", supervision="prefix"))."""
    if name not in _FACTORIES:
        close = difflib.get_close_matches(str(name), _FACTORIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown state-tracking task {name!r}; choose one of {', '.join(_FACTORIES)}{hint}")
    if not options:
        return TASKS[name]
    allowed = list(inspect.signature(_FACTORIES[name]).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise ValueError(f"task {name!r} has no option {', '.join(unknown)}; {takes}")
    return _FACTORIES[name](**options)


__all__ = ["EvalBatch", "IGNORE_INDEX", "TASKS", "Task", "TaskBatches", "accuracy", "evaluate", "fixed_eval_set",
           "get_task", "make_batch", "scaled_accuracy", "sequence_accuracy"]
