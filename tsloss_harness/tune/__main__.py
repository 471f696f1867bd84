"""``python -m tsloss_harness.tune ...``: the same as ``tune.py`` and ``tsloss tune``."""

import sys

from tsloss_harness.cli import run_as_process

run_as_process(["tune", *sys.argv[1:]])
