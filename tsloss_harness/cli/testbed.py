"""``tsloss demo``, ``tsloss testbed``, ``tsloss shaped``, ``tsloss tasks-path``: the built-in CPU testbed."""

from __future__ import annotations

import argparse


def demo(argv: list[str]) -> int:
    """``tsloss demo``: testbed -> TSLoss prompt -> lm_eval with and without it -> report."""
    from tsloss_harness.testbed.demo import run_demo

    _print_summary(run_demo(demo_parser().parse_args(argv)))
    return 0


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsloss demo",
        description=(
            "The whole job on the built-in testbed, offline: build (cached) the quick testbed, tune a TSLoss prompt "
            "on GSM8K-format rows it never saw, score those rows with lm_eval with the prompt (tsprompt) and "
            "without it (hf), write the HTML report."
        ),
    )
    parser.add_argument("--model", help="any causal LM directory instead of the testbed (then --testbed is unused)")
    parser.add_argument(
        "--testbed", default="quick", help="testbed size preset: quick | default (default: quick, ~1 min to build)"
    )
    parser.add_argument("--output_dir", help="demo folder (default: runs/demo-<time>); must not exist or be empty")
    parser.add_argument("--steps", type=int, default=100, help="tuning steps (default: 100)")
    parser.add_argument(
        "--num_samples",
        type=int,
        default=1,
        help="training rows, all scored by lm-eval (default: 1, the paper's single-sample setting)",
    )
    parser.add_argument(
        "--rows",
        choices=("lookup", "arithmetic"),
        default="lookup",
        help="lookup (default): short GSM8K-format rows (testbed.skills) a prompt learns within the demo; "
        "arithmetic: the testbed's held-out worked-arithmetic rows (learned by the default testbed only)",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="prompt learning rate (default: the testbed's TUNE_DEFAULTS, 0.01)"
    )
    parser.add_argument(
        "--regularizer", default="tsloss", help="tsloss | h0 | h1 | l2 | pdloss | none | ph_exact (default: tsloss)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt's initialisation and batch order")
    parser.add_argument(
        "--include_path",
        help="lm-eval task folder holding offline/gsm8k_offline.yaml (default: the package's own, `tsloss tasks-path`)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="lm-eval batch size (default: 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for tuning and for each of the two lm-eval processes (default: 1; "
        "a tiny model's ops are too small to gain from more, and on busy cores multi-threaded "
        "generation slows down many-fold)",
    )
    parser.add_argument("--skip_eval", action="store_true", help="no lm-eval scoring (tune and report only)")
    parser.add_argument("--no_report", action="store_true", help="no HTML report")
    return parser


def _print_summary(s: dict) -> None:
    t, tune = s["timings_s"], s["tune"]
    lines = ["", "tsloss demo: done", f"  folder:  {s['output_dir']}"]
    model = s["model"]
    lines.append(f"  model:   {model['path']}" + (f" (testbed {model['testbed']})" if model["testbed"] else ""))
    lines.append(
        f"  tuned:   {tune['label']}: CE {tune['ce_first']:.4f} -> {tune['ce_final']:.4f}, "
        f"training accuracy {_pct(tune['accuracy_final'])}"
        + (f", 100% first at step {tune['converged_step']}" if tune["converged_step"] else "")
    )
    lines.append(f"  prompt:  {tune['prompt_dir']}")
    if "lm_eval" in s:
        for name, label in (("tsprompt", "with prompt   "), ("hf", "without prompt")):
            r = s["lm_eval"][name]
            lines.append(
                f"  lm-eval {label}: gsm8k exact match {_pct(r['exact_match_strict'])} (strict), "
                f"{_pct(r['exact_match_flexible'])} (flexible); answer NLL {r['answer_nll']:.2f} nats, "
                f"whole answer greedy {_pct(r['greedy_answer'])} (n={r['n']})"
            )
            lines.append(f"           {r['results_json']}")
    if "report" in s:
        lines.append(f"  report:  {s['report']}")
    lines.append("  time:    " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    print("\n".join(lines), flush=True)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def testbed(argv: list[str]) -> int:
    """``tsloss testbed``: build (or find in the cache) a testbed model and print its directory."""
    from tsloss_harness.testbed.card import read_card
    from tsloss_harness.testbed.pretrain import SIZES, build_testbed, default_cache_root

    parser = argparse.ArgumentParser(
        prog="tsloss testbed",
        description="Pretrain a tiny causal LM on GSM8K-format text so soft prompts can steer it (cached).",
    )
    parser.add_argument("-o", "--output", help="model directory to write (default: print the cache entry)")
    parser.add_argument("--arch", default="llama", help="llama | gemma | qwen2 (default: llama)")
    parser.add_argument(
        "--corpus", default="generated", help="'generated' or a GSM8K-format JSONL file / folder with train.jsonl"
    )
    parser.add_argument("--size", default="default", help=f"preset: {' | '.join(SIZES)} (default: default)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--minutes", type=float, default=None, help="wall-clock cap; a capped build is marked and not cached"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help=f"train into -o without the cache ({default_cache_root()})"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    path = build_testbed(
        args.output,
        arch=args.arch,
        corpus=args.corpus,
        size=args.size,
        steps=args.steps,
        seed=args.seed,
        minutes=args.minutes,
        cache=not args.no_cache,
        progress=not args.quiet,
    )
    card = read_card(path) or {}
    note = "  [stopped early by --minutes]" if card.get("stopped_early") else ""
    print(
        f"{path}\n  {card.get('arch')}/{card.get('size')}: {card.get('steps')} steps, "
        f"loss {card.get('loss_first', float('nan')):.3f} -> {card.get('loss_final', float('nan')):.3f}, "
        f"{card.get('wall_s')} s{note}"
    )
    return 0


def shaped(argv: list[str]) -> int:
    """``tsloss shaped``: build a random-weight stand-in of one of the paper's five models and print its
    directory."""
    from pathlib import Path

    from tsloss_harness.shapes import ARCHITECTURES
    from tsloss_harness.testbed.shaped import build_shaped_model

    parser = argparse.ArgumentParser(prog="tsloss shaped", description=build_shaped_model.__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(ARCHITECTURES))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-layers", type=int, default=1, help="layers to build (default 1; 0: all)")
    parser.add_argument("--vocab-size", type=int, default=None, help="override the vocabulary (default: the model's)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    path = build_shaped_model(
        args.model,
        args.out_dir,
        num_layers=args.num_layers or None,
        vocab_size=args.vocab_size,
        dtype=args.dtype,
        seed=args.seed,
        device=args.device,
    )
    print(path)
    return 0


def tasks_path(argv: list[str]) -> int:
    """``tsloss tasks-path``: the lm-eval task folder the package ships, for ``--include_path``."""
    argparse.ArgumentParser(prog="tsloss tasks-path", description=tasks_path.__doc__).parse_args(argv)
    from tsloss_harness.resources import tasks_dir

    print(tasks_dir())
    return 0
