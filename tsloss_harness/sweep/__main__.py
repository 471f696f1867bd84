"""``python -m tsloss_harness.sweep`` = ``tsloss sweep``."""

import sys

from tsloss_harness.sweep import main

sys.exit(main())
