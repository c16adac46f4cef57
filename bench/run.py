"""Every CPU benchmark of issue 7 in one run: ours against peers side by side, the targets, a results JSON, plots.

Cases (fp32, torch.set_num_threads(--threads); medians of --repeats runs after warm-up; peak memory = growth of
the resident set during one forward + backward, see bench/timing.peak_growth):
  delta_rule      our torch path vs fla's delta_rule_recurrence and delta_rule_chunkwise (bench/delta_rule.py)
  selective_scan  our torch scan vs an unbind token loop (bench/selective_scan.py); our Mamba layer vs
                  transformers' MambaMixer (bench/lm.py)
  lm              ~10M-parameter LMs: our Mamba vs transformers' MambaForCausalLM, our DeltaNet vs fla's (bench/lm.py)
  training        configs/default.yaml tokens/s and the data loader's share of a step (bench/training.py)
  memory          one layer's peak memory against T for every mixer (bench/memory.py)
Prints each case's table in markdown (as docs/benchmarks.md shows them) and the targets, writes
docs/bench_results.json and the plots docs/bench_cpu_time.png and docs/bench_memory.png.

    python bench/run.py [--quick] [--only CASE ...] [--repeats 5] [--threads 2] [--out docs]
"""
import argparse
import datetime
import json
import os
import platform
import signal
import sys
import time

if __name__ == "__main__":  # read by OpenMP when torch loads; children inherit it
    # Spinning threads (the default) wait out a preempted sibling at every parallel region when other jobs share
    # the cores: a 10M-parameter LM's fwd+bwd at T=512 took 65 s with 2 spinning threads on 2 busy cores, 1.07 s
    # with passive waiting, 0.9 s on one thread.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import delta_rule, lm, memory, plots, selective_scan, training  # noqa: E402
from bench.timing import REPO  # noqa: E402

CASES = ("delta_rule", "selective_scan", "lm", "training", "memory")
FULL = dict(kernel_T=[256, 1024, 2048, 4096], lm_T=[512, 2048], memory_T=[512, 1024, 2048, 4096, 8192],
            train_steps=40)
QUICK = dict(kernel_T=[256, 1024], lm_T=[512], memory_T=[512, 1024, 2048], train_steps=20)
# (case, ours, peer, T, at least): a peer's fwd+bwd time over ours must reach `at least` at T
TARGETS = [("delta_rule", "ours torch", "fla recurrence", 2048, 10.0),
           ("delta_rule", "ours torch", "fla chunkwise", 2048, 1.0),
           ("selective_scan", "ours torch", "unbind loop", 2048, 2.0),
           ("lm", "ours mamba LM", "transformers MambaForCausalLM", 2048, 10.0)]
MAX_LOADER_SHARE = 0.05
MAX_MEMORY_EXPONENT = 1.2  # log2 growth of peak memory over a doubling of T; linear ~1, quadratic ~2
# the tables: (case, title, ours, peers, passes)
TABLES = [("delta_rule", "Delta rule, B=2, H=4, K=V=64", "ours torch", ["fla chunkwise", "fla recurrence"],
           ("fwd", "fwd_bwd")),
          ("selective_scan", "Signed selective scan, B=2, D=256, N=16", "ours torch", ["unbind loop"],
           ("fwd", "fwd_bwd")),
          ("selective_scan", "Mamba layer (d_inner 256, N=16, B=2), same weights", "ours Mamba layer",
           ["transformers MambaMixer"], ("fwd_bwd",)),
          ("lm", "Mamba LM (hidden 384, 9 layers, vocab 4096, B=1), same weights", "ours mamba LM",
           ["transformers MambaForCausalLM"], ("fwd_bwd",)),
          ("lm", "DeltaNet LM (hidden 384, 5 layers, 6 heads, vocab 4096, B=1)", "ours deltanet LM",
           ["fla DeltaNetForCausalLM"], ("fwd_bwd",))]
PASS_NAMES = {"fwd": "forward", "fwd_bwd": "forward + backward"}


def with_T(rows, at):
    """Rows with "T" set from their shape (where the sequence length sits differs per benchmark)."""
    return [dict(r, T=r["shape"][at]) for r in rows]


