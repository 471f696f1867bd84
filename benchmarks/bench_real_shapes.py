"""The paper's five models at their real shapes (fewer layers) on this CPU, and the bf16 path on the
tiny llama: what CI has no time for. Prints one table per part.

    python benchmarks/bench_real_shapes.py [--models gemma-2b-it,...] [--methods prompt,prefix,ptuning_v2]
        [--stages z2,z3] [--layers 1] [--vocab-size N] [--no-lm-eval] [--bf16-tiny] [--json out.json]

Real shapes (``testbed.shaped``: real widths, heads, vocabularies, biases, tied/untied heads; random
fp32 weights), one model at a time (built, run, deleted; nothing big runs at once). Per method: one
rank, then two CPU ranks (``deepspeed --num_gpus 2``), per ZeRO stage, TSLoss on, a few steps on short
rows; the one-rank run takes the two ranks' one-row micro-batches in sequence. Columns:
- finite: every logged loss finite; 2r=1r: the two-rank run against the one-rank run of the same
  stage, every step's loss to 1e-6 relative and the prompt to 1e-6 (trace_stage_equality.py found
  them bit-identical). Across stages, or between 1 and 2 threads on one rank, the prompt differs by up
  to ~1e-3 at a few of its values: fp32 summation order, magnified where a gradient is near AdamW's eps;
- plan: ``tsloss plan``'s per-rank estimate for the same shape, layers, rows, method and stage, with
  ``gather_copies=2`` (gloo's all-gather on CPU ranks stages its output twice) and its reserve set to
  the fixed cost of a process measured here (the tiny llama's peak in the same setup, in place of
  the CUDA context);
- peak: the larger of the two ranks' peak resident memory (VmRSS) while training, measured by
  ``benchmarks/tune_with_memory.py``, and its ratio to the plan (what the plan estimates: a training
  rank's memory); load: the same while the model loads, and its ratio to the plan (not estimated: on
  CPU ranks the checkpoint being read sits in the same memory as the gathered modules, on a GPU it
  stays in host RAM);
- lm_eval (prompt and prefix): ``--model tsprompt`` equals ``--model hf,peft=`` (stock CLI, fp32) on two documents of
  ``gsm8k_answer_offline`` (loglikelihoods, 1e-4) and ``gsm8k_offline`` (the same generations).
``--bf16-tiny``: every method x ZeRO-2/3 with bf16 forced in the JSON on two ranks against one fp32
rank: step CE (largest relative difference over the steps), effective beta_H0 at step 1 (the same
prompt in both; later steps follow prompts AdamW moved apart), the final prompts' normwise difference
as a share of how far the fp32 run moved its matrix from the start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GIB = 1024**3
P = 20
ROWS = [(2, 3), (4, 1), (7, 2), (6, 6)]


def write_rows(root: Path) -> Path:
    """Four short rows to tune on, then generated ones: the harness's gsm8k task takes 5 shots from train."""
    from tsloss_harness.data import write_jsonl
    from tsloss_harness.testbed import problems

    rows = [{"question": f"What is {a} plus {b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"} for a, b in ROWS]
    write_jsonl(rows + problems.generate_gsm8k_rows(8, seed=0), root / "train.jsonl")
    write_jsonl(rows[:2], root / "test.jsonl")
    return root


def tune_args(model: Path, data: Path, out: Path, method: str, ds: Path, steps: int, lr: float = 0.01, **extra):
    args = dict(
        model=model,
        data_dir=data,
        output_dir=out,
        method=method,
        ds_config=ds,
        num_samples=len(ROWS),
        batch_size=2,
        max_steps=steps,
        lr=lr,
        warmup_ratio=0.0,
        eval_every=0,
        topology_every=steps,
        num_virtual_tokens=P,
        **extra,
    )
    return [f"--{k}={v}" for k, v in args.items()] + ["--no-progress"]


