"""Write one fp32 model.safetensors from any checkpoint (one process, DDP, or DeepSpeed ZeRO stage 0-3).

    python -m trainer.consolidate --checkpoint runs/x/checkpoints/step-00001000 --out model.safetensors

The checkpoint may also be a run directory or its checkpoints/ folder (the newest intact one is used). The output
loads strictly into `LanguageModel(config)` on any number of processes, e.g. through train.init_from.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def consolidate(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Save the checkpoint's weights as fp32 safetensors at `out` (written atomically); returns `out`."""
    from safetensors.torch import save_model

    from model.loading import from_checkpoint

    model = from_checkpoint(checkpoint).float()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, checkpoints/ folder or run dir")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    from trainer.checkpoint import CheckpointError

    if not args.out.endswith(".safetensors"):
        parser.error(f"--out {args.out!r} must end in .safetensors")
    try:
        path = consolidate(args.checkpoint, args.out)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
