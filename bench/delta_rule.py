"""Delta-rule benchmark: our Triton kernels against fla's chunk_delta_rule and our torch path, in the same run.

On CUDA: forward and forward+backward time of chunk_delta_rule with backend="triton" and backend="torch" (ours),
then fla's `fla.ops.delta_rule.chunk_delta_rule` (when installed), bf16 inputs, B=4, H=8, K=V=128 (and 64), with
the q/k l2norm in the op as our DeltaNet layer calls it. Each time is the median of --repeats timed runs after two
warm-up calls (compilation, autotuning), every run bracketed by torch.cuda.synchronize and long enough (repeated
inner calls) to dwarf timer overhead. Ours are printed as they are measured. fla's first call at each head dim
autotunes (it compiles and times every config of each of its kernels: minutes on a fresh machine), so fla runs
last, in a child process stopped after --fla-timeout seconds, with --fla-repeats (fewer) timed runs; shapes it did
not reach show as "-". The issue's goal: forward plus backward at least as fast as fla's at T = 4096 (aim 1.2x).

On CPU (no CUDA): fp32 forward+backward of our torch path against fla's plain-torch references
(`delta_rule_chunkwise`, chunk 64, and the token loop `delta_rule_recurrence`) at B=2, H=4, K=V=64.

    python bench/delta_rule.py [--quick] [--repeats 7] [--no-l2norm] [--fla-timeout 300] [--fla-repeats 3]
"""
import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.delta_rule import chunk_delta_rule  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn, repeats, min_run_s=0.02):
    """Median wall time of one call: warm up twice, then time `repeats` runs of enough calls to last min_run_s."""
    fn()
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    inner = max(1, int(min_run_s / max(time.perf_counter() - start, 1e-6)))
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def make_inputs(B, T, H, D, dtype, device, seed=0):
    """q, k, v ~ N(0, 1) (k unit-norm), beta in (0, 2) as with allow_neg_eigval, all requiring grad."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g, device=device) for _ in range(3))
    beta = 2 * torch.rand(B, T, H, generator=g, device=device)
    return [x.to(dtype).requires_grad_() for x in (q, F.normalize(k, dim=-1), v, beta)]


def fwd_and_fwd_bwd(op, inputs):
    """Closures: forward only (no graph), and forward plus backward of a fixed cotangent of o."""
    do = torch.randn_like(inputs[2])

    def fwd():
        with torch.no_grad():
            op(*inputs)

    def fwd_bwd():
        o = op(*inputs)
        torch.autograd.grad(o, inputs, do)

    return fwd, fwd_bwd


GPU_B, GPU_H = 4, 8


def gpu_shapes(args):
    """(T, K=V) pairs timed on the GPU."""
    Ts = (4096,) if args.quick else (2048, 4096, 8192)
    dims = (128,) if args.quick else (128, 64)
    return [(T, D) for D in dims for T in Ts]


def gpu_ops(l2norm):
    """name -> op(q, k, v, beta) -> o for our two backends."""
    return {name: (lambda *x, backend=name: chunk_delta_rule(*x, use_qk_l2norm_in_kernel=l2norm,
                                                              backend=backend)[0])
            for name in ("triton", "torch")}


def time_op(op, T, D, repeats):
    """(fwd ms, fwd+bwd ms) of op on the benchmark's bf16 inputs at (T, K=V=D)."""
    fwd, fwd_bwd = fwd_and_fwd_bwd(op, make_inputs(GPU_B, T, GPU_H, D, torch.bfloat16, "cuda"))
    return median_seconds(fwd, repeats) * 1e3, median_seconds(fwd_bwd, repeats) * 1e3


def fla_child(args):
    """In a child process: time fla's chunk_delta_rule at every shape, one 'FLA {json}' line per shape."""
    from fla.ops.delta_rule import chunk_delta_rule as fla_chunk_delta_rule

    def op(*x):
        return fla_chunk_delta_rule(*x, use_qk_l2norm_in_kernel=not args.no_l2norm)[0]

    for T, D in gpu_shapes(args):
        fwd, fwd_bwd = time_op(op, T, D, args.fla_repeats)
        print("FLA " + json.dumps({"T": T, "D": D, "fwd": fwd, "fwd_bwd": fwd_bwd}), flush=True)


