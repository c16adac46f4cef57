"""Shared by the code and math benchmarks: load a checkpoint with its tokenizer, and sample completions of one
prompt with stop sequences.

The n samples of a prompt are one batch of n identical rows; prompts are never batched together, since left
padding would change a recurrent model's state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def checkpoint_tokenizer(checkpoint: Path):
    """The tokenizer saved in a checkpoint's tokenizer/ directory."""
    from data.config import DataConfig
    from data.tokenizer import load_tokenizer

    if not (checkpoint / "tokenizer").is_dir():
        raise ValueError(f"checkpoint {checkpoint} has no tokenizer/ directory: text benchmarks need a language-model "
                         "run (state-tracking runs have no tokenizer)")
    return load_tokenizer(DataConfig(tokenizer=str(checkpoint / "tokenizer")))


def load_checkpoint(path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, resolved checkpoint dir) from a run dir, `latest` or a step dir."""
    from model.loading import model_from_dir
    from trainer.checkpoint import resolve

    checkpoint = resolve(path)
    return model_from_dir(checkpoint, device), checkpoint_tokenizer(checkpoint), checkpoint


def model_info(model) -> dict:
    """What tells checkpoints apart in results: mixer, eigenvalue range, size."""
    cfg = model.config
    return {"mixer": cfg.mixer, "allow_neg_eigval": cfg.allow_neg_eigval,
            "eigenvalue_range": "[-1, 1]" if cfg.allow_neg_eigval else "[0, 1]",
            "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "num_params": model.num_params()}


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """text cut before the earliest stop sequence, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.no_grad()
def sample(model, tokenizer, prompt: str, n: int = 1, max_new_tokens: int = 256, temperature: float = 0.0,
           top_k: int | None = None, stop: Sequence[str] = (), generator: torch.Generator | None = None) -> list[str]:
    """n completions of `prompt` (text after it, cut at the first stop sequence or EOS).

    The prompt follows an EOS, as a document does in training. Greedy at temperature 0, where n > 1 would only
    repeat the same text.
    """
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    device = next(model.parameters()).device
    prompt_ids = tokenizer.encode(prompt)
    rows = torch.tensor([[tokenizer.eos_id] + prompt_ids] * n, device=device)  # [n, T]
    logits, state = model(rows, return_state=True)
    generated = [[] for _ in range(n)]
    done = [False] * n
    for step in range(max_new_tokens):
        nxt = model._pick(logits[:, -1], temperature, top_k, generator)  # [n]
        for i, token in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if token == tokenizer.eos_id:
                done[i] = True
                continue
            generated[i].append(token)
            done[i] = truncate_at_stop(tokenizer.decode(generated[i]), stop)[1]
        if all(done) or step == max_new_tokens - 1:
            break
        logits, state = model(nxt[:, None], state=state, return_state=True)
    return [truncate_at_stop(_completion_text(tokenizer, prompt_ids, ids), stop)[0] for ids in generated]


def _completion_text(tokenizer, prompt_ids: list, ids: list) -> str:
    """The completion as it reads after the prompt: decoding it alone could drop a leading space."""
    head = tokenizer.decode(prompt_ids)
    full = tokenizer.decode(prompt_ids + ids)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(ids)
