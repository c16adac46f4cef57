"""Delta-rule kernels: the torch chunked path against the token-by-token fp32 reference, and that against fla's.

Errors are RMS(err) / RMS(ref). Unless stated, fp32 tolerances are 1e-5: both paths compute in fp32
(unit roundoff 6e-8) and differ only in summation order over <= 256 steps of a non-expanding recurrence
(beta in [0, 2], unit k); observed errors are <= 3e-6 (beta = 2, T = 256), so 1e-5 leaves headroom without
hiding a wrong term, which shows up as O(1) error.
"""
import pytest
import torch
import torch.nn.functional as F

from delta_rule_helpers import NAMES, make_inputs, outputs_and_grads, per_sequence_reference, rel_rms
from kernels.delta_rule import chunk_delta_rule, delta_rule_naive

FP32_TOL = 1e-5


def assert_all_close(actual, ref, tol, names=NAMES):
    """Check every named pair at once so a failure reports all the errors above tol."""
    errors = {name: rel_rms(a, r) for name, a, r in zip(names, actual, ref)}
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative RMS errors above {tol}: {bad}"


@pytest.mark.parametrize("beta_mode", ["zero", "two", "random"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 100, 256])
def test_torch_matches_naive_forward_and_every_gradient(T, beta_mode):
    inputs = make_inputs(T=T, beta_mode=beta_mode)
    ours = outputs_and_grads(chunk_delta_rule, *inputs, backend="torch")
    ref = outputs_and_grads(delta_rule_naive, *inputs)
    assert ours[0].shape == (2, T, 2, 8) and ours[1].shape == (2, 2, 16, 8)
    assert ours[1].dtype == torch.float32
    assert_all_close(ours, ref, FP32_TOL)


@pytest.mark.parametrize("chunk_size", [1, 16, 128])
def test_chunk_size_does_not_change_the_result(chunk_size):
    inputs = make_inputs(T=100)
    ours = outputs_and_grads(chunk_delta_rule, *inputs, chunk_size=chunk_size)
    assert_all_close(ours, outputs_and_grads(delta_rule_naive, *inputs), FP32_TOL)


@pytest.mark.parametrize("T", [1, 100])
def test_without_initial_state(T):
    q, k, v, beta, _ = make_inputs(T=T, with_state=False)
    o, S = chunk_delta_rule(q, k, v, beta)
    assert S is None  # no final state unless asked for
    ours = outputs_and_grads(chunk_delta_rule, q, k, v, beta, None)
    ref = outputs_and_grads(delta_rule_naive, q, k, v, beta, None)
    assert_all_close(ours, ref, FP32_TOL, names=NAMES[:-1])
    assert rel_rms(o, ref[0]) <= FP32_TOL


def test_scale_and_qk_l2norm():
    q, k, v, beta, h0 = make_inputs(T=70)
    with torch.no_grad():
        q.mul_(3.0)
        k.copy_(torch.randn_like(k) * 3.0)  # not unit: the kernel must normalise
    kwargs = dict(scale=0.3, use_qk_l2norm_in_kernel=True)
    ours = outputs_and_grads(chunk_delta_rule, q, k, v, beta, h0, **kwargs)
    ref = outputs_and_grads(delta_rule_naive, q, k, v, beta, h0, **kwargs)
    assert_all_close(ours, ref, FP32_TOL)
    # The flag means "normalise q and k over K, then scale q": same as doing it outside.
    # (F.normalize puts eps outside the root, the kernel inside: 1e-6 / |x|^2 ~ 1e-8 relative.)
    o_outside, _ = delta_rule_naive(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta, scale=0.3,
                                    initial_state=h0)
    assert rel_rms(ours[0], o_outside) <= FP32_TOL


def test_varlen_matches_a_loop_over_sequences():
    bounds = [0, 1, 64, 65, 130, 200]  # lengths 1, 63, 1, 65, 70
    T, H, K, V = bounds[-1], 2, 16, 8
    N = len(bounds) - 1
    q, k, v, beta, _ = make_inputs(B=1, T=T, H=H, K=K, V=V, with_state=False)
    h0 = torch.randn(N, H, K, V).requires_grad_()
    cu = torch.tensor(bounds)

    ref = outputs_and_grads(per_sequence_reference(bounds), q, k, v, beta, h0)
    assert_all_close(outputs_and_grads(chunk_delta_rule, q, k, v, beta, h0, cu_seqlens=cu), ref, FP32_TOL)
    assert_all_close(outputs_and_grads(chunk_delta_rule, q, k, v, beta, h0, cu_seqlens=cu, chunk_size=16),
                     ref, FP32_TOL)
    assert_all_close(outputs_and_grads(delta_rule_naive, q, k, v, beta, h0, cu_seqlens=cu), ref, FP32_TOL)


