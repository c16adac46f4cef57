"""Selective-scan benchmark (run it through bench/kernels.py): our Triton scan against our torch path and
torch.compile of it, and the short convolution beside them.

GPU: forward and forward+backward of backend="triton" and backend="torch" (and mamba_ssm's selective_scan_fn
when importable), bf16, (b, d, n) = (2, 2048, 16) as in Mamba, L in {1024, 2048, 4096, 8192}, with the achieved
bandwidth: bytes of the op's inputs and outputs divided by the time, against the GPU's peak. torch.compile of the
torch path runs in a child process stopped after a time limit (compiling the chunked loops takes long); a shape it
did not reach or could not compile shows as "-" with the reason. Then torch's depthwise conv1d + SiLU
(model/conv.py) at the same sizes, timed against the scan, to decide whether fusing the conv would pay.

CPU: our torch path against an efficient token loop over unbind slices (issue 7's comparison), fp32.
"""
import math
import time

import torch
import torch.nn.functional as F

from bench.timing import (device, emit, label, measure, median_ms, print_table, report, rows_from_records, run_child,
                          sync)
from kernels.selective_scan import selective_scan_fn
from model.conv import ShortConv

PEAK_TB_PER_S = {"H100": 3.35, "H200": 4.8}  # HBM bandwidth of the SXM parts
GPU_LENGTHS = (1024, 2048, 4096, 8192)
GPU_BDN = (2, 2048, 16)
CPU_BDN = (2, 256, 16)
FLAGS = dict(delta_softplus=True, allow_neg_eigval=True)


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


def rate(shape, key, ms):
    """Achieved GB/s: bytes the op must move (per-step inputs u, delta, z, B, C and the output; with backward also
    dout and the per-step inputs' gradients) over the time. shape is (b, d, n, L, dtype name)."""
    batch, dim, n, L, dtype = shape
    size = getattr(torch, dtype).itemsize
    per_step = (3 * batch * dim + 2 * batch * n) * L * size
    out = batch * dim * L * size
    return (per_step + out + (2 * per_step + out if key == "fwd_bwd" else 0)) / (ms * 1e-3) / 1e9


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


def ours(backend):
    """Our scan with Mamba's flags and negative decays, as scan(**inputs)."""
    return lambda **kw: selective_scan_fn(**kw, **FLAGS, backend=backend)


def time_scan(shape, name, scan, repeats=7, budget_s=60.0):
    """The row of one scan at shape (b, d, n, L, dtype name): fwd and fwd+bwd ms; on CPU also fwd_bwd_mb (peak MB
    of forward + backward) and n (fewest timed runs, see timing.measure)."""
    *bdnl, dtype = shape
    fwd, fwd_bwd = scan_fns(mamba_inputs(*bdnl, getattr(torch, dtype), device()), scan)
    if device() != "cpu":
        return dict(shape=shape, name=name, fwd=median_ms(fwd, repeats), fwd_bwd=median_ms(fwd_bwd, repeats))
    f, fb = measure(fwd, repeats, budget_s), measure(fwd_bwd, repeats, budget_s)
    return dict(shape=shape, name=name, fwd=f["ms"], fwd_bwd=fb["ms"], fwd_bwd_mb=fb["mb"], n=min(f["n"], fb["n"]))


def gpu_scan_rows(shapes):
    """Time the Triton scan, the torch path and mamba_ssm's kernel (when importable) at each shape."""
    peak = peak_bandwidth()
    scans = {"triton": ours("triton"), "torch": ours("torch")}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_scan

        scans["mamba_ssm"] = lambda **kw: mamba_scan(**kw, delta_softplus=True)
    except ImportError:
        print("mamba_ssm is not importable: no comparison against its CUDA kernel")
    print(f"selective scan, {torch.cuda.get_device_name()}, peak {peak / 1e12 if peak else float('nan'):.2f} TB/s: "
          "allow_neg_eigval (ours), delta_softplus, D and z on; medians of triton.testing.do_bench")
    rows = []
    for shape in shapes:
        for name, scan in scans.items():
            rows.append(time_scan(shape, name, scan))
            gb_per_s = rate(shape, "fwd_bwd", rows[-1]["fwd_bwd"])
            report(rows[-1], rate, "GB/s", f"  {100 * gb_per_s * 1e9 / peak:.1f}% of peak (fwd+bwd)" if peak else "")
    return rows


def compiled_child(shapes):
    """In a child process: time torch.compile of our torch path at each shape, emitting one record per shape.

    Dynamo's caches are reset per shape so every shape gets its own compiled graphs (no silent fallback to eager
    when a recompile limit is hit); a shape whose compile fails emits its error instead of times.
    """
    import torch._dynamo

    for shape in map(tuple, shapes):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        try:
            compiled = torch.compile(ours("torch"), dynamic=False)
            *bdnl, dtype = shape
            fwd, fwd_bwd = scan_fns(mamba_inputs(*bdnl, getattr(torch, dtype), device()), compiled)
            start = time.perf_counter()
            fwd()
            fwd_bwd()
            sync()
            compile_s = time.perf_counter() - start
            breaks = torch._dynamo.utils.counters["graph_break"]  # reason -> count
            emit(shape=shape, fwd=median_ms(fwd), fwd_bwd=median_ms(fwd_bwd), compile_s=compile_s,
                 graph_breaks=sum(breaks.values()),
                 break_reason=str(max(breaks, key=breaks.get)).splitlines()[0][:120] if breaks else "")
        except Exception as err:  # any compile or run failure is a result to show, not a crash
            first_line = (str(err).strip().splitlines() or [""])[0]
            emit(shape=shape, error=f"{type(err).__name__}: {first_line[:200]}")


