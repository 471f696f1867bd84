"""``python -m tsloss_harness.cli ...``: the same as ``tsloss ...``."""

import sys

from tsloss_harness.cli import main

sys.exit(main())
