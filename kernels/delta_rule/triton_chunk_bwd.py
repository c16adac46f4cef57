"""Chunked delta-rule backward in Triton, four kernels; the forward kept only T and the chunk-start states S.

Per chunk (Qs = scale Q, M = tril(Qs K^T), U' = U - W S, o = Qs S + M U', S_next = S + K^T U'):
1. `_recompute_bwd_kernel`: W = T diag(beta) K, U' = T diag(beta) V - W S, and dU'_local = M^T dO.
2. `_state_bwd_kernel`, per (sequence, head, V block), chunks in reverse with dS [K, BV] in fp32 registers:
   stores dS_next, dU' = dU'_local + K dS_next, then dS = dS_next + Qs^T dO - W^T dU'.
3. `_dqk_bwd_kernel`: dM = tril(dO U'^T), dq = scale (dO S^T + dM K), dK = dM^T Qs + U' dS_next^T
   (the direct part), dW = -dU' S^T.
4. `_wy_bwd_kernel`, through W = T Kb, U = T Vb (Kb = diag(beta) K) and T = (I + A)^{-1}:
   dT = dW Kb^T + dU' Vb^T, dA = -T^T dT T^T (strictly lower), A = tril(diag(beta) K K^T, -1);
   gives dv, the rest of dk, and dbeta.

No kernel transposes a dot's result (tl.trans of a tensor in the MMA layout) to feed another dot: Triton 3.4-3.7
on Hopper miscompiles that in 16-bit (fla issue 640). Transposed products are computed directly (K Q^T for
M^T, a second dot for dM^T), T^T is loaded transposed, and dA^T goes through a scratch tile in memory.
"""
import torch
import triton
import triton.language as tl

from .triton_common import CHUNK_TILES, STATE_CONFIGS, autotune, dot_precision, new_empty, state_tiles


@autotune(CHUNK_TILES, key=["H", "K", "V", "BT"])
@triton.jit
def _recompute_bwd_kernel(q, k, v, beta, Tm, h, do, W, Up, dvl, cu, indices, scale, H: tl.constexpr,
                          K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          PREC: tl.constexpr):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t = tl.load(indices + i_c * 2), tl.load(indices + i_c * 2 + 1)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT
    o_c = tl.arange(0, BT)
    m_t = o_c < (eos - t0).to(tl.int32)
    o_v = i_v * BV + tl.arange(0, BV)
    m_tv = m_t[:, None] & (o_v[None, :] < V)
    o_tv = o_c[:, None] * (H * V) + o_v[None, :]
    row_k, row_v = (t0 * H + i_h) * K, (t0 * H + i_h) * V  # offsets of the chunk's first row
    b_beta = tl.load(beta + t0 * H + i_h + o_c * H, mask=m_t, other=0.).to(tl.float32)
    b_T = tl.load(Tm + (t0 * H + i_h) * BT + o_c[:, None] * (H * BT) + o_c[None, :], mask=m_t[:, None], other=0.)
    b_T = b_T.to(W.dtype.element_ty)  # [BT, BT]
    p_S = h + (i_c * H + i_h).to(tl.int64) * K * V
    b_ws = tl.zeros([BT, BV], dtype=tl.float32)
    b_Mt = tl.zeros([BT, BT], dtype=tl.float32)  # (Q K^T)^T, accumulated as K Q^T (see the module docstring)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        o_tk = o_c[:, None] * (H * K) + o_k[None, :]
        b_k = tl.load(k + row_k + o_tk, mask=m_tk, other=0.)  # [BT, BK]
        b_q = tl.load(q + row_k + o_tk, mask=m_tk, other=0.)
        b_S = tl.load(p_S + o_k[:, None] * V + o_v[None, :], mask=(o_k[:, None] < K) & (o_v[None, :] < V),
                      other=0.)  # [BK, BV]
        b_w = tl.dot(b_T, (b_k * b_beta[:, None]).to(b_T.dtype), input_precision=PREC).to(b_T.dtype)
        if i_v == 0:
            tl.store(W + row_k + o_tk, b_w, mask=m_tk)
        b_ws += tl.dot(b_w, b_S.to(b_w.dtype), input_precision=PREC)
        b_Mt += tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
    b_v = tl.load(v + row_v + o_tv, mask=m_tv, other=0.)
    b_up = tl.dot(b_T, (b_v * b_beta[:, None]).to(b_T.dtype), input_precision=PREC) - b_ws
    tl.store(Up + row_v + o_tv, b_up.to(Up.dtype.element_ty), mask=m_tv)
    b_Mt = tl.where(o_c[:, None] <= o_c[None, :], b_Mt * scale, 0.).to(b_v.dtype)  # M^T [BT, BT]
    b_do = tl.load(do + row_v + o_tv, mask=m_tv, other=0.).to(b_v.dtype)
    tl.store(dvl + row_v + o_tv, tl.dot(b_Mt, b_do, input_precision=PREC), mask=m_tv)


