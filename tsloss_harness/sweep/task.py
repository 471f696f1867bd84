"""One attempt of one cell, as a Ray task runs it: the tuner, then lm-eval, each its own process group,
its output appended to a log in the cell's directory.

Imports nothing heavy (no torch): a Ray worker only starts and watches processes. ``spec`` is a plain
dict (engine.cell_spec). An attempt resumes the tuner from its last checkpoint when the run saved one
(``save_every``) with the same config, else starts it from nothing. A stopped attempt (the sweep's stop
file, written on Ctrl-C; or Ray's cancel) ends its process group before it returns, and a child whose
worker dies gets SIGTERM from the kernel (Linux), so no run goes on writing into a cell directory the
sweep has given up.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tsloss_harness import processes
from tsloss_harness.files import write_text_atomic

__all__ = ["run_cell", "tune_command"]

ENTRY = str(Path(__file__).with_name("tune_entry.py"))
# Exec the command once the kernel ends it with the worker that started it (processes.die_with_parent).
# argv: parent pid, command...
_DIE_WITH_PARENT = (
    "import os, sys\n"
    "from tsloss_harness.processes import die_with_parent\n"
    "die_with_parent(int(sys.argv[1]))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
BAD_INPUT = 2  # the tuner's exit code for a bad config or data: another attempt cannot help
KILL_GRACE_S = 10
STOPPED = "stopped: the sweep was interrupted"


class _Stopped(Exception):
    """The sweep's stop file appeared while ``stage`` ran (its process group has been ended)."""

    def __init__(self, stage: str):
        super().__init__(STOPPED)
        self.stage = stage


def run_cell(spec: dict) -> dict:
    """Tune (unless finished) and score (when asked and not done) one cell; a dict saying how it went."""
    cell_dir = Path(spec["dir"])
    cell_dir.mkdir(parents=True, exist_ok=True)
    outcome = {
        "ok": True,
        "attempt": spec["attempt"],
        "host": socket.gethostname(),
        "stage": None,
        "rc": 0,
        "error": None,
        "retryable": False,
        "resumed_from": None,
    }
    stop_file = Path(spec["stop"])
    if stop_file.exists():  # queued when the sweep was interrupted: started only to end
        return {**outcome, "ok": False, "error": STOPPED, "wall_s": 0.0}
    marker = _Marker(cell_dir / "running.json", spec["token"], stop_file)
    started = time.time()
    try:
        if spec["config"] is not None and not _tune_finished(spec):
            outcome.update(_tune(spec, marker))
        for e in spec["evals"]:
            if not outcome["ok"]:
                break
            outcome.update(_eval(spec, e, marker))
    except _Stopped as e:
        outcome.update(ok=False, stage=e.stage, rc=None, error=STOPPED, retryable=False)
    finally:
        marker.clear()
        outcome["wall_s"] = round(time.time() - started, 3)
    return outcome


# ------------------------------------------------------------------------------------------- tune