def compiled_rows(shapes, timeout):
    """torch.compile's rows from a child process stopped after `timeout` seconds; missing shapes get the reason."""
    print(f"torch.compile of the torch path: in a child process (at most {timeout:.0f} s, compiling included)",
          flush=True)
    torch.cuda.empty_cache()
    records, note = run_child(compiled_child, timeout, shapes=shapes)
    rows = rows_from_records(records, "torch.compile")
    for row in rows:
        if row.get("error"):
            print(f"  {label(row['shape']):>30} {'torch.compile':>14}  failed: {row['error']}")
        else:
            why = f" (most: {row['break_reason']})" if row["graph_breaks"] else ""
            report(row, rate, "GB/s", f"  compiled in {row['compile_s']:.0f} s; {row['graph_breaks']} graph breaks"
                   + why)
    done = {row["shape"] for row in rows}
    rows += [dict(shape=s, name="torch.compile", error=note or "no record") for s in map(tuple, shapes)
             if s not in done]
    return rows


def gpu_conv_rows(shapes, scan_rows):
    """torch's conv1d + SiLU as the Mamba layer runs it ([B, T, d] in and out), against the Triton scan."""
    peak = peak_bandwidth()
    scan_ms = {r["shape"]: r for r in scan_rows if r["name"] == "triton"}
    print("\nshort causal depthwise conv (kernel 4) + SiLU, torch conv1d: time, share of conv + Triton scan,\n"
          "GB/s of x and y (+ dy and dx for fwd+bwd)")
    print(f"{'(b, d, n, L, dtype)':>30} {'pass':8} {'conv ms':>8} {'scan ms':>8} {'conv share':>11} "
          f"{'GB/s':>7} {'% peak':>7}")
    for shape in shapes:
        batch, dim, n, L, dtype = shape
        conv = ShortConv(dim, 4, bias=True).to(device(), getattr(torch, dtype))
        x = torch.randn(batch, L, dim, device=device(), dtype=getattr(torch, dtype))
        xg = x.clone().requires_grad_()
        dy = torch.randn_like(x)

        def fwd():
            with torch.no_grad():
                conv(x)

        def fwd_bwd():
            torch.autograd.grad(conv(xg)[0], [xg, *conv.parameters()], dy)

        for key, fn, passes in (("fwd", fwd, 2), ("fwd_bwd", fwd_bwd, 5)):
            t, t_scan = median_ms(fn), scan_ms[shape][key]
            bytes_per_s = passes * x.numel() * x.element_size() / (t * 1e-3)
            pct = f"{100 * bytes_per_s / peak:6.1f}%" if peak else "     ?"
            print(f"{label(shape):>30} {key:8} {t:8.3f} {t_scan:8.3f} {100 * t / (t + t_scan):10.1f}% "
                  f"{bytes_per_s / 1e9:7.0f} {pct}")


def bench_gpu(quick, compile_timeout):
    """Time the scans on the GPU (bf16; fp32 at one shape too unless quick), the conv, print the tables."""
    shapes = [(*GPU_BDN, L, "bfloat16") for L in GPU_LENGTHS]
    extra = [] if quick else [(2, 1536, 16, 2048, "bfloat16"), (*GPU_BDN, 4096, "float32")]
    rows = gpu_scan_rows(shapes + extra)
    gpu_conv_rows(shapes, rows)
    if compile_timeout > 0:
        # L = 2048 first: the length of the recorded figures, reached even under a short limit.
        rows += compiled_rows(sorted(shapes, key=lambda s: s[3] != 2048) + extra, compile_timeout)
    names = ["triton", "torch", "torch.compile"] + ["mamba_ssm"] * any(r["name"] == "mamba_ssm" for r in rows)
    print_table(rows, "(b, d, n, L, dtype)", names, rate, "GB/s")
    return rows


def unbind_token_loop(u, delta, A, B, C, D, z, delta_bias, allow_neg_eigval, delta_softplus=True):
    """The scan as an efficient torch token loop: one full-size set-up, then per-step slices from unbind."""
    delta = delta + delta_bias[:, None]
    delta = F.softplus(delta) if delta_softplus else delta
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


def bench_cpu(lengths, repeats=7, budget_s=60.0):
    """Time the torch path and the unbind token loop in fp32 on CPU for each L in lengths; returns the rows
    (with the peak memory of forward + backward; budget_s caps the runs of slow calls)."""
    print(f"selective scan, CPU ({torch.get_num_threads()} threads): fp32, (b, d, n) = {CPU_BDN}, allow_neg_eigval, "
          f"median of {repeats}")
    rows = []
    for L in lengths:
        shape = (*CPU_BDN, L, "float32")
        inputs = mamba_inputs(*CPU_BDN, L, torch.float32, "cpu")
        with torch.no_grad():  # the baseline must compute the same function
            y, ref = unbind_token_loop(**inputs, **FLAGS), ours("torch")(**inputs)
            assert (y - ref).norm() <= 1e-5 * ref.norm(), "the unbind loop disagrees with the torch path"
        loop = lambda **kw: unbind_token_loop(**kw, **FLAGS)  # noqa: E731
        for name, scan in (("ours torch", ours("torch")), ("unbind loop", loop)):
            rows.append(time_scan(shape, name, scan, repeats, budget_s))
            report(rows[-1], rate, "GB/s")
    print_table(rows, "(b, d, n, L, dtype)", ["ours torch", "unbind loop"], rate, "GB/s")
    return rows
