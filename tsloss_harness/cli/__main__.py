"""``python -m tsloss_harness.cli ...``: the same as ``tsloss ...``."""

from tsloss_harness.cli import run_as_process

run_as_process()
