"""Chunked delta-rule forward in Triton (WY / UT form), three kernels:

1. `_wy_fwd_kernel`, per chunk: T = (I + tril(diag(beta) K K^T, -1))^{-1} by forward substitution,
   W = T diag(beta) K and U = T diag(beta) V.
2. `_state_fwd_kernel`, per (sequence, head, V block), walking the chunks in order with the state S [K, BV] in
   fp32 registers: stores S at each chunk start, U' = U - W S, and S <- S + K^T U'.
3. `_output_fwd_kernel`, per chunk: o = scale (Q S + tril(Q K^T) U').

Tokens of all sequences are packed along one axis (a dense batch is B sequences of length T), so chunks never
straddle two sequences and a state starts afresh at each sequence start. Dots take the inputs' dtype with fp32
accumulation; T, the states' running sums and the final state stay fp32.
"""
import torch
import triton
import triton.language as tl

from .triton_common import CHUNK_TILES, autotune, block, dot_precision, new_empty, warps


@autotune(CHUNK_TILES, key=["H", "K", "V", "BT"])
@triton.jit
def _wy_fwd_kernel(k, v, beta, Tm, W, U, cu, indices, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_t = tl.load(indices + i_c * 2), tl.load(indices + i_c * 2 + 1)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT  # first token of the chunk; tiles below are int32 offsets from its row
    o_c = tl.arange(0, BT)
    m_t = o_c < (eos - t0).to(tl.int32)
    b_beta = tl.load(beta + t0 * H + i_h + o_c * H, mask=m_t, other=0.).to(tl.float32)  # [BT]
    p_k, p_v = k + (t0 * H + i_h) * K, v + (t0 * H + i_h) * V
    p_w, p_u = W + (t0 * H + i_h) * K, U + (t0 * H + i_h) * V

    # A^T[m, r] = beta_r k_r . k_m, kept for m < r only: A's strictly lower part, transposed.
    b_At = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_k = tl.load(p_k + o_c[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)  # [BT, BK]
        b_kb = (b_k * b_beta[:, None]).to(b_k.dtype)
        b_At += tl.dot(b_k, tl.trans(b_kb), input_precision=PREC)
    b_At = tl.where(o_c[:, None] < o_c[None, :], b_At, 0.)

    # Forward substitution, one row at a time: T[r] = e_r - sum_{m<r} A[r, m] T[m]. Padded rows (beta = 0)
    # stay identity rows, so padding never mixes into real tokens.
    b_T = tl.where(o_c[:, None] == o_c[None, :], 1., 0.)  # [BT, BT] fp32
    for r in range(1, BT):
        b_a = tl.sum(tl.where(o_c[None, :] == r, b_At, 0.), 1)  # A[r, :] indexed along rows
        b_row = tl.sum(b_a[:, None] * b_T, 0)
        b_T -= tl.where(o_c[:, None] == r, b_row[None, :], 0.)
    tl.store(Tm + (t0 * H + i_h) * BT + o_c[:, None] * (H * BT) + o_c[None, :], b_T, mask=m_t[:, None])

    b_Td = b_T.to(W.dtype.element_ty)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        o_tk = o_c[:, None] * (H * K) + o_k[None, :]
        b_k = tl.load(p_k + o_tk, mask=m_tk, other=0.)
        b_w = tl.dot(b_Td, (b_k * b_beta[:, None]).to(b_Td.dtype), input_precision=PREC)
        tl.store(p_w + o_tk, b_w.to(W.dtype.element_ty), mask=m_tk)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        o_tv = o_c[:, None] * (H * V) + o_v[None, :]
        b_v = tl.load(p_v + o_tv, mask=m_tv, other=0.)
        b_u = tl.dot(b_Td, (b_v * b_beta[:, None]).to(b_Td.dtype), input_precision=PREC)
        tl.store(p_u + o_tv, b_u.to(U.dtype.element_ty), mask=m_tv)


@autotune(warps(4, 8), key=["H", "K", "V", "BT", "BV"])
@triton.jit
def _state_fwd_kernel(k, W, U, h, Up, h0, ht, cu, offsets, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr,
                      STORE_HT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_n, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    first = tl.load(offsets + i_n).to(tl.int64)
    o_c = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    o_kv = o_k[:, None] * V + o_v[None, :]  # [BK, BV] offsets inside one [K, V] state
    o_tk = o_c[:, None] * (H * K) + o_k[None, :]  # [BT, BK] offsets inside one chunk of k or W
    o_kt = o_c[None, :] * (H * K) + o_k[:, None]  # the same, transposed
    o_tv = o_c[:, None] * (H * V) + o_v[None, :]
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + (i_n * H + i_h).to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    for i_t in range(0, tl.cdiv(eos - bos, BT)):
        tl.store(h + ((first + i_t) * H + i_h) * K * V + o_kv, b_S.to(h.dtype.element_ty), mask=m_kv)
        t0 = bos + i_t * BT
        m_t = o_c < (eos - t0).to(tl.int32)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_w = tl.load(W + (t0 * H + i_h) * K + o_tk, mask=m_tk, other=0.)  # [BT, BK]
        b_u = tl.load(U + (t0 * H + i_h) * V + o_tv, mask=m_tv, other=0.)  # [BT, BV]
        b_up = b_u.to(tl.float32) - tl.dot(b_w, b_S.to(b_w.dtype), input_precision=PREC)
        b_up = b_up.to(Up.dtype.element_ty)
        tl.store(Up + (t0 * H + i_h) * V + o_tv, b_up, mask=m_tv)
        b_kt = tl.load(k + (t0 * H + i_h) * K + o_kt, mask=(o_k[:, None] < K) & m_t[None, :], other=0.)  # [BK, BT]
        b_S += tl.dot(b_kt, b_up.to(b_kt.dtype), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + (i_n * H + i_h).to(tl.int64) * K * V + o_kv, b_S, mask=m_kv)


@autotune(CHUNK_TILES, key=["H", "K", "V", "BT"])
@triton.jit
def _output_fwd_kernel(q, k, h, Up, o, cu, indices, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t = tl.load(indices + i_c * 2), tl.load(indices + i_c * 2 + 1)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT
    o_c = tl.arange(0, BT)
    m_t = o_c < (eos - t0).to(tl.int32)
    o_v = i_v * BV + tl.arange(0, BV)
    m_tv = m_t[:, None] & (o_v[None, :] < V)
    o_tv = o_c[:, None] * (H * V) + o_v[None, :]
    p_q, p_k = q + (t0 * H + i_h) * K, k + (t0 * H + i_h) * K
    p_S = h + (i_c * H + i_h).to(tl.int64) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_M = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_q = tl.load(p_q + o_c[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)  # [BT, BK]
        b_kt = tl.load(p_k + o_c[None, :] * (H * K) + o_k[:, None], mask=(o_k[:, None] < K) & m_t[None, :],
                       other=0.)  # [BK, BT]
        b_S = tl.load(p_S + o_k[:, None] * V + o_v[None, :], mask=(o_k[:, None] < K) & (o_v[None, :] < V),
                      other=0.)  # [BK, BV]
        b_o += tl.dot(b_q, b_S.to(b_q.dtype), input_precision=PREC)
        b_M += tl.dot(b_q, b_kt, input_precision=PREC)
    b_M = tl.where(o_c[:, None] >= o_c[None, :], b_M, 0.)  # causal, diagonal included
    b_up = tl.load(Up + (t0 * H + i_h) * V + o_tv, mask=m_tv, other=0.)
    b_o = (b_o + tl.dot(b_M.to(b_up.dtype), b_up, input_precision=PREC)) * scale
    tl.store(o + (t0 * H + i_h) * V + o_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


def chunk_fwd(q, k, v, beta, scale, initial_state, output_final_state, layout, chunk_size, need_output=True):
    """q, k [B, T, H, K], v [B, T, H, V] (contiguous, one dtype), beta [B, T, H]; layout from `chunk_layout`.

    Returns o [B, T, H, V] (None unless need_output), the fp32 final state [N, H, K, V] (or None), and what the
    backward needs: T [B, T, H, C] fp32 and the chunk-start states h [NT, H, K, V] in the inputs' dtype.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cu, indices, offsets = layout
    N, NT, BT = cu.numel() - 1, indices.shape[0], chunk_size
    dev, dt, prec = q.device, q.dtype, dot_precision(q.dtype)
    dims = dict(H=H, K=K, V=V, BT=BT, PREC=prec)

    Tm = new_empty((B, T, H, BT), torch.float32, dev)
    W, U = new_empty((B, T, H, K), dt, dev), new_empty((B, T, H, V), dt, dev)
    _wy_fwd_kernel[(NT, H)](k, v, beta, Tm, W, U, cu, indices, **dims)

    BKS, BVS = block(K, 128), block(V, 32)  # the state kernel holds all of K in registers: [BKS, BVS] fp32
    h = new_empty((NT, H, K, V), dt, dev)
    Up = new_empty((B, T, H, V), dt, dev)
    ht = new_empty((N, H, K, V), torch.float32, dev) if output_final_state else None
    _state_fwd_kernel[(triton.cdiv(V, BVS), N, H)](
        k, W, U, h, Up, initial_state, ht, cu, offsets, BK=BKS, BV=BVS,
        USE_H0=initial_state is not None, STORE_HT=output_final_state, **dims)

    o = None
    if need_output:
        o = new_empty((B, T, H, V), v.dtype, dev)
        _output_fwd_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), NT, H)](q, k, h, Up, o, cu, indices, scale,
                                                                             **dims)
    return o, ht, Tm, h
