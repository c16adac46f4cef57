"""bench/kernels.py's CPU path at tiny sizes, and the time-limited child process its GPU peers run in."""
import os
import subprocess
import time

import pytest

from bench import kernels, timing

# benchmark -> (names timed on CPU, where the sequence length sits in its shape key)
CASES = {"delta_rule": (["ours torch", "fla chunkwise", "fla recurrence"], 0),
         "selective_scan": (["ours torch", "unbind loop"], 3)}


def test_cpu_benchmarks_time_every_case(capsys):
    pytest.importorskip("fla")  # the delta rule's CPU peers are fla's plain-torch references
    lengths = [64, 128]  # whole chunks of 64, as fla's chunkwise reference needs
    results = kernels.cpu_benchmarks(lengths, repeats=3)
    assert "Triton kernels were NOT timed" in capsys.readouterr().out
    assert set(results) == set(CASES)
    for bench, (names, at) in CASES.items():
        rows = {(r["shape"][at], r["name"]): r for r in results[bench]}
        assert sorted(rows) == sorted((L, name) for L in lengths for name in names), bench
        assert len(results[bench]) == len(rows), f"{bench}: a case was timed twice"
        for key, row in rows.items():
            assert row["fwd"] > 0 and row["fwd_bwd"] > 0, (bench, key, row)


def test_child_records_come_back():
    records, note = timing.run_child(timing.emit, 60, shape=[4096, 128], fwd=1.5)
    assert (records, note) == ([{"shape": [4096, 128], "fwd": 1.5}], None)


def test_child_stopped_at_its_limit_with_what_it_started():
    marker = "61.0625"  # a sleep only this test starts, so we can look for it afterwards
    start = time.perf_counter()
    records, note = timing.run_child(subprocess.run, 5, args=["sleep", marker])
    assert time.perf_counter() - start < 30
    assert records == [] and note.startswith("stopped after 5 s"), note
    if os.path.isdir("/proc"):  # the grandchild went with the child's process group
        time.sleep(0.2)
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    alive += [pid] if f.read() == f"sleep\0{marker}\0".encode() else []
            except OSError:
                pass
        assert alive == [], f"the child's sleep {marker} outlived it"


def test_child_failure_is_reported():
    records, note = timing.run_child(os.abort, 60)
    assert records == [] and note.startswith("exited with code"), note


def test_run_child_refuses_main_functions():
    def fn():
        pass

    fn.__module__ = "__main__"
    with pytest.raises(ValueError, match="imported from its module"):
        timing.run_child(fn, 1)
