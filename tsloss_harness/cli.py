"""The ``tsloss`` command: a thin dispatcher over the library.

Each sub-command lives in its own module as ``main(argv) -> int``; nothing is imported
until a sub-command is chosen, so ``tsloss --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "tune": ("tsloss_harness.tune", "train a soft prompt (same flags as tune.py)"),
    "demo": ("tsloss_harness.testbed.demo", "testbed -> TSLoss prompt -> lm_eval with and without it -> HTML report"),
    "testbed": ("tsloss_harness.testbed.pretrain", "pretrain a tiny causal LM that soft prompts can steer"),
    "topology": ("tsloss_harness.topology", "persistent-homology metrics of a prompt (directory or tensor file)"),
    "report": ("tsloss_harness.report", "HTML/Markdown report of one or more tuner runs"),
    "leaderboard": ("tsloss_harness.leaderboard", "paper-style tables from lm-eval results and tuner runs"),
    "sweep": ("tsloss_harness.sweep", "a grid of tuner runs (any axis x seeds) on Ray, lm-eval scores, ratios, board"),
    "plan": ("tsloss_harness.plan", "which ds_configs/ file fits a model on given GPUs, with a memory estimate"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: tsloss <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'tsloss <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"tsloss: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
