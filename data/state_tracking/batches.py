"""Batches of task samples for training (an exactly resumable stream) and evaluation, and accuracy helpers."""
from __future__ import annotations

import numpy as np
import torch

from .task import IGNORE_INDEX, Task, check_int

# Mixed into every seed so training and evaluation never draw from the same random stream.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1
EVAL_BATCH_ROWS = 256


def _collate(task: Task, samples: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sample: input_ids with pad_id, labels with -100; both int64 [B, T]."""
    width = max(len(tokens) for tokens, _ in samples)
    input_ids = torch.full((len(samples), width), task.pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (tokens, answers) in enumerate(samples):
        input_ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        labels[row, :len(answers)] = torch.tensor(answers, dtype=torch.long)
    return input_ids, labels


def make_batch(task: Task, rng: np.random.Generator, batch_size: int, min_len: int,
               max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size samples, each of a length drawn uniformly from task.lengths(min_len, max_len), padded.

    Returns (input_ids [B, T], labels [B, T]) with T the longest sample's token count.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    lengths = task.lengths(min_len, max_len)
    picks = rng.integers(0, len(lengths), size=batch_size).tolist()
    return _collate(task, [task.sample(rng, lengths[i]) for i in picks])


class TaskBatches:
    """Endless training batches; batch i depends only on (seed, i), so resuming at any i is exact.

    Data-parallel process `rank` of `world_size` gets its rows of a global batch of batch_size * world_size
    samples, so the global batch (and the loss curve) does not depend on how many processes share it.
    """

    def __init__(self, task: Task, batch_size: int, min_len: int, max_len: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        task.lengths(min_len, max_len)  # validates the range
        self.task, self.min_len, self.max_len = task, min_len, max_len
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank={rank} must be smaller than world_size={world_size}")
        self.batches_drawn = 0

    def __iter__(self) -> "TaskBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, 0, self.batches_drawn])
        self.batches_drawn += 1
        input_ids, labels = make_batch(self.task, rng, self.batch_size * self.world_size, self.min_len,
                                       self.max_len)
        rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return input_ids[rows], labels[rows]

    def _identity(self) -> dict:
        return {"task": repr(self.task), "batch_size": self.batch_size, "min_len": self.min_len,
                "max_len": self.max_len, "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def state_dict(self) -> dict:
        """{"batches_drawn": n, ...} plus what the stream was built with, so a mismatched resume is caught."""
        return {"batches_drawn": self.batches_drawn, **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the state's last batch; ValueError if it came from a differently built stream."""
        differ = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if differ:
            details = ", ".join(f"{k}: saved {saved!r}, now {now!r}" for k, (saved, now) in differ.items())
            raise ValueError(f"cannot resume task batches built differently ({details}); "
                             "use the saved settings or start a fresh run")
        self.batches_drawn = check_int("batches_drawn", state["batches_drawn"], 0)


class EvalBatch(tuple):
    """(input_ids [B, T], labels [B, T]) of sequences that all have `length` input symbols; unpacks as a pair."""

    def __new__(cls, input_ids: torch.Tensor, labels: torch.Tensor, length: int):
        batch = super().__new__(cls, (input_ids, labels))
        batch.length = length
        return batch

    def __getnewargs__(self):  # lets pickle and copy rebuild it
        return (*self, self.length)

    @property
    def input_ids(self) -> torch.Tensor:
        return self[0]

    @property
    def labels(self) -> torch.Tensor:
        return self[1]


def fixed_eval_set(task: Task, num_samples: int, min_len: int, max_len: int, seed: int,
                   max_rows: int = EVAL_BATCH_ROWS) -> list[EvalBatch]:
    """num_samples sequences split evenly over task.lengths(min_len, max_len) (when it does not divide, the
    remainder is spread over the whole range; with fewer samples than lengths, evenly spaced lengths get one),
    batched by length, at most max_rows per batch, so nothing is padded; `.length` says a batch's length.

    The sequences of one length depend only on (seed, length): a wider range or a larger num_samples keeps
    them (as a prefix), so results for a length compare across evaluations.
    """
    num_samples = check_int("num_samples", num_samples, 1)
    max_rows = check_int("max_rows", max_rows, 1)
    seed = check_int("seed", seed, 0)
    lengths = task.lengths(min_len, max_len)
    def share(i: int) -> int:  # ceil(i * num_samples / len(lengths))
        return -(-i * num_samples // len(lengths))

    batches = []
    for i, length in enumerate(lengths):
        count = share(i + 1) - share(i)
        if count == 0:
            continue
        rng = np.random.default_rng([seed, _EVAL_STREAM, length])
        samples = [task.sample(rng, length) for _ in range(count)]
        for start in range(0, count, max_rows):
            batches.append(EvalBatch(*_collate(task, samples[start:start + max_rows]), length))
    return batches


def _check_pair(predictions: torch.Tensor, labels: torch.Tensor) -> None:
    if predictions.shape != labels.shape or predictions.dim() != 2:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} must both be "
                         "[B, T] (pass logits.argmax(-1))")


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over every answer position (labels != -100) of predicted token ids [B, T]."""
    _check_pair(predictions, labels)
    answer = labels != IGNORE_INDEX
    return int((answer & (predictions == labels)).sum()), int(answer.sum())


def sequence_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over sequences, scoring each by its LAST answer position only.

    That is the paper's metric: the final answer for parity and modular arithmetic (whatever the
    supervision), and for permutations the state after the whole sequence. Rows without answers are skipped.
    """
    _check_pair(predictions, labels)
    answer = labels != IGNORE_INDEX
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    last = torch.where(answer, positions, -1).amax(dim=1)  # [B]
    rows = torch.nonzero(last >= 0).squeeze(1)
    hit = predictions[rows, last[rows]] == labels[rows, last[rows]]
    return int(hit.sum()), int(rows.numel())


def scaled_accuracy(acc: float, chance: float) -> float:
    """(acc - chance) / (1 - chance), the paper's scaled accuracy: 0 at chance, 1 when perfect."""
    return (acc - chance) / (1 - chance)
