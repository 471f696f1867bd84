"""The ``tsloss`` dispatcher's process entry: every way a tuner process starts releases its process group
before the interpreter's teardown (pytorch/pytorch#190489: Gloo threads alive then abort the exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, fresh_env, tune_argv

from tsloss_harness.cli import run_as_process
from tsloss_harness.tune import TuneConfig

# The entry started as its process would start it, with an atexit hook (it runs after sys.exit, at
# teardown) that prints whether the process group is still initialized then.
STARTED_WITH_TEARDOWN_PROBE = """
import atexit, runpy, sys
import torch.distributed as dist
atexit.register(lambda: print("group alive at exit:", dist.is_initialized()))
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
    assert "group alive at exit: False" in proc.stdout, proc.stdout[-2000:]


def test_the_tsloss_script_is_the_process_entry():
    script = Path(sys.executable).with_name("tsloss").read_text()  # the one pip wrote for this environment
    assert f"from tsloss_harness.cli import {run_as_process.__name__}" in script, script