@autotune(STATE_CONFIGS, key=["H", "K", "V", "BT", "BV"])
@triton.jit
def _state_bwd_kernel(q, k, W, do, dvl, dUp, dh, dht, dh0, cu, offsets, scale, H: tl.constexpr, K: tl.constexpr,
                      V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_DHT: tl.constexpr,
                      STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    i_v, i_n, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    first = tl.load(offsets + i_n).to(tl.int64)
    NC = tl.cdiv(eos - bos, BT)
    o_c = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    o_kv = o_k[:, None] * V + o_v[None, :]
    o_tk = o_c[:, None] * (H * K) + o_k[None, :]
    o_kt = o_c[None, :] * (H * K) + o_k[:, None]
    o_tv = o_c[:, None] * (H * V) + o_v[None, :]
    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dS += tl.load(dht + (i_n * H + i_h).to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    for i_r in range(0, NC):
        i_t = NC - 1 - i_r
        tl.store(dh + ((first + i_t) * H + i_h) * K * V + o_kv, b_dS.to(dh.dtype.element_ty), mask=m_kv)
        t0 = bos + i_t * BT
        row_k, row_v = (t0 * H + i_h) * K, (t0 * H + i_h) * V
        m_t = o_c < (eos - t0).to(tl.int32)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        m_kt = (o_k[:, None] < K) & m_t[None, :]
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_k = tl.load(k + row_k + o_tk, mask=m_tk, other=0.)  # [BT, BK]
        b_dup = tl.load(dvl + row_v + o_tv, mask=m_tv, other=0.)  # [BT, BV] fp32
        b_dup += tl.dot(b_k, b_dS.to(b_k.dtype), input_precision=PREC)
        b_dup = b_dup.to(dUp.dtype.element_ty)
        tl.store(dUp + row_v + o_tv, b_dup, mask=m_tv)
        b_qt = tl.load(q + row_k + o_kt, mask=m_kt, other=0.)  # [BK, BT]
        b_wt = tl.load(W + row_k + o_kt, mask=m_kt, other=0.)
        b_do = tl.load(do + row_v + o_tv, mask=m_tv, other=0.).to(b_qt.dtype)
        b_dS += tl.dot(b_qt, b_do, input_precision=PREC) * scale
        b_dS -= tl.dot(b_wt, b_dup.to(b_wt.dtype), input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + (i_n * H + i_h).to(tl.int64) * K * V + o_kv, b_dS, mask=m_kv)


@autotune(CHUNK_TILES, key=["H", "K", "V", "BT"])
@triton.jit
def _dqk_bwd_kernel(q, k, h, dh, do, Up, dUp, dq, dk, dw, cu, indices, scale, H: tl.constexpr, K: tl.constexpr,
                    V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t = tl.load(indices + i_c * 2), tl.load(indices + i_c * 2 + 1)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT
    o_c = tl.arange(0, BT)
    m_t = o_c < (eos - t0).to(tl.int32)
    o_k = i_k * BK + tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    o_tk = o_c[:, None] * (H * K) + o_k[None, :]
    row_k, row_v = (t0 * H + i_h) * K, (t0 * H + i_h) * V
    o_state = (i_c * H + i_h).to(tl.int64) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_dM = tl.zeros([BT, BT], dtype=tl.float32)
    b_dMt = tl.zeros([BT, BT], dtype=tl.float32)  # dM^T = U' dO^T, its own dot (see the module docstring)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_vk = (o_v[:, None] < V) & (o_k[None, :] < K)
        o_tv = o_c[:, None] * (H * V) + o_v[None, :]
        o_vk = o_k[None, :] * V + o_v[:, None]  # a [K, V] state read transposed: [BV, BK]
        b_up = tl.load(Up + row_v + o_tv, mask=m_tv, other=0.)  # [BT, BV]
        b_do = tl.load(do + row_v + o_tv, mask=m_tv, other=0.).to(b_up.dtype)
        b_dup = tl.load(dUp + row_v + o_tv, mask=m_tv, other=0.)
        b_St = tl.load(h + o_state + o_vk, mask=m_vk, other=0.)  # S^T
        b_dSt = tl.load(dh + o_state + o_vk, mask=m_vk, other=0.)  # dS_next^T
        b_dq += tl.dot(b_do, b_St, input_precision=PREC)
        b_dk += tl.dot(b_up, b_dSt, input_precision=PREC)
        b_dw -= tl.dot(b_dup, b_St, input_precision=PREC)
        b_dM += tl.dot(b_do, tl.trans(b_up), input_precision=PREC)
        b_dMt += tl.dot(b_up, tl.trans(b_do), input_precision=PREC)
    b_q = tl.load(q + row_k + o_tk, mask=m_tk, other=0.)
    b_k = tl.load(k + row_k + o_tk, mask=m_tk, other=0.)
    b_dM = tl.where(o_c[:, None] >= o_c[None, :], b_dM, 0.).to(b_k.dtype)
    b_dMt = tl.where(o_c[:, None] <= o_c[None, :], b_dMt, 0.).to(b_k.dtype)
    b_dq = (b_dq + tl.dot(b_dM, b_k, input_precision=PREC)) * scale
    b_dk += tl.dot(b_dMt, b_q, input_precision=PREC) * scale
    tl.store(dq + row_k + o_tk, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + row_k + o_tk, b_dk, mask=m_tk)
    tl.store(dw + row_k + o_tk, b_dw, mask=m_tk)


@autotune(CHUNK_TILES, key=["H", "K", "V", "BT"])
@triton.jit
def _wy_bwd_kernel(k, v, beta, Tm, dw, dUp, dkp, dAs, dk, dv, dbeta, cu, indices, H: tl.constexpr,
                   K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   PREC: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_t = tl.load(indices + i_c * 2), tl.load(indices + i_c * 2 + 1)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT
    o_c = tl.arange(0, BT)
    m_t = o_c < (eos - t0).to(tl.int32)
    row_k, row_v = (t0 * H + i_h) * K, (t0 * H + i_h) * V
    b_beta = tl.load(beta + t0 * H + i_h + o_c * H, mask=m_t, other=0.).to(tl.float32)
    o_T = (t0 * H + i_h) * BT + o_c[:, None] * (H * BT) + o_c[None, :]  # this chunk's [BT, BT] tile
    o_Tt = (t0 * H + i_h) * BT + o_c[None, :] * (H * BT) + o_c[:, None]  # the same tile read transposed
    b_Tt = tl.load(Tm + o_Tt, mask=m_t[None, :], other=0.).to(k.dtype.element_ty)  # T^T [BT, BT]
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        o_tv = o_c[:, None] * (H * V) + o_v[None, :]
        b_v = tl.load(v + row_v + o_tv, mask=m_tv, other=0.).to(tl.float32)  # [BT, BV]
        b_dup = tl.load(dUp + row_v + o_tv, mask=m_tv, other=0.)
        b_vb = (b_v * b_beta[:, None]).to(b_dup.dtype)
        b_dT += tl.dot(b_dup, tl.trans(b_vb), input_precision=PREC)
        b_dvb = tl.dot(b_Tt, b_dup, input_precision=PREC)  # d(beta v)
        tl.store(dv + row_v + o_tv, (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_db += tl.sum(b_dvb * b_v, 1)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        o_tk = o_c[:, None] * (H * K) + o_k[None, :]
        b_k = tl.load(k + row_k + o_tk, mask=m_tk, other=0.)
        b_dw = tl.load(dw + row_k + o_tk, mask=m_tk, other=0.).to(b_k.dtype)
        b_kb = (b_k * b_beta[:, None]).to(b_k.dtype)
        b_dT += tl.dot(b_dw, tl.trans(b_kb), input_precision=PREC)
    # dA = -T^T dT T^T on A's strictly lower support.
    b_dA = tl.dot(tl.dot(b_Tt, b_dT.to(b_Tt.dtype), input_precision=PREC).to(b_Tt.dtype), b_Tt,
                  input_precision=PREC)
    b_dA = tl.where(o_c[:, None] > o_c[None, :], -b_dA, 0.).to(b_Tt.dtype)
    # dA^T goes through this chunk's scratch tile (written, then read transposed after a barrier).
    tl.store(dAs + o_T, b_dA, mask=m_t[:, None])
    tl.debug_barrier()
    b_dAt = tl.load(dAs + o_Tt, mask=m_t[None, :], other=0.)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        o_tk = o_c[:, None] * (H * K) + o_k[None, :]
        b_k = tl.load(k + row_k + o_tk, mask=m_tk, other=0.)
        b_dw = tl.load(dw + row_k + o_tk, mask=m_tk, other=0.).to(b_k.dtype)
        b_kb = (b_k * b_beta[:, None]).to(b_k.dtype)
        # W = T (beta k) and A = (beta k) k^T share the product rule through beta k: g = d(beta k) + dA k.
        b_g = tl.dot(b_Tt, b_dw, input_precision=PREC) + tl.dot(b_dA, b_k, input_precision=PREC)
        b_dk = tl.load(dkp + row_k + o_tk, mask=m_tk, other=0.) + b_g * b_beta[:, None]
        b_dk += tl.dot(b_dAt, b_kb, input_precision=PREC)
        tl.store(dk + row_k + o_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
        b_db += tl.sum(b_g * b_k.to(tl.float32), 1)
    tl.store(dbeta + t0 * H + i_h + o_c * H, b_db.to(dbeta.dtype.element_ty), mask=m_t)


def chunk_bwd(q, k, v, beta, Tm, h, do, dht, scale, has_h0, layout, chunk_size):
    """Gradients of `chunk_fwd`: returns dq, dk, dv (the inputs' dtype), dbeta (beta's), dh0 fp32 or None.

    do [B, T, H, V] is the gradient of o, dht [N, H, K, V] that of the final state (or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cu, indices, offsets = layout
    N, NT, BT = cu.numel() - 1, indices.shape[0], chunk_size
    dev, dt = q.device, q.dtype
    dims = dict(H=H, K=K, V=V, BT=BT, PREC=dot_precision(dt))
    do = do.contiguous()
    dht = None if dht is None else dht.contiguous()

    W, Up = new_empty((B, T, H, K), dt, dev), new_empty((B, T, H, V), dt, dev)
    dvl = new_empty((B, T, H, V), torch.float32, dev)
    v_grid = lambda meta: (triton.cdiv(V, meta["BV"]), NT, H)  # noqa: E731 (tile widths are autotuned)
    _recompute_bwd_kernel[v_grid](q, k, v, beta, Tm, h, do, W, Up, dvl, cu, indices, scale, **dims)

    BKS, BVS = state_tiles(K, V)  # all of K in registers, as in the forward state kernel
    dh = new_empty((NT, H, K, V), dt, dev)
    dUp = new_empty((B, T, H, V), dt, dev)
    dh0 = new_empty((N, H, K, V), torch.float32, dev) if has_h0 else None
    _state_bwd_kernel[(triton.cdiv(V, BVS), N, H)](
        q, k, W, do, dvl, dUp, dh, dht, dh0, cu, offsets, scale, BK=BKS, BV=BVS,
        USE_DHT=dht is not None, STORE_DH0=has_h0, **dims)

    dq = new_empty((B, T, H, K), dt, dev)
    dkp, dw = new_empty((B, T, H, K), torch.float32, dev), new_empty((B, T, H, K), torch.float32, dev)
    k_grid = lambda meta: (triton.cdiv(K, meta["BK"]), NT, H)  # noqa: E731
    _dqk_bwd_kernel[k_grid](q, k, h, dh, do, Up, dUp, dq, dkp, dw, cu, indices, scale, **dims)

    dk, dAs = new_empty((B, T, H, K), dt, dev), new_empty((B, T, H, BT), dt, dev)
    dv, dbeta = new_empty((B, T, H, V), v.dtype, dev), new_empty((B, T, H), beta.dtype, dev)
    _wy_bwd_kernel[(NT, H)](k, v, beta, Tm, dw, dUp, dkp, dAs, dk, dv, dbeta, cu, indices, **dims)
    return dq, dk, dv, dbeta, dh0
