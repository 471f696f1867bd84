"""The sweep engine against the sequential sweep, on the same cells, in one run.

    python benchmarks/bench_sweep_engine.py                        # single-sample convergence protocol, 2 seeds
    python benchmarks/bench_sweep_engine.py --seeds 4 --regularizers none,tsloss
    python benchmarks/bench_sweep_engine.py --config my_sweep.yaml --settings all

Peer: the sequential sweep as it was before the engine: every cell's tuner run one after another
inside one process (``tune.run``; torch's default threads, one import of torch for all). Engine:
``tsloss sweep`` on a local Ray instance started for it, each cell its own process at one CPU and one
thread (the config's resources), forked from a fork server unless the config says ``fork: false``.
Both start from fresh output folders and the same cells; the wall time of each includes everything it
does (the engine's Ray start-up too; the testbed is built, or taken from its cache, before either).
Prints both times, their ratio, and whether every cell gave the same result (converged_step, steps,
and the prompt tensor) both ways.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def reduced_config(args: argparse.Namespace, output_dir: Path):
    from tsloss_harness.sweep import load_sweep_config, parse_sweep_config

    config = load_sweep_config(args.config)
    values = dataclasses.asdict(config)
    if args.settings != "all":
        keep = args.settings.split(",")
        values["settings"] = {k: v for k, v in values["settings"].items() if k in keep}
    if args.regularizers:
        regularizers = args.regularizers.split(",")
        values["axes"] = {**values["axes"], "regularizer": regularizers}
        for setting in values["settings"].values():
            if isinstance(setting, dict) and "regularizer" in (setting.get("axes") or {}):
                setting["axes"]["regularizer"] = [r for r in setting["axes"]["regularizer"] if r in regularizers]
    values.update(seeds=args.seeds, output_dir=str(output_dir))
    return parse_sweep_config(values)


def run_sequential(config) -> float:
    """The sequential sweep: every cell's run in this process, one after another."""
    from tsloss_harness.sweep import grid
    from tsloss_harness.tune import TuneConfig, run

    started = time.perf_counter()
    cells = grid.expand(config)
    grid.prepare(cells)
    for cell in cells:
        run(TuneConfig(**cell.config))
    return time.perf_counter() - started


def run_engine(config) -> tuple[float, dict]:
    from tsloss_harness.sweep import run_sweep

    started = time.perf_counter()
    result = run_sweep(config, progress=False)
    return time.perf_counter() - started, result


def compare(seq_config, ray_config) -> list[str]:
    """Per cell: converged_step and steps equal, prompt bit-identical (else its largest difference)."""
    import torch

    from tsloss_harness.prompt import load_prompt
    from tsloss_harness.sweep import grid

    lines, same_steps, same_prompt, worst = [], 0, 0, 0.0
    pairs = list(zip(grid.expand(seq_config), grid.expand(ray_config), strict=True))
    for seq, eng in pairs:
        a = json.loads((seq.run_dir / "summary.json").read_text())
        b = json.loads((eng.run_dir / "summary.json").read_text())
        steps_equal = (a["converged_step"], a["steps"]) == (b["converged_step"], b["steps"])
        pa, pb = load_prompt(seq.run_dir / "prompt"), load_prompt(eng.run_dir / "prompt")
        same_steps += steps_equal
        same_prompt += torch.equal(pa, pb)
        worst = max(worst, (pa.float() - pb.float()).abs().max().item())
        lines.append(
            f"  {seq.name}: converged_step {a['converged_step']} / {b['converged_step']}, steps {a['steps']} / {b['steps']}"
            f"{'' if steps_equal else '  <- differs'}"
        )
    lines.append(
        f"converged_step and steps equal in {same_steps}/{len(pairs)} cells; prompts bit-identical in "
        f"{same_prompt}/{len(pairs)} (largest |difference| {worst:.3g})"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "sweep_convergence.yaml"))
    parser.add_argument(
        "--settings", default="single", help="comma-separated settings to keep, or 'all' (default: single)"
    )
    parser.add_argument("--regularizers", help="comma-separated regularizers to keep (default: the config's)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--output_dir", help="where both sweeps write (default: a new temporary folder)")
    args = parser.parse_args()

    root = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_sweep_engine_"))
    seq_config, ray_config = reduced_config(args, root / "sequential"), reduced_config(args, root / "engine")
    for folder in (root / "sequential", root / "engine"):
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"{folder} is not empty: give a fresh --output_dir")
    from tsloss_harness.sweep import grid

    cells = grid.expand(seq_config)
    if any(c.values["model"] == "testbed" for c in cells):
        from tsloss_harness.testbed import build_testbed

        build_testbed()  # built (or taken from the cache) before either clock starts
    import torch

    print(
        f"{len(cells)} cells ({args.config}: settings {args.settings}, seeds {args.seeds}); {os.cpu_count()} CPUs; "
        f"load average at start {os.getloadavg()[0]:.1f}; output {root}",
        flush=True,
    )
    seq_s = run_sequential(seq_config)
    print(
        f"sequential sweep (tune.run in one process, {torch.get_num_threads()} torch threads): {seq_s:.1f} s",
        flush=True,
    )
    ray_s, result = run_engine(ray_config)
    r = ray_config.resources_for(None)
    print(
        f"ray engine (local instance, {r.num_cpus:g} CPU and {r.threads} thread per cell, one process each"
        f"{', forked from a fork server' if r.fork else ''}): {ray_s:.1f} s"
        f" ({result['ran']} run, {len(result['failed'])} failed)"
    )
    print(
        f"engine / sequential wall time: {ray_s / seq_s:.2f}x (goal <= 0.6x); load average at end {os.getloadavg()[0]:.1f}"
    )
    print("\n".join(compare(seq_config, ray_config)))


if __name__ == "__main__":
    main()
