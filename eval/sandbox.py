"""Run untrusted Python (model-written code) in a separate, limited process.

Each run gets a fresh temporary directory as its working directory, HOME and TMPDIR, a minimal environment, and
these limits, from outside in:
- wall-clock time: the process runs in its own session; on timeout (and after every run) the whole process
  group is killed, and with a pids cgroup every process that ever joined the run, even after setsid;
- a process cap: a pids cgroup when we can create one (root usually can; RLIMIT_NPROC does not bind root),
  else RLIMIT_NPROC over the user's current process count;
- rlimits on CPU seconds, address space, file size (stdout and stderr go to size-limited files, so a flood of
  output cannot fill our memory) and open files;
- no network: a fresh network namespace (`unshare --net`, needing root or unprivileged user namespaces) when
  the machine allows it;
- an audit hook (eval/sandbox_guard.py) installed before the code runs, refusing sockets, new processes,
  ctypes, writes outside the directory and reads outside it and the interpreter's own library directories.
  The hook is defence in depth, not a jail: code that corrupts the interpreter's memory can bypass it.
`isolation()` says which of the machine-dependent layers are active here. This is no substitute for a
container or VM when the code may be hostile; it stops the accidents model-written code makes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from eval.sandbox_cgroup import PidsCgroup, pids_parent

GUARD = Path(__file__).with_name("sandbox_guard.py")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run."""

    timeout_s: float = 3.0  # wall clock, start-up included
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_size_mb: int = 16  # largest file written, stdout and stderr included
    max_processes: int = 8  # processes and threads the run may have at once
    max_open_files: int = 64
    output_bytes: int = 65536  # how much of stdout and of stderr comes back

    def validate(self) -> Limits:
        for name in ("timeout_s", "memory_mb", "file_size_mb", "max_processes", "max_open_files", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name}={getattr(self, name)} must be positive")
        if self.memory_mb < 64:
            raise ValueError(f"Limits.memory_mb={self.memory_mb} is too small for the interpreter to start; "
                             "use at least 64")
        return self


@dataclass(frozen=True)
class Result:
    """How a run ended: status "passed" (exit 0), "failed" (non-zero exit or signal) or "timeout"."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@lru_cache(maxsize=1)
def _network_prefix() -> tuple:
    """The command prefix that puts a run in a new, empty network namespace, or () if none works here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    candidates = [(unshare, "--net")] if os.geteuid() == 0 else []
    candidates.append((unshare, "--map-root-user", "--net"))
    for prefix in candidates:
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return ()


def isolation() -> dict:
    """Which machine-dependent layers run_python gets here."""
    if pids_parent() is not None:
        cap = "cgroup"
    else:
        cap = "rlimit" if os.geteuid() != 0 else None
    return {"process_cap": cap, "network_namespace": bool(_network_prefix()), "audit_hook": True}


def _user_tasks(uid: int) -> int:
    """Processes and threads of `uid` now: RLIMIT_NPROC counts them all, so the cap must start from there."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _end_all(proc: subprocess.Popen, cgroup: PidsCgroup | None) -> None:
    """Kill the run's process group and cgroup members, then reap the run's own process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is not None:
        cgroup.kill()
    proc.wait()


def run_python(code: str, limits: Limits | None = None, guard: bool = True) -> Result:
    """Run `code` as a Python program under `limits`; `guard=False` leaves out the audit hook (tests use it to
    check the kernel-enforced limits on their own)."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str of Python source, got {type(code).__name__}")
    limits = (limits or Limits()).validate()
    root = os.geteuid() == 0
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-"))
    private = Path(tempfile.mkdtemp(prefix="sandbox-out-"))  # holds stdout/stderr; the code cannot reach it
    cgroup = PidsCgroup.create(limits.max_processes)
    config = {
        "workdir": str(workdir), "guard": guard, "cpu_s": math.ceil(limits.timeout_s) + 1,
        "memory_mb": limits.memory_mb, "file_size_mb": limits.file_size_mb,
        "max_open_files": limits.max_open_files,
        "nproc": None if (cgroup is not None or root) else _user_tasks(os.getuid()) + limits.max_processes,
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
    command = [*_network_prefix(), sys.executable, "-I", "-B", str(GUARD), json.dumps(config)]
    start = time.monotonic()
    try:
        with open(private / "stdout", "wb") as out, open(private / "stderr", "wb") as err:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                                    start_new_session=True, close_fds=True)
        timed_out = False
        try:
            if cgroup is not None:
                try:
                    cgroup.add(proc.pid)  # before the code is sent: nothing untrusted has run yet
                except OSError:
                    if proc.poll() is None:
                        raise
            try:
                proc.stdin.write(code.encode("utf-8"))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it died at start-up; its stderr says why
            proc.wait(timeout=max(0.0, limits.timeout_s - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _end_all(proc, cgroup)
        seconds = time.monotonic() - start
        rc = proc.returncode
        if timed_out or rc == -signal.SIGXCPU:
            status = "timeout"
        else:
            status = "passed" if rc == 0 else "failed"
        return Result(status, rc, _read(private / "stdout", limits.output_bytes),
                      _read(private / "stderr", limits.output_bytes), seconds)
    finally:
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
