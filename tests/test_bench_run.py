"""bench/run.py's cases at tiny sizes: every case yields its rows, peers beside ours, positive times, ratios and
peak memory, and the report and plots are written. Not a timed test: no speed is asserted."""
import json

import pytest

from bench import run

TINY = dict(kernel_T=[64], lm_T=[32], memory_T=[32, 64], train_steps=4, lm_mixers=["mamba"],
            train_overrides=["data.corpus_code_mb=0.2", "data.corpus_prose_mb=0.1", "data.corpus_math_mb=0.05",
                             "data.tokenizer_vocab_size=512", "model.vocab_size=512", "model.hidden_size=32",
                             "model.num_layers=1", "model.num_heads=2", "train.seq_len=32",
                             "train.micro_batch_size=2"])
# case -> (ours, peers that must be measured beside it)
PAIRS = {"delta_rule": [("ours torch", ["fla chunkwise", "fla recurrence"])],
         "selective_scan": [("ours torch", ["unbind loop"]), ("ours Mamba layer", ["transformers MambaMixer"])],
         "lm": [("ours mamba LM", ["transformers MambaForCausalLM"])]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    pytest.importorskip("fla")  # the delta rule's CPU peers are fla's plain-torch references
    sizes = dict(TINY, train_overrides=[*TINY["train_overrides"],
                                        f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])
    return {case: run.run_case(case, sizes, repeats=3, budget_s=5.0, peer_timeout=60.0) for case in run.CASES}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_peers_are_timed_beside_ours(results, case):
    rows = results[case]
    for ours, peers in PAIRS[case]:
        for peer in peers:
            got = run.ratio(rows, ours, peer, rows[0]["T"])
            assert got is not None, f"{case}: no {peer} / {ours} ratio in {rows}"
            value, lower_bound = got
            assert value > 0 and not lower_bound, (case, peer, got)
        for row in (r for r in rows if r["name"] in [ours, *peers]):
            assert row["fwd_bwd"] > 0 and row["fwd_bwd_mb"] > 0 and row["n"] >= 1, row


def test_training_and_memory_rows(results):
    row, = results["training"]
    assert row["trainer_tokens_per_s"] > 0 and row["step_tokens_per_s"] > 0
    assert 0 < row["loader_share"] < 1, row
    names = {r["name"] for r in results["memory"]}
    assert {"deltanet", "mamba", "lstm"} <= names and any(n.startswith("attention") for n in names)
    assert all(r["fwd_bwd_mb"] > 0 for r in results["memory"]), results["memory"]


def test_report_and_plots(results, tmp_path):
    text = run.report(results, repeats=3)
    for title in ("Delta rule", "Signed selective scan", "Mamba layer", "Mamba LM", "Training", "Peak memory",
                  "Targets"):
        assert f"### {title}" in text, title
    paths = run.plots.plot_all(results, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["bench_cpu_time.png", "bench_memory.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("bench_cpu_time.png", "bench_memory.png"))
    json.dumps(results, default=str)  # what main() writes


def test_stopped_peer_gives_a_lower_bound():
    rows = [dict(T=2048, name="ours", fwd_bwd=100.0), dict(T=2048, name="peer", over_ms=5000.0, error="stopped")]
    assert run.ratio(rows, "ours", "peer", 2048) == (50.0, True)
    assert run.ratio(rows, "ours", "peer", 1024) is None
