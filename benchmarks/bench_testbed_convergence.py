"""Can a soft prompt steer the testbed? Single-sample convergence on the testbed vs the random fixture.

For each seed, one generated GSM8K-format row (not from the pretraining corpus: another generator
seed) is tuned with the tuner's `run` and the testbed's tuning defaults (`testbed.TUNE_DEFAULTS`)
for at most 600 steps; a run converges at the first step whose greedy generation gives the row's
final answer (the tuner's `converged_step`, the paper's Table IV measure). The same is done on the
random-weight fixture of the testbed's exact shape, tokenizer and seed (its starting point).

    python benchmarks/bench_testbed_convergence.py                 # 10 seeds, default llama testbed
    python benchmarks/bench_testbed_convergence.py --seeds 3 --size quick --regularizer none
    python benchmarks/bench_testbed_convergence.py --corpus "$TSLOSS_GSM8K_DIR" --skip_random

Acceptance (issue 7): the testbed converges within 600 steps for >= 8 of 10 seeds, the random
fixture for none. Prints one JSON line per run and a summary; `--json FILE` saves everything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def tune_one(model_dir: Path, row: dict, seed: int, work: Path, overrides: dict) -> dict:
    from tsloss_harness.data import write_jsonl
    from tsloss_harness.tune import TuneConfig, run

    data_dir = work / "data"
    write_jsonl([row], data_dir / "train.jsonl")
    config = TuneConfig(
        model=str(model_dir),
        dataset="gsm8k",
        data_dir=str(data_dir),
        num_samples=1,
        output_dir=str(work / "run"),
        seed=seed,
        topology_every=0,  # metrics only: does not change training
        stop_at_convergence=True,
        progress=False,
        **overrides,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        summary = run(config)
    lines = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "converged_step": summary["converged_step"],
        "steps": summary["steps"],
        "ce_first": lines[0]["ce"],
        "ce_last": lines[-1]["ce"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="llama")
    parser.add_argument("--size", default="default")
    parser.add_argument(
        "--corpus", default="generated", help="the testbed's pretraining corpus (tuned rows are always generated)"
    )
    parser.add_argument("--testbed_seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--regularizer", default=None, help="override TUNE_DEFAULTS' regularizer (tuner default: tsloss)"
    )
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--skip_random", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import logging

    for name in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from tsloss_harness.testbed import pretrain as testbed
    from tsloss_harness.testbed.problems import generate_gsm8k_rows
    from tsloss_harness.testbed.tiny import build_tiny_model

    overrides = dict(testbed.TUNE_DEFAULTS)
    for key in ("regularizer", "lr", "max_steps"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)

    model_dir = testbed.build_testbed(arch=args.arch, corpus=args.corpus, size=args.size, seed=args.testbed_seed)
    card = json.loads((model_dir / "testbed.json").read_text())
    print(
        f"testbed {model_dir}: {card['steps']} steps, loss {card['loss_first']:.3f} -> {card['loss_final']:.3f}, "
        f"built in {card['wall_s']} s ({card['cpu_s']} s CPU)",
        flush=True,
    )
    print(
        f"tune overrides: {json.dumps(overrides)}  torch threads: {__import__('torch').get_num_threads()}", flush=True
    )

    results: dict[str, list[dict]] = {"testbed": [], "random": []}
    with tempfile.TemporaryDirectory(prefix="bench_testbed_") as tmp:
        tmp = Path(tmp)
        models = {"testbed": model_dir}
        if not args.skip_random:
            # The testbed's starting point: same arch, shape, tokenizer and seed, random weights.
            models["random"] = build_tiny_model(
                args.arch,
                tmp / "random",
                seed=args.testbed_seed,
                tokenizer_dir=model_dir,
                **testbed.SIZES[args.size].model,
            )
        for seed in range(args.seeds):
            row = generate_gsm8k_rows(1, seed=10_000 + seed)[0]
            for name, path in models.items():
                r = tune_one(path, row, seed, tmp / f"{name}-{seed}", overrides)
                results[name].append({"seed": seed, **r})
                print(json.dumps({"model": name, "seed": seed, **r}), flush=True)

    print("\nsummary (converged within max_steps / seeds; median converged step):")
    for name, runs in results.items():
        if not runs:
            continue
        steps = sorted(r["converged_step"] for r in runs if r["converged_step"] is not None)
        median = steps[len(steps) // 2] if steps else None
        drop = sum(r["ce_first"] - r["ce_last"] for r in runs) / len(runs)
        print(f"  {name:8s} {len(steps)}/{len(runs)} converged; median step {median}; mean CE drop {drop:.3f} nats")
    if args.json:
        args.json.write_text(json.dumps({"card": card, "overrides": overrides, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
