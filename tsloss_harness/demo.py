"""``tsloss demo``: tune a TSLoss prompt end to end on this machine in a few minutes, offline.

By default it builds the tiny random-weight llama of :mod:`tsloss_harness.tiny` (cached under
``$TSLOSS_CACHE`` or ``~/.cache/tsloss_harness``), generates GSM8K-format rows, tunes a 20-token
prompt with TSLoss for a few dozen steps in one process and prints the run directory
(``metrics.jsonl``, ``summary.json``, ``prompt/``). ``--model`` takes any causal LM directory instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("TSLOSS_CACHE") or Path.home() / ".cache" / "tsloss_harness")


def default_model() -> Path:
    """The tiny llama fixture, built once into the cache."""
    from tsloss_harness import tiny

    path = cache_dir() / "tiny-llama"
    if not (path / "config.json").is_file():
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tiny.build_tiny_model("llama", tmp)
        tmp.rename(path)  # whole or absent: a half-built model is never picked up
    return path


def demo_data(num_rows: int, seed: int) -> Path:
    from tsloss_harness import tiny

    path = cache_dir() / f"demo-gsm8k-{num_rows}-{seed}"
    if not (path / "train.jsonl").is_file():
        tiny.write_jsonl(tiny.generate_gsm8k_rows(num_rows, seed=seed), path / "train.jsonl")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tsloss demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="causal LM directory (default: the tiny llama, built into the cache)")
    parser.add_argument("--output_dir", help="run directory (default: runs/demo-<time>)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01, help="larger than the paper's 5e-5: a few dozen steps only")
    parser.add_argument("--regularizer", default="tsloss")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from tsloss_harness.data import DataError
    from tsloss_harness.tune import TuneConfig, TuneError, run

    output_dir = args.output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print("building the tiny model and data..." if not args.model else "preparing data...", flush=True)
    model = args.model or str(default_model())
    config = TuneConfig(
        model=model,
        dataset="gsm8k",
        data_dir=str(demo_data(args.num_samples, args.seed)),
        num_samples=args.num_samples,
        output_dir=output_dir,
        regularizer=args.regularizer,
        batch_size=8,
        max_steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.steps // 2,
        eval_max_samples=args.num_samples,
        topology_every=10,
    )
    try:
        summary = run(config)
    except (DataError, TuneError) as e:
        print(f"tsloss demo: {e}", file=sys.stderr)
        return 2
    import json

    first = json.loads((Path(output_dir) / "metrics.jsonl").read_text().splitlines()[0])
    final = summary["final"]
    print(
        f"tuned a {config.num_virtual_tokens}-token {config.regularizer} prompt for {summary['steps']} steps "
        f"in {summary['wall_time_s']:.0f} s: loss {first['loss']:.4f} -> {final['loss']:.4f}, "
        f"training accuracy {final.get('accuracy')}"
    )
    print(f"run directory: {Path(output_dir).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
