"""``tsloss sweep``."""

from __future__ import annotations

import argparse


def sweep(argv: list[str]) -> int:
    """``tsloss sweep --config sweep.yaml``: the tuner over a grid, then the leaderboard."""
    from tsloss_harness import sweep as sweeps
    from tsloss_harness.sweep import _fmt, load_sweep_config, run_sweep

    parser = argparse.ArgumentParser(prog="tsloss sweep", description=sweeps.__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="sweep YAML (see configs/sweep_convergence.yaml)")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--output_dir", help="override the output directory")
    args = parser.parse_args(argv)

    config = load_sweep_config(args.config)
    if args.seeds is not None:
        config.seeds = args.seeds
    if args.output_dir:
        config.output_dir = args.output_dir
    result = run_sweep(config)
    print(f"{result['runs']} runs ({result['reused']} reused); leaderboard: {result['leaderboard']}")
    for r in result["ratios"]:
        print(
            f"  {r['dataset']} {r['setting']}: {r['regularizer']} ÷ {r['baseline']} iterations to convergence "
            f"= {_fmt(r['ratio'])} (95% CI {_fmt(r['ci95'][0])}–{_fmt(r['ci95'][1])}; "
            f"converged {r['converged']}/{r['runs']} vs {r['baseline_converged']}/{r['runs']}); "
            f"paired by seed {_fmt(r['paired_ratio'])} (95% CI {_fmt(r['paired_ci95'][0])}–{_fmt(r['paired_ci95'][1])}, "
            f"{r['pairs']} seeds)"
        )
    return 0
