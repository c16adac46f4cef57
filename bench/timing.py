"""Timing shared by the benchmarks: a median per measurement on CPU or GPU, the peak memory of a call, peers run
in a child process with a time limit, and the results table (time, achieved rate, ratio to ours)."""
import ctypes
import ctypes.util
import gc
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = "RECORD "  # prefix of the result lines a child prints
PASSES = {"fwd": "forward", "fwd_bwd": "forward + backward"}
SHORT = {"fwd": "fwd", "fwd_bwd": "fwd+bwd"}


def device():
    """Where the benchmarks run: the GPU when there is one (the GPU paths are only called then)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def label(shape):
    """A shape key as printed: (2, 2048, 16, 4096, bfloat16)."""
    return str(shape).replace("'", "")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn, repeats=7, min_run_s=0.02):
    """Median time of one call of fn, in ms.

    GPU: triton.testing.do_bench (CUDA events, L2 flushed before every run, 25 ms of warm-up then 100 ms of runs);
    only warmup, rep and quantiles are passed, the arguments Triton 3.6-3.9 share. CPU: two warm-up calls, then
    `repeats` timed runs, each of enough calls to last min_run_s so timer overhead does not count.
    """
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, quantiles=[0.5])
    fn()
    fn()
    start = time.perf_counter()
    fn()
    inner = max(1, int(min_run_s / max(time.perf_counter() - start, 1e-6)))
    return 1e3 * statistics.median(_timed_runs(fn, repeats, inner))


def _timed_runs(fn, repeats: int, inner: int) -> list[float]:
    """Seconds per call of `repeats` runs of `inner` back-to-back calls each."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return times


def _status_bytes(key):
    """A size line of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak_rss():
    """Set the process's peak resident set (VmHWM) to its current size; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def peak_growth(fn):
    """Run fn once on CPU; return (seconds, peak bytes it used above what was in use before, or None if Linux's
    /proc does not tell).

    The growth of the resident set: the memory the process really held (tensors, allocator slack, workspaces).
    Freed heap memory is first handed back (malloc_trim), the kernel's peak-RSS mark is reset to the current size
    (/proc/self/clear_refs), and VmHWM is read after the call.
    """
    gc.collect(1)  # the young generations hold what earlier calls left; a full collection takes ~0.3 s here
    if hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    measurable = os.path.exists("/proc/self/status") and _reset_peak_rss()
    before = _status_bytes("VmRSS") if measurable else 0
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return seconds, (_status_bytes("VmHWM") - before) if measurable else None


def measure(fn, repeats=5, budget_s=60.0, min_run_s=0.02):
    """On CPU: {"ms": median ms of a call, "n": timed runs, "mb": peak MB of a call above the memory before it}.

    Two warm-up calls, the second measuring memory (the first may allocate once-only buffers); then `repeats`
    runs, each of enough calls to last min_run_s. A call so slow that warm-ups plus repeats would pass budget_s is
    its own warm-up: its first call gives the memory and the first sample, and further runs are added while they
    fit, so n < repeats marks a slow peer.
    """
    first_s, peak = peak_growth(fn)
    if first_s * (repeats + 2) > budget_s:
        times = [first_s]
        while len(times) < repeats and (len(times) + 1) * first_s <= budget_s:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return {"ms": 1e3 * statistics.median(times), "n": len(times), "mb": None if peak is None else peak / 2 ** 20}
    _, peak = peak_growth(fn)
    mb = None if peak is None else peak / 2 ** 20
    inner = max(1, int(min_run_s / max(first_s, 1e-6)))
    return {"ms": 1e3 * statistics.median(_timed_runs(fn, repeats, inner)), "n": repeats, "mb": mb}


def emit(**record):
    """In a child: print one result for the parent to collect."""
    print(RECORD + json.dumps(record), flush=True)


def run_child(fn, timeout, **kwargs):
    """Run fn(**kwargs) in a child process stopped after `timeout` seconds; return (records it emitted, note).

    fn must be a module-level function of an importable module; kwargs must be JSON values. note is None when
    the child finished, else why it did not (timeout or exit code, with its last lines of output). The child gets
    its own process group, so compile workers it started are stopped with it.
    """
    if fn.__module__ == "__main__":
        raise ValueError(f"run_child: {fn.__name__} must be imported from its module, not run as __main__")
    cmd = [sys.executable, os.path.abspath(__file__), fn.__module__, fn.__name__, json.dumps(kwargs)]
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            child.wait(timeout=timeout)
            note = None if child.returncode == 0 else f"exited with code {child.returncode}"
        except subprocess.TimeoutExpired:
            note = f"stopped after {timeout:.0f} s"
        finally:  # also when we are interrupted: the child's group is outside ours, so no signal reaches it
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        log.seek(0)
        lines = log.read().splitlines()
    records = [json.loads(line[len(RECORD):]) for line in lines if line.startswith(RECORD)]
    tail = [line for line in lines if not line.startswith(RECORD)][-6:]
    if note and tail:
        note += "; its last output:\n    " + "\n    ".join(tail)
    return records, note


