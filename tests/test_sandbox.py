"""The sandbox for model-written code: time, memory, process and file-size limits, filesystem and network
confinement, each checked on what actually happened (processes gone, files absent, no connection accepted)."""
import os
import socket
import textwrap
from pathlib import Path

import pytest

from eval.sandbox import Limits, isolation, run_python
from eval.sandbox_cgroup import pids_parent

FAST = Limits(timeout_s=1.5)
NEEDS_CAP = pytest.mark.skipif(isolation()["process_cap"] is None,
                               reason="root without a writable pids cgroup: no kernel process cap on this machine")


def alive(pid: int) -> bool:
    """Running (a zombie has finished: it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def run(code: str, limits: Limits = FAST, guard: bool = True):
    return run_python(textwrap.dedent(code), limits, guard=guard)


def test_correct_program_passes_and_wrong_one_fails():
    ok = run("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('fine')")
    assert ok.passed and ok.returncode == 0 and ok.stdout == "fine\n"
    bad = run("def add(a, b):\n    return a - b\nassert add(2, 3) == 5")
    assert bad.status == "failed" and bad.returncode == 1 and "AssertionError" in bad.stderr
    syntax = run("def f(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr


def test_infinite_loop_stops_at_the_time_limit():
    result = run("while True:\n    pass", Limits(timeout_s=1.0))
    assert result.status == "timeout"
    assert 1.0 <= result.seconds < 1.8  # the wall-clock limit, plus the time to kill and reap


@pytest.mark.parametrize("escape", [False, pytest.param(True, marks=pytest.mark.skipif(
    pids_parent() is None, reason="a process that leaves the session is found only through a pids cgroup"))])
def test_timeout_kills_children_and_grandchildren(escape):
    # Without the audit hook, so the code can fork: the kernel-side clean-up is what is tested.
    result = run(f"""
        import os, time
        if os.fork() == 0:
            if os.fork() == 0:
                if {escape}:
                    os.setsid()  # leave the sandbox's process group and session
                print("grandchild", os.getpid(), flush=True)
                while True:
                    time.sleep(0.01)
            print("child", os.getpid(), flush=True)
            while True:
                time.sleep(0.01)
        while True:
            pass
        """, guard=False)
    assert result.status == "timeout"
    pids = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()}
    assert set(pids) == {"child", "grandchild"}, result.stdout + result.stderr
    assert not any(alive(pid) for pid in pids.values())


def test_fork_bomb_refused_by_the_hook():
    result = run("import os\nwhile True:\n    os.fork()")
    assert result.status == "failed" and "os.fork is not allowed" in result.stderr
    assert result.seconds < 1.0


@NEEDS_CAP
def test_fork_bomb_capped_by_the_kernel():
    # Every process forks forever; without the hook only the process cap stops it. Each child stays alive, so
    # the pids printed are every fork that ever succeeded.
    limits = Limits(timeout_s=1.0, max_processes=6)
    result = run("""
        import os
        while True:
            try:
                pid = os.fork()
            except OSError:
                continue
            if pid:
                print(pid, flush=True)
        """, limits, guard=False)
    assert result.status == "timeout"
    pids = [int(p) for p in result.stdout.split()]
    assert 1 <= len(pids) <= limits.max_processes - 1  # the first process counts too
    assert not any(alive(pid) for pid in pids)
    parent = pids_parent()
    if parent is not None:
        assert not list(parent.glob(f"lrnn-sandbox-{os.getpid()}-*"))  # each run's cgroup is removed


def test_memory_hog_is_stopped():
    result = run("""
        hog = []
        while True:
            hog.append(bytearray(32 * 2**20))
        """, Limits(timeout_s=3.0, memory_mb=256))
    assert result.status == "failed" and "MemoryError" in result.stderr
    assert result.seconds < 2.0


def test_output_flood_is_cut_by_the_file_size_limit():
    limits = Limits(timeout_s=3.0, file_size_mb=1, output_bytes=1000)
    result = run("while True:\n    print('x' * 1000)", limits)
    assert result.status == "failed" and result.seconds < 2.0  # SIGXFSZ, not the time limit
    assert len(result.stdout) == 1000


def test_files_inside_work_and_writes_outside_are_refused(tmp_path):
    inside = run("""
        import os
        open("note.txt", "w").write("kept")
        os.makedirs("a/b")
        print(open("a/../note.txt").read(), os.getcwd() == os.environ["HOME"] == os.environ["TMPDIR"])
        """)
    assert inside.passed and inside.stdout == "kept True\n", inside.stderr
    target, existing = tmp_path / "escape.txt", tmp_path / "existing.txt"
    existing.write_text("still here")
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os; os.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                 f"import os; os.remove({str(existing)!r})",
                 f"import os; os.rename({str(existing)!r}, 'stolen.txt')",
                 f"import pathlib; pathlib.Path('../' * 20 + {str(target)!r}.lstrip('/')).write_text('x')",
                 f"import os; os.symlink({str(tmp_path)!r}, 'door'); open('door/escape.txt', 'w')"):
        result = run(code)
        assert result.status == "failed" and "sandbox: " in result.stderr, (code, result.stderr)
    assert not target.exists() and existing.read_text() == "still here"


def test_reads_outside_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    for code in (f"print(open({str(secret)!r}).read())",
                 f"import os; print(os.listdir({str(tmp_path)!r}))",
                 "print(open('/etc/hostname').read())"):
        result = run(code)
        assert result.status == "failed" and "sandbox: " in result.stderr, (code, result.stderr)
        assert "secret" not in result.stdout


@pytest.mark.parametrize("guard", [True, pytest.param(False, marks=pytest.mark.skipif(
    not isolation()["network_namespace"], reason="no network namespace here: only the hook stops sockets"))])
def test_socket_connection_never_arrives(guard):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        result = run(f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=0.5).sendall(b"hello")
            print("connected")
            """, guard=guard)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody knocked
    assert result.status == "failed" and "connected" not in result.stdout
    if guard:
        assert "sandbox: socket" in result.stderr


def test_each_run_gets_a_fresh_directory_removed_afterwards():
    first = run("import os; open('left.txt', 'w').write('x'); print(os.getcwd())")
    second = run("import os; print(os.getcwd(), os.path.exists('left.txt'))")
    first_dir, (second_dir, leftover) = first.stdout.strip(), second.stdout.split()
    assert first_dir != second_dir and leftover == "False"
    assert not Path(first_dir).exists() and not Path(second_dir).exists()


def test_bad_arguments_are_clear():
    with pytest.raises(TypeError, match="code must be a str"):
        run_python(b"print(1)")
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", Limits(timeout_s=0))
