"""Triton delta-rule kernels on a GPU at training sizes, against our torch path on the same inputs.

The torch path computes in fp32 (no TF32: torch's default for CUDA matmuls) and matches the token loop to ~1e-6
on CPU (test_kernels_delta_rule.py), so it is the reference here. Errors are RMS(err) / RMS(ref).
- fp32 inputs: our dots run as three-pass TF32 (~2^-21 relative per product) accumulated in fp32, over up to 32
  chunks; 1e-4 is ~400 fp32 unit roundoffs, far below the O(1) of any wrong term.
- bf16 inputs: the kernels round every dot operand (T, W, U, chunk states, U' and their gradients) to bf16
  (unit roundoff u = 3.9e-3), as fla's do. The fp16 CPU test sees <= 1.4e-3 = 2.9 u with beta in (0, 2), growing
  slowly with T; 4e-2 (~10 u) is the same allowance in bf16 units. Where fla is installed, ours must also be
  within twice fla's own error against the same reference (at T = 4096).
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from kernels.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
from kernels.delta_rule import triton_chunk_bwd, triton_chunk_fwd, triton_fused_recurrent, triton_l2norm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = {torch.float32: 1e-4, torch.bfloat16: 4e-2}
NAMES = ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0")


@pytest.fixture(autouse=True)
def nan_buffers(monkeypatch):
    """Kernel outputs and scratch start as NaN, so memory a kernel forgets to write shows."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    for module in (triton_chunk_fwd, triton_chunk_bwd, triton_fused_recurrent, triton_l2norm):
        monkeypatch.setattr(module, "new_empty", nan_empty)


def rel_rms(actual, ref):
    err = (actual.double() - ref.double()).pow(2).mean().sqrt().item()
    scale = ref.double().pow(2).mean().sqrt().item()
    return err / scale if scale > 0 else err


def make_inputs(B, T, H, K, V, dtype, beta_mode="random", N=None):
    """q, v random, k unit-norm, beta in (0, 2) or exactly 2, fp32 initial state [N or B, H, K, V]; all need grad."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, T, H, K, device="cuda", generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, device="cuda", generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, device="cuda", generator=gen)
    beta = (torch.rand(B, T, H, device="cuda", generator=gen) * 2 if beta_mode == "random"
            else torch.full((B, T, H), 2.0, device="cuda"))
    h0 = torch.randn(N or B, H, K, V, device="cuda", generator=gen)
    return [x.to(dtype).requires_grad_() for x in (q, k, v, beta)] + [h0.requires_grad_()]


def outputs_and_grads(inputs, **kwargs):
    q, k, v, beta, h0 = inputs
    o, S = chunk_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator(device="cuda").manual_seed(1)
    do = torch.randn(o.shape, device="cuda", generator=gen)
    dS = torch.randn(S.shape, device="cuda", generator=gen)
    return (o, S, *torch.autograd.grad((o.float() * do).sum() + (S * dS).sum(), inputs))


def check(inputs, dtype, compare_fla=False, **kwargs):
    """Ours against the torch path within TOL[dtype]; with compare_fla, also within twice fla's error (if installed:
    fla's autotuning costs minutes of compilation, so one case does this)."""
    ours = outputs_and_grads(inputs, backend="triton", **kwargs)
    ref = outputs_and_grads(inputs, backend="torch", **kwargs)
    not_finite = [n for n, a in zip(NAMES, ours) if not torch.isfinite(a).all()]
    assert not not_finite, f"non-finite values in {not_finite}"
    errors = {n: rel_rms(a, r) for n, a, r in zip(NAMES, ours, ref)}
    bad = {n: e for n, e in errors.items() if not e <= TOL[dtype]}
    assert not bad, f"relative RMS errors above {TOL[dtype]}: {bad} (all: {errors})"
    if compare_fla:
        fla = _fla_errors(inputs, ref, **kwargs)
        if fla is not None:
            worse = {n: (errors[n], fla[n]) for n in fla if errors[n] > 2 * fla[n] + 1e-3}
            assert not worse, f"(ours, fla's) errors where ours is over twice fla's: {worse}"


def _fla_errors(inputs, ref, **kwargs):
    """fla's errors against the same reference, or None where fla is not installed or fails (a warning: the peer's
    trouble must not stop the GPU run, which goes on with -x)."""
    try:
        import fla.ops.delta_rule  # noqa: F401
    except ImportError:
        return None
    try:
        fla_out = outputs_and_grads(inputs, backend="fla", **kwargs)
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"fla's chunk_delta_rule failed, no peer comparison: {err!r}")
        return None
    return {n: rel_rms(a, r) for n, a, r in zip(NAMES, fla_out, ref)}


