"""Triton delta-rule kernels (chunked and fused recurrent) on the CPU interpreter against the fp32 token loop.

Errors are RMS(err) / RMS(ref). fp32 tolerance 1e-5, as in test_kernels_delta_rule.py: both sides compute in fp32
and differ only in summation order (observed <= 6e-7 here); a wrong or missing term shows up as O(1) error.
Every buffer the kernels allocate starts as NaN (fixture below), so memory a kernel forgets to write shows.
"""
import os
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import triton

from delta_rule_helpers import NAMES, make_inputs, outputs_and_grads, per_sequence_reference, rel_rms
from kernels.delta_rule import chunk_delta_rule, delta_rule_naive, fused_recurrent_delta_rule
from kernels.delta_rule import triton_chunk, triton_chunk_bwd, triton_chunk_fwd, triton_fused_recurrent, triton_l2norm
from kernels.delta_rule.triton_sm90_check import register_a_in_flight, transposed_mma

FP32_TOL = 1e-5
KERNEL_MODULES = (triton_chunk_fwd, triton_chunk_bwd, triton_fused_recurrent, triton_l2norm)
TUNED = [kernel for module in KERNEL_MODULES for kernel in vars(module).values() if hasattr(kernel, "all_configs")]
# Every set of tile widths a GPU's autotuner may pick (configs that only change warps or stages compute the same
# thing on the interpreter); the interpreter otherwise runs only each kernel's first config.
GPU_TILES = sorted({tuple(sorted(c.kwargs.items())) for kernel in TUNED for c in kernel.all_configs if c.kwargs})
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def nan_buffers(monkeypatch):
    """Kernel outputs and scratch start as NaN instead of whatever torch.empty returns."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    for module in KERNEL_MODULES:
        monkeypatch.setattr(module, "new_empty", nan_empty)


@pytest.fixture(params=GPU_TILES, ids=lambda tiles: "-".join(f"{k}{v}" for k, v in tiles))
def gpu_tiles(request, monkeypatch):
    """Every kernel tuned over tile widths runs with these widths, as on a GPU whose autotuner picked them."""
    tiles = dict(request.param)
    for kernel in TUNED:
        picks = [c for c in kernel.all_configs if c.kwargs == tiles]
        if picks:
            monkeypatch.setattr(kernel, "configs", picks[:1])
    return tiles


def assert_all_close(actual, ref, tol, names=NAMES):
    """Every output finite (no NaN leaked from an unwritten buffer) and within tol of the reference."""
    not_finite = [name for name, a in zip(names, actual) if not torch.isfinite(a).all()]
    assert not not_finite, f"non-finite values in {not_finite}"
    errors = {name: rel_rms(a, r) for name, a, r in zip(names, actual, ref)}
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative RMS errors above {tol}: {bad}"


def triton_chunked(*args, **kwargs):
    return chunk_delta_rule(*args, backend="triton", **kwargs)


@pytest.mark.parametrize("beta_mode", ["zero", "two", "random"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 100])
def test_chunked_matches_naive_forward_and_every_gradient(T, beta_mode):
    inputs = make_inputs(T=T, beta_mode=beta_mode)
    ours = outputs_and_grads(triton_chunked, *inputs)
    assert ours[0].shape == (2, T, 2, 8) and ours[1].shape == (2, 2, 16, 8) and ours[1].dtype == torch.float32
    assert_all_close(ours, outputs_and_grads(delta_rule_naive, *inputs), FP32_TOL)


@pytest.mark.parametrize("chunk_size", [16, 32])
def test_smaller_chunks_pass_the_state_across_more_boundaries(chunk_size):
    inputs = make_inputs(T=100)
    ours = outputs_and_grads(triton_chunked, *inputs, chunk_size=chunk_size)
    assert_all_close(ours, outputs_and_grads(delta_rule_naive, *inputs), FP32_TOL)


@pytest.mark.parametrize("K, V", [(48, 24), (16, 40)])
def test_head_dims_that_differ_and_are_not_powers_of_two(K, V):
    # 48 spans two 32-wide K tiles, the second half masked; 24 and 40 are masked V tiles.
    inputs = make_inputs(B=1, T=70, K=K, V=V)
    ours = outputs_and_grads(triton_chunked, *inputs)
    assert_all_close(ours, outputs_and_grads(delta_rule_naive, *inputs), FP32_TOL)


def test_without_initial_or_final_state():
    q, k, v, beta, _ = make_inputs(T=70, with_state=False)
    o, S = triton_chunked(q, k, v, beta)
    assert S is None
    ours = outputs_and_grads(triton_chunked, q, k, v, beta, None)
    ref = outputs_and_grads(delta_rule_naive, q, k, v, beta, None)
    assert_all_close(ours, ref, FP32_TOL, names=NAMES[:-1])
    assert rel_rms(o, ref[0]) <= FP32_TOL
    # Only o's gradient flows when the final state is not returned.
    (dq,) = torch.autograd.grad(o.sum(), [q])
    (dq_ref,) = torch.autograd.grad(delta_rule_naive(q, k, v, beta)[0].sum(), [q])
    assert rel_rms(dq, dq_ref) <= FP32_TOL


def test_scale_and_qk_l2norm_with_their_gradients():
    q, k, v, beta, h0 = make_inputs(T=70)
    with torch.no_grad():
        q.mul_(3.0)
        k.copy_(torch.randn_like(k) * 3.0)  # not unit: the l2norm kernel must normalise, and backprop through it
    kwargs = dict(scale=0.3, use_qk_l2norm_in_kernel=True)
    ours = outputs_and_grads(triton_chunked, q, k, v, beta, h0, **kwargs)
    assert_all_close(ours, outputs_and_grads(delta_rule_naive, q, k, v, beta, h0, **kwargs), FP32_TOL)


def test_varlen_matches_a_loop_over_sequences():
    bounds = [0, 1, 1, 64, 65, 130, 170]  # lengths 1, 0 (empty: its final state is its initial state), 63, 1, 65, 40
    T, H, K, V = bounds[-1], 2, 16, 8
    N = len(bounds) - 1
    q, k, v, beta, _ = make_inputs(B=1, T=T, H=H, K=K, V=V, with_state=False)
    h0 = torch.randn(N, H, K, V).requires_grad_()
    cu = torch.tensor(bounds)

    ref = outputs_and_grads(per_sequence_reference(bounds), q, k, v, beta, h0)
    assert_all_close(outputs_and_grads(triton_chunked, q, k, v, beta, h0, cu_seqlens=cu), ref, FP32_TOL)
    assert_all_close(outputs_and_grads(triton_chunked, q, k, v, beta, h0, cu_seqlens=cu, chunk_size=16), ref,
                     FP32_TOL)
    assert_all_close(outputs_and_grads(fused_recurrent_delta_rule, q, k, v, beta, h0, cu_seqlens=cu), ref, FP32_TOL)


def assert_fp16_close(q, k, v, beta, h0):
    """fp16 inputs through the Triton kernels against the fp32 token loop on the same (rounded) values."""
    ours = outputs_and_grads(triton_chunked, q, k, v, beta, h0)
    assert ours[0].dtype == torch.float16 and ours[1].dtype == torch.float32
    assert all(g.dtype == torch.float16 for g in ours[2:6]) and ours[6].dtype == torch.float32
    ref_inputs = [x.detach().float().requires_grad_() for x in (q, k, v, beta)]
    ref = outputs_and_grads(delta_rule_naive, *ref_inputs, h0)
    # Dot operands (T, W, U, the chunk states, U' and their gradients) are rounded to fp16 (unit roundoff
    # u = 4.9e-4) and accumulated in fp32. At beta = 2 every transition is a reflection that never damps an earlier
    # rounding, so errors add up over the sequence: observed <= 2.4e-3 at T = 100 over seeds (<= 1.4e-3 for
    # random beta; <= 7e-4 at K = V = 128, T = 100). 5e-3 (~10 u) leaves room for other seeds; a wrong term
    # gives O(1).
    assert_all_close(ours, ref, 5e-3)


@pytest.mark.parametrize("beta_mode", ["random", "two"])
def test_fp16_inputs_against_the_fp32_reference(beta_mode):
    assert_fp16_close(*make_inputs(T=100, K=32, V=32, beta_mode=beta_mode, dtype=torch.float16))


@pytest.mark.parametrize("K, V", [(128, 128), (128, 48), (80, 128)])
def test_large_head_dims_under_every_gpu_tile_config(gpu_tiles, K, V):
    # Several K and V tiles per head, partly masked at 48 and 80; the state kernels hold all 128 rows of K.
    inputs = make_inputs(B=1, T=70, H=1, K=K, V=V)
    ours = outputs_and_grads(triton_chunked, *inputs)
    assert_all_close(ours, outputs_and_grads(delta_rule_naive, *inputs), FP32_TOL)


def test_fp16_at_head_dim_128_under_every_gpu_tile_config(gpu_tiles):
    assert_fp16_close(*make_inputs(B=1, T=100, H=1, K=128, V=128, dtype=torch.float16))


def test_results_do_not_depend_on_what_fresh_buffers_hold(gpu_tiles, monkeypatch):
    """Two calls, fresh buffers holding zeros in one and large random values in the other, agree bit for bit: no
    kernel reads memory it has not written (the GPU tests also compare two calls, where races would show)."""
    inputs = make_inputs(B=1, T=70, H=2, K=128, V=128)
    fills = (lambda shape, dtype: torch.zeros(shape, dtype=dtype),
             lambda shape, dtype: (torch.randn(shape) * 1e3).to(dtype))
    runs = []
    for fill in fills:
        for module in KERNEL_MODULES:
            monkeypatch.setattr(module, "new_empty", lambda shape, dtype, device, fill=fill: fill(shape, dtype))
        runs.append(outputs_and_grads(triton_chunked, *inputs))
    assert all(torch.isfinite(a).all() and torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.skipif("nvidia" not in triton.backends.backends, reason="needs Triton's NVIDIA compiler backend")
@pytest.mark.parametrize("K, V", [(128, 128), (64, 32)])
def test_hopper_code_avoids_patterns_that_miscompile(K, V):
    """Compiles every kernel under every GPU config for sm_90 (no GPU needed; see triton_sm90_check): patterns
    that pass the interpreter yet give wrong, run-to-run different results on an H100/H200 must not appear."""
    result = subprocess.run([sys.executable, "-m", "kernels.delta_rule.triton_sm90_check", "bf16", str(K), str(V)],
                            cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "0"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_the_sm90_checks_see_the_patterns():
    mma = "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%r1,%r2}, "
    register_a = mma + "{%r9,%r10,%r11,%r12}, %rd5, %p1, 1, 1, 0;"  # A in registers, B by its smem descriptor
    shared_a = mma + "%rd4, %rd5, %p1, 1, 1, 0, 0;"  # both by descriptor
    commit = "wgmma.commit_group.sync.aligned;"

    def wait(n):
        return f"wgmma.wait_group.sync.aligned {n};"

    assert register_a_in_flight("\n".join([register_a, commit, wait(1)])) == 1
    assert register_a_in_flight("\n".join([register_a, commit, wait(0), shared_a, commit, wait(1)])) == 0
    # The wait for 1 retires the older group (register A) and leaves the newer one (shared A) in flight.
    assert register_a_in_flight("\n".join([register_a, commit, shared_a, commit, wait(1)])) == 0
    assert register_a_in_flight("\n".join([shared_a, commit, register_a, commit, wait(1)])) == 1
    ttgir = "%b = tt.trans %a {order = array<i32: 1, 0>} : tensor<64x64xbf16, #mma> -> tensor<64x64xbf16, #linear>"
    assert transposed_mma(ttgir) == 1 and transposed_mma(ttgir.replace("#mma>", "#blocked>")) == 0


@pytest.mark.parametrize("T", [1, 63, 100])
def test_fused_recurrent_matches_naive(T):
    inputs = make_inputs(T=T, beta_mode="two" if T == 63 else "random")
    ref = outputs_and_grads(delta_rule_naive, *inputs)
    with torch.no_grad():
        o, S = fused_recurrent_delta_rule(*inputs[:4], initial_state=inputs[4], output_final_state=True)
    assert_all_close((o, S), ref[:2], FP32_TOL)
    # Its backward recomputes through the chunked kernels.
    assert_all_close(outputs_and_grads(fused_recurrent_delta_rule, *inputs), ref, FP32_TOL)


def test_dispatch_picks_the_kernel():
    q, k, v, beta, h0 = make_inputs(T=40)
    kwargs = dict(initial_state=h0, output_final_state=True)
    # auto on CPU tensors is the torch path, bit for bit.
    for a, b in zip(chunk_delta_rule(q, k, v, beta, **kwargs), chunk_delta_rule(q, k, v, beta, backend="torch",
                                                                                **kwargs)):
        assert torch.equal(a, b)
    # Short and without gradients: the fused token loop; with gradients: the chunked kernels.
    with torch.no_grad():
        fused = fused_recurrent_delta_rule(q, k, v, beta, **kwargs)
        for a, b in zip(triton_chunked(q, k, v, beta, **kwargs), fused):
            assert torch.equal(a, b)
    chunked = triton_chunk.delta_rule_triton(q, k, v, beta, None, h0, True, fused=False)
    o, S = triton_chunked(q, k, v, beta, **kwargs)
    assert o.grad_fn is not None and torch.equal(o, chunked[0]) and torch.equal(S, chunked[1])
    assert not torch.equal(o, fused[0])  # the two kernels sum in different orders, so equality above means something


def test_triton_off_the_interpreter_on_cpu_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, beta, _ = make_inputs(T=8)
    for backend in ("triton", "fla"):
        with pytest.raises(ValueError, match=rf"backend='{backend}' runs Triton kernels, which need CUDA tensors.*"
                                             r"TRITON_INTERPRET=1.*backend='torch'"):
            chunk_delta_rule(q, k, v, beta, backend=backend)


@pytest.mark.parametrize("changes, match", [
    (dict(K=129), r"backend='triton' supports head dims up to 128, got K=129, V=8"),
    (dict(chunk_size=128), r"backend='triton' supports chunk_size in \(16, 32, 64\), got 128"),
])
def test_triton_limits_raise_clear_errors(changes, match):
    q, k, v, beta, _ = make_inputs(B=1, T=4, K=changes.get("K", 16))
    with pytest.raises(ValueError, match=match):
        chunk_delta_rule(q, k, v, beta, backend="triton", chunk_size=changes.get("chunk_size", 64))


def test_fla_backend_errors(monkeypatch):
    q, k, v, beta, _ = make_inputs(T=8)
    with pytest.raises(TypeError, match=r"backend='fla' needs fp16 or bf16 inputs"):
        chunk_delta_rule(q, k, v, beta, backend="fla")
    for name in ("fla", "fla.ops", "fla.ops.delta_rule"):  # the import fails as if fla were missing, even
        monkeypatch.setitem(sys.modules, name, None)          # when another test imported it already
    half = [x.detach().half() for x in (q, k, v, beta)]
    with pytest.raises(ImportError, match=r"backend='fla' needs flash-linear-attention"):
        chunk_delta_rule(*half, backend="fla")


def test_fla_backend_passes_every_argument(monkeypatch):
    """fla's kernels do not run on the interpreter unpatched, so a stand-in records the call (GPU tests run fla)."""
    calls = []

    def fake_chunk_delta_rule(q, k, v, beta, **kwargs):
        calls.append(kwargs)
        return delta_rule_naive(q, k, v, beta, kwargs["scale"], kwargs["initial_state"], kwargs["output_final_state"],
                                kwargs["cu_seqlens"], kwargs["use_qk_l2norm_in_kernel"])

    for name in ("fla", "fla.ops", "fla.ops.delta_rule"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["fla.ops.delta_rule"].chunk_delta_rule = fake_chunk_delta_rule
    q, k, v, beta, _ = (x.detach().half() if x is not None else None for x in make_inputs(B=1, T=8))
    h0, cu = torch.randn(2, 2, 16, 8), torch.tensor([0, 3, 8])
    o, S = chunk_delta_rule(q, k, v, beta, scale=0.5, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                            use_qk_l2norm_in_kernel=True, chunk_size=32, backend="fla")
    assert calls == [dict(scale=0.5, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                          use_qk_l2norm_in_kernel=True, chunk_size=32)]
    o_ref, S_ref = delta_rule_naive(q, k, v, beta, 0.5, h0, True, cu, True)
    assert torch.equal(o, o_ref) and torch.equal(S, S_ref)


def test_tiny_deltanet_trains_with_the_triton_backend():
    from model import ModelConfig, build_model

    def tiny(backend):
        return ModelConfig(mixer="deltanet", allow_neg_eigval=True, vocab_size=64, hidden_size=32, num_layers=2,
                           num_heads=2, intermediate_size=48, kernel_backend=backend)

    torch.manual_seed(0)
    model = build_model(tiny("triton"))
    reference = build_model(tiny("torch"))
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (2, 40))

    def loss_of(m):
        logits = m(ids)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    # Same weights, same batch: the two backends' gradients agree to fp32 roundoff through the whole network.
    loss_of(model).backward()
    loss_of(reference).backward()
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        assert torch.isfinite(p.grad).all() and rel_rms(p.grad, p_ref.grad) <= FP32_TOL, name
    # And it learns: a few AdamW steps on one batch lower the loss.
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_fla_backend_is_a_deltanet_only_model_option():
    from model import ModelConfig

    ModelConfig(mixer="deltanet", kernel_backend="fla").validate()
    with pytest.raises(ValueError, match=r"model.kernel_backend='fla' works only with model.mixer='deltanet'"):
        ModelConfig(mixer="mamba", kernel_backend="fla").validate()