def child_rows(fn, timeout, name, shapes, **kwargs):
    """Rows named `name` of a peer timed by fn(shapes=..., **kwargs) in a child process stopped after `timeout` s.

    fn emits {"shape", "started": time.time()} before it measures a shape and {"shape", ...results} after. The
    shape it was measuring when stopped gets over_ms (how long it had run: a lower bound on its time); shapes it
    never reached get error, the reason.
    """
    records, note = run_child(fn, timeout, shapes=shapes, **kwargs)
    ended = time.time()
    started = {tuple(r["shape"]): r["started"] for r in records if "started" in r}
    done = {tuple(r["shape"]): r for r in records if "started" not in r}
    rows = []
    for shape in map(tuple, shapes):
        if shape in done:
            rows.append(dict(done[shape], shape=shape, name=name))
        elif shape in started and note and note.startswith("stopped"):
            rows.append(dict(shape=shape, name=name, over_ms=1e3 * (ended - started[shape]),
                             error=f"stopped after {ended - started[shape]:.0f} s of this shape"))
        else:
            rows.append(dict(shape=shape, name=name, error=note or "no record"))
    return rows


def report(row, rate, unit, extra=""):
    """Print one measured row as it comes: shape, name, then fwd and fwd+bwd ms with their rates."""
    cells = "  ".join(f"{SHORT[k]} {row[k]:9.3f} ms ({rate(row['shape'], k, row[k]):.2f} {unit})"
                      for k in PASSES if row.get(k))
    print(f"  {label(row['shape']):>30} {row['name']:>14}  {cells}{extra}", flush=True)


def rows_from_records(records, name):
    """Child records {shape, fwd, fwd_bwd} (or {shape, error}) -> rows named `name`, shapes as tuples."""
    return [dict(r, name=name, shape=tuple(r["shape"])) for r in records]


def print_table(rows, shape_header, names, rate, unit):
    """Per pass, one line per shape: each name's ms (achieved rate), then each other name's time / the first's.

    rows: dicts with shape, name and fwd / fwd_bwd ms (missing: not measured), or an error that is printed below;
    rate(shape, pass, ms) -> the rate in unit.
    """
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    by = {(r["shape"], r["name"]): r for r in rows}
    ours = names[0]
    width = max(len(shape_header), *(len(label(s)) for s in shapes))
    for key, title in PASSES.items():
        print(f"\n{title}: ms ({unit}); X/{ours} = X's time / {ours}'s (> 1: {ours} faster); - where not measured")
        print(f"{shape_header:>{width}} " + " ".join(f"{n:>20}" for n in names)
              + "".join(f" {n + '/' + ours:>{max(10, len(n + ours) + 2)}}" for n in names[1:]))
        for shape in shapes:
            ms = {n: by.get((shape, n), {}).get(key) for n in names}
            cells = [f"{t:9.3f} ({rate(shape, key, t):8.2f})" if t else f"{'-':>20}" for t in ms.values()]
            ratios = [f"{ms[n] / ms[ours]:.2f}" if ms[n] and ms[ours] else "-" for n in names[1:]]
            print(f"{label(shape):>{width}} " + " ".join(cells)
                  + "".join(f" {r:>{max(10, len(n + ours) + 2)}}" for r, n in zip(ratios, names[1:])))
    errors = {}  # (name, error) -> shapes, so one reason shared by many shapes prints once
    for r in rows:
        if r.get("error"):
            errors.setdefault((r["name"], r["error"]), []).append(label(r["shape"]))
    for (name, error), shapes in errors.items():
        print(f"{name} at {', '.join(shapes)}: - because {error}")


if __name__ == "__main__":  # child entry: timing.py MODULE FUNCTION KWARGS_JSON
    sys.path.insert(0, REPO)
    module, name, kwargs = sys.argv[1:]
    getattr(importlib.import_module(module), name)(**json.loads(kwargs))
