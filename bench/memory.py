"""Peak memory (and time) of one mixer layer's forward + backward against T, for every mixer (issue 7, case 5).

B=1, hidden 256, 4 heads (head dim 64), fp32 on CPU; peak = growth of the resident set during the call
(timing.peak_growth). The recurrent mixers must grow linearly in T. Softmax attention is the contrast: torch's
scaled_dot_product_attention on CPU picks a flash-style kernel whose memory is linear too (its time is quadratic),
so attention is also run with the math backend, which stores the [T, T] scores (capped at `max_math_T`).
"""
import contextlib
import math

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.lm import layer_step
from bench.timing import measure
from model.attention import Attention
from model.config import ModelConfig
from model.deltanet import DeltaNet
from model.lstm import LSTM
from model.mamba import Mamba

HIDDEN, HEADS = 256, 4
MIXERS = {  # name -> (layer class, config's mixer, SDPA backends to allow or None for torch's choice)
    "deltanet": (DeltaNet, "deltanet", None),
    "mamba": (Mamba, "mamba", None),
    "lstm": (LSTM, "lstm", None),
    "attention (SDPA, flash on CPU)": (Attention, "attention", None),
    "attention (SDPA math: T x T scores)": (Attention, "attention", [SDPBackend.MATH]),
}


def growth_exponent(rows):
    """log2 of the peak's growth over the last doubling of T: ~1 for linear memory, ~2 for quadratic."""
    by_T = sorted((r["shape"][0], r["fwd_bwd_mb"]) for r in rows if r.get("fwd_bwd_mb"))
    pairs = [(a, b) for a, b in zip(by_T, by_T[1:]) if b[0] == 2 * a[0]]
    if not pairs:
        return None
    (_, lo), (_, hi) = pairs[-1]
    return math.log2(hi / lo) if lo > 0 else None


def memory_rows(lengths, repeats=3, budget_s=30.0, max_math_T=4096):
    """Rows {shape: (T,), name, fwd_bwd, fwd_bwd_mb, n} for every mixer at each T in lengths."""
    print(f"peak memory of one layer's fwd+bwd, CPU ({torch.get_num_threads()} threads): fp32, B=1, hidden {HIDDEN}, "
          f"{HEADS} heads; growth of the resident set during the call")
    rows = []
    for name, (cls, mixer, backends) in MIXERS.items():
        torch.manual_seed(0)
        layer = cls(ModelConfig(mixer=mixer, hidden_size=HIDDEN, num_heads=HEADS).validate())
        for T in lengths:
            if backends and T > max_math_T:
                rows.append(dict(shape=(T,), name=name, error=f"skipped above T={max_math_T} (quadratic memory)"))
                continue
            with sdpa_kernel(backends) if backends else contextlib.nullcontext():
                result = measure(layer_step(layer, 1, T, HIDDEN), repeats, budget_s)
            rows.append(dict(shape=(T,), name=name, fwd_bwd=result["ms"], fwd_bwd_mb=result["mb"], n=result["n"]))
            print(f"  {name:>36} T={T:>5}: peak {result['mb']:8.1f} MB  fwd+bwd {result['ms']:9.1f} ms", flush=True)
        exponent = growth_exponent([r for r in rows if r["name"] == name])
        if exponent is not None:
            print(f"  {name:>36} memory ~ T^{exponent:.2f} over the last doubling")
    return rows
