"""Checkpoint directories: written whole under a temporary name, verified by checksums, found via `latest`.

Layout of `out_dir/checkpoints/step-XXXXXXXX/`: the engine's files (model.safetensors and optimizer.pt, or
DeepSpeed's deepspeed/ directory), trainer_state.json (step, tokens, world size, engine, scheduler),
data_state_rank{r}.pt and rng_state_rank{r}.pt per rank, config.yaml, tokenizer/ and manifest.json (written
last: step, tokens seen, sha256 of every file). `checkpoints/latest` is a one-line file
naming the newest complete checkpoint; it is replaced atomically after the checkpoint is in place.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

MANIFEST = "manifest.json"
LATEST = "latest"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names it and the fix."""


def checkpoint_step(path: Path | None) -> int:
    """The step a (verified) checkpoint directory holds, from its manifest; -1 for none."""
    return -1 if path is None else int(json.loads((path / MANIFEST).read_text())["step"])


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(root: Path, step: int, tokens_seen: int, write_files: Callable[[Path], None],
                     dist=None) -> Path:
    """Create `root/step-XXXXXXXX` atomically: `write_files(tmp_dir)` fills it, then the manifest seals it.

    With a process group (`dist`: is_main, barrier()), every rank writes its own files into the same temporary
    directory (a filesystem all ranks share) and rank 0 alone seals it and moves `latest`.
    """
    is_main = dist is None or dist.is_main
    barrier = dist.barrier if dist is not None else (lambda: None)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
        tmp.mkdir()
    barrier()
    try:
        write_files(tmp)
        barrier()
        if is_main:
            _seal(tmp, step, tokens_seen)
    except OSError as err:  # disk full, quota, permissions: keep what exists, free what we half wrote
        shutil.rmtree(tmp, ignore_errors=True)
        latest = root / LATEST
        kept = f"the newest complete one is {latest.read_text().strip()}" if latest.is_file() else "none was complete"
        raise CheckpointError(f"could not write checkpoint {final.name} in {root} ({err}); earlier checkpoints "
                              f"are untouched ({kept}). Free disk space (or fix permissions), then run again to "
                              f"resume") from err
    if is_main:
        if final.exists():  # re-saving a step (e.g. after a resume): move the old copy aside first
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        _set_latest(root, final.name)
    barrier()
    return final


def _seal(tmp: Path, step: int, tokens_seen: int) -> None:
    """fsync every file, then write the manifest of their checksums (last: its presence means complete)."""
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        files[str(path.relative_to(tmp))] = sha256(path)
    manifest = {"format_version": FORMAT_VERSION, "step": step, "tokens_seen": tokens_seen,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp)


def _set_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def verify(path: Path) -> dict:
    """Return the manifest of a complete, intact checkpoint, or raise CheckpointError saying what is wrong."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MANIFEST}); it was probably cut off "
                              f"while being written. Resume from an earlier checkpoint.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{manifest_path} is unreadable ({exc}); resume from an earlier checkpoint") from None
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} lacks {name}; resume from an earlier checkpoint")
        if sha256(file) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its checksum (corrupt or altered); "
                                  f"resume from an earlier checkpoint")
    return manifest


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_latest(root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The checkpoint `latest` names if intact, else the newest intact one (saying so), else None."""
    named = None
    latest_file = root / LATEST
    if latest_file.is_file():
        named = root / latest_file.read_text().strip()
    candidates = ([named] if named is not None else []) + list_checkpoints(root)[::-1]
    for candidate in candidates:
        try:
            verify(candidate)
        except CheckpointError as exc:
            log(f"warning: skipping checkpoint: {exc}")
            continue
        if named is not None and candidate != named:
            log(f"warning: {root / LATEST} names {named.name}, which is not usable; using {candidate.name}")
        return candidate
    return None


def resolve(path: str | os.PathLike) -> Path:
    """Accept a checkpoint directory, a `latest` file, a checkpoints/ folder or a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_file() and path.name == LATEST:
        return resolve_dir(path.parent)
    if path.is_dir() and (path / MANIFEST).is_file():
        verify(path)
        return path
    return resolve_dir(path)


def resolve_dir(path: Path) -> Path:
    for root in (path, path / "checkpoints"):
        if (root / LATEST).is_file() or list_checkpoints(root):
            found = find_latest(root)
            if found is None:
                raise CheckpointError(f"no intact checkpoint under {root}; every one failed verification")
            return found
    raise CheckpointError(f"{path} holds no checkpoint (expected a step-XXXXXXXX directory with {MANIFEST}, "
                          f"a checkpoints/ folder or a run directory)")


def rotate(root: Path, keep_last_n: int | None) -> None:
    """Delete all but the newest `keep_last_n` checkpoints; never the one `latest` names."""
    if keep_last_n is None:
        return
    keep = set(list_checkpoints(root)[-keep_last_n:])
    latest_file = root / LATEST
    if latest_file.is_file():
        keep.add(root / latest_file.read_text().strip())
    for path in list_checkpoints(root):
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                      "cached": cached}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
