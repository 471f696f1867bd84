"""sweep.forkserver: a script forked from the server runs as ``python script args`` started from nothing
runs it (output, exit status, directory, environment, own process group), the server serves one
child after another, and the server and its child die with the process that started the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tsloss_harness.sweep import forkserver
from tsloss_harness.sweep.forkserver import PRELOAD, fork_server, source_stamp

pytestmark = pytest.mark.slow  # each server imports torch, transformers, PEFT and DeepSpeed (~5 s)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    mode = sys.argv[1]
    print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "var": os.environ.get("FORK_TEST_VAR"),
                      "own_group": os.getpgid(0) == os.getpid()}))
    print("to stderr", file=sys.stderr)
    if mode == "exit":
        sys.exit(int(sys.argv[2]))
    if mode == "message":
        sys.exit("tsloss tune: bad input")
    if mode == "raise":
        raise ValueError("a bug")
    if mode == "sleep":
        import time
        time.sleep(300)
    """
)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("forkserver")
    env = {**os.environ, "FORK_TEST_VAR": "from the environment"}
    server = fork_server(env, root / "server.log")
    yield server, env, root
    server.close()


@pytest.mark.parametrize("args", [["exit", "0"], ["exit", "3"], ["message"], ["raise"]])
def test_a_forked_script_runs_as_python_runs_it(server, args, tmp_path):
    server, env, root = server
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    workdir = tmp_path / "work"
    workdir.mkdir()
    with open(tmp_path / "direct.log", "w") as log:
        direct = subprocess.run(
            [sys.executable, str(script), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,  # as sweep.task starts a cell that is not forked
        )
    child = server.start([str(script), *args], tmp_path / "forked.log", workdir)
    assert child.wait(timeout=60) == direct.returncode
    forked, started = (tmp_path / "forked.log").read_text(), (tmp_path / "direct.log").read_text()
    assert json.loads(forked.splitlines()[0]) == {
        "argv": args,
        "cwd": str(workdir),
        "var": "from the environment",
        "own_group": True,
    }
    # the same output, less the traceback's frames inside the fork server and python's
    assert forked.splitlines()[:2] == started.splitlines()[:2]
    assert forked.splitlines()[-1] == started.splitlines()[-1]
    assert fork_server(env, root / "server.log") is server  # one server, one child after another


def test_a_forked_child_has_the_libraries_imported_and_a_signal_ends_it(server, tmp_path):
    server, _, _ = server
    probe = tmp_path / "probe.py"
    probe.write_text(f"import json, sys\nprint(json.dumps([m in sys.modules for m in {list(PRELOAD)!r}]))\n")
    child = server.start([str(probe)], tmp_path / "probe.log", tmp_path)
    assert child.wait(timeout=60) == 0
    assert json.loads((tmp_path / "probe.log").read_text()) == [True] * len(PRELOAD)

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    child = server.start([str(script), "sleep"], tmp_path / "sleep.log", tmp_path)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.5)
    os.killpg(child.pid, signal.SIGKILL)  # its own group: sweep.task ends a cancelled cell so
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_the_server_and_its_child_die_with_the_process_that_started_it(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    starter = textwrap.dedent(
        f"""
        import json, os, sys, time
        from pathlib import Path
        from tsloss_harness.sweep.forkserver import fork_server
        server = fork_server(dict(os.environ), Path({str(tmp_path / "server.log")!r}))
        child = server.start([{str(script)!r}, "sleep"], Path({str(tmp_path / "child.log")!r}), Path("."))
        print(json.dumps([server.proc.pid, child.pid]), flush=True)
        time.sleep(300)
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(worker.stdout.readline())
    finally:
        worker.kill()  # SIGKILL, as the OOM killer ends a Ray worker: nothing of it runs
        worker.wait()
    deadline = time.time() + 15
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after their starter died: {left} (server, child: {pids})"


def test_a_server_is_replaced_once_the_package_source_changed(server, tmp_path, monkeypatch):
    server, env, root = server
    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    before = source_stamp(package)
    assert source_stamp(package) == before
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert source_stamp(package) != before  # an edit (size, mtime) shows

    monkeypatch.setattr(forkserver, "source_stamp", lambda: ("another install",))
    fresh = fork_server(env, root / "server.log")
    try:
        assert fresh is not server and server.proc.poll() is not None  # the old one is ended
        probe = tmp_path / "probe.py"
        probe.write_text("print('ran')\n")
        assert fresh.start([str(probe)], tmp_path / "probe.log", tmp_path).wait(timeout=60) == 0
    finally:
        fresh.close()
