"""The `task` config section: which state-tracking task to train on (null for language modelling)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TaskConfig:
    """Training draws lengths uniformly in [min_len, max_len]; evaluation uses a fixed set over the eval range."""

    name: str | None = None  # parity | mod_arith | mod_arith_brackets | s3 | s5 | a5 | s5_swaps | s5_swaps_3cycles
    supervision: str = "final"  # parity, mod_arith*: final (answer at the end only) | prefix (also every prefix)
    modulus: int = 5  # modular arithmetic only
    min_len: int = 3
    max_len: int = 40
    eval_min_len: int = 40
    eval_max_len: int = 256
    eval_samples: int = 512
    eval_seed: int = 1234

    def options(self) -> dict:
        """Task constructor options that apply to this task."""
        if self.name == "parity":
            return {"supervision": self.supervision}
        if self.name in ("mod_arith", "mod_arith_brackets"):
            return {"modulus": self.modulus, "supervision": self.supervision}
        return {}

    def validate(self) -> None:
        if self.name is None:
            return
        from . import get_task

        get_task(self.name, **self.options())  # raises a ValueError naming valid tasks / options
        if self.supervision not in ("final", "prefix"):
            raise ValueError(f"task.supervision={self.supervision!r}: choose final or prefix")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"task.min_len={self.min_len}, task.max_len={self.max_len}: need 1 <= min_len <= max_len")
        if not 1 <= self.eval_min_len <= self.eval_max_len:
            raise ValueError(f"task.eval_min_len={self.eval_min_len}, task.eval_max_len={self.eval_max_len}: need "
                             f"1 <= eval_min_len <= eval_max_len")
        if self.eval_samples < 1:
            raise ValueError(f"task.eval_samples={self.eval_samples} must be >= 1")