# Two shape families keep compilation short (each new (dtype, H, K, V) compiles every kernel): bf16 with
# H=8, K=V=128 (the benchmark's), and fp32 with H=4, K=64 != V=32.
@pytest.mark.parametrize("dtype, B, T, H, K, V, beta_mode", [
    (torch.bfloat16, 2, 4096, 8, 128, 128, "random"),
    (torch.bfloat16, 1, 8192, 8, 128, 128, "random"),
    (torch.float32, 2, 2048, 4, 64, 32, "random"),
    (torch.float32, 1, 2048, 4, 64, 32, "two"),  # reflections: rounding is never damped
])
def test_chunked_matches_torch_path(dtype, B, T, H, K, V, beta_mode):
    check(make_inputs(B, T, H, K, V, dtype, beta_mode), dtype, compare_fla=T == 4096)


@pytest.mark.parametrize("dtype, H, K, V", [(torch.bfloat16, 8, 128, 128), (torch.float32, 4, 64, 32)])
def test_scale_and_qk_l2norm(dtype, H, K, V):
    inputs = make_inputs(2, 2048, H, K, V, dtype)
    with torch.no_grad():
        inputs[0].mul_(3)
        inputs[1].mul_(3)  # not unit: the l2norm kernel normalises
    check(inputs, dtype, use_qk_l2norm_in_kernel=True, scale=0.1)


def test_varlen_matches_torch_path():
    bounds = [0, 1, 700, 2048, 2049, 3500, 4096]
    inputs = make_inputs(1, 4096, 8, 128, 128, torch.bfloat16, N=len(bounds) - 1)
    check(inputs, torch.bfloat16, cu_seqlens=torch.tensor(bounds, device="cuda"))


def test_auto_is_triton_on_cuda():
    inputs = make_inputs(1, 1024, 8, 128, 128, torch.bfloat16)
    auto = outputs_and_grads(inputs)
    triton = outputs_and_grads(inputs, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(auto, triton))


def test_decoding_token_by_token_matches_the_full_sequence():
    q, k, v, beta, h0 = (x.detach() for x in make_inputs(2, 64, 8, 128, 128, torch.bfloat16))
    with torch.no_grad():
        full, S_full = chunk_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True,
                                        use_qk_l2norm_in_kernel=True, backend="torch")
        S, outs = h0, []
        for t in range(q.shape[1]):
            o, S = fused_recurrent_delta_rule(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], beta[:, t:t + 1],
                                              initial_state=S, output_final_state=True, use_qk_l2norm_in_kernel=True)
            outs.append(o)
    # The token loop keeps its state in fp32; only the l2-normalised q, k and o are rounded to bf16 (u/2 RMS
    # ~1.1e-3 each), so ~2e-3 is expected; 1e-2 = 2.5 u.
    assert rel_rms(torch.cat(outs, 1), full) <= 1e-2
    assert rel_rms(S, S_full) <= 1e-2


TUNED = [kernel for module in (triton_chunk_fwd, triton_chunk_bwd, triton_fused_recurrent, triton_l2norm)
         for kernel in vars(module).values() if hasattr(kernel, "all_configs")]
GPU_TILES = sorted({tuple(sorted(c.kwargs.items())) for kernel in TUNED for c in kernel.all_configs if c.kwargs})


@pytest.mark.parametrize("tiles", GPU_TILES, ids=lambda tiles: "-".join(f"{k}{v}" for k, v in tiles))
def test_every_tile_config_is_right_in_bf16(tiles, monkeypatch):
    """The autotuner verifies only what it picks; force each tile width (the Hopper register-reuse miscompile
    of Triton 3.6's ptxas showed in some configs only) and compare with the torch path, twice (determinism)."""
    for kernel in TUNED:
        picks = [c for c in kernel.all_configs if c.kwargs == dict(tiles)]
        if picks:
            monkeypatch.setattr(kernel, "configs", picks[:1])
    inputs = make_inputs(1, 1024, 8, 128, 128, torch.bfloat16)
    check(inputs, torch.bfloat16)
    first, second = outputs_and_grads(inputs, backend="triton"), outputs_and_grads(inputs, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(first[:2], second[:2]))
