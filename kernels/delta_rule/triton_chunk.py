"""The Triton delta rule behind `chunk_delta_rule(backend="triton")`: the chunked autograd Function, and the choice
between it and the fused recurrent kernel.

All per-token work runs in Triton (triton_chunk_fwd.py, triton_chunk_bwd.py, triton_fused_recurrent.py,
triton_l2norm.py); torch only allocates buffers, builds the small chunk index tensors and casts dh0's dtype.
"""
import contextlib

import torch

from .triton_chunk_bwd import chunk_bwd
from .triton_chunk_fwd import chunk_fwd
from .triton_common import CHUNK_SIZES, MAX_HEAD_DIM, chunk_layout
from .triton_fused_recurrent import FusedRecurrentFunction
from .triton_l2norm import l2norm_triton

# Without gradients, sequences up to this long run the one-launch token loop (decoding, short prompts).
FUSED_MAX_T = 64


class ChunkDeltaRuleFunction(torch.autograd.Function):
    """Chunked forward saving T and the chunk-start states; backward recomputes W, U' and carries dS in reverse."""

    @staticmethod
    def forward(ctx, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size):
        B, T = q.shape[:2]
        layout = chunk_layout(B, T, chunk_size, cu_seqlens, q.device)
        o, ht, Tm, h = chunk_fwd(q, k, v, beta, scale, initial_state, output_final_state, layout, chunk_size)
        ctx.save_for_backward(q, k, v, beta, Tm, h)
        ctx.scale, ctx.layout, ctx.chunk_size = scale, layout, chunk_size
        ctx.h0_dtype = None if initial_state is None else initial_state.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, Tm, h = ctx.saved_tensors
        dq, dk, dv, dbeta, dh0 = chunk_bwd(q, k, v, beta, Tm, h, do, dht, ctx.scale, ctx.h0_dtype is not None,
                                           ctx.layout, ctx.chunk_size)
        dh0 = None if dh0 is None else dh0.to(ctx.h0_dtype)
        return dq, dk, dv, dbeta, None, dh0, None, None, None


def check_triton_support(q, v, chunk_size):
    """Raise ValueError for shapes the Triton kernels do not cover, naming the way out."""
    K, V = q.shape[-1], v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"backend='triton' supports head dims up to {MAX_HEAD_DIM}, got K={K}, V={V}; "
                         "use backend='torch' or more heads")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"backend='triton' supports chunk_size in {CHUNK_SIZES}, got {chunk_size}")


def delta_rule_triton(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                      use_qk_l2norm_in_kernel=False, chunk_size=64, fused=None):
    """Triton delta rule; arguments as `kernels.delta_rule.chunk_delta_rule` (inputs already checked).

    fused=None runs the fused recurrent kernel when no gradient is needed and every sequence is at most
    FUSED_MAX_T long, else the chunked kernels; True or False forces one.
    """
    check_triton_support(q, v, chunk_size)
    if fused is None:
        longest = q.shape[1] if cu_seqlens is None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        needs_grad = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (q, k, v, beta, initial_state))
        fused = longest <= FUSED_MAX_T and not needs_grad
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    # Triton launches on the current CUDA device, which need not be the tensors'.
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        if use_qk_l2norm_in_kernel:
            q, k = l2norm_triton(q), l2norm_triton(k)
        if fused:
            return FusedRecurrentFunction.apply(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens)
        return ChunkDeltaRuleFunction.apply(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens,
                                            chunk_size)
