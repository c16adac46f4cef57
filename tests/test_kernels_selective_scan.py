"""Selective scan: the torch path and the decoding step against the token-by-token naive reference.

Errors are RMS(err) / RMS(ref). Both paths compute in fp32 and differ only in summation order (chunked
recurrence, matmul contractions, reductions over L for A/D/delta_bias), which costs a few ulp: observed
<= 6e-7, so TOL = 2e-6 (~30 unit roundoffs of fp32). A wrong index, group or missing term gives >= 1e-3.
"""
import math

import pytest
import torch

import kernels.selective_scan.scan as scan_module
from kernels.selective_scan import (
    BACKENDS,
    linear_recurrence,
    selective_scan_fn,
    selective_scan_naive,
    selective_state_update,
)

TOL = 2e-6
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def rel_rms(x, ref):
    """RMS(x - ref) / RMS(ref), or the plain RMS error where ref is exactly zero (grad A when every exp underflows)."""
    x, ref = x.double(), ref.double()
    err, scale = (x - ref).pow(2).mean().sqrt().item(), ref.pow(2).mean().sqrt().item()
    return err / scale if scale > 0 else err


def make_inputs(batch=2, dim=8, n=4, L=64, groups=None, dtype=torch.float32, seed=0):
    """Random inputs in Mamba's ranges: A = -exp(A_log), delta through a bias and softplus."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, n, L) if groups is None else (batch, groups, n, L)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype)

    return dict(
        u=randn(batch, dim, L), delta=randn(batch, dim, L, scale=0.5), A=-torch.exp(randn(dim, n, scale=0.5)),
        B=randn(*bc_shape), C=randn(*bc_shape), D=randn(dim), z=randn(batch, dim, L),
        delta_bias=randn(dim, scale=0.5), initial_state=randn(batch, dim, n),
    )


def run_with_grads(inputs, backend, seed=1, **flags):
    """Forward with return_last_state, then grads of a random projection of (out, last_state)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan_fn(**leaves, return_last_state=True, backend=backend, **flags)
    g = torch.Generator().manual_seed(seed)
    loss = (out.to(last.dtype) * torch.randn(out.shape, generator=g)).sum()
    loss = loss + (last * torch.randn(last.shape, generator=g)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, last, dict(zip(leaves, grads))


def assert_matches_naive(inputs, tol, **flags):
    out, last, grads = run_with_grads(inputs, "torch", **flags)
    ref_out, ref_last, ref_grads = run_with_grads(inputs, "naive", **flags)
    assert out.dtype == ref_out.dtype == inputs["u"].dtype and last.dtype == torch.float32
    errors = {"out": rel_rms(out, ref_out), "last_state": rel_rms(last, ref_last)}
    errors.update({f"grad {k}": rel_rms(grads[k], ref_grads[k]) for k in grads})
    assert all(e < tol for e in errors.values()), errors
    assert all(grads[k].dtype == inputs[k].dtype for k in grads)


@pytest.mark.parametrize("L", [1, 63, 64, 65, 100, 256])
@pytest.mark.parametrize("allow_neg_eigval", [False, True])
@pytest.mark.parametrize("groups", [None, 2])
def test_forward_and_every_gradient_match_naive(L, allow_neg_eigval, groups):
    inputs = make_inputs(L=L, groups=groups, seed=L)
    assert_matches_naive(inputs, TOL, delta_softplus=True, allow_neg_eigval=allow_neg_eigval)


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
def test_optional_inputs_left_out(allow_neg_eigval):
    inputs = {k: v for k, v in make_inputs(L=65, seed=2).items() if k in ("u", "delta", "A", "B", "C")}
    inputs["delta"] = inputs["delta"].abs()  # no softplus here, so keep delta > 0 (decays inside (-1, 1))
    assert_matches_naive(inputs, TOL, allow_neg_eigval=allow_neg_eigval)


def test_fp32_is_as_accurate_as_the_reference_near_minus_one():
    """Decays near -1 over a long sequence: both fp32 paths against the fp64 reference, within 2x of each other."""
    inputs = make_inputs(L=256, seed=3)
    inputs["A"] = torch.full_like(inputs["A"], -8.0)  # exp(delta A) ~ 0 for delta ~ 1: a ~ -1
    inputs["delta"], inputs["delta_bias"] = inputs["delta"].abs() + 1.0, inputs["delta_bias"].abs()
    flags = dict(allow_neg_eigval=True)
    exact = run_with_grads({k: v.double() for k, v in inputs.items()}, "naive", **flags)
    ours, ref = run_with_grads(inputs, "torch", **flags), run_with_grads(inputs, "naive", **flags)
    for i, what in enumerate(("out", "last_state")):
        assert rel_rms(ours[i], exact[i]) <= 2 * rel_rms(ref[i], exact[i]) + 1e-7, what
    for k in NAMES:
        assert rel_rms(ours[2][k], exact[2][k]) <= 2 * rel_rms(ref[2][k], exact[2][k]) + 1e-7, k


def exact_decay_inputs(L, decay_logs, batch=2, dim=4, n=3, seed=0):
    """Integer inputs with delta = 1 and A from decay_logs, so every decay and state is exact in fp32."""
    g = torch.Generator().manual_seed(seed)

    def ints(*shape):
        return torch.randint(-2, 3, shape, generator=g).float()

    A = torch.tensor(decay_logs, dtype=torch.float32)[torch.randint(len(decay_logs), (dim, n), generator=g)]
    return dict(u=ints(batch, dim, L), delta=torch.ones(batch, dim, L), A=A, B=ints(batch, n, L),
                C=ints(batch, n, L), initial_state=ints(batch, dim, n))


def integer_scan(inputs, decay):
    """The recurrence in int64 with the given decays [d, n] in {0, -1}: the exact answer."""
    u, B, C, h = (inputs[k].long() for k in ("u", "B", "C", "initial_state"))
    ys = []
    for t in range(u.shape[-1]):
        h = decay.long() * h + u[:, :, t, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, -1), h


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
@pytest.mark.parametrize("L", [1, 65, 256])
def test_decays_exactly_zero_and_minus_one_are_exact(allow_neg_eigval, L):
    # delta A = -ln 2 gives exp = 0.5 exactly (a = 0 with negative eigenvalues); -1e4 underflows exp to 0.
    inputs = exact_decay_inputs(L, [-math.log(2), -1e4] if allow_neg_eigval else [-1e4])
    dA = torch.exp(inputs["delta"][0, :, 0, None] * inputs["A"])  # [d, n], the same arithmetic as the scan
    decay = 2 * dA - 1 if allow_neg_eigval else dA
    assert set(decay.unique().tolist()) <= {0.0, -1.0} and (not allow_neg_eigval or decay.unique().numel() == 2)
    out, last = selective_scan_fn(**inputs, return_last_state=True, allow_neg_eigval=allow_neg_eigval)
    ref_out, ref_last = integer_scan(inputs, decay)
    assert torch.equal(out, ref_out.float()) and torch.equal(last, ref_last.float())
    assert_matches_naive({**inputs, "D": torch.ones(4), "z": torch.ones(2, 4, L), "delta_bias": torch.zeros(4)}, TOL,
                         allow_neg_eigval=allow_neg_eigval)


def test_zero_decay_forgets_a_huge_state():
    """a = 0 must drop the old state exactly, even one that would overflow any log-space rescaling."""
    inputs = exact_decay_inputs(5, [-1e4])
    inputs["initial_state"] = torch.full_like(inputs["initial_state"], 3e38)
    out, last = selective_scan_fn(**inputs, return_last_state=True)
    u, B = inputs["u"], inputs["B"]
    assert torch.equal(last, u[:, :, -1, None] * B[:, None, :, -1])
    assert torch.isfinite(out).all()


def test_chunked_prefill_with_initial_state_equals_one_scan():
    inputs = make_inputs(L=100, groups=2, seed=5)
    flags = dict(delta_softplus=True, allow_neg_eigval=True, return_last_state=True)
    full, full_last = selective_scan_fn(**inputs, **flags)
    per_step = ("u", "delta", "B", "C", "z")
    first = {k: (v[..., :37] if k in per_step else v) for k, v in inputs.items()}
    second = {k: (v[..., 37:] if k in per_step else v) for k, v in inputs.items()}
    out1, state = selective_scan_fn(**first, **flags)
    out2, last = selective_scan_fn(**{**second, "initial_state": state}, **flags)
    assert rel_rms(torch.cat([out1, out2], -1), full) < TOL and rel_rms(last, full_last) < TOL


def test_defaults_zero_initial_state_and_output_only():
    inputs = make_inputs(L=65, seed=6)
    inputs.pop("initial_state")
    out = selective_scan_fn(**inputs)
    assert isinstance(out, torch.Tensor) and out.shape == inputs["u"].shape
    zeros = torch.zeros(2, 8, 4)
    assert torch.equal(out, selective_scan_fn(**inputs, initial_state=zeros))
    assert rel_rms(out, selective_scan_naive(**inputs)[0]) < TOL


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_stepped_over_L_equals_the_scan(allow_neg_eigval, groups):
    inputs = make_inputs(L=70, groups=groups, seed=7)
    flags = dict(delta_softplus=True, allow_neg_eigval=allow_neg_eigval)
    out, last = selective_scan_fn(**inputs, return_last_state=True, **flags)
    state, ys = inputs["initial_state"], []
    for t in range(70):
        step = {k: inputs[k][..., t] for k in ("u", "delta", "B", "C", "z")}
        before = state.clone()
        y, new_state = selective_state_update(state, **step, A=inputs["A"], D=inputs["D"],
                                              delta_bias=inputs["delta_bias"], **flags)
        assert torch.equal(state, before), "state must not be modified in place"
        state = new_state
        ys.append(y)
    assert rel_rms(torch.stack(ys, -1), out) < TOL and rel_rms(state, last) < TOL


@pytest.mark.parametrize("dim", [0, -1])
@pytest.mark.parametrize("L", [1, 7, 64, 100])
@pytest.mark.parametrize("chunk_size", [1, 4, 32])
def test_linear_recurrence_matches_a_loop(dim, L, chunk_size):
    g = torch.Generator().manual_seed(L)
    a = torch.rand(3, 5, L, generator=g, dtype=torch.float64) * 2 - 1
    a[0, 0] = 0.0
    a[1, 1] = -1.0
    b, h0 = torch.randn(3, 5, L, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    h, ref = h0, []
    for t in range(L):
        h = a[..., t] * h + b[..., t]
        ref.append(h)
    ref = torch.stack(ref, -1)
    if dim == 0:
        out = linear_recurrence(a.movedim(-1, 0), b.movedim(-1, 0), h0, dim=0, chunk_size=chunk_size).movedim(0, -1)
    else:
        out = linear_recurrence(a, b, h0, chunk_size=chunk_size)
    assert rel_rms(out, ref) < 1e-14  # fp64: only reassociation across chunks


def test_linear_recurrence_gradcheck():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 11, generator=g, dtype=torch.float64) * 2 - 1
    a[0, 0, 4] = 0.0
    a[1, 2, 6] = -1.0
    b, h0 = torch.randn(2, 3, 11, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    args = [x.requires_grad_() for x in (a, b, h0)]
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_recurrence(a, b, h0, chunk_size=4), args)


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
def test_selective_scan_gradcheck_fp64_chunked(monkeypatch, allow_neg_eigval):
    monkeypatch.setattr(scan_module, "CHUNK_SIZE", 4)  # L = 9: two chunks and a ragged step
    inputs = make_inputs(batch=1, dim=4, n=2, L=9, groups=2, dtype=torch.float64, seed=9)
    leaves = [inputs[k].requires_grad_() for k in NAMES]

    def f(*xs):
        return selective_scan_fn(*xs[:7], delta_bias=xs[7], initial_state=xs[8], delta_softplus=True,
                                 return_last_state=True, allow_neg_eigval=allow_neg_eigval, backend="torch")

    assert torch.autograd.gradcheck(f, leaves)


def test_fp16_inputs():
    """fp16 in, fp32 inside: against the fp64 reference the only errors are fp16 roundings (2^-11 relative each):
    one for out, two for the input grads (the incoming fp16 gradient and the result); the fp32 state has none."""
    inputs = make_inputs(L=100, groups=2, dtype=torch.float16, seed=10)
    inputs["initial_state"] = inputs["initial_state"].float()
    flags = dict(delta_softplus=True, allow_neg_eigval=True)
    out, last, grads = run_with_grads(inputs, "torch", **flags)
    ref_out, ref_last, ref_grads = run_with_grads({k: v.double() for k, v in inputs.items()}, "naive", **flags)
    assert out.dtype == torch.float16 and last.dtype == torch.float32
    assert rel_rms(out, ref_out) < 2 ** -11 and rel_rms(last, ref_last) < TOL
    errors = {k: rel_rms(grads[k], ref_grads[k]) for k in NAMES}
    assert all(e < 2 ** -10 for e in errors.values()), errors
    assert all(grads[k].dtype == inputs[k].dtype for k in NAMES)


def test_backends():
    inputs = make_inputs(L=65, seed=11)
    assert BACKENDS == ("auto", "torch", "naive", "triton")
    assert torch.equal(selective_scan_fn(**inputs, backend="auto"), selective_scan_fn(**inputs, backend="torch"))
    assert torch.equal(selective_scan_fn(**inputs, backend="naive"), selective_scan_naive(**inputs)[0])
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*'auto', 'torch', 'naive', 'triton'"):
        selective_scan_fn(**inputs, backend="cuda")


BAD_SCAN_INPUTS = [
    (dict(u=torch.randn(2, 8)), ValueError, r"u must have shape \[batch, d, L\]"),
    (dict(u=torch.randn(2, 8, 0)), ValueError, "L >= 1"),
    (dict(u=torch.ones(2, 8, 5, dtype=torch.long)), TypeError, "u must be a real floating-point tensor"),
    (dict(delta=torch.randn(2, 8, 4)), ValueError, r"delta must have shape \[batch, d, L\] = \[2, 8, 5\]"),
    (dict(A=torch.randn(7, 4)), ValueError, r"A must have shape \[d, n\] with d=8"),
    (dict(A=torch.randn(8, 4, dtype=torch.complex64)), TypeError, "A must be a real floating-point"),
    (dict(B=torch.randn(2, 3, 4, 5)), ValueError, "B must have shape .* groups dividing d=8"),
    (dict(B=[[1.0]]), TypeError, "B must be a torch.Tensor"),
    (dict(C=torch.randn(2, 4, 6)), ValueError, r"C must have shape \[batch, n, L\] = \[2, 4, 5\]"),
    (dict(D=torch.randn(4)), ValueError, r"D must have shape \[d\] = \[8\]"),
    (dict(z=torch.randn(1, 8, 5)), ValueError, "z must have shape"),
    (dict(delta_bias=torch.randn(8, 1)), ValueError, "delta_bias must have shape"),
    (dict(initial_state=torch.randn(2, 8, 3)), ValueError, r"initial_state must have shape .* = \[2, 8, 4\]"),
    (dict(D=torch.randn(8, device="meta")), ValueError, "one device"),
]


@pytest.mark.parametrize("bad, error, message", BAD_SCAN_INPUTS)
def test_bad_scan_inputs_raise_clear_errors(bad, error, message):
    inputs = make_inputs(L=5)
    with pytest.raises(error, match=message):
        selective_scan_fn(**{**inputs, **bad})


def test_bad_step_and_recurrence_inputs_raise_clear_errors():
    inputs = make_inputs(L=5)
    step = dict(state=inputs["initial_state"], u=inputs["u"][..., 0], delta=inputs["delta"][..., 0],
                A=inputs["A"], B=inputs["B"][..., 0], C=inputs["C"][..., 0])
    selective_state_update(**step)
    with pytest.raises(ValueError, match=r"u must have shape \[batch, d\] \(one decoding step\)"):
        selective_state_update(**{**step, "u": inputs["u"]})
    with pytest.raises(ValueError, match=r"state must have shape \[batch, d, n\] = \[2, 8, 4\]"):
        selective_state_update(**{**step, "state": torch.zeros(2, 8)})
    with pytest.raises(ValueError, match=r"B must have shape \[batch, n\] = \[2, 4\] or \[batch, groups, n\]"):
        selective_state_update(**{**step, "B": inputs["B"]})
    a = torch.rand(3, 6)
    with pytest.raises(ValueError, match="same shape and floating dtype"):
        linear_recurrence(a, torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"h0 must have shape \(3,\)"):
        linear_recurrence(a, a, torch.zeros(6))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        linear_recurrence(a, a, chunk_size=0)
