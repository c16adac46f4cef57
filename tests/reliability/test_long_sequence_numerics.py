"""16384 steps of pure reflections (DeltaNet, beta = 2) and sign flips (Mamba, decay -1) on the torch paths: the
state keeps its norm, outputs match the token-loop references, and every gradient stays finite. (Short sequences
of the same cases run on the Triton kernels under the interpreter in tests/test_kernels_*_triton.py.)"""
import torch
import torch.nn.functional as F

from kernels.delta_rule import chunk_delta_rule, delta_rule_naive
from kernels.selective_scan import selective_scan_fn

T = 16384


def rel_rms(x, ref):
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def test_delta_rule_reflections_keep_the_state_norm_for_16k_steps():
    torch.manual_seed(0)
    B, H, K, V = 1, 2, 16, 16
    q = F.normalize(torch.randn(B, T, H, K), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    beta = torch.full((B, T, H), 2.0)  # I - 2 k k^T: every step is a reflection
    h0 = torch.randn(B, H, K, V)
    # v = 0: each step is S <- (I - 2 k k^T) S, a pure reflection; the product of 16384 of them is orthogonal,
    # so in exact arithmetic the state's Frobenius norm never changes.
    v = torch.zeros(B, T, H, V)
    _, last = chunk_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, backend="torch")
    norms, start = last.norm(dim=(-2, -1)), h0.norm(dim=(-2, -1))
    assert torch.allclose(norms, start, rtol=1e-4), (norms, start)  # fp32 drift over 16384 products

    # With writes: outputs and state match the token loop, and the state grows no faster than the writes allow
    v = torch.randn(B, T, H, V)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, beta, h0)]
    out, last = chunk_delta_rule(*leaves[:4], initial_state=leaves[4], output_final_state=True, backend="torch")
    ref_out, ref_last = delta_rule_naive(q, k, v, beta, initial_state=h0, output_final_state=True)
    assert rel_rms(out.detach(), ref_out) < 1e-4 and rel_rms(last.detach(), ref_last) < 1e-4
    # S_t = (I - 2 k k^T) S_{t-1} + 2 k v_t^T with |k| = 1, so |S_t| <= |S_{t-1}| + 2 |v_t|: never more growth
    bound = start + 2 * v.norm(dim=-1).sum(dim=1)  # [B, H]
    assert (last.detach().norm(dim=(-2, -1)) <= bound * (1 + 1e-4)).all()
    (out.square().mean() + last.square().mean()).backward()
    for name, leaf in zip("q k v beta h0".split(), leaves):
        assert torch.isfinite(leaf.grad).all(), name


def test_mamba_sign_flips_are_exact_for_16k_steps():
    torch.manual_seed(0)
    batch, d, n = 1, 4, 8
    A = torch.full((d, n), -1e4)  # exp(delta A) underflows to exactly 0: the decay 2 exp(delta A) - 1 is exactly -1
    delta = torch.ones(batch, d, T)
    h0 = torch.randn(batch, d, n)
    u, Bm, C = torch.randn(batch, d, T), torch.zeros(batch, n, T), torch.randn(batch, n, T)
    _, last = selective_scan_fn(u, delta, A, Bm, C, return_last_state=True, allow_neg_eigval=True,
                                initial_state=h0, backend="torch")
    assert torch.equal(last, h0)  # an even number of exact sign flips, no input: bit for bit the start

    Bm = torch.randn(batch, n, T)
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, Bm, C, h0)]
    out, last = selective_scan_fn(*leaves[:5], return_last_state=True, allow_neg_eigval=True,
                                  initial_state=leaves[5], backend="torch")
    ref_out, ref_last = selective_scan_fn(u, delta, A, Bm, C, return_last_state=True, allow_neg_eigval=True,
                                          initial_state=h0, backend="naive")
    assert rel_rms(out.detach(), ref_out) < 1e-5 and rel_rms(last.detach(), ref_last) < 1e-5
    # |h_t| <= |h_0| + sum |u B|: sign flips never amplify
    assert (last.detach().abs() <= h0.abs() + (u.abs()[:, :, None, :] * Bm.abs()[:, None]).sum(-1) + 1e-3).all()
    (out.square().mean() + last.square().mean()).backward()
    for name, leaf in zip("u delta A B C h0".split(), leaves):
        assert torch.isfinite(leaf.grad).all(), name
