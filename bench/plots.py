"""Plots of bench/run.py's results: fwd+bwd time against T for every case, and peak memory against T per mixer."""
import os

PANELS = [  # (case, title, names in the order plotted)
    ("delta_rule", "delta rule (B=2, H=4, K=V=64)", ["ours torch", "fla chunkwise", "fla recurrence"]),
    ("selective_scan", "signed scan / Mamba layer (B=2, D=256)",
     ["ours torch", "unbind loop", "ours Mamba layer", "transformers MambaMixer"]),
    ("lm", "~10M LM (B=1)", ["ours mamba LM", "transformers MambaForCausalLM", "ours deltanet LM"]),
]


def _series(rows, name, key):
    """(T, value) of a name's measured rows, and (T, lower bound) of its stopped ones."""
    mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["T"])
    return ([(r["T"], r[key]) for r in mine if r.get(key)],
            [(r["T"], r["over_ms"]) for r in mine if key == "fwd_bwd" and r.get("over_ms")])


def _line(ax, rows, name, key, scale=1.0):
    measured, bounds = _series(rows, name, key)
    if not measured and not bounds:
        return
    line, = ax.plot([T for T, _ in measured], [v * scale for _, v in measured], "o-", label=name, ms=4)
    if bounds:  # a stopped peer: its time is at least this
        ax.plot([T for T, _ in bounds], [v * scale for _, v in bounds], "^", color=line.get_color(), ms=7,
                mfc="none", label=f"{name} (stopped: lower bound)")


def _axes(ax, rows, **labels):
    """Log-log axes with the measured lengths as plain tick labels."""
    Ts = sorted({r["T"] for r in rows})
    ax.set(xscale="log", yscale="log", **labels)
    ax.set_xticks(Ts, [str(T) for T in Ts], minor=False)
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")


def plot_all(results, out_dir):
    """Write docs/bench_cpu_time.png and docs/bench_memory.png for the cases present; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    panels = [p for p in PANELS if p[0] in results]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, (case, title, names) in zip(axes[0], panels):
            for name in names:
                _line(ax, results[case], name, "fwd_bwd", 1e-3)
            _axes(ax, results[case], xlabel="T (tokens)", ylabel="fwd+bwd seconds", title=title)
        paths.append(_save(fig, os.path.join(out_dir, "bench_cpu_time.png")))
    if "memory" in results:
        rows = results["memory"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for name in dict.fromkeys(r["name"] for r in rows):
            _line(axes[0], rows, name, "fwd_bwd_mb")
            _line(axes[1], rows, name, "fwd_bwd", 1e-3)
        _axes(axes[0], rows, xlabel="T (tokens)", ylabel="peak MB (fwd+bwd)",
              title="peak memory of one layer (B=1, hidden 256)")
        _axes(axes[1], rows, xlabel="T (tokens)", ylabel="fwd+bwd seconds", title="time of the same call")
        paths.append(_save(fig, os.path.join(out_dir, "bench_memory.png")))
    return paths


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


if __name__ == "__main__":  # redraw from a results JSON: python bench/plots.py docs/bench_results.json
    import json
    import sys

    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs",
                                                               "bench_results.json")
    with open(path) as f:
        for written in plot_all(json.load(f)["results"], os.path.dirname(os.path.abspath(path))):
            print("wrote", written)
