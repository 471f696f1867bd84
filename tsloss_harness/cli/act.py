"""``tsloss act-calibrate``: choose ACT's attention heads on a task's examples (``tsloss_harness.act_eval``)."""

from __future__ import annotations

import argparse
import sys


def act_calibrate(argv: list[str]) -> int:
    """``tsloss act-calibrate``: choose ACT's (layer, head) pairs on a task's examples; write the act= file."""
    from tsloss_harness.act_eval import calibrate_to_file

    parser = argparse.ArgumentParser(prog="tsloss act-calibrate", description=act_calibrate.__doc__)
    parser.add_argument("--model", default="hf", help="hf or tsprompt (as lm_eval --model)")
    parser.add_argument("--model_args", required=True, help="as lm_eval --model_args, e.g. pretrained=DIR,prompt=P")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks or groups (their examples)")
    parser.add_argument(
        "--include_path", action="append", default=[], help="task folders, as lm_eval's (default: the package's tasks/)"
    )
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    parser.add_argument("--layers", default=None, help="candidate layers, e.g. 2-29 (default: all)")
    parser.add_argument("--heads", default=None, help="candidate heads per layer, e.g. 0-7 (default: all)")
    parser.add_argument("--beta", type=float, default=0.4, help="scale of sink attention (authors: 0.4)")
    parser.add_argument("--threshold", type=float, default=0.1, help="sink threshold on mean attention (authors: 0.1)")
    parser.add_argument(
        "--objective",
        default="auto",
        help="auto (acc for multiple choice, else loglikelihood), loglikelihood, or a task metric such as acc",
    )
    parser.add_argument("--min_gain", type=float, default=0.0, help="keep heads that beat no calibration by more")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("-o", "--output", required=True, help="the JSON file to write (act=<file>)")
    args = parser.parse_args(argv)

    settings = calibrate_to_file(
        model=args.model,
        model_args=args.model_args,
        tasks=[t for t in args.tasks.split(",") if t],
        include_path=args.include_path,
        limit=args.limit,
        layers=args.layers,
        heads=args.heads,
        beta=args.beta,
        threshold=args.threshold,
        objective=args.objective,
        min_gain=args.min_gain,
        batch_size=args.batch_size,
        device=args.device,
        output=args.output,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    chosen = [list(p) for p in settings.heads]
    print(f"{settings.source}: {len(chosen)} of {len(settings.calibration['scores'])} heads chosen: {chosen}")
    return 0
