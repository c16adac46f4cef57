"""Kernels compute in fp32 even inside a caller's bf16 autocast region (the recurrences drift otherwise)."""
import torch
import torch.nn.functional as F

from kernels.delta_rule import chunk_delta_rule
from kernels.selective_scan import selective_scan_fn, selective_state_update


def test_delta_rule_ignores_autocast():
    q, k = (F.normalize(torch.randn(1, 70, 2, 16), dim=-1) for _ in range(2))
    v, beta = torch.randn(1, 70, 2, 16), torch.rand(1, 70, 2) * 2
    ref, ref_state = chunk_delta_rule(q, k, v, beta, output_final_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = chunk_delta_rule(q, k, v, beta, output_final_state=True)
    assert out.dtype == torch.float32 and torch.equal(out, ref) and torch.equal(state, ref_state)


def test_selective_scan_ignores_autocast():
    b, d, n, L = 2, 8, 4, 50
    u, delta = torch.randn(b, d, L), torch.rand(b, d, L)
    A, B, C = -torch.rand(d, n) * 4, torch.randn(b, n, L), torch.randn(b, n, L)
    ref = selective_scan_fn(u, delta, A, B, C, allow_neg_eigval=True)
    step_ref = selective_state_update(torch.zeros(b, d, n), u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0],
                                      allow_neg_eigval=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan_fn(u, delta, A, B, C, allow_neg_eigval=True)
        step = selective_state_update(torch.zeros(b, d, n), u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0],
                                      allow_neg_eigval=True)
    assert torch.equal(out, ref)
    assert all(torch.equal(x, y) for x, y in zip(step, step_ref))