def test_fp16_inputs_against_fp32_reference():
    q, k, v, beta, h0 = make_inputs(T=100, dtype=torch.float16)
    ours = outputs_and_grads(chunk_delta_rule, q, k, v, beta, h0)
    assert ours[0].dtype == torch.float16 and ours[1].dtype == torch.float32
    assert all(g.dtype == torch.float16 for g in ours[2:6])
    # Reference: the same fp16-rounded inputs, in fp32 throughout.
    ref_inputs = [x.detach().float().requires_grad_() for x in (q, k, v, beta)]
    ref = outputs_and_grads(delta_rule_naive, *ref_inputs, h0)
    # Internals are fp32, so the error is rounding to fp16 of o, of o's incoming gradient and of the input
    # grads: unit roundoff 2^-11 = 4.9e-4, RMS relative rounding error ~2.8e-4 each; 1e-3 allows a couple of
    # those and nothing more. The final state never passes through fp16, so it keeps the fp32 tolerance.
    assert_all_close(ours[:1] + ours[2:], ref[:1] + ref[2:], 1e-3, names=("o", "dq", "dk", "dv", "dbeta", "dh0"))
    assert rel_rms(ours[1], ref[1]) <= FP32_TOL


@pytest.mark.parametrize("with_state", [False, True])
def test_naive_agrees_with_fla_recurrence(with_state):
    fla_naive = pytest.importorskip("fla.ops.delta_rule.naive")
    q, k, v, beta, h0 = make_inputs(T=65, K=16, V=12, with_state=with_state)
    o, S = delta_rule_naive(q, k, v, beta, initial_state=h0, output_final_state=True)  # default scale K^-0.5
    # fla's reference takes [B, H, T, *] and scales q by K^-0.5 itself.
    o_fla, S_fla = fla_naive.delta_rule_recurrence(
        *(x.transpose(1, 2) for x in (q, k, v, beta)), initial_state=h0, output_final_state=True)
    # Two fp32 token loops that differ only in how each product is summed: agreement to ~1e-7.
    assert rel_rms(o, o_fla.transpose(1, 2)) <= 1e-6
    assert rel_rms(S, S_fla) <= 1e-6


@pytest.mark.parametrize("fn", [chunk_delta_rule, delta_rule_naive])
def test_beta_two_is_a_reflection_that_keeps_the_state_norm(fn):
    B, T, H, K, V = 1, 256, 2, 16, 8
    q, k, _, _, h0 = make_inputs(B=B, T=T, H=H, K=K, V=V)
    v = torch.zeros(B, T, H, V)  # no writes: only the transitions I - 2 k k^T act on the state
    beta = torch.full((B, T, H), 2.0)
    _, S = fn(q.detach(), k.detach(), v, beta, initial_state=h0.detach(), output_final_state=True)
    # Each transition is orthogonal, so the Frobenius norm of every head's state is unchanged...
    norms, norms0 = S.norm(dim=(-2, -1)), h0.detach().norm(dim=(-2, -1))
    assert ((norms - norms0).abs() / norms0).max() <= 1e-5
    # ...and the state is exactly the product of the Householder matrices applied to it, built explicitly here.
    kd = k.detach().double()
    P = torch.eye(K, dtype=torch.float64).expand(B, H, K, K)
    for t in range(T):
        k_t = kd[:, t]  # [B, H, K]
        P = (torch.eye(K, dtype=torch.float64) - 2 * k_t[..., :, None] * k_t[..., None, :]) @ P
    assert rel_rms(S, P @ h0.detach().double()) <= FP32_TOL


