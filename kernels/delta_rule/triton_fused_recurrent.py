"""Fused recurrent delta rule in Triton: one program per (sequence, head, V block) walks the tokens with the state
[K, BV] in fp32 registers. One launch, no chunk set-up: the kernel for decoding and short sequences.

The forward is this kernel; its backward recomputes through the chunked kernels (a token loop backward would need
the states in reverse, and I - beta k k^T is singular at beta = 1), so training uses the chunked path.
"""
import torch
import triton
import triton.language as tl

from .triton_chunk_bwd import chunk_bwd
from .triton_chunk_fwd import chunk_fwd
from .triton_common import autotune, chunk_layout, new_empty, state_tiles, warps

BACKWARD_CHUNK = 64


@autotune(warps(2, 4), key=["H", "K", "V", "BV"])
@triton.jit
def _fused_recurrent_fwd_kernel(q, k, v, beta, o, h0, ht, cu, scale, H: tl.constexpr, K: tl.constexpr,
                                V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr,
                                STORE_HT: tl.constexpr):
    i_v, i_n, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + (i_n * H + i_h).to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    p_q, p_k, p_beta = q + (bos * H + i_h) * K + o_k, k + (bos * H + i_h) * K + o_k, beta + bos * H + i_h
    p_v, p_o = v + (bos * H + i_h) * V + o_v, o + (bos * H + i_h) * V + o_v
    for _ in range(bos, eos):
        b_q = tl.load(p_q, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0.).to(tl.float32)
        b_beta = tl.load(p_beta).to(tl.float32)
        b_err = b_v - tl.sum(b_S * b_k[:, None], 0)  # what the state mispredicts for k_t: [BV]
        b_S += (b_beta * b_k)[:, None] * b_err[None, :]
        tl.store(p_o, tl.sum(b_S * b_q[:, None], 0).to(o.dtype.element_ty), mask=m_v)
        p_q, p_k, p_beta = p_q + H * K, p_k + H * K, p_beta + H
        p_v, p_o = p_v + H * V, p_o + H * V
    if STORE_HT:
        tl.store(ht + (i_n * H + i_h).to(tl.int64) * K * V + o_kv, b_S, mask=m_kv)


def fused_recurrent_fwd(q, k, v, beta, scale, initial_state, output_final_state, cu):
    """q, k [B, T, H, K], v [B, T, H, V] contiguous, beta [B, T, H], cu [N+1] int32 token offsets of the packed
    sequences; returns o [B, T, H, V] in v's dtype and the fp32 final state [N, H, K, V] or None."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = cu.numel() - 1
    BK, BV = state_tiles(K, V)
    o = new_empty((B, T, H, V), v.dtype, q.device)
    ht = new_empty((N, H, K, V), torch.float32, q.device) if output_final_state else None
    _fused_recurrent_fwd_kernel[(triton.cdiv(V, BV), N, H)](
        q, k, v, beta, o, initial_state, ht, cu, scale, H=H, K=K, V=V, BK=BK, BV=BV,
        USE_H0=initial_state is not None, STORE_HT=output_final_state)
    return o, ht


class FusedRecurrentFunction(torch.autograd.Function):
    """Forward by the token loop; backward by recomputing T and the chunk states with the chunked kernels."""

    @staticmethod
    def forward(ctx, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens):
        B, T = q.shape[:2]
        layout = chunk_layout(B, T, BACKWARD_CHUNK, cu_seqlens, q.device)
        o, ht = fused_recurrent_fwd(q, k, v, beta, scale, initial_state, output_final_state, layout[0])
        ctx.save_for_backward(q, k, v, beta, initial_state)
        ctx.scale, ctx.layout = scale, layout
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, h0 = ctx.saved_tensors
        _, _, Tm, h = chunk_fwd(q, k, v, beta, ctx.scale, h0, False, ctx.layout, BACKWARD_CHUNK, need_output=False)
        dq, dk, dv, dbeta, dh0 = chunk_bwd(q, k, v, beta, Tm, h, do, dht, ctx.scale, h0 is not None, ctx.layout,
                                           BACKWARD_CHUNK)
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dq, dk, dv, dbeta, None, dh0, None, None
