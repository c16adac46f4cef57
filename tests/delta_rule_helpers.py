"""Inputs, error measure and output/gradient collection shared by the delta-rule tests (torch and Triton)."""
import torch
import torch.nn.functional as F

from kernels.delta_rule import delta_rule_naive

NAMES = ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0")


def rel_rms(actual, ref):
    """RMS(actual - ref) / RMS(ref); an exactly-zero reference (e.g. grad of v when beta = 0) is compared absolutely."""
    err = (actual.double() - ref.double()).pow(2).mean().sqrt().item()
    scale = ref.double().pow(2).mean().sqrt().item()
    return err / scale if scale > 0 else err


def make_inputs(B=2, T=65, H=2, K=16, V=8, beta_mode="random", dtype=torch.float32, with_state=True):
    """Random q, v, unit-norm k (as the model feeds them), beta and an initial state, all requiring grad."""
    q = torch.randn(B, T, H, K)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    v = torch.randn(B, T, H, V)
    beta = {"zero": torch.zeros(B, T, H), "two": torch.full((B, T, H), 2.0),
            "random": torch.rand(B, T, H) * 2}[beta_mode]
    inputs = [x.to(dtype).requires_grad_() for x in (q, k, v, beta)]
    h0 = torch.randn(B, H, K, V).requires_grad_() if with_state else None
    return (*inputs, h0)


def outputs_and_grads(fn, q, k, v, beta, h0, **kwargs):
    """Run fn, backpropagate fixed random cotangents of o and the final state; return (o, S, *grads)."""
    o, S = fn(q, k, v, beta, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (o.float() * torch.randn(o.shape, generator=gen)).sum() + (S * torch.randn(S.shape, generator=gen)).sum()
    leaves = [x for x in (q, k, v, beta, h0) if x is not None]
    return (o, S, *torch.autograd.grad(loss, leaves))


def per_sequence_reference(bounds):
    """An op with chunk_delta_rule's signature that runs the naive op on each packed sequence [s, e) of `bounds`
    on its own (initial state n for sequence n) and concatenates the results: the varlen reference."""
    def per_sequence(q, k, v, beta, initial_state, output_final_state):
        runs = [delta_rule_naive(q[:, s:e], k[:, s:e], v[:, s:e], beta[:, s:e], initial_state=initial_state[n:n + 1],
                                 output_final_state=output_final_state)
                for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))]
        return torch.cat([o for o, _ in runs], 1), torch.cat([S for _, S in runs])
    return per_sequence
