"""`harness`: lm-eval tasks run during training (eval/harness_callback.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HarnessConfig:
    """lm-eval tasks to run every `every` steps (0: only at the stop step); nothing runs while `tasks` is null."""

    tasks: list[str] | None = None  # task or tag names: eval/tasks/ (e.g. lrnn_local) or lm-eval's built-in ones
    every: int = 0
    limit: int | None = None  # documents per task (null: all)
    batch_size: int = 8

    def validate(self) -> None:
        if self.tasks is not None:
            if not self.tasks:
                raise ValueError("harness.tasks is an empty list; name at least one task (e.g. [lrnn_local]) or set "
                                 "it to null")
            bad = [t for t in self.tasks if not isinstance(t, str) or not t.strip()]
            if bad:
                raise ValueError(f"harness.tasks={self.tasks!r}: every entry must be a non-empty task name")
        if self.every < 0:
            raise ValueError(f"harness.every={self.every} must be >= 0 (0: only at the stop step)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"harness.limit={self.limit} must be a positive integer or null (all documents)")
        if self.batch_size < 1:
            raise ValueError(f"harness.batch_size={self.batch_size} must be a positive integer")
