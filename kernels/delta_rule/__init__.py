"""Delta rule kernels with fla's layout: one public entry, `chunk_delta_rule`, that checks inputs and dispatches."""
import os

import torch

from ..precision import no_autocast
from .chunk import delta_rule_chunk
from .naive import delta_rule_naive

BACKENDS = ("auto", "torch", "naive", "triton", "fla")

__all__ = ["chunk_delta_rule", "fused_recurrent_delta_rule", "delta_rule_naive", "BACKENDS"]


def _check_inputs(q, k, v, beta, initial_state, cu_seqlens, chunk_size):
    """Raise a clear TypeError/ValueError for anything the kernels cannot run on."""
    named = {"q": q, "k": k, "v": v, "beta": beta}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point (fp32, fp16 or bf16), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; put all inputs on one device")
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, H, K] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with q's B, T, H = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, T, H] = {tuple(q.shape[:3])} (one write strength per token and head), "
                         f"got {tuple(beta.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")
    B, T, H, K = q.shape
    if T == 0:
        raise ValueError("the sequence is empty (T=0); pass at least one token")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")

    N = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point() \
                or cu_seqlens.dtype == torch.bool or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D integer tensor [N+1] of cumulative lengths, e.g. [0, 5, 12]")
        if B != 1:
            raise ValueError(f"cu_seqlens needs B == 1 (pack the sequences along T), got B={B}")
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != T or any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
            raise ValueError(f"cu_seqlens must rise from 0 to T={T} without decreasing, got {bounds}")
        N = len(bounds) - 1

    if initial_state is not None:
        V = v.shape[-1]
        if not isinstance(initial_state, torch.Tensor) or not initial_state.is_floating_point():
            raise TypeError("initial_state must be a floating-point tensor [N, H, K, V] (fp32 preferred)")
        if initial_state.shape != (N, H, K, V):
            what = "number of sequences in cu_seqlens" if cu_seqlens is not None else "batch size"
            raise ValueError(f"initial_state must be [N, H, K, V] = {(N, H, K, V)} (N = {what}), "
                             f"got {tuple(initial_state.shape)}")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}")


def _triton_usable(q, backend):
    """Triton needs CUDA tensors, or CPU ones under the interpreter (how CI tests the kernels)."""
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend={backend!r} runs Triton kernels, which need CUDA tensors (q is on {q.device}); "
                         "set TRITON_INTERPRET=1 before importing to run them on CPU, or use backend='torch'")


def _triton_covers(q, v, chunk_size):
    """Whether the Triton kernels take these head dims and chunk size ("auto" falls back to torch otherwise)."""
    from .triton_common import CHUNK_SIZES, MAX_HEAD_DIM
    return max(q.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM and chunk_size in CHUNK_SIZES


def _fla(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel, chunk_size):
    """fla's chunk_delta_rule, imported on first use, for comparing against a peer inside our models."""
    _triton_usable(q, "fla")
    if q.dtype == torch.float32:
        raise TypeError("backend='fla' needs fp16 or bf16 inputs (fla's chunk_delta_rule refuses fp32); "
                        "train under bf16 autocast or use backend='triton'")
    try:
        from fla.ops.delta_rule import chunk_delta_rule as fla_chunk_delta_rule
    except ImportError as err:
        raise ImportError("backend='fla' needs flash-linear-attention: pip install flash-linear-attention") from err
    return fla_chunk_delta_rule(q, k, v, beta, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, chunk_size=chunk_size)


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                     use_qk_l2norm_in_kernel=False, chunk_size=64, backend="auto"):
    """Delta rule S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t), as fla's op.

    q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H] (values in [0, 2]); initial_state [N, H, K, V] fp32 with
    N = B, or the number of sequences when cu_seqlens [N+1] packs them along T (then B == 1).
    scale defaults to K**-0.5. Computes in fp32; returns o [B, T, H, V] in v's dtype and the fp32 final
    state [N, H, K, V] if output_final_state, else None. backend: "auto" (Triton on CUDA tensors, torch on CPU),
    "torch", "naive", "triton" (K, V <= 128, chunk_size 16, 32 or 64) or "fla" (fla's kernels, fp16/bf16).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_inputs(q, k, v, beta, initial_state, cu_seqlens, chunk_size)
    args = (q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)
    if backend == "auto":
        backend = "triton" if q.is_cuda and _triton_covers(q, v, chunk_size) else "torch"
    with no_autocast(q):
        if backend == "naive":
            return delta_rule_naive(*args)
        if backend == "torch":
            return delta_rule_chunk(*args, chunk_size)
        if backend == "fla":
            return _fla(*args, chunk_size)
        _triton_usable(q, backend)
        # Imported on first use: Triton reads TRITON_INTERPRET when the kernels are defined.
        from .triton_chunk import delta_rule_triton
        return delta_rule_triton(*args, chunk_size)


def fused_recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                               cu_seqlens=None, use_qk_l2norm_in_kernel=False):
    """The delta rule by the fused recurrent Triton kernel (one token loop per head), for decoding and short
    sequences; arguments and results as `chunk_delta_rule`. Its backward recomputes with the chunked kernels."""
    _check_inputs(q, k, v, beta, initial_state, cu_seqlens, 64)
    _triton_usable(q, "triton")
    from .triton_chunk import delta_rule_triton
    with no_autocast(q):
        return delta_rule_triton(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens,
                                 use_qk_l2norm_in_kernel, fused=True)
