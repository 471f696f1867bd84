"""The ``tsloss`` command: one dispatcher over the library, the only place that talks to a terminal.

Each command is a module here with ``run(argv) -> int`` that parses its flags, calls the library and
prints. Nothing is imported until a command is chosen, so ``tsloss --help`` is instant. Expected
failures (``TslossError``: bad flags, data, files) are caught once, here, and printed as one line;
anything else is a bug and keeps its full traceback.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "tune": ("tune", "train a soft prompt (same flags as tune.py)"),
    "demo": ("testbed", "testbed -> TSLoss prompt -> lm_eval with and without it -> HTML report"),
    "testbed": ("testbed", "pretrain a tiny causal LM that soft prompts can steer"),
    "shaped": ("testbed", "build a random-weight model of one of the paper's five shapes (fewer layers)"),
    "tasks-path": ("testbed", "print the lm-eval task folder the package ships (for --include_path)"),
    "topology": ("analysis", "persistent-homology metrics of a prompt (directory or tensor file)"),
    "report": ("analysis", "HTML/Markdown report of one or more tuner runs"),
    "leaderboard": ("analysis", "paper-style tables from lm-eval results and tuner runs"),
    "sweep": ("sweep", "a grid of tuner runs (any axis x seeds) on Ray, lm-eval scores, ratios, board"),
    "plan": ("plan", "which ds_configs/ file fits a model on given GPUs, with a memory estimate"),
    "act-calibrate": ("act", "choose ACT's attention heads on a task's examples (the act= file)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: tsloss <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'tsloss <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tsloss_harness.errors import TslossError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tsloss: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"tsloss_harness.cli.{COMMANDS[name][0]}")
    command = getattr(module, name.replace("-", "_"))
    try:
        return int(command(rest) or 0)
    except TslossError as e:
        print(f"tsloss {name}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


def run_as_process(argv: list[str] | None = None) -> None:
    """A process's entry (the ``tsloss`` script, ``tune.py``, ``python -m tsloss_harness.tune``): ``main``,
    then, if the run started a process group, the group released and the process ended at once.

    A rank that reaches interpreter teardown with torch.distributed's C++ threads still joinable aborts
    there ("terminate called without an active exception", pytorch/pytorch#190489): releasing the group
    first was not enough (a two-rank ZeRO-3 run still aborted so, after writing everything). Such a
    process therefore flushes its output and logs and leaves with ``os._exit``, skipping the teardown.
    Not in ``main``: a process that goes on (the tests) keeps its group."""
    started_group = False
    try:
        code = main(argv)
    finally:
        if "torch.distributed" in sys.modules:  # nothing to release, and no torch import, otherwise
            import torch.distributed as dist

            started_group = dist.is_available() and dist.is_initialized()
            if started_group:
                dist.destroy_process_group()
    if started_group:
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run_as_process()