def fla_results(args):
    """{(T, D): (fwd ms, fwd+bwd ms)} from fla in a child process stopped after --fla-timeout seconds.

    fla's first call at each head dim autotunes: it compiles and times every config of each of its kernels, which
    takes minutes on a fresh machine (Triton caches the choice on disk, so a rerun is quick). Running it in a child
    keeps our numbers, printed before, safe from that wait, and the timeout bounds it."""
    if importlib.util.find_spec("fla") is None:
        print("fla not installed; no peer column")
        return {}
    print(f"fla: timing in a child process (at most {args.fla_timeout:.0f} s; its first call at each head dim "
          f"autotunes), median of {args.fla_repeats}", flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--fla-child", f"--fla-repeats={args.fla_repeats}"]
    cmd += ["--quick"] * args.quick + ["--no-l2norm"] * args.no_l2norm
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            child.wait(timeout=args.fla_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.seek(0)
        lines = log.read().splitlines()
    found = {}
    for line in lines:
        if line.startswith("FLA "):
            r = json.loads(line[4:])
            found[r["T"], r["D"]] = (r["fwd"], r["fwd_bwd"])
            print(f"  T={r['T']:5d} K=V={r['D']:3d} fla    fwd {r['fwd']:8.3f} ms  fwd+bwd {r['fwd_bwd']:8.3f} ms")
    missing = [shape for shape in gpu_shapes(args) if shape not in found]
    if missing:
        why = (f"stopped after {args.fla_timeout:.0f} s (autotuning)" if child.returncode == -signal.SIGKILL
               else f"exited with code {child.returncode}")
        tail = "\n    ".join(line for line in lines[-8:] if not line.startswith("FLA "))
        print(f"  fla: no result for (T, K=V) {missing}: {why}" + (f"; its last output:\n    {tail}" if tail else ""))
    return found


def bench_gpu(args):
    print(f"{torch.cuda.get_device_name()}: bf16, B={GPU_B}, H={GPU_H}, qk l2norm in op: {not args.no_l2norm}, "
          f"median of {args.repeats}")
    rows = {}
    for T, D in gpu_shapes(args):
        for name, op in gpu_ops(not args.no_l2norm).items():
            rows.setdefault((T, D), {})[name] = time_op(op, T, D, args.repeats)
            fwd, fwd_bwd = rows[T, D][name]
            print(f"  T={T:5d} K=V={D:3d} {name:6s} fwd {fwd:8.3f} ms  fwd+bwd {fwd_bwd:8.3f} ms", flush=True)
    if args.fla_timeout > 0:
        for shape, times in fla_results(args).items():
            rows[shape]["fla"] = times
    names = ["triton", "torch", "fla"]
    print("\nfwd+bwd ms (fwd ms); ratio = their time / ours (> 1: ours faster); - where not measured")
    print(f"{'T':>6} {'K=V':>4} " + " ".join(f"{n:>18}" for n in names)
          + "".join(f" {n + '/ours':>11}" for n in names[1:]))
    for (T, D), row in rows.items():
        cells = " ".join(f"{row[n][1]:9.3f} ({row[n][0]:6.3f})" if n in row else f"{'-':>18}" for n in names)
        ratios = "".join(f" {row[n][1] / row['triton'][1]:11.2f}" if n in row else f"{'-':>11}" for n in names[1:])
        print(f"{T:>6} {D:>4} {cells}{ratios}")
    for (T, D), row in rows.items():
        if T == 4096 and "fla" in row:
            ratio = row["fla"][1] / row["triton"][1]
            verdict = "met" if ratio >= 1.2 else ("at least fla's speed" if ratio >= 1.0 else "NOT met")
            print(f"goal at T=4096, K=V={D}: fla/ours fwd+bwd = {ratio:.2f} (aim 1.2): {verdict}")


def bench_cpu(args):
    B, H, D = 2, 4, 64
    Ts = (256, 1024) if args.quick else (256, 1024, 2048)
    print(f"CPU ({torch.get_num_threads()} threads), no CUDA: fp32 fwd+bwd, B={B}, H={H}, K=V={D}, "
          f"median of {args.repeats}; the Triton kernels need a GPU (CI runs them under the interpreter)")
    ops = {"ours torch": lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta, backend="torch")[0]}
    try:
        from fla.ops.delta_rule.naive import delta_rule_chunkwise, delta_rule_recurrence

        def fla_layout(fn):
            """fla's references take [B, H, T, *] and return [B, H, T, V]."""
            def op(q, k, v, beta):
                return fn(*(x.transpose(1, 2) for x in (q, k, v, beta)))[0].transpose(1, 2)
            return op

        ops["fla chunkwise"] = fla_layout(lambda q, k, v, beta: delta_rule_chunkwise(q, k, v, beta, chunk_size=64))
        ops["fla recurrence"] = fla_layout(delta_rule_recurrence)
    except ImportError as err:
        print(f"fla not importable ({err}); timing our torch path only")
    print(f"{'T':>6} " + " ".join(f"{n:>16}" for n in ops) + "".join(f" {n + '/ours':>20}" for n in list(ops)[1:]))
    for T in Ts:
        inputs = make_inputs(B, T, H, D, torch.float32, "cpu")
        ms = {name: median_seconds(fwd_and_fwd_bwd(op, inputs)[1], args.repeats) * 1e3 for name, op in ops.items()}
        ratios = "".join(f" {ms[n] / ms['ours torch']:20.2f}" for n in list(ops)[1:])
        print(f"{T:>6} " + " ".join(f"{ms[n]:13.2f} ms" for n in ops) + ratios, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (T=4096, K=V=128 on GPU)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median; >= 5)")
    parser.add_argument("--no-l2norm", action="store_true", help="feed unit-norm q, k without the in-op l2norm")
    parser.add_argument("--fla-timeout", type=float, default=300,
                        help="GPU: seconds allowed for all of fla's timings, autotuning included (0 skips fla)")
    parser.add_argument("--fla-repeats", type=int, default=3, help="GPU: timed runs per fla measurement (median)")
    parser.add_argument("--fla-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fla_child:
        return fla_child(args)
    if args.repeats < 5:
        parser.error(f"--repeats must be at least 5, got {args.repeats}")
    if args.fla_repeats < 1:
        parser.error(f"--fla-repeats must be at least 1, got {args.fla_repeats}")
    import triton
    print(f"torch {torch.__version__}, triton {triton.__version__}")
    if torch.cuda.is_available():
        bench_gpu(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
