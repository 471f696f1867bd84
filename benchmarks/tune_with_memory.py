"""``tune.py`` that also records its rank's memory: ``python benchmarks/tune_with_memory.py OUT_DIR <tune flags>``
or ``deepspeed --num_gpus 2 benchmarks/tune_with_memory.py OUT_DIR <tune flags>``.

Writes ``OUT_DIR/rank<R>.json``: the peak resident memory (VmRSS: allocated pages plus the pages of
mapped files, the safetensors checkpoint included: one rank holds an fp32 model as a mapping of the
file) while the model loads (up to ``deepspeed.initialize``) and while it trains, sampled every 5 ms
by a thread, with the anonymous part (RssAnon) beside it, the baseline after the imports and the
kernel's VmHWM.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it first
    out, argv = Path(args[0]), args[1:]
    out.mkdir(parents=True, exist_ok=True)
    import deepspeed

    from tsloss_harness.cli import main as tsloss_main
    from tsloss_harness.memory import PeakSampler, status

    rank = os.environ.get("RANK", "0")
    lock = threading.Lock()

    def record(rc=None) -> None:
        values = {
            "rank": int(rank),
            "baseline": sampler.baseline["VmRSS"],
            "peak_load": sampler.peaks.get("load", 0),
            "peak_train": sampler.peaks.get("train", 0),
            "peak_anon_load": sampler.anon_peaks.get("load", 0),
            "peak_anon_train": sampler.anon_peaks.get("train", 0),
            "vmhwm": status()["VmHWM"],
            "rc": rc,
        }
        with lock:  # the sampler's thread and the main thread both write it: whole files only
            tmp = out / f".rank{rank}.json.{threading.get_ident()}"
            tmp.write_text(json.dumps(values) + "\n")
            os.replace(tmp, out / f"rank{rank}.json")

    # a run killed for memory still leaves its peaks
    sampler = PeakSampler(phase="load", on_sample=record)
    initialize = deepspeed.initialize

    def initialize_then_train(*args, **kwargs):
        result = initialize(*args, **kwargs)
        sampler.phase = "train"
        return result

    deepspeed.initialize = initialize_then_train
    rc = tsloss_main(["tune", *argv])
    record(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
