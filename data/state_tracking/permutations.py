"""Permutation composition (Merrill et al., "The Illusion of State in State-Space Models")."""
from __future__ import annotations

import itertools

import numpy as np

from .task import Task

Perm = tuple[int, ...]


def compose(p: Perm, q: Perm) -> Perm:
    """p after q: the map i -> p[q[i]] (apply q first, then p)."""
    return tuple(p[i] for i in q)


def moved(p: Perm) -> int:
    """How many points p moves."""
    return sum(i != x for i, x in enumerate(p))


def is_even(p: Perm) -> bool:
    """Even number of inversions."""
    return sum(p[i] > p[j] for i, j in itertools.combinations(range(len(p)), 2)) % 2 == 0


# group name -> (degree, which elements are inputs); a permutation moving exactly 3 points is a 3-cycle
GROUPS = {
    "s3": (3, lambda p: True),
    "s5": (5, lambda p: True),
    "a5": (5, is_even),
    "s5_swaps": (5, lambda p: moved(p) == 2),
    "s5_swaps_3cycles": (5, lambda p: moved(p) in (2, 3)),
}


def generated_group(inputs: list[Perm]) -> list[Perm]:
    """All products of one or more inputs (the subgroup they generate), in lexicographic order."""
    found, frontier = set(inputs), list(inputs)
    while frontier:
        frontier = {compose(g, p) for p in frontier for g in inputs} - found
        found |= frontier
    return sorted(found)


class PermutationComposition(Task):
    """Track the composition of a sequence of random permutations.

    Groups (inputs drawn uniformly and independently from the input set):
      s3: all 6 permutations of 3 points; s5: all 120 of 5 points; a5: the 60 even permutations of 5 points;
      s5_swaps: the 10 transpositions; s5_swaps_3cycles: the 10 transpositions and the 20 3-cycles.
    A permutation is the tuple p of images, p[i] = where point i goes; lists of them are sorted
    lexicographically (itertools.permutations order). Composition is left to right: the state after reading
    g_1..g_t is P_t = g_t o ... o g_1 (apply g_1 first), i.e. P_t[i] = g_t[P_{t-1}[i]] with P_0 the identity.
    Vocabulary: 0 <pad>; 1..k the k inputs in sorted order (symbol: the images, "10234"); then one answer per
    element of the reachable set R = the group the inputs generate, in sorted order (symbol "<10234>"):
    R = S3, S5, A5, S5, S5 for the five groups (swaps generate all of S5). Class c is the c-th element of R.
    A sample of length n is n input tokens; every position t is labelled with P_t's answer token.
    Chance is taken as 1/|R|, the accuracy of a constant guess over uniformly spread states. (With swaps only,
    P_t is odd exactly when t is, so a guess that knows t's parity could reach 1/60.)
    """

    def __init__(self, group: str):
        degree, is_input = GROUPS[group]
        inputs = [p for p in itertools.permutations(range(degree)) if is_input(p)]
        reachable = generated_group(inputs)
        symbols = ("<pad>", *("".join(map(str, p)) for p in inputs),
                   *("<" + "".join(map(str, p)) + ">" for p in reachable))
        super().__init__(group, symbols, tuple(range(1 + len(inputs), len(symbols))), {})
        self.inputs, self.reachable = inputs, reachable
        index = {p: c for c, p in enumerate(reachable)}
        identity = tuple(range(degree))
        # _step[g][c]: class of g o reachable[c]; _first[g]: class of g alone (P_1 = g o identity)
        self._step = [[index[compose(g, p)] for p in reachable] for g in inputs]
        self._first = [index[compose(g, identity)] for g in inputs]

    def _generate(self, rng: np.random.Generator, length: int) -> tuple[list[int], list[int]]:
        draws = rng.integers(0, len(self.inputs), size=length).tolist()
        state = self._first[draws[0]]
        classes = [state]
        for g in draws[1:]:
            state = self._step[g][state]
            classes.append(state)
        first_answer = self.answer_ids[0]
        return [g + 1 for g in draws], [first_answer + c for c in classes]
