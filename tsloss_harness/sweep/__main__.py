"""``python -m tsloss_harness.sweep`` = ``tsloss sweep``."""

import sys

from tsloss_harness.cli import main

sys.exit(main(["sweep", *sys.argv[1:]]))
