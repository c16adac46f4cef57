"""Chunked delta-rule forward in Triton (WY / UT form), three kernels:

1. `_wy_fwd_kernel`, per chunk: T = (I + tril(diag(beta) K K^T, -1))^{-1} by forward substitution on 16-row
   blocks and exact block products between them, W = T diag(beta) K and U = T diag(beta) V.
2. `_state_fwd_kernel`, per (sequence, head, V block), walking the chunks in order with the state S [K, BV] in
   fp32 registers: stores S at each chunk start, U' = U - W S, and S <- S + K^T U'.
3. `_output_fwd_kernel`, per chunk: o = scale (Q S + tril(Q K^T) U').

Tokens of all sequences are packed along one axis (a dense batch is B sequences of length T), so chunks never
straddle two sequences and a state starts afresh at each sequence start. Dots take the inputs' dtype with fp32
accumulation; T, the states' running sums and the final state stay fp32. triton_sm90_check.py checks the code
compiled for Hopper against two patterns that give wrong results there (see its docstring).
"""
import torch
import triton
import triton.language as tl

from .triton_common import CHUNK_TILES, STATE_CONFIGS, autotune, dot_precision, new_empty, state_tiles


@triton.jit
def _unit_lower_inverse16(b_At):
    """(I + A)^{-1} of a 16x16 strictly lower A given transposed (b_At[m, r] = A[r, m]), by forward substitution:
    row r of the inverse is e_r - sum_{m<r} A[r, m] (its row m)."""
    o = tl.arange(0, 16)
    b_T = tl.where(o[:, None] == o[None, :], 1., 0.)
    for r in range(1, 16):
        b_a = tl.sum(tl.where(o[None, :] == r, b_At, 0.), 1)  # A[r, :] laid along rows
        b_T -= tl.where(o[:, None] == r, tl.sum(b_a[:, None] * b_T, 0)[None, :], 0.)
    return b_T


@autotune(CHUNK_TILES, key=["H", "K", "V", "BT"])
@triton.jit
def _wy_fwd_kernel(k, v, beta, Tm, W, U, cu, indices, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_t = tl.load(indices + i_c * 2), tl.load(indices + i_c * 2 + 1)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT  # first token of the chunk; tiles below are int32 offsets from its row
    n_t = (eos - t0).to(tl.int32)
    o_c = tl.arange(0, BT)
    m_t = o_c < n_t
    b_beta = tl.load(beta + t0 * H + i_h + o_c * H, mask=m_t, other=0.).to(tl.float32)  # [BT]
    p_k, p_v = k + (t0 * H + i_h) * K, v + (t0 * H + i_h) * V
    p_w, p_u = W + (t0 * H + i_h) * K, U + (t0 * H + i_h) * V
    p_T = Tm + (t0 * H + i_h) * BT  # this chunk's [BT, BT] block of Tm, rows H * BT apart
    o_T = o_c[:, None] * (H * BT) + o_c[None, :]

    # A[r, m] = beta_r k_r . k_m for m < r (zero elsewhere), staged in Tm, which T then overwrites in place.
    # Both dot operands come straight from memory and beta scales the fp32 product: an operand computed in
    # registers makes Hopper's pipelined wgmma read registers that ptxas 12.x reuses before the read is done.
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_k = tl.load(p_k + o_c[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)  # [BT, BK]
        b_A += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    b_A = tl.where(o_c[:, None] > o_c[None, :], b_A * b_beta[:, None], 0.)
    tl.store(p_T + o_T, b_A, mask=m_t[:, None])
    tl.debug_barrier()

    # T = (I + A)^{-1} by 16-row blocks: T_ii = (I + A_ii)^{-1} by forward substitution, then the strip left of
    # it, T_i,<i = -T_ii A_i,<i T_<i,<i, from the rows above (already T). Padded rows (beta = 0, k = 0) have zero
    # A rows and columns, so they never mix into real tokens. Exact fp32 dots: T feeds every later step.
    o16 = tl.arange(0, 16)
    for i_b in tl.static_range(BT // 16):
        o_r = i_b * 16 + o16
        m_r = o_r < n_t
        b_Aii_t = tl.load(p_T + o_r[None, :] * (H * BT) + o_r[:, None], mask=m_r[None, :], other=0.)  # A_ii^T
        b_Tii = _unit_lower_inverse16(b_Aii_t)
        if i_b > 0:
            m_left = m_r[:, None] & (o_c[None, :] < i_b * 16)
            b_R = tl.load(p_T + o_r[:, None] * (H * BT) + o_c[None, :], mask=m_left, other=0.)  # [16, BT]
            m_above = m_t[:, None] & (o_c[:, None] < i_b * 16) & (o_c[None, :] <= o_c[:, None])
            b_Tabove = tl.load(p_T + o_T, mask=m_above, other=0.)  # [BT, BT]
            b_X = tl.dot(b_R, b_Tabove, input_precision="ieee")
            b_strip = -tl.dot(b_Tii, b_X, input_precision="ieee")
            tl.debug_barrier()  # every thread has read the A it is about to overwrite
            tl.store(p_T + o_r[:, None] * (H * BT) + o_c[None, :], b_strip, mask=m_left)
        else:
            tl.debug_barrier()
        tl.store(p_T + o_r[:, None] * (H * BT) + o_r[None, :], b_Tii, mask=m_r[:, None])
        tl.debug_barrier()

    b_Td = tl.load(p_T + o_T, mask=m_t[:, None], other=0.).to(W.dtype.element_ty)  # [BT, BT]
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


@autotune(STATE_CONFIGS, key=["H", "K", "V", "BT", "BV"])
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

    BKS, BVS = state_tiles(K, V)  # the state kernel holds all of K in registers: [BKS, BVS] fp32
    h = new_empty((NT, H, K, V), dt, dev)
    Up = new_empty((B, T, H, V), dt, dev)
    ht = new_empty((N, H, K, V), torch.float32, dev) if output_final_state else None
    _state_fwd_kernel[(triton.cdiv(V, BVS), N, H)](
        k, W, U, h, Up, initial_state, ht, cu, offsets, BK=BKS, BV=BVS,
        USE_H0=initial_state is not None, STORE_HT=output_final_state, **dims)

    o = None
    if need_output:
        o = new_empty((B, T, H, V), v.dtype, dev)
        grid = lambda meta: (triton.cdiv(V, meta["BV"]), NT, H)  # noqa: E731 (the tile width is autotuned)
        _output_fwd_kernel[grid](q, k, h, Up, o, cu, indices, scale, **dims)
    return o, ht, Tm, h
