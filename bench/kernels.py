"""Kernel benchmarks (issue 4): the delta rule against fla's chunk_delta_rule, the selective scan against its torch
path and torch.compile of it; forward and forward + backward, with achieved TFLOP/s or GB/s and time ratios.

GPU (bf16, medians of triton.testing.do_bench): the delta rule at B=4, H=8, T in {1024, 2048, 4096, 8192},
K=V in {128, 64} (bench/delta_rule.py); the scan at (b, d, n) = (2, 2048, 16), L in the same lengths, and the
short convolution beside it (bench/selective_scan.py). Peers that autotune or compile for minutes (fla,
torch.compile) run in child processes with time limits; what they did not reach shows as "-" with the reason.
--quick gives them shorter limits and skips the extra scan shapes, to fit bench/gpu_check.sh's 300 s.
CPU: the torch paths only (with fla's plain-torch delta-rule references and an unbind token loop as peers), fp32.

    python bench/kernels.py [--quick] [--only delta_rule|selective_scan] [--repeats 7] [--no-l2norm]
                            [--fla-timeout S] [--compile-timeout S]
"""
import argparse
import os
import signal
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import delta_rule, selective_scan  # noqa: E402

BENCHMARKS = ("delta_rule", "selective_scan")
CPU_NOTE = ("no CUDA device: the Triton kernels were NOT timed (they need a GPU; CI checks them under the "
            "interpreter); timing the torch paths only, fp32")


def cpu_benchmarks(lengths, repeats=7, only=BENCHMARKS):
    """The CPU path: each benchmark in `only` at each sequence length; returns {benchmark: rows}."""
    print(CPU_NOTE, flush=True)
    results = {}
    for name in only:
        print()
        results[name] = {"delta_rule": delta_rule, "selective_scan": selective_scan}[name].bench_cpu(lengths, repeats)
    return results


def gpu_benchmarks(args):
    """The GPU path: ours against the peers, bf16; returns {benchmark: rows}."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("TRITON_INTERPRET=1 is set: unset it to time the compiled kernels on the GPU")
    results = {}
    if "delta_rule" in args.only:
        results["delta_rule"] = delta_rule.bench_gpu(args.fla_timeout, l2norm=not args.no_l2norm)
    if "selective_scan" in args.only:
        print()
        results["selective_scan"] = selective_scan.bench_gpu(args.quick, args.compile_timeout)
    return results


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true",
                        help="GPU: shorter peer limits, no extra scan shapes; CPU: T in {256, 1024}")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--repeats", type=int, default=7, help="CPU: timed runs per measurement (median; >= 3)")
    parser.add_argument("--no-l2norm", action="store_true",
                        help="GPU delta rule: feed unit-norm q, k without the in-op l2norm")
    parser.add_argument("--fla-timeout", type=float, default=None,
                        help="GPU: seconds for all of fla's timings, autotuning included (default 130 with --quick, "
                             "else 300; 0 skips fla)")
    parser.add_argument("--compile-timeout", type=float, default=None,
                        help="GPU: seconds for all torch.compile timings, compiling included (default 60 with "
                             "--quick, else 300; 0 skips it)")
    args = parser.parse_args()
    # A SIGTERM (an outer `timeout`) becomes an exit, so run_child stops a peer's child process on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3 for a meaningful median, got {args.repeats}")
    args.only = args.only or list(BENCHMARKS)
    args.fla_timeout = (130 if args.quick else 300) if args.fla_timeout is None else args.fla_timeout
    args.compile_timeout = (60 if args.quick else 300) if args.compile_timeout is None else args.compile_timeout
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}")
    start = time.perf_counter()
    if torch.cuda.is_available():
        gpu_benchmarks(args)
    else:
        cpu_benchmarks([256, 1024] if args.quick else [256, 1024, 2048], args.repeats, args.only)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
