"""``python -m tsloss_harness.tune ...``: the same as ``tune.py`` and ``tsloss tune``."""

import sys

from tsloss_harness.cli import main

sys.exit(main(["tune", *sys.argv[1:]]))
