"""Parity of a random bit string."""
from __future__ import annotations

import numpy as np

from .task import IGNORE_INDEX, Task

SUPERVISIONS = ("final", "prefix")


class Parity(Task):
    """Is the number of ones in a random bit string even or odd?

    Vocabulary (vocab_size 5): 0 <pad>, 1 the bit "0", 2 the bit "1", 3 the answer <even>, 4 the answer <odd>.
    A sample of length n is n uniform random bits, one token each (length counts bits = tokens).
    Answers (classes 0 = even, 1 = odd): with supervision "final" only the last position is labelled, with the
    parity of the whole string; with "prefix" every position t is labelled with the parity of bits 0..t.
    Chance 0.5: the parity of uniform random bits is uniform for every length >= 1.
    """

    def __init__(self, supervision: str = "final"):
        if supervision not in SUPERVISIONS:
            raise ValueError(f"parity: supervision={supervision!r} is not allowed; choose one of "
                             f"{', '.join(SUPERVISIONS)}")
        super().__init__("parity", ("<pad>", "0", "1", "<even>", "<odd>"), (3, 4), {"supervision": supervision})
        self.supervision = supervision

    def _generate(self, rng: np.random.Generator, length: int) -> tuple[list[int], list[int]]:
        bits = rng.integers(0, 2, size=length)
        answers = np.take(self.answer_ids, np.cumsum(bits) % 2)  # [length] parity of each prefix
        if self.supervision == "final":
            labels = [IGNORE_INDEX] * (length - 1) + [int(answers[-1])]
        else:
            labels = answers.tolist()
        return (bits + 1).tolist(), labels
