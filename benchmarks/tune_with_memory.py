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
import time
from pathlib import Path


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it first
    out, argv = Path(args[0]), args[1:]
    out.mkdir(parents=True, exist_ok=True)
    import deepspeed

    from tsloss_harness.tune import main as tune_main

    peaks = {"load": 0, "train": 0, "anon_load": 0, "anon_train": 0}
    phase = ["load"]
    baseline = _status()["RssAnon"]
    rank = os.environ.get("RANK", "0")
    lock = threading.Lock()

    def record(rc=None) -> None:
        values = {
            "rank": int(rank),
            "baseline_anon": baseline,
            "peak_load": peaks["load"],
            "peak_train": peaks["train"],
            "peak_anon_load": peaks["anon_load"],
            "peak_anon_train": peaks["anon_train"],
            "vmhwm": _status()["VmHWM"],
            "rc": rc,
        }
        with lock:  # the sampler and the main thread both write it: whole files only
            tmp = out / f".rank{rank}.json.{threading.get_ident()}"
            tmp.write_text(json.dumps(values) + "\n")
            os.replace(tmp, out / f"rank{rank}.json")

    def sample():
        last = time.monotonic()
        while True:
            now = _status()
            peaks[phase[0]] = max(peaks[phase[0]], now["VmRSS"])
            peaks["anon_" + phase[0]] = max(peaks["anon_" + phase[0]], now["RssAnon"])
            if time.monotonic() - last > 1.0:  # a run killed for memory still leaves its peaks
                record()
                last = time.monotonic()
            time.sleep(0.005)

    initialize = deepspeed.initialize

    def initialize_then_train(*args, **kwargs):
        result = initialize(*args, **kwargs)
        phase[0] = "train"
        return result

    deepspeed.initialize = initialize_then_train
    threading.Thread(target=sample, daemon=True).start()
    rc = tune_main(argv)
    time.sleep(0.02)
    record(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