def run_case(case, sizes, repeats=5, budget_s=60.0, peer_timeout=300.0):
    """One case's rows, every row with T (sequence length) and name."""
    if case == "delta_rule":
        return with_T(delta_rule.bench_cpu(sizes["kernel_T"], repeats, budget_s), 0)
    if case == "selective_scan":
        return (with_T(selective_scan.bench_cpu(sizes["kernel_T"], repeats, budget_s), 3)
                + with_T(lm.layer_rows(sizes["kernel_T"], repeats, budget_s, peer_timeout), 0))
    if case == "lm":
        return with_T(lm.lm_rows(sizes["lm_T"], repeats, budget_s, peer_timeout, sizes.get("lm_mixers", lm.LMS)), 0)
    if case == "training":
        return training.training_rows(sizes.get("train_overrides", ()), steps=sizes["train_steps"])
    if case == "memory":
        return with_T(memory.memory_rows(sizes["memory_T"], min(repeats, 3), budget_s), 0)
    raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")


def ratio(rows, ours, peer, T, key="fwd_bwd"):
    """(peer's time / ours, True if a lower bound because the peer was stopped) at T, or None if not measured."""
    by = {r["name"]: r for r in rows if r.get("T") == T}
    if ours not in by or peer not in by or not by[ours].get(key):
        return None
    if by[peer].get(key):
        return by[peer][key] / by[ours][key], False
    if key == "fwd_bwd" and by[peer].get("over_ms"):
        return by[peer]["over_ms"] / by[ours][key], True
    return None


def _cell(row, key, ours_row, repeats):
    """A peer's (or our) time cell: ms, the ratio to ours, a marker for fewer runs; '> X' for a stopped peer."""
    if row is None:
        return "-"
    if row.get(key):
        text = f"{row[key]:.1f}" if row[key] >= 10 else f"{row[key]:.2f}"
        if ours_row is not None and row is not ours_row and ours_row.get(key):
            text += f" ({row[key] / ours_row[key]:.1f}x)"
        return text + (f" [n={row['n']}]" if row.get("n") and row["n"] < repeats else "")
    if key == "fwd_bwd" and row.get("over_ms") and ours_row is not None and ours_row.get(key):
        return f"> {row['over_ms']:.0f} (> {row['over_ms'] / ours_row[key]:.0f}x)"
    return "-"


def markdown_table(rows, ours, peers, passes, repeats):
    """Markdown: per T and pass, ours and each peer in ms (peer/ours in brackets), then peak MB of fwd+bwd."""
    names = [ours, *peers]
    by = {(r["T"], r["name"]): r for r in rows}
    head = ["T", "pass", *(f"{n} ms" for n in names), *(f"{n} MB" for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for T in sorted({r["T"] for r in rows if r["name"] in names}):
        for key in passes:
            cells = [_cell(by.get((T, n)), key, by.get((T, ours)), repeats) for n in names]
            mem = [f"{by[(T, n)]['fwd_bwd_mb']:.0f}" if key == "fwd_bwd" and by.get((T, n), {}).get("fwd_bwd_mb")
                   is not None else "" for n in names]
            lines.append("| " + " | ".join([str(T), PASS_NAMES[key], *cells, *mem]) + " |")
    notes = {(r["name"], r["error"]) for r in rows if r["name"] in names and r.get("error") and not r.get("over_ms")}
    lines += [f"\n- {name}: - because {error}" for name, error in sorted(notes)]
    return "\n".join(lines)


def training_table(rows):
    head = ["config", "batch x seq", "trainer tokens/s", "step alone ms", "step tokens/s", "loader ms/batch",
            "loader share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['name']} ({r['mixer']}) | {r['shape'][0]} x {r['shape'][1]} | "
                     f"{r['trainer_tokens_per_s']:,.0f} | {r['step_ms']:.0f} | {r['step_tokens_per_s']:,.0f} | "
                     f"{r['load_ms']:.2f} | {r['loader_share']:.2%} |")
    return "\n".join(lines)


def memory_table(rows):
    names = list(dict.fromkeys(r["name"] for r in rows))
    Ts = sorted({r["T"] for r in rows})
    head = ["mixer", *(f"T={T} MB (ms)" for T in Ts), "growth exponent"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["T"], r["name"]): r for r in rows}
    for name in names:
        cells = [f"{by[(T, name)]['fwd_bwd_mb']:.0f} ({by[(T, name)]['fwd_bwd']:.0f})"
                 if by.get((T, name), {}).get("fwd_bwd_mb") is not None else "-" for T in Ts]
        exponent = memory.growth_exponent([r for r in rows if r["name"] == name])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if exponent is None else f'{exponent:.2f}'} |")
    return "\n".join(lines)


