"""One decoding step of the selective scan, the same arithmetic as one step of the scan."""
import torch
import torch.nn.functional as F

from .inputs import compute_dtype
from .scan import contract_groups, outer_groups


def state_update_torch(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       allow_neg_eigval=False):
    """Return (y [batch, d] in u's dtype, new_state [batch, d, n]); `state` is not modified."""
    dtype = compute_dtype(state, u, delta, A, B, C, D, z, delta_bias)
    u_f, delta = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = (x.to(dtype) if x.dim() == 3 else x.to(dtype).unsqueeze(1) for x in (B, C))  # [batch, g, n]
    decay = torch.exp(delta.unsqueeze(-1) * A.to(dtype))  # [batch, d, n]
    if allow_neg_eigval:
        decay = 2 * decay - 1
    new_state = torch.addcmul(outer_groups(delta * u_f, B), decay, state.to(dtype))
    y = contract_groups(new_state, C)  # [batch, d]
    if D is not None:
        y = y + u_f * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), new_state
