"""Cells as Ray tasks: a local Ray instance sized to the machine by default, or an existing cluster
(``--address`` / ``RAY_ADDRESS``); retries; a progress bar; Ctrl-C that leaves the run directories
consistent.

Each cell is one task asking for the cell's CPUs and GPUs; Ray places it, and the task runs the
cell's processes (sweep.task). A failed attempt is submitted again, up to ``retries`` more times,
unless the tuner refused its input (exit code 2: another attempt cannot help); a worker or node that
died counts as a failed attempt. Ctrl-C (or SIGTERM, as Slurm sends at the end of a job) stops the
run's tasks through a stop file in the output folder: a running one ends its process group and returns,
a queued one returns as it starts, so an interrupted cell has no summary.json and the next run of the
sweep resumes it from its last checkpoint or starts it again. Not ``ray.cancel``: in Ray 2.60 a cancel
that crosses a task's completion aborts the driver ("Tried to complete task that was not pending",
ray-project/ray#54846).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from tsloss_harness.errors import first_line
from tsloss_harness.sweep.config import SweepError

__all__ = ["SweepInterrupted", "connect", "run_cells"]

LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # cells exchange small dicts only
STOP_WAIT_S = 30  # a stopped cell's group gets SIGTERM, then SIGKILL 10 s later (sweep.task)


class SweepInterrupted(Exception):
    """Ctrl-C: the running cells were stopped; ``records`` holds the cells that ended before it."""

    def __init__(self, records: dict[str, dict], unfinished: list[str]):
        super().__init__(f"interrupted with {len(unfinished)} cell(s) unfinished")
        self.records, self.unfinished = records, unfinished


def connect(address: str | None) -> Callable[[], None]:
    """Join ``address`` (or ``RAY_ADDRESS``), or start a local instance sized to this machine; reuse this
    process's Ray connection if it has one. Returns what ends it (a no-op for a connection it reused)."""
    import ray

    if ray.is_initialized():
        return lambda: None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(
                num_cpus=_usable_cpus(), include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SweepError(f"cannot start or join {where}: {first_line(e)}") from None
    return ray.shutdown


def _usable_cpus() -> int:
    """The CPUs this process may run on (a Slurm or cgroup allocation, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_fits(specs: list[dict]) -> None:
    """A cell no node can hold would wait forever: refuse it now (checked against the nodes up now)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for spec in specs:
        need = {"CPU": spec["num_cpus"], "GPU": spec["num_gpus"]}
        if not any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
            largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in need}
            raise SweepError(
                f"cell {spec['name']} asks for {spec['num_cpus']:g} CPU(s) and {spec['num_gpus']:g} GPU(s); "
                f"the largest node has {largest['CPU']:g} and {largest['GPU']:g}"
            )


def run_cells(
    specs: list[dict], retries: int, stop_dir: Path, progress: bool = True, parallel: int | None = None
) -> dict[str, dict]:
    """Run every spec to success or to its last attempt; name -> record (state, attempts, error).
    ``stop_dir``: a folder every node sees (the sweep's output folder), for the stop file."""
    import ray
    from tqdm.auto import tqdm

    from tsloss_harness.sweep.task import run_cell

    check_fits(specs)
    remote = ray.remote(run_cell)
    waiting = list(reversed(specs))  # popped from the end: the sweep's order
    inflight: dict = {}  # ObjectRef -> spec
    records: dict[str, dict] = {}
    stop_file = Path(stop_dir) / f".stop-{uuid.uuid4().hex}"
    bar = tqdm(total=len(specs), desc="sweep", unit="cell", disable=not progress, dynamic_ncols=True)

    def submit(spec: dict) -> None:
        spec = {**spec, "token": uuid.uuid4().hex, "stop": str(stop_file)}
        options = {
            "num_cpus": spec["num_cpus"],
            "num_gpus": spec["num_gpus"],
            "max_retries": 0,
            "name": f"cell {spec['name']}",
        }
        inflight[remote.options(**options).remote(spec)] = spec

    shown = ""
    try:
        while waiting or inflight:
            while waiting and (parallel is None or len(inflight) < parallel):
                submit(waiting.pop())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = inflight.pop(ref)
                outcome = _outcome(ref)
                record = records.setdefault(spec["name"], {"attempts": []})
                record["attempts"].append(outcome)
                if not outcome["ok"] and outcome["retryable"] and spec["attempt"] <= retries:
                    submit({**spec, "attempt": spec["attempt"] + 1})
                    continue
                record.update(state="done" if outcome["ok"] else "failed", error=outcome["error"])
                _write_record(spec, record)
                bar.update(1)
            running = sum(_is_running(spec) for spec in inflight.values())
            failed = sum(r.get("state") == "failed" for r in records.values())
            status = f"done {bar.n - failed}, running {running}, queued {len(inflight) - running + len(waiting)}, failed {failed}"
            if status != shown:
                bar.set_postfix_str(status, refresh=True)
                shown = status
    except KeyboardInterrupt:
        _stop(list(inflight), stop_file)
        raise SweepInterrupted(records, [s["name"] for s in inflight.values()] + [s["name"] for s in waiting]) from None
    finally:
        bar.close()
    return records


def _outcome(ref) -> dict:
    """The task's own account, or a failed attempt for a task that raised or whose worker/node died."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None) or e
        text = str(cause).strip().splitlines()
        return {
            "ok": False,
            "stage": "ray",
            "rc": None,
            "retryable": True,
            "resumed_from": None,
            "error": f"{type(cause).__name__}: {text[-1] if text else ''}".strip(": "),
        }


def _is_running(spec: dict) -> bool:
    try:
        return json.loads((Path(spec["dir"]) / "running.json").read_text()).get("token") == spec["token"]
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _stop(refs: list, stop_file: Path) -> None:
    """Write the stop file and wait (up to STOP_WAIT_S) for every task still in flight to return; the
    file goes once none is left to read it (a task still running then, or after a second Ctrl-C, keeps
    it: the next run's file has another name)."""
    import ray

    stop_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.touch()
    try:
        _, left = ray.wait(refs, num_returns=len(refs), timeout=STOP_WAIT_S) if refs else ([], [])
    except KeyboardInterrupt:
        return
    if not left:
        stop_file.unlink(missing_ok=True)


def _write_record(spec: dict, record: dict) -> None:
    cell = {"cell": spec["key"], "state": record["state"], "error": record["error"], "attempts": record["attempts"]}
    path = Path(spec["dir"]) / "cell.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=2) + "\n")