def verdicts(results):
    """[(what, value text, met: True/False/None)] for every target whose case ran."""
    out = []
    for case, ours, peer, T, least in TARGETS:
        if case not in results:
            continue
        got = ratio(results[case], ours, peer, T)
        what = f"{case}: {peer} / {ours}, fwd+bwd at T={T} >= {least:g}x"
        if got is None:
            out.append((what, "not measured", None))
        else:
            value, bound = got
            out.append((what, f"{'> ' if bound else ''}{value:.1f}x", value >= least))
    if "training" in results:
        share = results["training"][0]["loader_share"]
        out.append((f"training: data loader share of a step < {MAX_LOADER_SHARE:.0%}", f"{share:.2%}",
                    share < MAX_LOADER_SHARE))
    if "memory" in results:
        for name in dict.fromkeys(r["name"] for r in results["memory"]):
            if name.startswith("attention"):
                continue  # the contrast, not a target
            exponent = memory.growth_exponent([r for r in results["memory"] if r["name"] == name])
            out.append((f"memory: {name} peak grows linearly in T (exponent <= {MAX_MEMORY_EXPONENT})",
                        "-" if exponent is None else f"T^{exponent:.2f}",
                        None if exponent is None else exponent <= MAX_MEMORY_EXPONENT))
    return out


def report(results, repeats):
    """The markdown tables and the targets, as one string."""
    parts = []
    for case, title, ours, peers, passes in TABLES:
        if case in results and any(r["name"] == ours for r in results[case]):
            parts.append(f"### {title}\n\n" + markdown_table(results[case], ours, peers, passes, repeats))
    if "training" in results:
        parts.append("### Training, configs/default.yaml\n\n" + training_table(results["training"]))
    if "memory" in results:
        parts.append("### Peak memory of one layer's forward + backward against T (B=1, hidden 256)\n\n"
                     + memory_table(results["memory"]))
    lines = [f"| {what} | {value} | {'met' if met else 'NOT met' if met is False else '-'} |"
             for what, value, met in verdicts(results)]
    parts.append("### Targets\n\n| target | measured | |\n|---|---|---|\n" + "\n".join(lines))
    return "\n\n".join(parts)


def machine():
    """What the numbers were measured on."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                date=datetime.date.today().isoformat())


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="shorter lengths (kernels T<=1024, LM T=512)")
    parser.add_argument("--only", choices=CASES, action="append", help="run only this case (repeatable)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median; >= 5 for issue 7)")
    parser.add_argument("--budget", type=float, default=90.0,
                        help="seconds one measurement may take; slower calls get fewer runs (shown as [n=..])")
    parser.add_argument("--peer-timeout", type=float, default=300.0,
                        help="seconds for all of one slow peer's lengths (transformers' layer and LM, fla's LM)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (issue 7: 2)")
    parser.add_argument("--out", default=os.path.join(REPO, "docs"),
                        help="where bench_results.json and the plots go")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3 for a meaningful median, got {args.repeats}")
    # A SIGTERM (an outer `timeout`) becomes an exit, so run_child stops a peer's child process on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    meta = dict(machine(), command="python bench/run.py " + " ".join(sys.argv[1:]), load_before=os.getloadavg())
    print(meta, flush=True)
    results, start = {}, time.perf_counter()
    for case in args.only or CASES:
        print(f"\n=== {case}", flush=True)
        results[case] = run_case(case, sizes, args.repeats, args.budget, args.peer_timeout)
    meta.update(load_after=os.getloadavg(), wall_s=round(time.perf_counter() - start))
    text = report(results, args.repeats)
    print("\n" + text + f"\n\n{meta}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_results.json"), "w") as f:
        json.dump(dict(meta=meta, results=results, report=text), f, indent=1, default=str)
    for path in plots.plot_all(results, args.out):
        print("wrote", path)


if __name__ == "__main__":
    main()
