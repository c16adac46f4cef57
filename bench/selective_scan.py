"""Selective-scan benchmark: our Triton kernels against our torch path, and the short convolution beside them.

On CUDA: forward and forward+backward times (triton.testing.do_bench, median) of backend="triton" and
backend="torch" (and mamba_ssm's selective_scan_fn when importable) at Mamba's sizes, with the achieved
bandwidth: bytes of the op's inputs and outputs divided by the time, against the GPU's peak. Then torch's
depthwise conv1d + SiLU (model/conv.py) at the same sizes, timed against the scan, to decide whether fusing
the conv into a Triton kernel would pay. On CPU: the comparison of issue 7, our torch path against an
efficient token loop over unbind slices, fwd+bwd in fp32, median of 7 runs after warm-up.

    python bench/selective_scan.py [--quick]
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.selective_scan import selective_scan_fn  # noqa: E402
from model.conv import ShortConv  # noqa: E402

PEAK_TB_PER_S = {"H100": 3.35, "H200": 4.8}  # HBM bandwidth of the SXM parts


def peak_bandwidth():
    """Bytes/s of the current GPU by name, or None when unknown."""
    name = torch.cuda.get_device_name()
    return next((tb * 1e12 for key, tb in PEAK_TB_PER_S.items() if key in name), None)


def mamba_inputs(batch, dim, n, L, dtype, device, seed=0):
    """Mamba-1's ranges: A = -(1..n), delta = softplus(x + bias) with a step of 1e-3..1e-1 from the bias."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, device=device)).to(dtype)

    dt = torch.exp(torch.rand(dim, generator=g, device=device) * math.log(100) + math.log(1e-3))
    return dict(u=randn(batch, dim, L), delta=randn(batch, dim, L, scale=0.5), B=randn(batch, n, L),
                C=randn(batch, n, L), z=randn(batch, dim, L),
                A=-torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(dim, 1),
                D=torch.ones(dim, device=device), delta_bias=dt + torch.log(-torch.expm1(-dt)))


def io_bytes(inputs, backward):
    """Bytes the op must move: per-step inputs and the output; with backward also dout and their gradients."""
    per_step = sum(inputs[k].numel() * inputs[k].element_size() for k in ("u", "delta", "B", "C", "z"))
    out = inputs["u"].numel() * inputs["u"].element_size()
    return per_step + out + (2 * per_step + out if backward else 0)


def scan_fns(inputs, scan):
    """(forward, forward+backward) closures around scan(**inputs)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    dout = torch.randn_like(inputs["u"])
    params = list(leaves.values())

    def fwd():
        with torch.no_grad():
            scan(**inputs)

    def fwd_bwd():
        torch.autograd.grad(scan(**leaves), params, dout)

    return fwd, fwd_bwd


def gpu_scan_rows(cases):
    from triton.testing import do_bench

    peak = peak_bandwidth()
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_scan
    except ImportError:
        mamba_scan = None
        print("mamba_ssm is not importable: no comparison against its CUDA kernel")
    print(f"{torch.cuda.get_device_name()}, peak {peak / 1e12 if peak else float('nan'):.2f} TB/s; "
          "allow_neg_eigval=True, delta_softplus, D and z on; times are medians (ms)")
    print(f"{'shape (b, d, n, L)':24} {'dtype':9} {'pass':8} {'triton':>8} {'torch':>8} {'speedup':>8} "
          f"{'GB/s':>7} {'% peak':>7}" + (f" {'mamba_ssm':>10}" if mamba_scan else ""))
    scan_ms = {}
    for (batch, dim, n, L), dtype in cases:
        inputs = mamba_inputs(batch, dim, n, L, dtype, "cuda")
        flags = dict(delta_softplus=True)
        ours = scan_fns(inputs, lambda **kw: selective_scan_fn(**kw, **flags, allow_neg_eigval=True, backend="triton"))
        ref = scan_fns(inputs, lambda **kw: selective_scan_fn(**kw, **flags, allow_neg_eigval=True, backend="torch"))
        theirs = scan_fns(inputs, lambda **kw: mamba_scan(**kw, **flags)) if mamba_scan else None
        for i, name in enumerate(("fwd", "fwd+bwd")):
            t_ours = do_bench(ours[i], return_mode="median")
            t_ref = do_bench(ref[i], return_mode="median")
            rate = io_bytes(inputs, backward=i == 1) / (t_ours * 1e-3)
            pct = f"{100 * rate / peak:6.1f}%" if peak else "     ?"
            extra = f" {do_bench(theirs[i], return_mode='median'):10.3f}" if theirs else ""
            print(f"{str((batch, dim, n, L)):24} {str(dtype)[6:]:9} {name:8} {t_ours:8.3f} {t_ref:8.3f} "
                  f"{t_ref / t_ours:7.1f}x {rate / 1e9:7.0f} {pct}" + extra)
            scan_ms[(batch, dim, n, L, dtype, name)] = t_ours
    return scan_ms


def gpu_conv_rows(shapes, dtype, scan_ms):
    """torch's conv1d + SiLU as the Mamba layer runs it ([B, T, d] in and out), against the Triton scan."""
    from triton.testing import do_bench

    peak = peak_bandwidth()
    print(f"\nshort causal depthwise conv (kernel 4) + SiLU, torch conv1d, {str(dtype)[6:]}: time, share of "
          "conv + scan,\nGB/s of x and y (+ dy and dx for fwd+bwd)")
    print(f"{'shape (b, d, n, L)':24} {'pass':8} {'conv ms':>8} {'scan ms':>8} {'conv share':>11} {'GB/s':>7} "
          f"{'% peak':>7}")
    for batch, dim, n, L in shapes:
        conv = ShortConv(dim, 4, bias=True).to("cuda", dtype)
        x = torch.randn(batch, L, dim, device="cuda", dtype=dtype)
        xg = x.clone().requires_grad_()
        dy = torch.randn_like(x)

        def fwd():
            with torch.no_grad():
                conv(x)

        def fwd_bwd():
            torch.autograd.grad(conv(xg)[0], [xg, *conv.parameters()], dy)

        for name, fn, passes in (("fwd", fwd, 2), ("fwd+bwd", fwd_bwd, 5)):
            t = do_bench(fn, return_mode="median")
            t_scan = scan_ms[(batch, dim, n, L, dtype, name)]
            rate = passes * x.numel() * x.element_size() / (t * 1e-3)
            pct = f"{100 * rate / peak:6.1f}%" if peak else "     ?"
            print(f"{str((batch, dim, n, L)):24} {name:8} {t:8.3f} {t_scan:8.3f} {100 * t / (t + t_scan):10.1f}% "
                  f"{rate / 1e9:7.0f} {pct}")


