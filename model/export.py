"""Export a checkpoint as a Hugging Face folder.

    python -m model.export --checkpoint PATH --out DIR [--format hf|fla|hf-mamba] [--force]

PATH is anything `model.from_checkpoint` takes (a run directory, checkpoints/, `latest` or a step directory; one
process or DeepSpeed ZeRO of any stage). `hf` (default) writes our own classes as remote code
(`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`); `fla` and `hf-mamba` write fla's DeltaNet
and transformers' Mamba formats. Every format gets the tokenizer files. The folder is built next to DIR and moved
into place, so a failed export leaves DIR as it was; an existing non-empty DIR needs --force, which replaces only
the files this export writes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

FORMATS = ("hf", "fla", "hf-mamba")


class ExportError(ValueError):
    """A bad --out or --format; the message says what to do."""


def export(checkpoint, out, fmt: str = "hf", force: bool = False) -> list[str]:
    """Export the checkpoint at `checkpoint` into directory `out`; return the names of the files written."""
    from trainer.checkpoint import resolve

    from .loading import model_from_dir

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    checkpoint = resolve(checkpoint)
    out = Path(out)
    _check_out(out, checkpoint, force)
    model = model_from_dir(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        write_folder(model.eval(), checkpoint / "tokenizer", tmp, fmt)
        written = sorted(p.name for p in tmp.iterdir())
        _move_into(tmp, out, written)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def write_folder(model, tokenizer_dir: Path, out: Path, fmt: str = "hf") -> None:
    """Write `model` (a LanguageModel) and the tokenizer in `tokenizer_dir`, if there is one, into directory `out`."""
    from .hf_tokenizer import export_tokenizer

    special_ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer_dir.is_dir():
        special_ids = export_tokenizer(tokenizer_dir, out)
    else:
        print(f"note: {tokenizer_dir} does not exist; exporting the model without tokenizer files", file=sys.stderr)
    if fmt == "hf":
        from .hf.convert import write_hf_model

        write_hf_model(model, out, special_ids)
    else:
        from .export_native import export_native

        export_native(model, out, fmt, special_ids)


def _check_out(out: Path, checkpoint: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; pass a directory")
    resolved = out.resolve()
    if resolved == checkpoint.resolve() or checkpoint.resolve() in resolved.parents:
        raise ExportError(f"--out {out} is inside the checkpoint {checkpoint}; choose a directory outside it")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} exists and is not empty; choose another directory, or pass --force to "
                          "replace the files the export writes (other files are kept)")


def _move_into(tmp: Path, out: Path, names: list[str]) -> None:
    """Move tmp's files (`names`) into out: one rename of the folder when out does not exist, else file by file."""
    if not out.exists():
        os.replace(tmp, out)
        return
    for name in names:
        if (out / name).is_dir():
            raise ExportError(f"{out / name} is a directory, where the export writes a file; move it away first")
    for name in names:
        os.replace(tmp / name, out / name)
    others = sorted(p.name for p in out.iterdir() if p.name not in names)
    if others:
        print(f"note: {out} also holds files this export did not write: {', '.join(others)}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoints/, latest or step directory")
    parser.add_argument("--out", required=True, help="directory to write (created if missing)")
    parser.add_argument("--format", default="hf", choices=FORMATS, help="hf (default): our classes as remote code; "
                        "fla: fla's DeltaNet; hf-mamba: transformers' MambaForCausalLM")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing only the "
                        "files the export writes")
    args = parser.parse_args(argv)
    from trainer.checkpoint import CheckpointError

    try:
        written = export(args.checkpoint, args.out, args.format, args.force)
    except (CheckpointError, ValueError, ImportError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.format}): {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
