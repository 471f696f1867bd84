"""The ``tsloss`` dispatcher's process entry: every way a tuner process starts releases its process group
and exits 0 without reaching the interpreter's teardown (pytorch/pytorch#190489: C++ threads alive then abort
the exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, fresh_env, tune_argv

from tsloss_harness.cli import run_as_process
from tsloss_harness.tune import TuneConfig

# The entry started as its process would start it, with torch.distributed's destroy_process_group
# wrapped to say when it is called and whether a group is left after it, and an atexit hook that says
# whether the interpreter's teardown was reached.
STARTED_WITH_TEARDOWN_PROBE = """
import atexit, runpy, sys
import torch.distributed as dist
atexit.register(lambda: print("interpreter teardown reached", flush=True))
destroy = dist.destroy_process_group
def destroy_and_report(*args, **kwargs):
    destroy(*args, **kwargs)
    print("group released; initialized after:", dist.is_initialized(), flush=True)
dist.destroy_process_group = destroy_and_report
kind, target, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = [target, *argv]
runpy.run_module(target, run_name="__main__") if kind == "module" else runpy.run_path(target, run_name="__main__")
"""

ENTRIES = {
    "tune.py": ("path", str(REPO / "tune.py")),
    "python -m tsloss_harness.tune": ("module", "tsloss_harness.tune"),
    "sweep cells' tune_entry.py": ("path", str(REPO / "tsloss_harness" / "sweep" / "tune_entry.py")),
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_tuner_process_exits_with_its_process_group_released(entry, tiny_llama_dir, gsm8k_dir, tmp_path):
    config = TuneConfig(
        model=str(tiny_llama_dir), data_dir=str(gsm8k_dir), output_dir=str(tmp_path / "run"), num_samples=2,
        batch_size=2, max_steps=1, eval_every=0, topology_every=0, progress=False,
    )  # fmt: skip
    kind, target = ENTRIES[entry]
    proc = subprocess.run(
        [sys.executable, "-c", STARTED_WITH_TEARDOWN_PROBE, kind, target, *tune_argv(config)],
        env=fresh_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").exists()
    assert "group released; initialized after: False" in proc.stdout, proc.stdout[-2000:]
    assert "interpreter teardown reached" not in proc.stdout
    assert "run directory:" in proc.stdout  # what the run printed was flushed before the exit


def test_the_tsloss_script_is_the_process_entry():
    script = Path(sys.executable).with_name("tsloss").read_text()  # the one pip wrote for this environment
    assert f"from tsloss_harness.cli import {run_as_process.__name__}" in script, script