def run_tuner(ranks: int, mem_dir: Path, argv: list[str], port: int) -> dict:
    """The tuner through tune_with_memory.py on ``ranks`` CPU ranks; per-rank memory records + metrics."""
    script = str(REPO / "benchmarks" / "tune_with_memory.py")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    if ranks == 1:
        cmd = [sys.executable, script, str(mem_dir), *argv]
    else:
        cmd = [
            str(BIN / "deepspeed"),
            "--num_gpus",
            str(ranks),
            "--master_port",
            str(port),
            script,
            str(mem_dir),
            *argv,
        ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    for buffer in Path("/dev/shm").glob(f"deepspeed_*_{port}_*"):  # DeepSpeed's shm buffers outlive the run
        buffer.unlink(missing_ok=True)
    out = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--output_dir=")))
    mem = [json.loads(p.read_text()) for p in sorted(mem_dir.glob("rank*.json"))]
    metrics = (
        [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if result.returncode == 0 else []
    )
    return {
        "rc": result.returncode,
        "log": (result.stdout + result.stderr)[-3000:],
        "mem": mem,
        "metrics": metrics,
        "prompt": out / "prompt",
    }


def same_training(one: dict, two: dict) -> tuple[bool, float]:
    import torch

    from tsloss_harness.prompt import load_prompt

    a, b = load_prompt(one["prompt"]), load_prompt(two["prompt"])
    losses = all(
        math.isclose(x["loss"], y["loss"], rel_tol=1e-6) for x, y in zip(one["metrics"], two["metrics"], strict=True)
    )
    return bool(losses and torch.allclose(a, b, rtol=0, atol=1e-6)), float((a - b).abs().max())


def plan_bytes(model_dir: Path, ds: Path, method: str, gpus: int, data: Path, reserve: int) -> int:
    from transformers import AutoTokenizer

    from tsloss_harness.data import load_examples
    from tsloss_harness.plan import estimate, load_ds_config, resolve_model
    from tsloss_harness.tune.batches import tokenize

    rows = tokenize(load_examples("gsm8k", data, num_samples=len(ROWS)), AutoTokenizer.from_pretrained(model_dir), None)
    est = estimate(
        resolve_model(str(model_dir)),
        load_ds_config(ds),
        gpus=gpus,
        gpu_mem_gib=1e6,
        micro_batch=1,
        seq_len=max(len(ids) for ids, _ in rows),
        answer_tokens=max(len(ids) - n for ids, n in rows),
        num_virtual_tokens=P,
        dtype_bytes=4,
        reserve_gib=reserve / GIB,
        method=method,
        gather_copies=2,  # CPU ranks: gloo's all_gather_into_tensor holds the output twice
    )
    return est.total


def lm_eval_equal(model_dir: Path, prompt_dir: Path, work: Path, data: Path) -> str:
    """tsprompt vs hf,peft= through the stock CLI, one after the other (each loads the model)."""
    outs = {}
    for name, model_args in (("hf", f"peft={prompt_dir}"), ("tsprompt", f"prompt={prompt_dir}")):
        out = work / f"lm_eval_{name}"
        cmd = [
            str(BIN / "lm_eval"),
            "--model",
            "hf" if name == "hf" else "tsprompt",
            "--model_args",
            f"pretrained={model_dir},{model_args},dtype=float32",
            "--device",
            "cpu",
            "--tasks",
            "gsm8k_answer_offline,gsm8k_offline",
            "--include_path",
            str(REPO / "tasks"),
            "--limit",
            "2",
            "--batch_size",
            "1",
            "--gen_kwargs",
            "max_gen_toks=8",
            "--output_path",
            str(out),
            "--log_samples",
        ]
        env = {**os.environ, "TSLOSS_GSM8K_DIR": str(data), "OMP_NUM_THREADS": "2"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if result.returncode:
            return f"{name} failed"
        outs[name] = {
            p.name.removeprefix("samples_").rsplit("_", 1)[0]: [json.loads(x) for x in p.read_text().splitlines()]
            for p in out.glob("*/samples_*.jsonl")
        }
    for task, rows in outs["hf"].items():
        for want, got in zip(rows, outs["tsprompt"][task], strict=True):
            w, g = want["resps"][0][0], got["resps"][0][0]
            if isinstance(w, str) and w != g:
                return f"{task}: generation differs"
            if isinstance(w, list) and (abs(float(w[0]) - float(g[0])) > 1e-4 or w[1] != g[1]):
                return f"{task}: loglikelihood differs by {abs(float(w[0]) - float(g[0])):.1e}"
    return "equal"


def cpu_reserve(work: Path, data: Path) -> int:
    """The fixed memory of a tuner rank here: the tiny llama's training peak, two ranks, ZeRO-2."""
    from tsloss_harness.testbed import tiny

    model = tiny.build_tiny_model("llama", work / "tiny")
    run = run_tuner(
        2,
        work / "mem_tiny",
        tune_args(model, data, work / "run_tiny", "prompt", REPO / "ds_configs" / "z2.json", 2),
        port=29650,
    )
    return max(m["peak_train"] for m in run["mem"])


def bench_shape(name: str, args, work: Path, data: Path, reserve: int) -> list[dict]:
    from tsloss_harness.testbed.shaped import build_shaped_model

    model = build_shaped_model(name, work / "model", num_layers=args.layers, vocab_size=args.vocab_size)
    rows = []
    try:
        for method in args.methods:
            first = len(rows)
            for stage in args.stages:
                ds = REPO / "ds_configs" / f"{stage}.json"
                argv = tune_args(model, data, work / f"{method}_{stage}_1", method, ds, args.steps)
                # one rank runs the two ranks' micro-batches (one row each) in sequence: the same arithmetic
                ref = run_fitting(
                    1, stage, work / f"mem_{method}_{stage}_1", [*argv, "--micro_batch_size=1"], 0, model, method,
                    data, reserve,
                )  # fmt: skip
                rows.append(row(name, method, stage, 1, ref, ref, model, data, reserve))
                argv = tune_args(model, data, work / f"{method}_{stage}_2", method, ds, args.steps)
                two = run_fitting(2, stage, work / f"mem_{method}_{stage}_2", argv, 29651, model, method, data, reserve)
                rows.append(row(name, method, stage, 2, two, ref, model, data, reserve))
                if args.lm_eval and stage == args.stages[0] and ref["rc"] == 0 and method != "ptuning_v2":
                    rows[-1]["lm_eval"] = lm_eval_equal(model, ref["prompt"], work / f"eval_{method}", data)
            print_rows(rows[first:], header=False)
    finally:
        shutil.rmtree(work / "model", ignore_errors=True)
    return rows


def run_fitting(ranks: int, stage: str, mem_dir: Path, argv: list, port: int, model, method, data, reserve) -> dict:
    """``run_tuner`` when the plan's per-rank estimate x ranks fits in the memory available now (with
    1 GiB to spare for the machine's other users); else a skipped run saying why."""
    plan = plan_bytes(model, REPO / "ds_configs" / f"{stage}.json", method, ranks, data, reserve)
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if plan * ranks > available - GIB:
        why = f"skipped: plan {plan / GIB:.1f} GiB x {ranks} rank(s) > {available / GIB:.1f} GiB available - 1"
        return {"rc": -1, "log": why, "mem": [], "metrics": [], "prompt": None}
    return run_tuner(ranks, mem_dir, argv, port)


def row(
    name: str, method: str, stage: str, ranks: int, run: dict, ref: dict, model: Path, data: Path, reserve: int
) -> dict:
    record = {"model": name, "method": method, "stage": stage, "ranks": ranks, "dtype": "fp32", "rc": run["rc"]}
    if run["rc"]:
        peak = max((m["peak_train"] or m["peak_load"] for m in run["mem"]), default=0)
        return {
            **record,
            "error": run["log"].strip().splitlines()[-1][-160:] if run["log"].strip() else "killed",
            "peak": peak,
        }
    finite = all(math.isfinite(m[k]) for m in run["metrics"] for k in ("loss", "ce", "reg"))
    equal, diff = same_training(ref, run) if ranks == 2 and ref["rc"] == 0 else (None, 0.0)
    plan = plan_bytes(model, REPO / "ds_configs" / f"{stage}.json", method, ranks, data, reserve)
    peak = max(m["peak_train"] for m in run["mem"])
    load = max(m["peak_load"] for m in run["mem"])
    return {  # ratio: the training peak against the plan (which estimates training); load beside it
        **record,
        "finite": finite,
        "equal": equal,
        "max_diff": diff,
        "plan": plan,
        "peak": peak,
        "load": load,
        "ratio": peak / plan,
        "load_ratio": load / plan,
    }


def print_rows(rows: list[dict], header: bool = True) -> None:
    if header:
        print(
            f"{'model':<17}{'method':<11}{'stage':<6}{'ranks':>5} {'dtype':<5}{'finite':>7}{'2r=1r':>10}"
            f"{'plan GiB':>9}{'peak GiB':>9}{'ratio':>7}{'load GiB':>9}{'ratio':>7}  lm_eval"
        )
    for r in rows:
        if r.get("rc"):
            what = r["error"] if r["rc"] == -1 else f"failed (peak {r['peak'] / GIB:.1f} GiB): {r['error']}"
            print(f"{r['model']:<17}{r['method']:<11}{r['stage']:<6}{r['ranks']:>5} {r['dtype']:<5} {what}")
            continue
        eq = "-" if r["equal"] is None else ("yes" if r["equal"] else f"NO {r['max_diff']:.0e}")
        print(
            f"{r['model']:<17}{r['method']:<11}{r['stage']:<6}{r['ranks']:>5} {r['dtype']:<5}"
            f"{'yes' if r['finite'] else 'NO':>7}{eq:>10}{r['plan'] / GIB:>9.2f}{r['peak'] / GIB:>9.2f}"
            f"{r['ratio']:>7.2f}{r['load'] / GIB:>9.2f}{r['load_ratio']:>7.2f}  {r.get('lm_eval', '')}",
            flush=True,
        )


def initial_matrix(model_dir: Path, method: str):
    """The matrix a run with init=peft (seed 0) starts from, as its prompt directory stores it."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tsloss_harness.prompt_config import make_method_config

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = make_method_config(method, str(model_dir), base.config, num_virtual_tokens=P, init="peft")
        peft_model = get_peft_model(base, config)
    return peft_model.get_prompt_embedding_to_save("default").detach().float()


def bench_bf16_tiny(work: Path, data: Path, steps: int) -> list[dict]:
    """Every method x ZeRO-2/3: bf16 (forced in the JSON) on two ranks against fp32 on one."""
    from tsloss_harness.prompt import load_prompt
    from tsloss_harness.testbed import tiny

    model, lr, rows = tiny.build_tiny_model("llama", work / "tiny_bf16"), 0.01, []
    for stage in ("z2", "z3"):
        for dtype in ("fp32", "bf16"):
            ds = json.loads((REPO / "ds_configs" / f"{stage}.json").read_text())
            ds["bf16"] = {"enabled": dtype == "bf16"}
            (work / f"{stage}_{dtype}.json").write_text(json.dumps(ds))
    print(f"\n{'method':<11}{'stage':<6}{'finite':>7}{'max CE rel':>11}{'beta rel (1)':>13}{'prompt diff/moved':>18}")
    for method in ("prompt", "prefix", "ptuning_v2"):
        for stage in ("z2", "z3"):
            runs = {}
            for dtype, ranks in (("fp32", 1), ("bf16", 2)):
                argv = tune_args(
                    model,
                    data,
                    work / f"bf_{method}_{stage}_{dtype}",
                    method,
                    work / f"{stage}_{dtype}.json",
                    steps,
                    lr=lr,
                    init="peft",
                    adaptive_ratio_h0=0.5,
                )
                argv += ["--micro_batch_size=1"] if ranks == 1 else []  # the two ranks' micro-batches in turn
                runs[dtype] = run_tuner(ranks, work / f"mem_bf_{method}_{stage}_{dtype}", argv, port=29652)
            a, b = runs["fp32"], runs["bf16"]
            if a["rc"] or b["rc"]:
                print(f"{method:<11}{stage:<6} failed: {(a if a['rc'] else b)['log'][-300:]}")
                continue
            pa, pb = load_prompt(a["prompt"]), load_prompt(b["prompt"])
            r = {
                "method": method,
                "stage": stage,
                "finite": all(math.isfinite(m[k]) for m in b["metrics"] for k in ("loss", "ce", "reg", "beta_h0")),
                "ce_rel": max(abs(y["ce"] / x["ce"] - 1) for x, y in zip(a["metrics"], b["metrics"], strict=True)),
                "beta_rel": abs(b["metrics"][0]["beta_h0"] / a["metrics"][0]["beta_h0"] - 1),
                "prompt_diff": float((pa - pb).norm() / (pa - initial_matrix(model, method)).norm()),
            }
            rows.append(r)
            print(
                f"{method:<11}{stage:<6}{'yes' if r['finite'] else 'NO':>7}{r['ce_rel']:>11.1e}"
                f"{r['beta_rel']:>13.1e}{r['prompt_diff']:>18.3f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    from tsloss_harness.shapes import ARCHITECTURES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ARCHITECTURES), help="comma-separated (default: all five)")
    parser.add_argument("--methods", default="prompt,prefix,ptuning_v2")
    parser.add_argument("--stages", default="z2,z3")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=None, help="override every model's vocabulary")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-lm-eval", dest="lm_eval", action="store_false")
    parser.add_argument("--bf16-tiny", action="store_true", help="also the bf16 matrix on the tiny llama")
    parser.add_argument("--no-shapes", dest="shapes", action="store_false", help="skip the real shapes")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    args.methods, args.stages = args.methods.split(","), args.stages.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench_real_shapes-"))
    data = write_rows(work / "data")
    results: dict = {"shapes": [], "bf16_tiny": []}
    try:
        if args.shapes:
            reserve = cpu_reserve(work, data)
            print(
                f"per-rank fixed memory (tiny llama, 2 ranks, ZeRO-2, training peak): {reserve / GIB:.2f} GiB = "
                f"the plan's reserve; {args.layers} layer(s), {args.steps} steps, batch 2, {P} virtual tokens\n"
            )
            print_rows([])
            for name in args.models.split(","):
                results["shapes"] += bench_shape(name, args, work / name, data, reserve)
        if args.bf16_tiny:
            results["bf16_tiny"] = bench_bf16_tiny(work, data, steps=3)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
