"""A tiny trained checkpoint shared by the code, math and perplexity benchmark tests (built once per session)."""
from pathlib import Path

from trainer.config import load_config
from trainer.run import train

ROOT = Path(__file__).resolve().parent.parent


def tiny_checkpoint(tmp_path_factory, name: str = "deltanet-neg", *overrides: str) -> Path:
    """A run directory trained for a few seconds on a small embedded corpus; reused across test modules."""
    base = tmp_path_factory.getbasetemp()
    run = base / "eval-checkpoints" / name
    if not (run / "checkpoints" / "latest").is_file():
        cfg = load_config(ROOT / "configs/default.yaml", [
            f"out_dir={run}", f"data.cache_dir={base / 'eval-cache'}", "data.corpus_code_mb=0.3",
            "data.corpus_prose_mb=0.2", "data.corpus_math_mb=0.1", "data.tokenizer_vocab_size=512",
            "model.vocab_size=512", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
            "train.seq_len=32", "train.micro_batch_size=2", "train.max_steps=8", "train.warmup_steps=2",
            "train.log_every=4", "train.save_every=8", "train.eval_every=0", "log.progress_bar=false",
            "log.tensorboard=false", "log.plot=false", "log.sample_tokens=0", "log.unigram_baseline=false",
            *overrides])
        train(cfg, log=lambda message: None)
    return run
