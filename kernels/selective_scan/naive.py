"""Readable token-by-token reference for the selective scan (mamba_ssm's semantics plus signed decays)."""
import torch
import torch.nn.functional as F

from .inputs import compute_dtype


def _per_channel(x, dim):
    """B or C as [batch, d, n, L]: shared [batch, n, L] goes to every channel, group i to channels of block i."""
    if x.dim() == 3:
        return x.unsqueeze(1).expand(-1, dim, -1, -1)
    return x.repeat_interleave(dim // x.shape[1], dim=1)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         allow_neg_eigval=False, initial_state=None):
    """Loop over time in fp32 (fp64 for fp64 inputs); returns (out in u's dtype, last_state [batch, d, n])."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, L = u.shape
    out_dtype = u.dtype
    u, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    B, C = _per_channel(B.to(dtype), dim), _per_channel(C.to(dtype), dim)  # [batch, d, n, L]
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, :, t, None] * A)  # [batch, d, n]
        if allow_neg_eigval:
            decay = 2 * decay - 1
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))  # [batch, d]
    y = torch.stack(ys, dim=-1)  # [batch, d, L]
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(out_dtype), h
