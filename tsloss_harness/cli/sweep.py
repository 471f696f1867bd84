"""``tsloss sweep`` (also ``python -m tsloss_harness.sweep``)."""

from __future__ import annotations

import argparse
import signal
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsloss sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="sweep YAML (see configs/sweep_convergence.yaml)")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--output_dir", help="override the output directory")
    parser.add_argument("--settings", nargs="+", metavar="NAME", help="run only these settings (e.g. single)")
    parser.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local instance)")
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="delete and redo finished cells whose config has changed (default: report them as failed)",
    )
    parser.add_argument("--parallel", type=int, help="at most this many cells at once (default: as many as Ray fits)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def sweep(argv: list[str]) -> int:
    """``tsloss sweep --config sweep.yaml``: the grid on Ray, then the board; 1 when a cell failed."""
    from tsloss_harness.sweep import load_sweep_config, parse_sweep_config, run_sweep
    from tsloss_harness.sweep.config import SweepError
    from tsloss_harness.sweep.engine import SweepInterrupted

    args = build_parser().parse_args(argv)

    previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's SIGTERM stops cells like Ctrl-C
    try:
        config = load_sweep_config(args.config)
        if args.seeds is not None:
            config.seeds = args.seeds
        if args.output_dir:
            config.output_dir = args.output_dir
        if args.settings:
            unknown = sorted(set(args.settings) - set(config.settings))
            if unknown:
                raise SweepError(f"--settings: no setting {', '.join(unknown)} (known: {', '.join(config.settings)})")
            config.settings = {name: config.settings[name] for name in args.settings}
        if args.parallel is not None and args.parallel < 1:
            raise SweepError(f"--parallel must be >= 1, got {args.parallel}")
        result = run_sweep(
            parse_sweep_config(vars(config)),
            address=args.address,
            rerun_changed=args.rerun_changed,
            progress=not args.no_progress,
            parallel=args.parallel,
        )
    except KeyboardInterrupt:  # before any cell started
        print("tsloss sweep: interrupted before any cell started", file=sys.stderr)
        return 130
    except SweepInterrupted as e:
        print(
            f"tsloss sweep: interrupted; {len(e.records)} cell(s) ended before it, {len(e.unfinished)} unfinished "
            "(no summary.json): run the same command again to continue them",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_result(result)
    return 1 if result["failed"] else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _print_result(result: dict) -> None:
    from tsloss_harness.sweep.results import format_difference, format_ratio

    print(result["board"].split("\n\nmean ±")[0].split("\n", 2)[-1])  # the group table
    print(
        f"{result['cells']} cells: {result['reused']} reused, {result['ran']} run, {len(result['failed'])} failed; "
        f"board: {result['leaderboard']}; figures: {result['report']}"
    )
    for r in result["ratios"]:
        print("  " + format_ratio(r))
    for d in result["differences"]:
        print("  " + format_difference(d))
    if result["failed"]:
        print("failed cells (logs: <cell>/tune.log, <cell>/eval*.log):", file=sys.stderr)
        for name, error in result["failed"]:
            print(f"  {name}: {error}", file=sys.stderr)
