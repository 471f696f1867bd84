"""A fork server for single-rank CPU cells: a process that has imported what the tuner imports and forks
each cell's ``python tune_entry.py ...`` from itself.

Started from nothing, a cell's tuner spends ~4 s importing torch, transformers, PEFT and DeepSpeed
before it tunes for ~1 s (the CPU testbed's single-sample protocol). Forked from a server that imported
them once, each cell is still its own process: its own pid and process group, its output appended to
its log, the same argv, environment and working directory as the command it stands for. Cells with
GPUs (CUDA does not survive a fork) or several ranks (the DeepSpeed launcher starts them) start from
nothing (sweep.task).

One server per Ray worker and environment (libraries read some variables when imported, so a server
runs with its cells' environment); the server dies with the worker that started it and each cell with
its server (PR_SET_PDEATHSIG), as a cell started directly dies with its worker.

Protocol: a JSON line per request on the server's stdin, ``{"argv": [script, *args], "log", "cwd"}``;
the server answers ``{"pid"}`` once the child has its own process group, then ``{"pid", "rc"}`` when it
ended (rc as ``Popen.returncode``: negative for a signal).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tsloss_harness.processes import die_with_parent

__all__ = ["PRELOAD", "ForkServer", "fork_server", "source_stamp"]

# What a tuner run imports, the slow ones: DeepSpeed's optimizer check imports its Muon module, which
# calls torch.compile when imported (~1.6 s of torch._inductor). A module a version lacks is skipped.
PRELOAD = (
    "torch",
    "transformers",
    "peft",
    "deepspeed",
    "deepspeed.runtime.zero.muon.muon_optimizer",
    "ripser",
    "tsloss_harness.cli",
    "tsloss_harness.tune.recipe",
)
PACKAGE = Path(__file__).resolve().parent.parent
_servers: dict[tuple, tuple[tuple, ForkServer]] = {}  # this process's servers: env -> (source stamp, server)


def fork_server(env: dict[str, str], stderr_path: Path) -> ForkServer:
    """This process's server for ``env``, started (its import messages into ``stderr_path``) if it has
    none running, or if the package's source changed since it started (a Ray worker outlives a sweep:
    a server must not go on running the code of an earlier install)."""
    key, stamp = tuple(sorted(env.items())), source_stamp()
    old_stamp, server = _servers.get(key, (None, None))
    if server is None or old_stamp != stamp or server.proc.poll() is not None:
        if server is not None:
            server.close()
        server = ForkServer(env, stderr_path)
        _servers[key] = (stamp, server)
    return server


def source_stamp(root: Path = PACKAGE) -> tuple:
    """Path, size and modification time of every Python file of the package under ``root``."""
    return tuple(
        (str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p in sorted(root.rglob("*.py")) for st in [p.stat()]
    )


class ForkServer:
    def __init__(self, env: dict[str, str], stderr_path: Path):
        with open(stderr_path, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tsloss_harness.sweep.forkserver", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                start_new_session=True,  # Ctrl-C at a terminal reaches the sweep, not the server
            )
        self._buffer = b""

    def start(self, argv: list[str], log: Path, cwd: Path) -> ForkedChild:
        """Fork ``python argv...`` with output appended to ``log``; returns once it has its process group."""
        request = {"argv": [str(a) for a in argv], "log": str(log), "cwd": str(cwd)}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            while True:  # in slices, for Ray's cancel; a reply about an earlier child is stale
                reply = self.next_reply(0.5)
                if reply is not None and "rc" not in reply:
                    return ForkedChild(self, reply["pid"])
        except BaseException:  # a child may be on its way: the server goes, and the child with it
            self.close()
            raise

    def close(self) -> None:
        """End the server (a child it runs gets SIGTERM: PR_SET_PDEATHSIG)."""
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()

    def next_reply(self, timeout: float | None) -> dict | None:
        """The next reply, or None if none came within ``timeout``; EOFError once the server is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                raise EOFError("the fork server exited")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


class ForkedChild:
    """A forked cell as ``subprocess.Popen`` is used by sweep.task: ``pid`` and ``wait(timeout)``."""

    def __init__(self, server: ForkServer, pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply = self.server.next_reply(left)
            except EOFError:  # its server died: so does the child (PDEATHSIG); make sure of it
                _kill_group(self.pid, signal.SIGKILL)
                self.returncode = -signal.SIGKILL
                break
            if reply is None:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            if reply.get("pid") == self.pid and "rc" in reply:
                self.returncode = reply["rc"]
        return self.returncode


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------------- server


def serve(parent: int) -> None:
    die_with_parent(parent)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the libraries print goes where their warnings go, not into the replies
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    server_pid = os.getpid()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()  # the server's end: a client must see EOF once the server is gone
            _become_cell(request, server_pid)  # never returns
        try:
            os.setpgid(pid, pid)  # the child does too; whichever runs first, the group exists before the reply
        except OSError:
            pass
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status)}) + "\n")


def _become_cell(request: dict, server_pid: int) -> None:
    """In the forked child: the cell's process group, streams and directory, then its script as
    ``python script args`` runs it; exits with the code the interpreter would have."""
    code = 1
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        die_with_parent(server_pid)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((devnull, 0), (log, 1), (log, 2)):
            os.dup2(fd, target)
        os.close(log)
        os.close(devnull)
        os.chdir(request["cwd"])
        sys.argv = list(request["argv"])
        code = _run_script(sys.argv[0])
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _run_script(path: str) -> int:
    """The script's exit status, SystemExit mapped as the interpreter maps it (other exceptions: the
    caller prints them, status 1)."""
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    serve(int(sys.argv[1]))
