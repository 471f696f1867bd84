"""``python -m tsloss_harness.sweep`` = ``tsloss sweep``."""

import sys

from tsloss_harness.cli import run_as_process

run_as_process(["sweep", *sys.argv[1:]])
