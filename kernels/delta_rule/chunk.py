"""Chunked delta rule in plain torch (WY / UT transform), fast on CPU; autograd gives the gradients.

Within a chunk of C tokens with S the state at its start, the writes U' = U - W S where
T = (I + strictly_lower(diag(beta) K K^T))^{-1} diag(beta), W = T K, U = T V. Then
o = Q S + tril(Q K^T) U' and the next state is S + K^T U' = (I - K^T W) S + K^T U, so
everything but one [K, K] @ [K, V] product per chunk is computed for all chunks at once.
On CPU, fwd+bwd at B=2, H=4, K=V=64, T=2048 (2 threads) takes under half the time of fla's
`delta_rule_chunkwise` and 1/30 or less of its token loop; chunk size 64 is the fastest (32 close, 128 slower);
docs/benchmarks.md has the figures (python bench/run.py).
"""
import torch
import torch.nn.functional as F

from .naive import l2norm


def unit_lower_inverse(A):
    """(I + A)^{-1} for strictly lower-triangular A [..., C, C], by batched matmuls only.

    Bottom-up block inversion: the inverses X1, X2 of two neighbouring diagonal blocks of size s give the inverse
    of their 2s block, [[X1, 0], [-X2 L21 X1, X2]]; every block of a level is done in one batched matmul, so there
    are log2(C) levels. Same error as LAPACK's batched triangular solve against the identity; faster on CPU
    ([32, 8, 64, 64], 2 threads, 2 shared cores: 3.1 ms against 5.8 ms with OMP_WAIT_POLICY=PASSIVE, 0.28 s
    against 2 s with OpenMP's default spinning, which stalls every parallel region on a preempted thread).
    """
    C = A.shape[-1]
    P = 1 << (C - 1).bit_length()  # blocks halve evenly down to 1 x 1; zero padding adds identity rows
    batch = A.shape[:-2]
    if P != C:
        A = F.pad(A, (0, P - C, 0, P - C))
    X = A.new_ones(*batch, P, 1, 1)  # inverses of the 1 x 1 diagonal blocks of I + A
    s = 1
    while s < P:
        nb = P // (2 * s)
        blocks = torch.diagonal(A.reshape(*batch, nb, 2 * s, nb, 2 * s), dim1=-4, dim2=-2)  # [..., 2s, 2s, nb]
        L21 = blocks[..., s:, :s, :].movedim(-1, -3)  # [..., nb, s, s] lower-left quarter of each 2s block
        X1, X2 = X[..., 0::2, :, :], X[..., 1::2, :, :]  # [..., nb, s, s]
        lower = torch.cat([-(X2 @ L21 @ X1), X2], -1)
        X = torch.cat([torch.cat([X1, torch.zeros_like(X1)], -1), lower], -2)  # [..., nb, 2s, 2s]
        s *= 2
    return X[..., 0, :C, :C]


class _UnitLowerInverse(torch.autograd.Function):
    """(I + A)^{-1} for strictly lower-triangular A [..., C, C].

    Inverting once and multiplying beats a triangular solve against the [C, K + V] right-hand side on CPU, and
    the backward needs only matmuls: d(L^-1) = -L^-1 dL L^-1.
    """

    @staticmethod
    def forward(ctx, A):
        inv = unit_lower_inverse(A)
        ctx.save_for_backward(inv)
        return inv

    @staticmethod
    def backward(ctx, grad_inv):
        inv, = ctx.saved_tensors
        return -(inv.mT @ grad_inv @ inv.mT).tril(-1)


