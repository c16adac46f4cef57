"""Delta-rule benchmark: our Triton kernels against fla's chunk_delta_rule and our torch path, in the same run.

On CUDA: forward and forward+backward time of chunk_delta_rule with backend="triton" (ours), fla's
`fla.ops.delta_rule.chunk_delta_rule` (when importable) and backend="torch" (ours), bf16 inputs, B=4, H=8,
K=V=128 (and 64), with the q/k l2norm in the op as our DeltaNet layer calls it. Each time is the median of
--repeats timed runs after two warm-up calls (compilation, autotuning), every run bracketed by
torch.cuda.synchronize and long enough (repeated inner calls) to dwarf timer overhead. The issue's goal: forward
plus backward at least as fast as fla's at T = 4096 (aim for 1.2x).

On CPU (no CUDA): fp32 forward+backward of our torch path against fla's plain-torch references
(`delta_rule_chunkwise`, chunk 64, and the token loop `delta_rule_recurrence`) at B=2, H=4, K=V=64.

    python bench/delta_rule.py [--quick] [--repeats 7] [--no-l2norm]
"""
import argparse
import os
import statistics
import sys
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


def gpu_ops(l2norm):
    """name -> op(q, k, v, beta) -> o for every provider importable here; ours first, so a timeout keeps them."""
    ops = {"triton": lambda *x: chunk_delta_rule(*x, use_qk_l2norm_in_kernel=l2norm, backend="triton")[0],
           "torch": lambda *x: chunk_delta_rule(*x, use_qk_l2norm_in_kernel=l2norm, backend="torch")[0]}
    try:
        from fla.ops.delta_rule import chunk_delta_rule as fla_chunk_delta_rule
        ops["fla"] = lambda *x: fla_chunk_delta_rule(*x, use_qk_l2norm_in_kernel=l2norm)[0]
    except ImportError as err:
        print(f"fla not importable ({err}); comparing with our torch path only")
    return ops


def bench_gpu(args):
    B, H = 4, 8
    Ts = (4096,) if args.quick else (2048, 4096, 8192)
    dims = (128,) if args.quick else (128, 64)
    ops = gpu_ops(not args.no_l2norm)
    print(f"{torch.cuda.get_device_name()}: bf16, B={B}, H={H}, qk l2norm in op: {not args.no_l2norm}, "
          f"median of {args.repeats}")
    rows = []
    for D in dims:
        for T in Ts:
            inputs = make_inputs(B, T, H, D, torch.bfloat16, "cuda")
            row = {"T": T, "D": D}
            for name, op in ops.items():
                fwd, fwd_bwd = fwd_and_fwd_bwd(op, inputs)
                row[name] = (median_seconds(fwd, args.repeats) * 1e3, median_seconds(fwd_bwd, args.repeats) * 1e3)
                print(f"  T={T:5d} K=V={D:3d} {name:6s} fwd {row[name][0]:8.3f} ms  fwd+bwd {row[name][1]:8.3f} ms",
                      flush=True)
            rows.append(row)
    names = list(ops)
    print("\nfwd+bwd ms (fwd ms); ratio = their time / ours (> 1: ours faster)")
    print(f"{'T':>6} {'K=V':>4} " + " ".join(f"{n:>18}" for n in names)
          + "".join(f" {n + '/ours':>11}" for n in names if n != "triton"))
    for row in rows:
        cells = " ".join(f"{row[n][1]:9.3f} ({row[n][0]:6.3f})" for n in names)
        ratios = "".join(f" {row[n][1] / row['triton'][1]:11.2f}" for n in names if n != "triton")
        print(f"{row['T']:>6} {row['D']:>4} {cells}{ratios}")
    if "fla" in ops:
        for row in rows:
            if row["T"] == 4096:
                ratio = row["fla"][1] / row["triton"][1]
                verdict = "met" if ratio >= 1.2 else ("at least fla's speed" if ratio >= 1.0 else "NOT met")
                print(f"goal at T=4096, K=V={row['D']}: fla/ours fwd+bwd = {ratio:.2f} (aim 1.2): {verdict}")


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
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats must be at least 5, got {args.repeats}")
    import triton
    print(f"torch {torch.__version__}, triton {triton.__version__}")
    if torch.cuda.is_available():
        bench_gpu(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
