"""Shared by the export tests: a tiny trained checkpoint, random models with spread-out transitions, the relative
RMS error, and a Python process that cannot import this repository."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def tiny_checkpoint(cache_dir: Path, out_dir: Path, *overrides: str) -> Path:
    """Train a 2-layer width-32 model for 4 steps on a small embedded corpus (SentencePiece vocab 512); return the
    run directory (its checkpoint holds tokenizer/tokenizer.model)."""
    from trainer.config import load_config
    from trainer.run import train

    cfg = load_config(ROOT / "configs/default.yaml", [
        f"out_dir={out_dir}", f"data.cache_dir={cache_dir}", "data.corpus_code_mb=0.3", "data.corpus_prose_mb=0.2",
        "data.corpus_math_mb=0.1", "data.tokenizer_vocab_size=512", "model.vocab_size=512",
        "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "train.seq_len=32",
        "train.micro_batch_size=2", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=1",
        "train.save_every=4", "train.eval_every=0", "log.progress_bar=false", "log.tensorboard=false",
        "log.plot=false", "log.sample_tokens=0", "log.unigram_baseline=false", *overrides])
    train(cfg, log=lambda message: None)
    return Path(out_dir)


def random_model(mixer: str, allow_neg_eigval: bool = False, **overrides):
    """A small LanguageModel whose mixers matter: every projection keeps unit scale (N(0, 1/fan_in)), embeddings are
    N(0, 1), DeltaNet betas spread over their whole range and Mamba steps reach decays near 0 (and -1)."""
    from torch import nn

    from model import LanguageModel, ModelConfig

    fields = dict(mixer=mixer, allow_neg_eigval=allow_neg_eigval, vocab_size=64, hidden_size=32, num_layers=2,
                  num_heads=2, mlp=mixer != "mamba", kernel_backend="torch")
    model = LanguageModel(ModelConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight is not model.embeddings.weight:
                module.weight.normal_(0, module.in_features ** -0.5)
            if isinstance(module, nn.LSTM):
                for weight in (module.weight_ih_l0, module.weight_hh_l0):
                    weight.normal_(0, module.hidden_size ** -0.5)
        model.embeddings.weight.normal_(0, 1)
        for block in model.layers:
            if hasattr(block.mixer, "dt_proj"):
                block.mixer.dt_proj.bias.uniform_(-1, 1)  # delta = softplus(~N(0, 1) + bias): ~0.1 to ~2
    return model


def rms_rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS(got - ref) / RMS(ref)."""
    return ((got.double() - ref.double()).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()


def run_outside_repo(script: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `script` with this Python in `cwd`, with no path to this repository (PYTHONPATH dropped) and remote code
    cached under cwd; the script should check for itself that the repository's packages are not importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(cwd / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # no stdin: transformers asks on the terminal before loading remote code it was not told to trust
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