def test_backends_dispatch():
    inputs = make_inputs(T=40)
    kwargs = dict(initial_state=inputs[4], output_final_state=True)
    o_naive, S_naive = delta_rule_naive(*inputs[:4], **kwargs)
    o_b, S_b = chunk_delta_rule(*inputs[:4], backend="naive", **kwargs)
    assert torch.equal(o_b, o_naive) and torch.equal(S_b, S_naive)
    for backend in ("auto", "torch"):
        o, S = chunk_delta_rule(*inputs[:4], backend=backend, **kwargs)
        assert rel_rms(o, o_naive) <= FP32_TOL and rel_rms(S, S_naive) <= FP32_TOL


def _bad(**changes):
    """Valid arguments for B=2, T=8, H=2, K=4, V=3 with some replaced."""
    B, T, H, K, V = 2, 8, 2, 4, 3
    args = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
                beta=torch.rand(B, T, H))
    args.update(changes)
    return args


@pytest.mark.parametrize("kwargs, error, match", [
    (_bad(q=torch.randn(2, 8, 4)), ValueError, r"q must be \[B, T, H, K\]"),
    (_bad(k=torch.randn(2, 8, 2, 5)), ValueError, r"k must have q's shape"),
    (_bad(v=torch.randn(2, 7, 2, 3)), ValueError, r"v must be \[B, T, H, V\]"),
    (_bad(beta=torch.rand(2, 8, 2, 1)), ValueError, r"beta must be \[B, T, H\]"),
    (_bad(q=torch.randn(2, 0, 2, 4), k=torch.randn(2, 0, 2, 4), v=torch.randn(2, 0, 2, 3),
          beta=torch.rand(2, 0, 2)), ValueError, r"T=0"),
    (_bad(q=torch.ones(2, 8, 2, 4, dtype=torch.long)), TypeError, r"q must be floating point"),
    (_bad(q=torch.randn(2, 8, 2, 4, dtype=torch.float16)), TypeError, r"share a dtype"),
    (_bad(v=[1.0]), TypeError, r"v must be a torch.Tensor"),
    (_bad(cu_seqlens=torch.tensor([0, 8])), ValueError, r"cu_seqlens needs B == 1"),
    (_bad(initial_state=torch.zeros(2, 2, 3, 4)), ValueError, r"initial_state must be \[N, H, K, V\] = \(2, 2, 4, 3\)"),
    (_bad(chunk_size=0), ValueError, r"chunk_size must be a positive int"),
    (_bad(backend="cuda"), ValueError, r"backend must be one of \('auto', 'torch', 'naive', 'triton', 'fla'\)"),
])
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        chunk_delta_rule(**kwargs)


@pytest.mark.parametrize("cu_seqlens, match", [
    (torch.tensor([0.0, 3.0, 8.0]), r"cu_seqlens must be a 1-D integer tensor"),
    (torch.tensor([0, 3, 7]), r"cu_seqlens must rise from 0 to T=8"),
    (torch.tensor([0, 5, 3, 8]), r"cu_seqlens must rise from 0 to T=8"),
])
def test_bad_cu_seqlens(cu_seqlens, match):
    q, k, v, beta = (x[:1] for x in _bad().values())
    with pytest.raises(ValueError, match=match):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=cu_seqlens)


def test_varlen_state_count_follows_the_sequences():
    q, k, v, beta = (x[:1] for x in _bad().values())
    with pytest.raises(ValueError, match=r"N = number of sequences in cu_seqlens"):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0, 3, 8]), initial_state=torch.zeros(1, 2, 4, 3))


@pytest.mark.parametrize("C", [1, 3, 16, 37, 64])
def test_unit_lower_inverse_matches_a_triangular_solve(C):
    """The batched-matmul block inverse of I + A (A strictly lower, as in a chunk with beta up to 2) equals
    LAPACK's triangular solve against the identity, for power-of-two and padded chunk sizes."""
    from kernels.delta_rule.chunk import unit_lower_inverse

    k = F.normalize(torch.randn(3, 2, C, 16, dtype=torch.float64), dim=-1)
    beta = 2 * torch.rand(3, 2, C, 1, dtype=torch.float64)
    A = torch.tril(beta * (k @ k.transpose(-1, -2)), diagonal=-1)
    eye = torch.eye(C, dtype=A.dtype).expand_as(A)
    ref = torch.linalg.solve_triangular(A + eye, eye, upper=False)
    got = unit_lower_inverse(A)
    assert got.shape == ref.shape and rel_rms(got, ref) < 1e-12  # fp64: only rounding differs
    assert torch.allclose(got @ (A + eye), eye, atol=1e-9)
