"""The tuner as a script file, for sweep cells: ``python tune_entry.py ...`` and
``deepspeed ... tune_entry.py ...`` (the DeepSpeed launcher runs a file; the repository's ``tune.py``
exists only in a source checkout). Same flags as ``tune.py``."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's folder is sys.path[0]: its modules (config, grid, ...) must not
    # shadow top-level ones for the tuner and its libraries.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]
    from tsloss_harness.cli import run_as_process

    run_as_process(["tune", *sys.argv[1:]])