def _tune_finished(spec: dict) -> bool:
    from tsloss_harness.sweep.grid import config_diff
    from tsloss_harness.tune import TuneConfig

    try:
        summary = json.loads((Path(spec["dir"]) / "tune" / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        isinstance(summary.get("config"), dict) and config_diff(summary["config"], spec["config"], TuneConfig) is None
    )


def _resumable(run_dir: Path, config: dict) -> str | None:
    """The checkpoint tag an attempt can resume from: the run saved one and ran this config."""
    import yaml

    from tsloss_harness.sweep.grid import config_diff
    from tsloss_harness.tune import TuneConfig

    latest = run_dir / "engine_state" / "latest"
    if not config.get("save_every") or not latest.is_file() or not (run_dir / "config.yaml").is_file():
        return None
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return (
        latest.read_text().strip()
        if isinstance(saved, dict) and config_diff(saved, config, TuneConfig) is None
        else None
    )


def tune_command(spec: dict, config_yaml: Path, resume: bool, gpu_ids: list[str]) -> list[str]:
    """``python tune_entry.py --config ...``; with more than one rank the DeepSpeed launcher, on exactly
    the GPUs Ray gave the task (``--include localhost:<ids>``) or ``--num_gpus <ranks>`` CPU ranks."""
    args = [ENTRY, "--config", str(config_yaml)] + (["--resume"] if resume else [])
    if spec["ranks"] == 1:
        return [sys.executable, *args]
    deepspeed = str(Path(sys.executable).with_name("deepspeed"))
    devices = ["--include", "localhost:" + ",".join(gpu_ids)] if gpu_ids else ["--num_gpus", str(spec["ranks"])]
    return [deepspeed, "--master_port", str(_free_port()), *devices, *args]


def _tune(spec: dict, marker: _Marker) -> dict:
    import yaml

    cell_dir = Path(spec["dir"])
    run_dir = cell_dir / "tune"
    tag = _resumable(run_dir, spec["config"])
    if tag is None:  # an earlier attempt's partial run (or none): start from nothing, scores with it
        for stale in [run_dir, *(p for p in cell_dir.glob("eval*") if p.is_dir())]:
            shutil.rmtree(stale, ignore_errors=True)
    config_yaml = cell_dir / "tune.yaml"
    config_yaml.write_text(yaml.safe_dump(spec["config"], sort_keys=False))
    gpu_ids = _gpu_ids(spec)
    env = processes.child_env(spec["threads"])
    if spec["ranks"] > 1 and gpu_ids:  # the launcher's --include names them; it must see every GPU of the node
        env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = tune_command(spec, config_yaml, tag is not None, gpu_ids)
    header = f"attempt {spec['attempt']} on {socket.gethostname()}: " + (
        f"resume from {tag}" if tag else "from the start"
    )
    # CUDA does not survive a fork; PR_SET_PDEATHSIG (a forked cell dies with its server) is Linux's
    forked = spec["fork"] and spec["ranks"] == 1 and not spec["num_gpus"] and sys.platform.startswith("linux")
    rc, error = _run_child(cmd, cell_dir / "tune.log", header, env, cell_dir, marker, "tune", forked)
    ok = rc == 0 and (run_dir / "summary.json").is_file()
    if rc == 0 and not ok:
        error = "the tuner exited 0 without writing summary.json"
    return {
        "ok": ok,
        "stage": "tune",
        "rc": rc,
        "error": None if ok else error,
        "retryable": not ok and rc != BAD_INPUT,
        "resumed_from": tag,
    }


def _gpu_ids(spec: dict) -> list[str]:
    if not spec["num_gpus"]:
        return []
    import ray

    return [str(i) for i in ray.get_gpu_ids()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- eval


def _eval(spec: dict, e: dict, marker: _Marker) -> dict:
    """lm-eval on the cell's prompt (``--model tsprompt``), or on the bare model (``--model hf``) for
    the no-prompt baseline; a variant with ``act`` calibrates ACT's heads first (``--model hf-act``
    without a prompt). ``<eval dir>/eval.json`` records what was scored once it succeeded."""
    from tsloss_harness.resources import tasks_dir
    from tsloss_harness.sweep.grid import eval_dir_name

    cell_dir = Path(spec["dir"])
    eval_dir = cell_dir / eval_dir_name(e)
    try:
        if json.loads((eval_dir / "eval.json").read_text()).get("spec") == e:
            return {}
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    shutil.rmtree(eval_dir, ignore_errors=True)  # a partial or differently configured scoring
    eval_dir.mkdir(parents=True)
    with_prompt = spec["config"] is not None
    model_args = {
        "pretrained": spec["model"],
        **({"prompt": str(cell_dir / "tune" / "prompt")} if with_prompt else {}),
        **e["model_args"],
    }
    log = cell_dir / f"{eval_dir.name}.log"
    header = f"attempt {spec['attempt']} on {socket.gethostname()}"
    if e.get("act") is not None:
        cmd = act_calibrate_command("tsprompt" if with_prompt else "hf", model_args, e, eval_dir / "act.json")
        env = processes.child_env(spec["threads"], e["act"].get("env"))
        rc, error = _run_child(cmd, log, header + ": ACT calibration", env, cell_dir, marker, "calibrate")
        if rc != 0:
            return {"ok": False, "stage": "calibrate", "rc": rc, "retryable": rc != BAD_INPUT, "error": error}
        model_args["act"] = str(eval_dir / "act.json")
    model = "tsprompt" if with_prompt else ("hf-act" if "act" in model_args else "hf")
    cmd = processes.lm_eval_command(
        model,
        model_args,
        e["tasks"],
        eval_dir,
        include_path=e["include_path"] or tasks_dir(),
        batch_size=e["batch_size"],
        num_fewshot=e["num_fewshot"],
        limit=e["limit"],
        gen_kwargs=e["gen_kwargs"],
        device=e["device"],
        log_samples=e["log_samples"],
    )
    env = processes.child_env(spec["threads"], e["env"])
    rc, error = _run_child(cmd, log, header, env, cell_dir, marker, "eval")
    results = sorted(str(p) for p in eval_dir.rglob("results_*.json"))
    if rc != 0 or not results:
        return {
            "ok": False,
            "stage": "eval",
            "rc": rc,
            "retryable": True,
            "error": error if rc != 0 else "lm_eval exited 0 without a results file",
        }
    write_text_atomic(
        eval_dir / "eval.json", json.dumps({"spec": e, "results": results, "command": shlex.join(cmd)}, indent=2)
    )
    return {}


def act_calibrate_command(model: str, model_args: dict, e: dict, output: Path) -> list[str]:
    """``tsloss act-calibrate`` on the variant's tasks (their examples from ``act.env``'s rows)."""
    from tsloss_harness.resources import tasks_dir

    act = e["act"]
    cmd = [sys.executable, "-m", "tsloss_harness.cli", "act-calibrate", "--model", model]
    cmd += ["--model_args", processes.format_model_args(model_args), "--tasks", ",".join(e["tasks"])]
    cmd += ["--include_path", str(e["include_path"] or tasks_dir()), "--limit", str(act["limit"]), "-o", str(output)]
    for name in ("beta", "threshold", "min_gain"):
        if name in act:
            cmd += [f"--{name}", str(act[name])]
    return cmd + (["--device", e["device"]] if e["device"] else [])


# -------------------------------------------------------------------------------------- processes


class _Marker:
    """``running.json`` while the attempt runs: its token (the driver counts running cells by it), host,
    stage and child pid; and the stop file the driver writes on Ctrl-C (engine.run_cells)."""

    def __init__(self, path: Path, token: str, stop_file: Path | None = None):
        self.path, self.token, self.stop_file = path, token, stop_file
        self.write(stage="start", pid=None)

    def stop_requested(self) -> bool:
        return self.stop_file is not None and self.stop_file.exists()

    def write(self, **fields) -> None:
        write_text_atomic(self.path, json.dumps({"token": self.token, "host": socket.gethostname(), **fields}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _run_child(
    cmd: list[str],
    log_path: Path,
    header: str,
    env: dict,
    cwd: Path,
    marker: _Marker,
    stage: str,
    forked: bool = False,
) -> tuple[int, str | None]:
    """Run ``cmd`` in its own process group, output appended to ``log_path``; (exit code, last error line).
    ``forked``: ``cmd`` is ``python script ...``, forked from this worker's fork server (sweep.forkserver)
    rather than started from nothing.

    Waits in short slices, looking for the sweep's stop file (raises _Stopped) and so that Ray's cancel
    (an exception raised between bytecodes) lands promptly; on any exception the whole group is ended
    first."""
    if marker.stop_requested():
        raise _Stopped(stage)
    with open(log_path, "a") as log:
        log.write(f"==== {header}{' (forked from the fork server)' if forked else ''}: {shlex.join(cmd)}\n")
        log.flush()
        start = log.tell()
        if forked:
            from tsloss_harness.sweep.forkserver import fork_server

            proc = fork_server(env, log_path).start(cmd[1:], log_path, cwd)
        else:
            proc = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
                if sys.platform.startswith("linux")
                else cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        marker.write(stage=stage, pid=proc.pid)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if marker.stop_requested():
                        raise _Stopped(stage) from None
        except BaseException:
            _end_group(proc)
            raise
    return rc, None if rc == 0 else _last_error(log_path, start, rc)


def _end_group(proc) -> None:
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_error(log_path: Path, start: int, rc: int) -> str:
    """The attempt's last line of output (a bar's redraws cut), or the signal that ended it."""
    with open(log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    last = next((line for line in reversed(lines) if line), None)
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
        return f"killed by {name}" + (f" (last output: {last})" if last else "")
    return last or f"exit code {rc}, no output"
