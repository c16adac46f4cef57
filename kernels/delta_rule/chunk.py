"""Chunked delta rule in plain torch (WY / UT transform), fast on CPU; autograd gives the gradients.

Within a chunk of C tokens with S the state at its start, the writes U' = U - W S where
T = (I + strictly_lower(diag(beta) K K^T))^{-1} diag(beta), W = T K, U = T V. Then
o = Q S + tril(Q K^T) U' and the next state is S + K^T U' = (I - K^T W) S + K^T U, so
everything but one [K, K] @ [K, V] product per chunk is computed for all chunks at once.
On CPU, fwd+bwd at B=2, H=4, K=V=64, T=2048 (2 threads) takes under half the time of fla's
`delta_rule_chunkwise` and 1/30 or less of its token loop; chunk size 64 is the fastest (32 close, 128 slower).
"""
import torch
import torch.nn.functional as F

from .naive import l2norm


class _UnitLowerInverse(torch.autograd.Function):
    """(I + A)^{-1} for strictly lower-triangular A [..., C, C].

    Inverting once and multiplying beats a triangular solve against the [C, K + V] right-hand side on CPU
    (LAPACK's batched trsm is slow there), and the backward needs only matmuls: d(L^-1) = -L^-1 dL L^-1.
    """

    @staticmethod
    def forward(ctx, A):
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
        # unitriangular=True reads only A's strict lower part and takes the diagonal as ones.
        inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)
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
