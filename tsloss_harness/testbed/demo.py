"""``tsloss demo``: the project's whole job on its built-in testbed, offline, in a few minutes on a CPU.

    tsloss demo                       # testbed -> data -> TSLoss prompt -> lm-eval with/without it -> report

1. testbed: the "quick" pretrained tiny llama (:func:`tsloss_harness.testbed.build_testbed`, cached under
   ``$TSLOSS_CACHE``) -- a random-weight model cannot be steered by a prompt, a pretrained one can;
2. data: GSM8K-format rows the testbed never saw: short "lookup" rows (``testbed.skills``; default),
   or with ``--rows arithmetic`` the first rows of its own corpus, the slice its build held out;
3. tune: a 20-token TSLoss prompt on those rows (the testbed's tuner settings, fewer steps);
4. score: the stock ``lm_eval`` CLI on the same rows (the paper's single/multi-sample setting measures
   training-set accuracy), 0-shot greedy, once as ``--model tsprompt`` with the prompt and once as
   ``--model hf`` without it, through the offline ``gsm8k`` task in ``tasks/offline``;
5. report: ``tsloss report`` of the tuner run as one HTML page.

Everything lands in one folder (default ``runs/demo-<time>``)::

    data/train.jsonl, data/test.jsonl     the rows (test = train: the scored rows are the tuned rows)
    tune/                                 the tuner run (metrics.jsonl, summary.json, prompt/, checkpoints/)
    lm_eval/tsprompt/, lm_eval/hf/        lm-eval results JSON (+ samples) with and without the prompt
    report.html                           the report of tune/
    demo.json                             the summary printed at the end, phase timings included
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tsloss_harness.errors import TslossError
from tsloss_harness.processes import OFFLINE_ENV, child_env

# Both on the demo's local rows (tasks/offline): the harness's gsm8k task (greedy generation, exact match
# of the final number) and the answer's log-likelihood (NLL in nats; 1 when the whole answer is greedy).
TASKS = ("gsm8k_offline", "gsm8k_answer_offline")


class DemoError(TslossError, RuntimeError):
    """A failed demo phase; the message is one line naming it."""


def default_tasks_dir() -> Path:
    """The task folder the package ships (``tsloss_harness.resources.tasks_dir``)."""
    from tsloss_harness.resources import tasks_dir

    return tasks_dir()


# ------------------------------------------------------------------------------------------ phases


def run_demo(args: argparse.Namespace) -> dict:
    """The five phases (model, data, tune, lm-eval, report); returns the summary, also ``demo.json``."""
    out, tasks_dir = _check(args)
    timings: dict[str, float] = {}
    summary: dict = {"output_dir": str(out.resolve()), "timings_s": timings}
    started = t0 = time.perf_counter()
    model, row_seed = _model(args, summary)
    timings["model"], t0 = time.perf_counter() - t0, time.perf_counter()
    data_dir = _data(args, out, row_seed, summary)
    timings["data"], t0 = time.perf_counter() - t0, time.perf_counter()
    summary["tune"] = _tune(args, model, data_dir, out / "tune")
    timings["tune"], t0 = time.perf_counter() - t0, time.perf_counter()
    if not args.skip_eval:
        summary["lm_eval"] = _evaluate(args, model, data_dir, tasks_dir, out)
        timings["lm_eval"], t0 = time.perf_counter() - t0, time.perf_counter()
    if not args.no_report:
        summary["report"] = _report(out, summary["tune"]["label"])
        timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check(args: argparse.Namespace) -> tuple[Path, Path]:
    """Every argument checked before anything runs; returns (demo folder, lm-eval task folder)."""
    from tsloss_harness.testbed.pretrain import SIZES

    for name in ("steps", "num_samples", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise DemoError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.model and args.testbed not in SIZES:
        raise DemoError(f"unknown testbed size {args.testbed!r} (choose {', '.join(SIZES)})")
    out = Path(args.output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DemoError(f"output directory is not empty: {out}")
    tasks_dir = Path(args.include_path) if args.include_path else default_tasks_dir()
    missing = [t for t in TASKS if not (tasks_dir / "offline" / f"{t}.yaml").is_file()]
    if not args.skip_eval and missing:
        raise DemoError(f"no lm-eval task {missing[0]} under {tasks_dir} (give --include_path, or --skip_eval)")
    if args.model and not Path(args.model).expanduser().is_dir():
        raise DemoError(f"model directory not found: {args.model}")
    return out, tasks_dir


def _model(args: argparse.Namespace, summary: dict) -> tuple[Path, int]:
    """1. The model (the testbed, built once and cached) and the seed of the rows it never saw."""
    from tsloss_harness.testbed import pretrain as tb
    from tsloss_harness.testbed.card import read_card

    if args.model:
        model = Path(args.model).expanduser().resolve()
    else:
        _say(f"[1/5] testbed: {args.testbed} (cached under {tb.default_cache_root()})")
        try:
            model = tb.build_testbed(size=args.testbed, seed=0)
        except tb.TestbedError as e:
            raise DemoError(f"testbed: {e}") from e
    card = read_card(model)  # present when the model is a testbed
    summary["model"] = {"path": str(model), "testbed": card and card["size"]}
    if not (card and card["corpus"]["kind"] == "generated"):
        return model, args.seed
    # A testbed's generated corpus starts with the slice its build held out (never trained on):
    # the same generator and seed give exactly those rows.
    held_out = max(1, card["corpus"]["rows"] // 50)
    if args.rows == "arithmetic" and args.num_samples > held_out:
        raise DemoError(f"--num_samples {args.num_samples}: the testbed holds out only {held_out} rows")
    summary["model"].update(testbed_build_s=card["wall_s"], testbed_val_loss=card["val_loss"])
    return model, card["seed"]


def _data(args: argparse.Namespace, out: Path, row_seed: int, summary: dict) -> Path:
    """2. The data: the rows tuned on are the rows lm-eval scores. ``lookup`` (default): short GSM8K-format
    rows of the skills generator, which no testbed pretrains on in this format, whose answers a prompt
    learns within the demo's steps; ``arithmetic``: the held-out slice of the testbed's own corpus."""
    from tsloss_harness.data import write_jsonl
    from tsloss_harness.testbed import problems, skills

    out.mkdir(parents=True, exist_ok=True)
    if args.rows == "lookup":
        rows = skills.train_rows("lookup", args.num_samples, seed=row_seed)
    else:
        rows = problems.generate_gsm8k_rows(args.num_samples, seed=row_seed)
    data_dir = out / "data"
    write_jsonl(rows, data_dir / "train.jsonl")
    write_jsonl(rows, data_dir / "test.jsonl")
    summary["data"] = {"dir": str(data_dir.resolve()), "rows": len(rows), "kind": args.rows, "generator_seed": row_seed}
    _say(f"[2/5] data: {len(rows)} generated GSM8K-format {args.rows} row(s) -> {data_dir}")
    return data_dir


def _evaluate(args: argparse.Namespace, model: Path, data_dir: Path, tasks_dir: Path, out: Path) -> dict:
    """4. lm-eval, with the prompt (tsprompt) and without it (hf)."""
    # Without rendezvous variables (a launcher's, if the demo runs under one): lm-eval would
    # otherwise try to join that process group. The tuner removes the ones it sets itself.
    env = child_env(args.threads, {**OFFLINE_ENV, "TSLOSS_GSM8K_DIR": str(data_dir.resolve())})
    common = [
        "--tasks",
        ",".join(TASKS),
        "--include_path",
        str(tasks_dir.resolve()),
        "--num_fewshot",
        "0",
        "--batch_size",
        str(args.batch_size),
        "--log_samples",
    ]
    prompt_dir = (out / "tune" / "prompt").resolve()
    runs = {
        "tsprompt": ["--model", "tsprompt", "--model_args", f"pretrained={model},prompt={prompt_dir}"],
        "hf": ["--model", "hf", "--model_args", f"pretrained={model}"],
    }
    _say(
        f"[4/5] lm-eval: {', '.join(TASKS)} (0-shot, greedy) on the tuned rows, with the prompt (tsprompt) "
        "and without it (hf), side by side"
    )
    return _lm_eval_pair(runs, common, out / "lm_eval", env)


def _report(out: Path, label: str) -> str:
    """5. The HTML report of the tuning run."""
    from tsloss_harness.report import build_report, load_run, write_report

    html = out / "report.html"
    _say(f"[5/5] report: tsloss report {out / 'tune'} -o {html}")
    write_report(build_report([load_run(out / "tune")], title="tsloss demo: " + label), html, "html")
    return str(html.resolve())


def _tune(args, model: Path, data_dir: Path, run_dir: Path) -> dict:
    import logging

    import transformers

    from tsloss_harness.data import DataError, read_jsonl
    from tsloss_harness.testbed import TUNE_DEFAULTS
    from tsloss_harness.tune import TuneConfig, TuneError, run

    steps = args.steps
    config = TuneConfig(
        model=str(model),
        dataset="gsm8k",
        data_dir=str(data_dir),
        num_samples=args.num_samples,
        output_dir=str(run_dir),
        regularizer=args.regularizer,
        batch_size=min(args.num_samples, 8),
        max_steps=steps,
        lr=args.lr if args.lr is not None else TUNE_DEFAULTS["lr"],
        seed=args.seed,
        # Generation-based accuracy is the costly part of a step log: ~5 points feed the curves and
        # Table II; topology is cheap. Four checkpoints give the report its diagrams and heatmaps.
        eval_every=max(1, steps // 5),
        eval_max_samples=args.num_samples,
        topology_every=max(1, steps // 10),
        save_every=max(1, steps // 4),
    )
    _say(
        f"[3/5] tune: {config.num_virtual_tokens}-token {config.regularizer} prompt, {steps} steps, lr {config.lr}, "
        f"batch {config.batch_size} -> {run_dir}"
    )
    # As `tsloss tune` does: libraries' INFO chatter and load bars off, the tuner's own bar stays.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = run(config)
    except (DataError, TuneError) as e:
        raise DemoError(f"tune: {e}") from None
    finally:
        torch.set_num_threads(threads)
    first, final = read_jsonl(run_dir / "metrics.jsonl")[0], result["final"]
    return {
        "run_dir": str(run_dir.resolve()),
        "prompt_dir": str((run_dir / "prompt").resolve()),
        "label": f"{config.num_virtual_tokens}-token {config.regularizer} prompt, {args.num_samples} row(s), {steps} steps",
        "steps": result["steps"],
        "ce_first": first["ce"],
        "ce_final": final["ce"],
        "loss_first": first["loss"],
        "loss_final": final["loss"],
        "accuracy_final": final.get("accuracy"),
        "converged_step": result["converged_step"],
        "wall_time_s": result["wall_time_s"],
    }


def _lm_eval_pair(runs: dict[str, list[str]], common: list[str], root: Path, env: dict) -> dict:
    """Both lm-eval runs at once: each is mostly start-up (imports, task loading) on one core."""
    procs = {}
    for name, model_args in runs.items():
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        cmd = ["lm_eval", *model_args, *common, "--output_path", str(out.resolve())]
        (out / "command.txt").write_text(shlex.join(cmd) + "\n")
        log = open(out / "lm_eval.log", "w")
        # lm-eval of this interpreter (its environment's, with tsprompt registered by the package's .pth hook)
        procs[name] = (
            subprocess.Popen([sys.executable, "-m", *cmd], stdout=log, stderr=subprocess.STDOUT, env=env),
            log,
            out,
            cmd,
        )
    results = {}
    for name, (proc, log, out, cmd) in procs.items():
        rc = proc.wait()
        log.close()
        if rc != 0:
            tail = (out / "lm_eval.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise DemoError(f"lm_eval --model {name} exited with {rc}: {tail[0]} (log: {out / 'lm_eval.log'})")
        results[name] = _read_results(out, cmd)
    return results


def _read_results(out: Path, cmd: list[str]) -> dict:
    found = sorted(out.rglob("results_*.json"))
    if not found:
        raise DemoError(f"lm_eval wrote no results JSON under {out}")
    data = json.loads(found[-1].read_text())
    generated, answer = data["results"]["gsm8k"], data["results"]["gsm8k_answer_offline"]
    entry = {
        "command": shlex.join(cmd),
        "results_json": str(found[-1].resolve()),
        "exact_match_strict": generated.get("exact_match,strict-match"),
        "exact_match_flexible": generated.get("exact_match,flexible-extract"),
        "answer_nll": answer.get("answer_nll,none"),
        "greedy_answer": answer.get("greedy_answer,none"),
        "n": data.get("n-samples", {}).get("gsm8k", {}).get("effective"),
    }
    samples = sorted(out.rglob("samples_gsm8k_2*.jsonl"))
    if samples:
        first = json.loads(samples[-1].read_text().splitlines()[0])
        entry["first_generation"] = first["resps"][0][0]
    tsprompt = data.get("config", {}).get("tsprompt")
    if tsprompt:
        entry["topology"] = tsprompt["topology"]
    return entry


# ------------------------------------------------------------------------------------------ output


def _say(text: str) -> None:
    print(text, flush=True)
