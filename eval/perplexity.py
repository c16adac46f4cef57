"""Perplexity against context length (the paper's Figure 5): each text is cut into full windows of every
length, and several checkpoints go on one plot, to compare eigenvalues in [0, 1] with [-1, 1].

    python -m eval.perplexity --checkpoint runs/deltanet01 runs/deltanet_neg \\
        --data code=embedded:code math=embedded:math --lengths 512,1024,2048,4096 --out ppl.json --plot ppl.png

--data takes NAME=SPEC or SPEC, where SPEC is what data.dataset takes (embedded:code|prose|math, which reads the
embedded corpus' validation split as the checkpoint's config builds it, .json/.jsonl/.parquet/.txt files, a
directory or a glob), or any other text files (e.g. 'src/**/*.py'), one document per file. Documents are joined
with EOS as in training. Every length sees the same tokens (the first --max-tokens, rounded down to whole
windows of the longest length), so the lengths differ only in how much context each position has.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from eval.generation import load_checkpoint, model_info


@torch.no_grad()
def perplexity_by_length(model, token_ids, lengths: Sequence[int], batch_size: int = 1) -> dict:
    """Next-token loss of `model` on token_ids [N] cut into full, non-overlapping windows of each length.

    Returns {"by_length": {L: {"loss", "perplexity", "windows", "tokens"}}, "by_position": {"edges", "loss"}},
    where by_position is the mean loss of the longest windows' positions in [edges[i], edges[i + 1]), with the
    lengths as edges: how the loss falls as a position has more context.
    """
    lengths = sorted(set(int(n) for n in lengths))
    if not lengths or lengths[0] < 1:
        raise ValueError(f"lengths={lengths} must be positive integers")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    longest = lengths[-1]
    usable = (len(ids) - 1) // longest * longest  # the same target tokens for every length
    if usable == 0:
        raise ValueError(f"{len(ids)} tokens are too few for one window of {longest} (and its next token); "
                         "give more text or shorter lengths")
    device = next(model.parameters()).device
    by_length, position_loss = {}, None
    for length in lengths:
        windows = usable // length
        inputs = ids[:windows * length].view(windows, length)  # [W, L]
        targets = ids[1:windows * length + 1].view(windows, length)  # [W, L]
        losses = torch.cat([_token_losses(model, inputs[i:i + batch_size].to(device),
                                          targets[i:i + batch_size].to(device))
                            for i in range(0, windows, batch_size)])  # [W, L]
        mean = losses.mean().item()
        by_length[length] = {"loss": mean, "perplexity": math.exp(mean), "windows": windows,
                             "tokens": windows * length}
        if length == longest:
            position_loss = losses.mean(dim=0)  # [L]
    edges = [0] + lengths
    by_position = [position_loss[a:b].mean().item() for a, b in zip(edges, edges[1:])]
    return {"by_length": by_length, "by_position": {"edges": edges, "loss": by_position}}


def _token_losses(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    logits = getattr(logits, "logits", logits).float()  # [B, L, V]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).cpu()


def read_token_stream(spec: str, tokenizer, data_cfg, max_tokens: int, text_field: str = "text") -> list[int]:
    """Token ids of the documents `spec` names, each followed by EOS, up to max_tokens + 1."""
    from data.sources import BUILDERS, source_for

    ids: list[int] = []
    path = Path(spec).expanduser()
    found = path.rglob("*") if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
    files = sorted(str(p) for p in found if p.is_file() and not any(part.startswith(".") for part in p.parts))
    if files and any(Path(f).suffix not in BUILDERS for f in files):
        for path in files:  # plain text files (source code, say): one document each
            ids += tokenizer.encode(Path(path).read_text(encoding="utf-8", errors="replace")) + [tokenizer.eos_id]
            if len(ids) > max_tokens:
                break
    else:
        source = source_for(spec, "--data", data_cfg, "validation", "validation", text_field, None, shuffle=False)
        reader = source.reader(tokenizer, seed=0, node=0, num_nodes=1, single_epoch=True)
        while len(ids) <= max_tokens and (doc := reader.next()) is not None:
            ids += doc.tolist()
    return ids[:max_tokens + 1]


def checkpoint_data_config(checkpoint: Path):
    """The DataConfig a checkpoint was trained with. Only its `data` section is read, so checkpoints whose
    trainer keys have since been renamed can still be evaluated."""
    from model.loading import read_config_section
    from trainer.config import from_dict

    return from_dict({"data": read_config_section(checkpoint, "data")}).data


def parse_data(specs: list[str]) -> dict[str, str]:
    """["code=embedded:code", "notes.txt"] -> {"code": "embedded:code", "notes.txt": "notes.txt"}."""
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name, value = (name, value) if sep and name and "/" not in name else (spec, spec)
        if name in out:
            raise ValueError(f"--data names {name!r} twice; give each NAME=SPEC a different name")
        out[name] = value
    return out


def label(info: dict, checkpoint: str, labels_seen: list[str]) -> str:
    """"deltanet [-1, 1]", with the run's name added when two checkpoints would share it."""
    base = f"{info['mixer']} {info['eigenvalue_range']}"
    return base if labels_seen.count(base) <= 1 else f"{base} ({Path(checkpoint).parts[-3]})"


