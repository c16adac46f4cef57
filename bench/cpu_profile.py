"""Where our CPU time goes (issue 7: profile before optimising): torch.profiler's top operators for the delta rule
and the signed scan (forward + backward at T=2048, the benchmark shapes) and for one training step of
configs/default.yaml; then the two tuning knobs tried, each timed in the same run: the chunk size of both torch
paths, and torch.compile of them (compile time reported apart).

    python bench/cpu_profile.py [--threads 2] [--rows 12] [--no-compile]
"""
import argparse
import os
import sys
import time
from unittest import mock

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench/run.py: spinning threads collapse on shared cores

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import delta_rule, selective_scan  # noqa: E402
from bench.data_loader import CONFIG  # noqa: E402
from bench.timing import measure  # noqa: E402
from kernels.delta_rule import chunk_delta_rule  # noqa: E402
from kernels.selective_scan import scan as scan_module  # noqa: E402
from model import build_model  # noqa: E402
from trainer.config import load_config  # noqa: E402

T = 2048


def delta_rule_step(chunk_size=64, compiled=False):
    """fwd+bwd closure of our torch delta rule at the benchmark shape (B=2, H=4, K=V=64)."""
    inputs = delta_rule.make_inputs(delta_rule.CPU_B, T, delta_rule.CPU_H, delta_rule.CPU_D, torch.float32, "cpu")
    do = torch.randn_like(inputs[2])

    def op(*x):
        return chunk_delta_rule(*x, chunk_size=chunk_size, backend="torch")[0]

    op = torch.compile(op) if compiled else op
    return lambda: torch.autograd.grad(op(*inputs), inputs, do)


def scan_step(compiled=False):
    """fwd+bwd closure of our torch scan at the benchmark shape ((b, d, n) = (2, 256, 16), negative decays)."""
    scan = selective_scan.ours("torch")
    scan = torch.compile(scan) if compiled else scan
    _, fwd_bwd = selective_scan.scan_fns(selective_scan.mamba_inputs(*selective_scan.CPU_BDN, T, torch.float32, "cpu"),
                                         scan)
    return fwd_bwd


def training_step():
    """One AdamW step of configs/default.yaml's model on a random batch."""
    cfg = load_config(CONFIG)
    model = build_model(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.train.seq_len + 1))

    def step():
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def profile_table(name, fn, rows):
    """Run fn twice to warm up, profile three calls, print the top operators by self CPU time."""
    fn()
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    print(f"\n#### {name} (3 calls)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def tuning(compile_too):
    """Time the chunk sizes of both torch paths and, if asked, torch.compile of each (compile time apart)."""
    print("\n#### chunk size (fwd+bwd ms at T=2048, median of 5)\n")
    for C in (32, 64, 128):
        print(f"delta rule chunk {C:>3}: {measure(delta_rule_step(C))['ms']:8.1f}")
    for C in (16, 32, 64):
        with mock.patch.object(scan_module, "CHUNK_SIZE", C):
            print(f"scan chunk       {C:>3}: {measure(scan_step())['ms']:8.1f}")
    if not compile_too:
        return
    print("\n#### torch.compile (fwd+bwd ms at T=2048, median of 5; compile = first call)\n")
    for name, make in (("delta rule", delta_rule_step), ("scan", scan_step)):
        eager = measure(make())["ms"]
        fn = make(compiled=True)
        start = time.perf_counter()
        try:
            fn()
        except Exception as err:  # a compile failure is a result to show
            print(f"{name}: eager {eager:.1f}; compile failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        compile_s = time.perf_counter() - start
        print(f"{name}: eager {eager:.1f}, compiled {measure(fn)['ms']:.1f} (compile {compile_s:.0f} s)")


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=12, help="operators per table")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile timings (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()}")
    profile_table("delta rule fwd+bwd, B=2, H=4, K=V=64, T=2048", delta_rule_step(), args.rows)
    profile_table("signed scan fwd+bwd, (b, d, n) = (2, 256, 16), L=2048", scan_step(), args.rows)
    profile_table("training step, configs/default.yaml (batch 8 x 256)", training_step(), args.rows)
    tuning(not args.no_compile)


if __name__ == "__main__":
    main()
