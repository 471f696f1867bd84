"""``tsloss tune`` (also ``tune.py`` and ``python -m tsloss_harness.tune``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def tune(argv: list[str]) -> int:
    from tsloss_harness.errors import TslossError
    from tsloss_harness.tune import load_config, run

    config = load_config(argv)
    _quiet_libraries(verbose="-v" in argv or "--verbose" in argv)
    try:
        summary = run(config)
    except TslossError as e:
        if Path(config.output_dir, "metrics.jsonl").exists():
            e.exit_code = 1  # the run had started: not a bad input
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {config.output_dir} (converged_step={summary['converged_step']})")
    return 0


def _quiet_libraries(verbose: bool) -> None:
    """Quiet by default: the libraries' INFO chatter and weight-loading bars off."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if verbose:
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
