"""Two-process training on CPU (gloo): DDP under torchrun and DeepSpeed ZeRO 0-3 under torchrun and the deepspeed
launcher. Every run trains the same tiny parity model on the same global batch of 16 sequences, so per-step
losses must match a one-process run up to fp32 reduction order, and a run stopped at step 3 and resumed must
reproduce the uninterrupted run's later losses exactly.

The first DeepSpeed launch JIT-compiles DeepSpeed's shared-memory communication op (~40 s, cached after).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.distributed import DistContext, free_port
from trainer.loop import lm_loss
from trainer.run import build_task_data

REPO = Path(__file__).resolve().parent.parent
STEPS = 6
COMMON = [
    "--config", "configs/state_tracking/parity.yaml", "task.supervision=final", "task.eval_samples=32",
    "task.eval_max_len=48", "model.hidden_size=32", f"train.max_steps={STEPS}", "train.warmup_steps=1",
    "train.log_every=1", "train.save_every=3", "log.progress_bar=false", "log.tensorboard=false", "log.plot=false",
]


# language modelling on the mixture example: 3 sources, a shuffle buffer, tokens drawn by every rank
LM = [
    "--config", "configs/examples/mixture.yaml", "data.shuffle_buffer=8", "data.corpus_code_mb=0.3",
    "data.corpus_prose_mb=0.2", "data.corpus_math_mb=0.1", "data.tokenizer_vocab_size=512", "model.vocab_size=512",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "train.seq_len=32", "train.micro_batch_size=2",
    f"train.max_steps={STEPS}", "train.warmup_steps=1", "train.log_every=1", "train.save_every=3",
    "train.eval_batches=1", "log.progress_bar=false", "log.tensorboard=false", "log.plot=false",
    "log.sample_tokens=0",
]


def launch(out_dir, nproc=1, launcher="torchrun", overrides=(), expect_ok=True, recipe=COMMON, script="train.py",
           env=None):
    """Run train.py in `nproc` processes; returns the CompletedProcess (asserting success unless told not to)."""
    args = [*recipe, f"out_dir={out_dir}", *overrides]
    port = str(free_port())
    if nproc == 1:
        command = [sys.executable, script, *args]
    elif launcher == "script":  # launch/single_node.sh: torchrun --standalone on this machine
        command = ["bash", "launch/single_node.sh", args[1], *args[2:]]
    elif launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={port}", script, *args]
    else:  # the deepspeed launcher needs --num_gpus on a CPU-only machine
        command = [str(Path(sys.executable).parent / "deepspeed"), f"--num_gpus={nproc}", f"--master_port={port}",
                   "train.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHON": sys.executable,
           "NPROC": str(nproc), **(env or {})}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        assert "terminate called" not in result.stderr, result.stderr[-3000:]
    return result


def metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir) -> list[float]:
    return [record["loss"] for record in metrics(out_dir)]


def assert_close_to(reference, out_dir):
    """Same losses and gradient norms as the one-process run, up to fp32 reduction order.

    Step 1 starts from identical weights, so only the order of the gradient sums differs (a few ulp). Later
    steps start from weights that already differ by such rounding, and Adam's division by sqrt(v) magnifies
    differences in small gradient entries, so they get 1e-4 (measured: up to 1.4e-5 by step 5).
    """
    ours, ref = metrics(out_dir), metrics(reference)
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1))
    assert [r["lr"] for r in ours] == [r["lr"] for r in ref]
    for key in ("loss", "grad_norm"):
        got, want = torch.tensor([r[key] for r in ours]), torch.tensor([r[key] for r in ref])
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0, msg=lambda m: f"step 1 {key}: {m}")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=0, msg=lambda m: f"{key}: {m}")


def weights(checkpoint) -> dict:
    from model.loading import from_checkpoint

    return from_checkpoint(checkpoint).state_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, micro-batch 16: the global batch every parallel run below splits."""
    out = tmp_path_factory.mktemp("reference")
    launch(out, overrides=["train.micro_batch_size=16"])
    return out


def test_ddp_under_torchrun_matches_one_process(reference, tmp_path):
    launch(tmp_path, nproc=2, launcher="script", overrides=["train.micro_batch_size=8"])
    assert_close_to(reference, tmp_path)
    assert (tmp_path / "checkpoints" / "step-00000006" / "data_state_rank1.pt").is_file()
    for name, tensor in weights(tmp_path).items():  # DDP saves rank 0's copy: the same training, the same weights
        torch.testing.assert_close(tensor, weights(reference)[name], rtol=0, atol=1e-4)