def unbind_token_loop(u, delta, A, B, C, D, z, delta_bias, allow_neg_eigval):
    """The scan as an efficient torch token loop: one full-size set-up, then per-step slices from unbind."""
    delta = F.softplus(delta + delta_bias[:, None])
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None])  # [b, d, L, n]
    if allow_neg_eigval:
        decay = 2 * decay - 1
    x = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # [b, d, L, n]
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for a_t, x_t, c_t in zip(decay.unbind(2), x.unbind(2), C.unbind(2)):
        h = a_t * h + x_t
        ys.append(torch.matmul(h, c_t.unsqueeze(-1)).squeeze(-1))  # [b, d]
    y = torch.stack(ys, -1) + u * D[:, None]
    return y * F.silu(z)


def cpu_rows(lengths, repeats=7):
    print(f"CPU, {torch.get_num_threads()} threads, fp32, b=2, d=256, n=16, allow_neg_eigval=True: fwd+bwd, "
          f"median of {repeats} after one warm-up run")
    print(f"{'L':>6} {'torch path ms':>14} {'unbind loop ms':>15} {'speedup':>8}")
    for L in lengths:
        inputs = mamba_inputs(2, 256, 16, L, torch.float32, "cpu")
        ours = scan_fns(inputs, lambda **kw: selective_scan_fn(**kw, delta_softplus=True, allow_neg_eigval=True,
                                                                backend="torch"))[1]
        loop = scan_fns(inputs, lambda **kw: unbind_token_loop(**kw, allow_neg_eigval=True))[1]
        with torch.no_grad():  # the baseline must compute the same function
            y, ref = unbind_token_loop(**inputs, allow_neg_eigval=True), selective_scan_fn(
                **inputs, delta_softplus=True, allow_neg_eigval=True, backend="torch")
            assert (y - ref).norm() <= 1e-5 * ref.norm(), "the unbind loop disagrees with the torch path"
        times = []
        for fn in (ours, loop):
            fn()
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - start)
            times.append(1e3 * statistics.median(runs))
        print(f"{L:6d} {times[0]:14.1f} {times[1]:15.1f} {times[1] / times[0]:7.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    args = parser.parse_args()
    start = time.perf_counter()
    if torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") == "1":
            sys.exit("TRITON_INTERPRET=1 is set: unset it to time the compiled kernels on the GPU")
        shapes = [(2, 2048, 16, 2048)] if args.quick else \
            [(2, 1536, 16, 2048), (2, 2048, 16, 2048), (2, 2048, 16, 4096), (2, 2048, 16, 8192)]
        fp32 = [] if args.quick else [((2, 2048, 16, 4096), torch.float32)]
        scan_ms = gpu_scan_rows([(shape, torch.bfloat16) for shape in shapes] + fp32)
        gpu_conv_rows(shapes, torch.bfloat16, scan_ms)
    else:
        print("no CUDA device: the Triton kernels are not timed (the interpreter is for correctness only)")
        cpu_rows([256, 1024] if args.quick else [256, 1024, 2048])
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
