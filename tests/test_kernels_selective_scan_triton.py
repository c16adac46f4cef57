"""The selective scan's Triton kernels, run on CPU by Triton's interpreter, against the fp32 naive reference.

Errors are RMS(err) / RMS(ref). The kernels compute in fp32 like the reference and differ in summation order
(a tree of pair compositions within a chunk, reductions over n, over channels for B/C and over time for A/D),
in exp (numpy's against torch's, an ulp apart) and in softplus (log1p written as log(w) e / (w - 1)): observed
<= 8.4e-7 (grad delta_bias, a sum over every step), so TOL = 2e-6 (~30 unit roundoffs of fp32), as for the
torch path; the inputs are seeded, so the errors are the same on every run. A misplaced step, chunk carry,
group or gradient term gives >= 1e-3. Every buffer the kernels fill starts as NaN, so an unwritten element
fails the comparison. Shapes are tiny: the interpreter runs tl.associative_scan element by element.
"""
import pytest
import torch
import triton
from test_kernels_selective_scan import exact_decay_inputs, integer_scan, make_inputs, rel_rms, run_with_grads

import kernels.selective_scan.triton_scan as triton_scan
from kernels.selective_scan import selective_scan_fn
from model import build_model
from model.config import ModelConfig

TOL = 2e-6
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture(autouse=True)
def _nan_buffers(monkeypatch):
    monkeypatch.setattr(triton_scan, "new_empty", lambda shape, dtype, device: torch.full(shape, float("nan"),
                                                                                          dtype=dtype, device=device))


def assert_triton_matches_naive(inputs, **flags):
    out, last, grads = run_with_grads(inputs, "triton", **flags)
    ref_out, ref_last, ref_grads = run_with_grads(inputs, "naive", **flags)
    assert out.dtype == inputs["u"].dtype and last.dtype == torch.float32
    assert all(grads[k].dtype == inputs[k].dtype for k in grads)
    errors = {"out": rel_rms(out, ref_out), "last_state": rel_rms(last, ref_last)}
    errors.update({f"grad {k}": rel_rms(grads[k], ref_grads[k]) for k in grads})
    assert all(e < TOL for e in errors.values()), errors


@pytest.mark.parametrize("L", [1, 63, 64, 65, 100])
@pytest.mark.parametrize("allow_neg_eigval", [False, True])
@pytest.mark.parametrize("groups", [None, 2])
def test_forward_and_every_gradient_match_naive(L, allow_neg_eigval, groups):
    # chunks of 16 steps: L = 64 ends on a chunk boundary, 63 and 65 either side, 100 is ragged
    inputs = make_inputs(batch=2, dim=8, n=4, L=L, groups=groups, seed=L)
    assert_triton_matches_naive(inputs, delta_softplus=True, allow_neg_eigval=allow_neg_eigval)


OPTIONAL = [(), ("z",), ("D", "delta_bias"), ("initial_state", "z", "D")]


@pytest.mark.parametrize("present", OPTIONAL)
@pytest.mark.parametrize("softplus", [False, True])
def test_optional_inputs_and_odd_sizes(present, softplus):
    # d = 6 in 2 groups of 3 (a block of 4 channels is cut at the group's end), n = 3 (one masked state lane)
    inputs = make_inputs(batch=1, dim=6, n=3, L=33, groups=2, seed=len(present))
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()  # keep delta > 0 without softplus, so decays stay inside (-1, 1)
    inputs = {k: v for k, v in inputs.items() if k in ("u", "delta", "A", "B", "C") + present}
    assert_triton_matches_naive(inputs, delta_softplus=softplus, allow_neg_eigval=True)


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
@pytest.mark.parametrize("L", [1, 65])
def test_decays_exactly_zero_and_minus_one_are_exact(allow_neg_eigval, L):
    # delta A = -ln 2 gives exp = 0.5 exactly (a = 0 with negative eigenvalues); -1e4 underflows exp to 0
    inputs = exact_decay_inputs(L, [-0.6931471805599453, -1e4] if allow_neg_eigval else [-1e4])
    dA = torch.exp(inputs["delta"][0, :, 0, None] * inputs["A"])  # [d, n]
    decay = 2 * dA - 1 if allow_neg_eigval else dA
    assert set(decay.unique().tolist()) <= {0.0, -1.0}
    out, last = selective_scan_fn(**inputs, return_last_state=True, allow_neg_eigval=allow_neg_eigval,
                                  backend="triton")
    ref_out, ref_last = integer_scan(inputs, decay)
    assert torch.equal(out, ref_out.float()) and torch.equal(last, ref_last.float())
    assert_triton_matches_naive(inputs, allow_neg_eigval=allow_neg_eigval)


def test_zero_decay_forgets_a_huge_state():
    inputs = exact_decay_inputs(20, [-1e4])
    inputs["initial_state"] = torch.full_like(inputs["initial_state"], 3e38)
    out, last = selective_scan_fn(**inputs, return_last_state=True, backend="triton")
    assert torch.equal(last, inputs["u"][:, :, -1, None] * inputs["B"][:, None, :, -1])
    assert torch.isfinite(out).all()