def _chunk_scan(q, k, v, beta, h0):
    """Delta rule on chunked fp32 tensors: q, k [n, N, C, K], v [n, N, C, V], beta [n, N, C], h0 [N, K, V].

    n chunks of C tokens, N independent heads; q is already scaled. Returns o [n, N, C, V], final state.
    """
    K = k.shape[-1]
    kb = k * beta[..., None]
    A = (kb @ k.transpose(-1, -2)).tril(-1)  # [n, N, C, C]
    wu = _UnitLowerInverse.apply(A) @ torch.cat([kb, v * beta[..., None]], -1)  # [W | U]: [n, N, C, K + V]
    V = v.shape[-1]
    # split rather than slicing: its backward concatenates instead of zero-filling a full-size gradient per slice.
    qk = (q @ k.transpose(-1, -2)).tril()  # [n, N, C, C]
    qk_w, o_intra = (qk @ wu).split([K, V], -1)
    q_eff = q - qk_w  # o = q_eff S + o_intra
    kt_w, write = (k.transpose(-1, -2) @ wu).split([K, V], -1)  # [n, N, K, K], [n, N, K, V]
    trans = torch.eye(K, dtype=q.dtype, device=q.device) - kt_w  # product of the chunk's I - beta k k^T
    S, starts = h0, []
    # unbind, not indexing: each indexed slice's backward would fill a full-size zero gradient.
    for trans_c, write_c in zip(trans.unbind(0), write.unbind(0)):
        starts.append(S)
        S = torch.baddbmm(write_c, trans_c, S)
    o = o_intra + q_eff @ torch.stack(starts)
    return o, S


def _to_chunks(x, n, C):
    """[B, n*C, H, *] -> [n, B*H, C, *]: chunk index first so each chunk's slice is contiguous."""
    B, _, H = x.shape[:3]
    x = x.reshape(B, n, C, H, *x.shape[3:]).movedim(3, 2).movedim(1, 0)
    return x.reshape(n, B * H, C, *x.shape[4:])


def _chunk_batch(q, k, v, beta, initial_state, chunk_size):
    """Dense batch: q, k [B, T, H, K] fp32 (q scaled), v [B, T, H, V], beta [B, T, H]; returns o, final state."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = max(1, min(chunk_size, T))
    n = -(-T // C)
    pad = n * C - T
    if pad:
        # Zero k and beta leave the state unchanged, so padded steps are no-ops.
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, 0, 0, pad))
    h0 = (q.new_zeros(B * H, K, V) if initial_state is None
          else initial_state.float().reshape(B * H, K, V))
    o, S = _chunk_scan(_to_chunks(q, n, C), _to_chunks(k, n, C), _to_chunks(v, n, C), _to_chunks(beta, n, C), h0)
    o = o.reshape(n, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, n * C, H, V)[:, :T].contiguous()
    return o, S.reshape(B, H, K, V)


def _pad_varlen(x, index, valid):
    """Gather packed [1, total, H, *] into [N, maxlen, H, *], zeroing the slots past each sequence's end."""
    x = x[0][index]
    return x * valid.reshape(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def delta_rule_chunk(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, use_qk_l2norm_in_kernel=False, chunk_size=64):
    """Torch chunked delta rule; arguments as `kernels.delta_rule.chunk_delta_rule` (inputs already checked)."""
    K = q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q * scale
    if cu_seqlens is None:
        o, S = _chunk_batch(q, k, v, beta, initial_state, chunk_size)
    else:
        # Pad the packed sequences into a batch; zero k and beta at the end keep each final state exact.
        lens = cu_seqlens[1:] - cu_seqlens[:-1]  # [N]
        maxlen = int(lens.max())
        pos = torch.arange(maxlen, device=q.device)
        valid = pos[None] < lens[:, None].to(q.device)  # [N, maxlen]
        index = torch.where(valid, cu_seqlens[:-1, None].to(q.device) + pos[None], 0)  # [N, maxlen]
        q, k, v, beta = (_pad_varlen(x, index, valid) for x in (q, k, v, beta))
        o, S = _chunk_batch(q, k, v, beta, initial_state, chunk_size)
        o = o[valid][None]  # rows of `valid` in order are the packed tokens in order
    return o.to(out_dtype), (S if output_final_state else None)
