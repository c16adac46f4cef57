"""On-disk cache helpers: stable keys and directories that appear whole or not at all."""
import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path


def cache_key(**params) -> str:
    """A short hex digest of JSON-serialisable parameters (order-independent)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_directory(final: Path):
    """Yield a temporary sibling of `final` to fill; rename it to `final` only if the block succeeds.

    A killed build leaves at most a hidden temporary directory, never a half-written `final`. If another
    process finished `final` first, its copy wins and ours is discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