def test_chunked_prefill_with_initial_state_equals_one_scan():
    inputs = make_inputs(batch=1, dim=4, n=4, L=40, groups=2, seed=5)
    flags = dict(delta_softplus=True, allow_neg_eigval=True, return_last_state=True, backend="triton")
    full, full_last = selective_scan_fn(**inputs, **flags)
    per_step = ("u", "delta", "B", "C", "z")
    first = {k: (v[..., :23] if k in per_step else v) for k, v in inputs.items()}
    second = {k: (v[..., 23:] if k in per_step else v) for k, v in inputs.items()}
    out1, state = selective_scan_fn(**first, **flags)
    out2, last = selective_scan_fn(**{**second, "initial_state": state}, **flags)
    assert rel_rms(torch.cat([out1, out2], -1), full) < TOL and rel_rms(last, full_last) < TOL


def test_output_only_and_strided_inputs():
    """Without return_last_state the output alone; inputs that are views with any strides give the same result."""
    inputs = make_inputs(batch=2, dim=4, n=2, L=20, seed=6)
    inputs.pop("initial_state")
    out = selective_scan_fn(**inputs, delta_softplus=True, backend="triton")
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 20)
    # time-major storage, as the model's projections produce: [batch, L, d] transposed to [batch, d, L]
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() == 3 else v)
               for k, v in inputs.items()}
    assert strided["u"].stride(-1) != 1
    assert torch.equal(selective_scan_fn(**strided, delta_softplus=True, backend="triton"), out)
    ref = selective_scan_fn(**inputs, delta_softplus=True, backend="naive")
    assert rel_rms(out, ref) < TOL


def test_fp16_inputs():
    """fp16 in, fp32 inside: against the fp64 reference the only errors are fp16 roundings (2^-11 relative each):
    one for out, two for the input grads (the incoming fp16 gradient and the result); the fp32 state has none."""
    inputs = make_inputs(batch=1, dim=4, n=4, L=40, groups=2, dtype=torch.float16, seed=10)
    inputs["initial_state"] = inputs["initial_state"].float()
    flags = dict(delta_softplus=True, allow_neg_eigval=True)
    out, last, grads = run_with_grads(inputs, "triton", **flags)
    ref_out, ref_last, ref_grads = run_with_grads({k: v.double() for k, v in inputs.items()}, "naive", **flags)
    assert out.dtype == torch.float16 and last.dtype == torch.float32
    assert rel_rms(out, ref_out) < 2 ** -11 and rel_rms(last, ref_last) < TOL
    errors = {k: rel_rms(grads[k], ref_grads[k]) for k in GRAD_NAMES}
    assert all(e < 2 ** -10 for e in errors.values()), errors
    assert all(grads[k].dtype == inputs[k].dtype for k in GRAD_NAMES)


def test_no_grad_keeps_no_states_and_matches():
    inputs = make_inputs(batch=1, dim=4, n=2, L=20, seed=12)
    with torch.no_grad():
        out, last = selective_scan_fn(**inputs, return_last_state=True, backend="triton")
    ref_out, ref_last = selective_scan_fn(**inputs, return_last_state=True, backend="naive")
    assert rel_rms(out, ref_out) < TOL and rel_rms(last, ref_last) < TOL


def test_dispatch_and_clear_errors(monkeypatch):
    inputs = make_inputs(batch=1, dim=4, n=2, L=5, seed=13)
    assert torch.equal(selective_scan_fn(**inputs, backend="auto"), selective_scan_fn(**inputs, backend="torch"))
    with pytest.raises(TypeError, match="backend='torch' for fp64"):
        selective_scan_fn(**{k: v.double() for k, v in inputs.items()}, backend="triton")
    monkeypatch.setattr(triton_scan, "INTERPRET", False)
    with pytest.raises(ValueError, match="needs CUDA tensors; got cpu.*TRITON_INTERPRET=1"):
        selective_scan_fn(**inputs, backend="triton")


def test_tiny_mamba_trains_with_the_triton_backend():
    """Same gradients as the torch backend (1e-5: fp32 roundoff through two layers), and the loss goes down."""
    cfg = dict(mixer="mamba", allow_neg_eigval=True, vocab_size=32, hidden_size=16, num_layers=2, state_size=4,
               mlp=False, dt_max=1.0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**cfg, kernel_backend="triton"))
    reference = build_model(ModelConfig(**cfg, kernel_backend="torch"))
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 32, (2, 12))

    def loss_of(m):
        logits = m(ids[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    loss_of(reference).backward()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        if step == 0:
            ref_grads = dict(reference.named_parameters())
            errors = {k: rel_rms(p.grad, ref_grads[k].grad) for k, p in model.named_parameters()}
            assert all(e < 1e-5 for e in errors.values()), errors
        opt.step()
        losses.append(loss.item())
    assert losses[2] < losses[1] < losses[0], losses


def test_gpu_configs_scale_the_channel_block_to_n_and_the_group():
    """The autotuner's pruning (it runs on GPUs only): tiles sized for n = 16 keep their size, within one group."""
    configs = [triton.Config({"BLOCK_D": d, "BLOCK_T": t}, num_warps=w) for d, t, w in triton_scan.BWD_SHAPES]

    def blocks(group_dim, block_n):
        fitted = triton_scan._fitting(configs, {"group_dim": group_dim}, BLOCK_N=block_n)
        return sorted((c.kwargs["BLOCK_D"], c.kwargs["BLOCK_T"], c.num_warps) for c in fitted)

    assert blocks(2048, 16) == sorted(triton_scan.BWD_SHAPES)
    assert [b[0] for b in blocks(2048, 4)] == [4, 8, 8, 16]
    assert [b[0] for b in blocks(2048, 64)] == [1, 1]  # (1, 4) and (2, 4) both become (1, 4): one is dropped
    assert [b[0] for b in blocks(3, 4)] == [4, 4]  # capped at the group's 3 channels (rounded up to 4)
