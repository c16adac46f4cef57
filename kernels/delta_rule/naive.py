"""Token-by-token fp32 reference of the delta rule: slow and readable, the ground truth for tests."""
import torch


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise over the last dim as fla's in-kernel l2norm does (eps inside the square root)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def delta_rule_naive(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, use_qk_l2norm_in_kernel=False):
    """Delta rule one token at a time in fp32; same layout and meaning as `chunk_delta_rule`.

    q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H], initial_state [N, H, K, V].
    Returns o [B, T, H, V] in v's dtype and the fp32 final state (or None).
    """
    if cu_seqlens is not None:
        # Each packed sequence is an independent run from its own initial state.
        bounds = cu_seqlens.tolist()
        outs, states = [], []
        for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = None if initial_state is None else initial_state[n:n + 1]
            o, s = delta_rule_naive(q[:, start:end], k[:, start:end], v[:, start:end], beta[:, start:end],
                                    scale, h0, True, None, use_qk_l2norm_in_kernel)
            outs.append(o)
            states.append(s)
        return torch.cat(outs, 1), (torch.cat(states) if output_final_state else None)

    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q * scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        k_t = k[:, t]  # [B, H, K]
        err = v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k_t)  # what the state mispredicts for k_t
        S = S + beta[:, t, :, None, None] * k_t[..., :, None] * err[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V)
    return o.to(v.dtype), (S if output_final_state else None)
