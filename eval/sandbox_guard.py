"""The sandbox's child process: set resource limits, install the audit hook, then run the code read from stdin.

eval/sandbox.py runs this file as a script (`python -I -B sandbox_guard.py CONFIG_JSON`), so it imports only
the standard library. The audit hook is defence in depth, not a jail: CPython's audit events cover the usual
ways in (open, os.*, socket, subprocess, imports), but code that corrupts interpreter memory can bypass any
in-process hook. The limits that hold regardless come from the kernel (rlimits, process cap, network namespace,
the process group killed from outside).
"""
import builtins
import json
import os
import resource
import stat
import sys

# Events refused outright: starting or signalling processes, links (a way out of the directory), raising
# rlimits (root may).
_REFUSED = frozenset({
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
    "os.killpg", "os.link", "os.symlink", "resource.setrlimit", "resource.prlimit",
})
# Modules that give a way around the hook: _posixsubprocess.fork_exec is not audited, and ctypes' memmove and
# pointer casts write raw memory without any event (so numpy, which imports ctypes, is unavailable too).
_REFUSED_IMPORTS = frozenset({"_ctypes", "ctypes", "_posixsubprocess"})
# Events that change the filesystem: every path argument must lie inside the sandbox directory.
_WRITES = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
           "os.chflags": (0,), "os.lchflags": (0,), "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1),
           "os.setxattr": (0,), "os.removexattr": (0,), "os.chdir": (0,), "shutil.rmtree": (0,)}
# Events that read directory contents: the path must be readable.
_LISTINGS = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.getxattr": 0, "os.listxattr": 0}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def make_hook(workdir: str, read_roots: tuple):
    """An audit hook allowing writes only under workdir and reads only under workdir and read_roots.

    Everything the hook calls is bound here, in its closure: the code it guards can rebind module attributes
    (this module is its `__main__`; `os`, `posixpath` and builtins are shared), but not closure cells (gc's
    object walks are refused, so it cannot find the hook). Hence our own path resolver below, on bound C
    functions, instead of os.path.realpath, whose helpers are looked up in posixpath at call time.
    """
    own = (workdir.rstrip(os.sep) + os.sep,)
    readable = own + tuple(root.rstrip(os.sep) + os.sep for root in read_roots)
    refused, refused_imports = frozenset(_REFUSED), frozenset(_REFUSED_IMPORTS)
    writes, listings = dict(_WRITES), dict(_LISTINGS)  # copies: the module's dicts are reachable
    write_flags, getpid, getcwd, fsdecode, lstat, readlink, is_link = (
        _WRITE_FLAGS, os.getpid, os.getcwd, os.fsdecode, os.lstat, os.readlink, stat.S_ISLNK)
    length, type_of, is_instance, path_types, error = len, type, isinstance, (str, bytes, os.PathLike), \
        PermissionError

    def refuse(event, detail=""):
        raise error(f"sandbox: {event}{' ' + detail if detail else ''} is not allowed")

    def resolve(path):
        """The absolute path with every symlink followed (as realpath; a missing component is kept)."""
        path = fsdecode(path)
        pending = (path if path.startswith("/") else getcwd() + "/" + path).split("/")[::-1]
        parts, links = [], 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                parts = parts[:-1]
                continue
            candidate = "/" + "/".join(parts + [part])
            try:
                linked = is_link(lstat(candidate).st_mode)
            except OSError:
                linked = False
            if not linked:
                parts = parts + [part]
                continue
            links += 1
            if links > 40:
                refuse("open", f"of {path!r} (too many symlinks)")
            target = readlink(candidate)
            if target.startswith("/"):
                parts = []
            pending.extend(target.split("/")[::-1])
        return "/" + "/".join(parts)

    def inside(path, roots):
        path = path.rstrip("/") + "/"  # so that the directory itself counts as inside
        for root in roots:
            if path.startswith(root):
                return True
        return False

    def hook(event, args):
        if event in refused or event.startswith(("gc.get_", "socket.")):
            refuse(event, "(no network)" if event.startswith("socket.") else "")
        if event == "import" and args[0] in refused_imports:
            refuse(event, args[0])
        if event == "os.kill" and args[0] != getpid():
            refuse(event, f"of pid {args[0]}")
        if event == "open":
            path, mode, flags = args
            if type_of(path) is int:
                return  # an fd the code already holds
            real = resolve(path)
            # os.open (mode None) may take dir_fd, which the event does not show: only inside workdir.
            writing = mode is None or "w" in mode or "a" in mode or "x" in mode or "+" in mode or flags & write_flags
            if not inside(real, own if writing else readable):
                refuse("open", f"of {real!r} for {'writing' if writing else 'reading'}")
            return
        for i in writes.get(event, ()):
            if i < length(args) and is_instance(args[i], path_types) and not inside(resolve(args[i]), own):
                refuse(event, f"on {resolve(args[i])!r}")
        if event in listings and is_instance(args[listings[event]], path_types):
            path = resolve(args[listings[event]])
            if not inside(path, readable):
                refuse(event, f"of {path!r}")

    return hook


def set_limits(cfg: dict) -> None:
    """rlimits the kernel enforces on this process and its children."""
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))  # soft: SIGXCPU; hard: SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_size_mb"] * mb,) * 2)  # stdout/stderr files too
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["nproc"] is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"],) * 2)


def read_roots() -> tuple:
    """What the interpreter needs to read to import modules: every sys.path directory and the stdlib."""
    paths = [p for p in sys.path if p] + [os.path.dirname(os.__file__), "/dev/null", "/dev/urandom"]
    return tuple(sorted({os.path.realpath(p) for p in paths if os.path.exists(p)}))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    set_limits(cfg)
    code = sys.stdin.read()
    del sys.path[0]  # this file's directory: nothing there is for the sandboxed code
    sys.argv = ["<sandbox>"]
    workdir = os.path.realpath(cfg["workdir"])
    if cfg["guard"]:
        sys.addaudithook(make_hook(workdir, read_roots()))
    exec(compile(code, "<sandbox>", "exec"), {"__name__": "__main__", "__builtins__": builtins})


if __name__ == "__main__":
    main()
