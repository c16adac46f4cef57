"""The interface every state-tracking task implements, and the checks its arguments share."""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # label of positions that carry no answer (torch's cross-entropy default)
PAD_ID = 0  # every task reserves token id 0 for padding; it never appears inside a sample


def check_int(name: str, value, minimum: int) -> int:
    """Return value if it is an int >= minimum, else raise TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return int(value)


class Task:
    """A synthetic sequence task over a small vocabulary whose answers are reserved token ids.

    `sample(rng, length)` returns (tokens, labels) of equal length: labels hold the answer's token id where the
    model must answer (it reads tokens[t], then logits[t] is scored against labels[t]) and -100 elsewhere.
    `symbols[i]` names token id i, so vocab_size = len(symbols); `answer_ids[c]` is the token id of class c.
    `chance` is 1 / num_classes, the accuracy of a constant guess when answers are uniform (each subclass
    says how close its answers come to uniform).
    """

    name: str
    min_length = 1

    def __init__(self, name: str, symbols: tuple[str, ...], answer_ids: tuple[int, ...], options: dict):
        self.name = name
        self.symbols = symbols
        self.answer_ids = answer_ids
        self.options = options
        self.pad_id = PAD_ID
        self.vocab_size = len(symbols)
        self.num_classes = len(answer_ids)
        self.chance = 1.0 / self.num_classes
        self._class_of = {token: c for c, token in enumerate(answer_ids)}

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"get_task({self.name!r}{opts})"

    def sample(self, rng: np.random.Generator, length: int) -> tuple[list[int], list[int]]:
        """One random sequence of `length` input symbols (see the subclass for what a symbol is)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        return self._generate(rng, check_int("length", length, self.min_length))

    def _generate(self, rng: np.random.Generator, length: int) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    def lengths(self, min_len: int, max_len: int) -> list[int]:
        """The distinct lengths this task generates for requests in [min_len, max_len]."""
        min_len = check_int("min_len", min_len, self.min_length)
        max_len = check_int("max_len", max_len, self.min_length)
        if max_len < min_len:
            raise ValueError(f"max_len={max_len} must be at least min_len={min_len}")
        return list(range(min_len, max_len + 1))

    def num_tokens(self, length: int) -> int:
        """Tokens in a sample of `length` input symbols (the default: one token per symbol)."""
        return check_int("length", length, self.min_length)

    def class_of(self, token_id: int) -> int:
        """The answer class whose token id this is; ValueError for a token that is not an answer."""
        if token_id not in self._class_of:
            raise ValueError(f"token {token_id} is not one of {self.name}'s answer ids {self.answer_ids}")
        return self._class_of[token_id]

    def decode(self, tokens) -> str:
        """Token ids as space-separated symbols, for reading samples."""
        return " ".join(self.symbols[int(t)] for t in tokens)