def plot(results: list[dict], path: Path) -> None:
    """Perplexity against context length (top) and loss by position at the longest length (bottom), one column
    per data set, one line per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["data"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        top, bottom = axes[0][col], axes[1][col]
        for result in results:
            data = result["data"][name]
            lengths = sorted(int(k) for k in data["by_length"])
            top.plot(lengths, [data["by_length"][str(n)]["perplexity"] for n in lengths], marker="o",
                     label=result["label"])
            edges = data["by_position"]["edges"]
            bottom.plot(edges[1:], data["by_position"]["loss"], marker="o", label=result["label"])
        top.set(xscale="log", xlabel="context length (tokens)", ylabel="perplexity", title=name)
        bottom.set(xscale="log", xlabel=f"positions up to (in windows of {edges[-1]})", ylabel="mean loss (nats)")
        for ax in (top, bottom):
            ax.minorticks_off()
            ax.set_xticks(edges[1:], [str(e) for e in edges[1:]])
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _lengths(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 512,1024") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints or run dirs")
    parser.add_argument("--data", nargs="+", required=True, help="NAME=SPEC or SPEC (see above)")
    parser.add_argument("--lengths", type=_lengths, default=[512, 1024, 2048, 4096])
    parser.add_argument("--max-tokens", type=int, help="tokens per data set (default: 16 windows of the longest)")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--text-field", default="text", help="column of .json/.jsonl/.parquet records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="results JSON")
    parser.add_argument("--plot", type=Path, help="PNG: perplexity against length, one line per checkpoint")
    args = parser.parse_args(argv)

    from data.errors import DataError
    from trainer.checkpoint import CheckpointError
    results = []
    try:
        data = parse_data(args.data)
        max_tokens = args.max_tokens or 16 * max(args.lengths)
        for path in args.checkpoint:
            model, tokenizer, checkpoint = load_checkpoint(path, args.device)
            data_cfg = checkpoint_data_config(checkpoint)
            scores = {}
            for name, spec in data.items():
                ids = read_token_stream(spec, tokenizer, data_cfg, max_tokens, args.text_field)
                scores[name] = perplexity_by_length(model, ids, args.lengths, args.batch_size)
            results.append({"checkpoint": str(checkpoint), "model": model_info(model), "data": scores})
    except (CheckpointError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bases = [f"{r['model']['mixer']} {r['model']['eigenvalue_range']}" for r in results]
    for result in results:
        result["label"] = label(result["model"], result["checkpoint"], bases)
    results = json.loads(json.dumps(results))  # the JSON view (string keys) for the plot and the file
    for result in results:
        for name, scores in result["data"].items():
            row = "  ".join(f"{n}: {v['perplexity']:.2f}" for n, v in scores["by_length"].items())
            print(f"{result['label']:<28} {name:<12} {row}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"lengths": sorted(args.lengths), "results": results}, indent=1))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
