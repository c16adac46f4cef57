"""A pids cgroup per sandbox run: caps the number of processes even for root (whom RLIMIT_NPROC exempts) and
finds every member at the end, including processes that left the sandbox's process group with setsid."""
from __future__ import annotations

import itertools
import os
import signal
import time
from functools import lru_cache
from pathlib import Path

_names = itertools.count()


def _mounts():
    """(mount point, root inside the hierarchy, fs type, super options) of each mount."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            yield fields[4], fields[3], fields[sep + 1], fields[sep + 3].split(",")


def _own_paths() -> dict:
    """This process's cgroup path per v1 controller, and under "" for cgroup v2."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


@lru_cache(maxsize=1)
def pids_parent() -> Path | None:
    """A directory where a child pids cgroup can be created, or None (no pids controller we may write to)."""
    own = _own_paths()
    for mount, root, fstype, options in _mounts():
        if fstype == "cgroup" and "pids" in options and "pids" in own:
            rel = os.path.relpath(own["pids"], root)
        elif fstype == "cgroup2" and "" in own:
            rel = os.path.relpath(own[""], root)
        else:
            continue
        if rel.startswith(".."):
            continue  # our cgroup is outside what this mount shows
        parent = Path(mount) / rel
        if fstype == "cgroup2":
            delegated = (parent / "cgroup.subtree_control")
            if not delegated.is_file() or "pids" not in delegated.read_text().split():
                continue
        if os.access(parent, os.W_OK):
            return parent
    return None


class PidsCgroup:
    """A fresh cgroup with pids.max set; `add` moves a process in, `kill` ends every member, `remove` deletes it."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, max_pids: int) -> PidsCgroup | None:
        parent = pids_parent()
        if parent is None:
            return None
        path = parent / f"lrnn-sandbox-{os.getpid()}-{next(_names)}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(max_pids))
        except OSError:
            if path.is_dir():
                path.rmdir()
            return None
        return cls(path)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def members(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self, wait_s: float = 2.0) -> None:
        """SIGKILL every member until none is left (a member may fork while we read the list)."""
        deadline = time.monotonic() + wait_s
        while (pids := self.members()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)

    def remove(self) -> None:
        """Delete the cgroup; killed processes leave it as they exit, so retry briefly."""
        for _ in range(200):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)
