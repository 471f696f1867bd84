"""Is a two-rank prompt different from the one-rank prompt by more than fp32 summation order? One real
shape (one layer), one method, a few steps, five runs: one rank under ZeRO-2 at two threads and at one,
one rank under ZeRO-3, two CPU ranks under ZeRO-2 and under ZeRO-3 (the one-rank runs take the two
ranks' one-row micro-batches in turn). Prints each run's step losses, then for every pair of runs the
largest and the RMS difference of the final prompts and how many of its values differ by > 1e-5.

    python benchmarks/trace_stage_equality.py [--model llama2-13b] [--method prompt] [--steps 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_real_shapes as bench  # noqa: E402

RUNS = (  # label, ranks, stage, OMP_NUM_THREADS (None: torch's default, 2 here)
    ("1r_z2_t2", 1, "z2", "2"),
    ("1r_z2_t1", 1, "z2", "1"),
    ("1r_z3_t2", 1, "z3", "2"),
    ("2r_z2", 2, "z2", None),
    ("2r_z3", 2, "z3", None),
)


def main() -> int:

    from tsloss_harness.prompt import load_prompt
    from tsloss_harness.testbed.shaped import build_shaped_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama2-13b")
    parser.add_argument("--method", default="prompt")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trace_stage_equality-"))
    try:
        data = bench.write_rows(work / "data")
        model = build_shaped_model(args.model, work / "model", num_layers=1)
        prompts = {}
        for label, ranks, stage, threads in RUNS:
            ds = bench.REPO / "ds_configs" / f"{stage}.json"
            argv = bench.tune_args(model, data, work / label, args.method, ds, args.steps)
            argv += ["--micro_batch_size=1"] if ranks == 1 else []
            if threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = threads
            run = bench.run_tuner(ranks, work / f"mem_{label}", argv, port=29671)
            if run["rc"]:
                print(f"{label} failed: {run['log'][-500:]}")
                return 1
            prompts[label] = load_prompt(run["prompt"])
            print(f"{label:>9} step losses {[m['loss'] for m in run['metrics']]}", flush=True)
        for x, y in itertools.combinations(prompts, 2):
            d = prompts[x] - prompts[y]
            print(
                f"{x:>9} vs {y:<9} max|d| {float(d.abs().max()):.2e}  rms|d| {float(d.pow(2).mean().sqrt()):.2e}  "
                f"values > 1e-5: {int((d.abs() > 1e-5).sum())}/{d.numel()}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