def test_ddp_with_accumulation_resumes_exactly(tmp_path):
    """2 processes x 2 micro-batches of 4; stop after step 3, resume, and the later steps repeat bit for bit."""
    geometry = ["train.micro_batch_size=4", "train.grad_accum_steps=2"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    launch(whole, nproc=2, overrides=geometry)
    launch(split, nproc=2, overrides=[*geometry, "train.stop_at_step=3"])
    launch(split, nproc=2, overrides=geometry)
    assert losses(split) == losses(whole)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_matches_one_process_and_resumes_exactly(stage, reference, tmp_path):
    config = [f"train.deepspeed=configs/deepspeed/zero{stage}.json", "train.micro_batch_size=8"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    # stage 1 goes through the deepspeed launcher, the others through torchrun
    launcher = "deepspeed" if stage == 1 else "torchrun"
    launch(whole, nproc=2, launcher=launcher, overrides=config)
    assert_close_to(reference, whole)
    launch(split, nproc=2, launcher=launcher, overrides=[*config, "train.stop_at_step=3"])
    assert len(losses(split)) == 3
    result = launch(split, nproc=2, launcher=launcher, overrides=config)
    assert "resumed from" in result.stdout
    assert losses(split) == losses(whole)
    consolidated, resumed = weights(whole), weights(split)
    for name, tensor in weights(reference).items():
        assert torch.equal(consolidated[name], resumed[name]), name
        torch.testing.assert_close(consolidated[name], tensor, rtol=0, atol=1e-4)


def test_zero0_and_zero3_offload_consolidate_and_init_a_new_run(reference, tmp_path):
    """Stage 0 keeps whole weights in DeepSpeed's model file and ZeRO-3 with CPU offload keeps fp32 partitions:
    both consolidate to one state that loads strictly into a fresh model, via the CLI and via train.init_from."""
    for name in ("zero0", "zero3_offload"):
        out = tmp_path / name
        launch(out, nproc=2, overrides=[f"train.deepspeed=configs/deepspeed/{name}.json", "train.micro_batch_size=8"])
        assert_close_to(reference, out)
    file = tmp_path / "zero3.safetensors"
    done = subprocess.run([sys.executable, "-m", "trainer.consolidate", "--checkpoint", str(tmp_path / "zero3_offload"),
                           "--out", str(file)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from model import build_model
    from model.loading import read_model_config

    fresh = build_model(read_model_config(tmp_path / "zero3_offload" / "checkpoints" / "step-00000006"))
    fresh.load_state_dict(load_file(file), strict=True)
    for key, tensor in weights(tmp_path / "zero0").items():
        torch.testing.assert_close(fresh.state_dict()[key], tensor, rtol=0, atol=1e-4)
    # the Hugging Face export reads the ZeRO-3 checkpoint too, and computes the same logits
    from transformers import AutoModelForCausalLM

    from model.export import export

    export(tmp_path / "zero3_offload", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 3, 2]])
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, fresh.eval()(tokens), rtol=1e-5, atol=1e-5)
    # a one-process run starts from the ZeRO-3 weights: its first loss is the ZeRO-3 model's loss on batch 1
    child = tmp_path / "child"
    overrides = ["train.micro_batch_size=16", "train.max_steps=1", "train.warmup_steps=0",
                 f"train.init_from={tmp_path / 'zero3_offload'}"]
    launch(child, overrides=overrides)
    cfg = load_config(REPO / COMMON[1], [*COMMON[2:], *overrides])
    inputs, labels = next(build_task_data(cfg, DistContext())[0])
    expected = lm_loss(fresh(inputs), labels).item()
    assert losses(child)[0] == pytest.approx(expected, rel=1e-5)


def test_resume_with_another_process_count_is_refused(reference, tmp_path):
    out = tmp_path / "run"
    launch(out, nproc=2, overrides=["train.deepspeed=configs/deepspeed/zero2.json", "train.micro_batch_size=8",
                                    "train.stop_at_step=3"])
    result = launch(out, nproc=1, overrides=["train.deepspeed=configs/deepspeed/zero2.json",
                                             "train.micro_batch_size=16"], expect_ok=False)
    assert result.returncode == 2
    assert "written by 2 processes but this run has 1" in result.stderr
    assert "train.init_from=" in result.stderr
    assert len(losses(out)) == 3  # nothing was overwritten


def test_language_model_data_resumes_exactly_across_ranks(tmp_path):
    """Each rank streams its own part of a 3-source mixture through a shuffle buffer; stopped at step 3 and
    resumed, the run repeats the uninterrupted one, and the tokens drawn per source add up over both ranks."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    config = ["train.deepspeed=configs/deepspeed/zero2.json", cache]
    launch(whole, nproc=2, recipe=LM, overrides=config)
    launch(split, nproc=2, recipe=LM, overrides=[*config, "train.stop_at_step=3"])
    launch(split, nproc=2, recipe=LM, overrides=config)
    assert losses(split) == losses(whole)
    last = metrics(whole)[-1]
    drawn = sum(last[f"tokens.{name}"] for name in ("code", "prose", "math"))
    assert drawn == STEPS * 2 * 2 * 33  # steps x ranks x micro batch x (seq_len + 1)


def test_nonfinite_steps_under_deepspeed(tmp_path):
    """ZeRO 1-3 skip a NaN step (and the schedule) like the plain engine; stage 0 cannot skip, so it stops
    cleanly with the weights untouched."""
    nan = {"env": {"NAN_STEPS": "3"}, "script": "tests/drivers/nan_train.py"}
    launch(tmp_path / "zero2", nproc=2, overrides=["train.deepspeed=configs/deepspeed/zero2.json",
                                                   "train.micro_batch_size=8"], **nan)
    logged = metrics(tmp_path / "zero2")
    assert [r.get("skipped_step", 0) for r in logged] == [0, 0, 1, 0, 0, 0]
    assert logged[3]["lr"] == logged[2]["lr"]  # the schedule waited
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "zero2").values())
    result = launch(tmp_path / "zero0", nproc=2, overrides=["train.deepspeed=configs/deepspeed/zero0.json",
                                                            "train.micro_batch_size=8"], expect_ok=False, **nan)
    assert result.returncode != 0
    assert "non-finite gradient norm (nan) under ZeRO stage 0" in result.stderr
