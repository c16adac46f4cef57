"""Helpers shared by the delta-rule Triton kernels: autotune configs, block sizes, allocation and chunk indexing."""
import functools
import os

import torch
import triton

MAX_HEAD_DIM = 128
CHUNK_SIZES = (16, 32, 64)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune(configs, key):
    """triton.autotune over `configs` on a GPU; only the first under the interpreter (which cannot benchmark).
    The kernel keeps the whole list as `all_configs`, so interpreter tests can run every config a GPU may pick."""
    def decorate(fn):
        tuner = triton.autotune(configs=configs[:1] if interpreting() else configs, key=key)(fn)
        tuner.all_configs = list(configs)
        return tuner
    return decorate


def warps(*counts, stages=(1,)):
    """Configs with no meta-parameters other than the numbers of warps and software-pipeline stages."""
    return [triton.Config({}, num_warps=w, num_stages=n) for w in counts for n in stages]


def tiles(*pairs):
    """Configs setting the K and V tile widths (BK, BV) of the per-chunk kernels, with their warp counts."""
    return [triton.Config({"BK": b, "BV": b}, num_warps=w) for b, w in pairs]


# Per-chunk kernels: 32-wide tiles with 4 warps (ptxas for sm_90: 64-180 registers, no spills). 64-wide tiles with
# 8 warps are right on the interpreter but gave wrong bf16 gradients (dk, dv, dbeta ~6% off) on an H200 with Triton
# 3.6 (tests/test_kernels_delta_rule_gpu.py::test_every_tile_config_is_right_in_bf16), so they stay out until a GPU
# run shows them right.
CHUNK_TILES = tiles((32, 4))
# Chunk-walking state kernels: 2-3 stages let Triton prefetch the next chunk's tiles while this one's dots run
# (one stage does not pipeline; the sequential walk is latency-bound).
STATE_CONFIGS = warps(4, 8, stages=(2, 3))


def block(dim: int, cap: int = 64) -> int:
    """A power-of-two tile covering `dim` up to `cap` (at least 16, the smallest tl.dot operand)."""
    return max(16, min(cap, triton.next_power_of_2(dim)))


def state_tiles(K: int, V: int) -> tuple:
    """(BK, BV) of the kernels that hold a [K, V] state in registers: all of K, V in 32-wide blocks."""
    return block(K, 128), block(V, 32)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get three-pass TF32 dots, ~fp32 accurate on tensor cores (one pass would cost ~1e-3 relative;
    "ieee" FMA dots spill thousands of bytes per thread in these kernels). Half inputs ignore the setting."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def new_empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer the kernels fill comes from here, so tests can swap in NaN-filled ones to catch unwritten memory."""
    return torch.empty(shape, dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _dense_chunks(B: int, T: int, C: int, device: torch.device):
    nc = triton.cdiv(T, C)
    cu = torch.arange(0, B + 1, device=device, dtype=torch.int32) * T  # [B+1]
    i = torch.arange(B * nc, device=device, dtype=torch.int32)
    indices = torch.stack([i // nc, i % nc], 1).contiguous()  # [NT, 2]: (sequence, chunk within it)
    offsets = torch.arange(0, B + 1, device=device, dtype=torch.int32) * nc  # [B+1]
    return cu, indices, offsets


def chunk_layout(B: int, T: int, C: int, cu_seqlens, device):
    """Index tensors for chunking (sequences packed along tokens): cu [N+1] token offsets, indices [NT, 2]
    (sequence, chunk in sequence) per global chunk, offsets [N+1] first global chunk of each sequence."""
    if cu_seqlens is None:
        return _dense_chunks(B, T, C, device)
    bounds = cu_seqlens.tolist()
    counts = [triton.cdiv(e - s, C) for s, e in zip(bounds[:-1], bounds[1:])]
    pairs = [(n, c) for n, count in enumerate(counts) for c in range(count)]
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    as_tensor = functools.partial(torch.tensor, dtype=torch.int32, device=device)
    return as_tensor(bounds), as_tensor(pairs).reshape(-1, 2), as_tensor(starts)
