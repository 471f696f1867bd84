"""``tsloss topology``, ``tsloss report``, ``tsloss leaderboard``: the analysis side of a run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def topology(argv: list[str]) -> int:
    """``tsloss topology PROMPT``: print the metrics of a prompt directory or tensor file."""
    from tsloss_harness.prompt import load_prompt
    from tsloss_harness.topology import METRIC_KEYS, prompt_topology

    parser = argparse.ArgumentParser(prog="tsloss topology", description=topology.__doc__)
    parser.add_argument("prompt", help="prompt directory, PEFT prompt-tuning adapter, .safetensors or .pt")
    parser.add_argument("--max-edge-length", type=float, default=None, help="filtration threshold")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    points = load_prompt(args.prompt)
    metrics = {k: v for k, v in prompt_topology(points, args.max_edge_length).items() if k in METRIC_KEYS}
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"prompt: {args.prompt}  ({points.shape[0]} x {points.shape[1]})")
        for key in METRIC_KEYS:
            print(f"  {key:<22} {metrics[key]:.6g}")
    return 0


def report(argv: list[str]) -> int:
    """``tsloss report RUN_DIR [RUN_DIR ...] -o report.html``"""
    from tsloss_harness.report import ReportError, build_report, load_run, write_report
    from tsloss_harness.report.runs import expand_run_paths

    parser = argparse.ArgumentParser(
        prog="tsloss report",
        description="Figures and Table II statistics of tuner runs as one self-contained HTML page "
        "(or Markdown with PNG files). A folder holding several runs stands for all of them.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="tuner run directory (or a folder of them)")
    parser.add_argument("-o", "--output", default="report.html", help="output file (default: report.html)")
    parser.add_argument(
        "--format", choices=("html", "md"), help="default: from the output extension (.md: md, else html)"
    )
    parser.add_argument(
        "--steps",
        help="checkpoint steps for diagrams, barcodes and heatmaps, e.g. 10,50,100 "
        "(default: up to 4 spread over the run)",
    )
    parser.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figure")
    parser.add_argument("--title", help="page title")
    args = parser.parse_args(argv)

    try:
        steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    except ValueError:
        raise ReportError(f"--steps {args.steps!r} is not a comma-separated list of integers") from None
    runs = [load_run(p) for p in expand_run_paths(args.runs)]
    built = build_report(runs, steps=steps, tsne=not args.no_tsne, title=args.title)
    out = write_report(built, args.output, args.format)
    print(f"wrote {out}")
    return 0


def leaderboard(argv: list[str]) -> int:
    """``tsloss leaderboard RESULTS ... [-o board.md|.csv|.html]``"""
    from tsloss_harness.leaderboard import build_tables, render
    from tsloss_harness.measurements import LeaderboardError, collect

    parser = argparse.ArgumentParser(
        prog="tsloss leaderboard",
        description="The paper's Tables III, IV and VI from lm-eval results JSON files and tuner run "
        "directories (folders are searched recursively). Seeds aggregate to mean ± 95%% CI.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="RESULTS", help="results*.json, run directory, or a folder of them"
    )
    parser.add_argument(
        "-o",
        "--output",
        help="output file; its extension picks the format (.md, .csv, .html). Default: markdown on stdout",
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="TASK=KEY",
        help="lm-eval metric used as accuracy for TASK, e.g. gsm8k=exact_match,flexible-extract",
    )
    args = parser.parse_args(argv)

    overrides = {}
    for item in args.metric:
        task, sep, key = item.partition("=")
        if not sep or not task or not key:
            raise LeaderboardError(f"--metric {item!r} is not TASK=KEY")
        overrides[task] = key
    fmt = "md"
    if args.output:
        fmt = {".md": "md", ".markdown": "md", ".csv": "csv", ".html": "html", ".htm": "html"}.get(
            Path(args.output).suffix.lower(), ""
        )
        if not fmt:
            raise LeaderboardError(f"{args.output}: unknown extension (use .md, .csv or .html)")
    measurements, warnings = collect(args.inputs, overrides)
    for w in warnings:
        print(f"tsloss leaderboard: warning: {w}", file=sys.stderr)
    tables = build_tables(measurements)
    if not tables:
        print("tsloss leaderboard: no measurements found in the inputs", file=sys.stderr)
        return 1
    text = render(tables, fmt)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0
