"""One prepared check for a CUDA GPU: the paper's models at full depth, bf16, tuned and scored.

    python benchmarks/gpu_check.py                       # Gemma-2B shape, then Qwen1.5-14B if time is left
    python benchmarks/gpu_check.py --models gemma-2b-it --budget-s 300
    python benchmarks/gpu_check.py --device cpu --small  # the plumbing, on a CPU: 1 layer, small vocabulary, fp32

Per model (``tsloss_harness.shapes``: real widths, heads, vocabulary; random weights, drawn on the
device): build it at full depth in bf16 (``testbed.shaped``), tune a prompt for a few steps with the
tuner in this process (one rank, ZeRO-2, bf16 forced in the DeepSpeed JSON), compare the peak of
``torch.cuda.max_memory_allocated`` with ``tsloss plan``'s estimate for the same shape, rows, batch and
stage (reserve excluded: the allocator's counter has no CUDA context in it), then run the stock
``lm_eval --model tsprompt`` on a few documents of the offline GSM8K tasks. Prints one table; writes
it as JSON with ``--json``. Needs only the project installed (``pip install -e .`` with a CUDA torch)
and a disk with room for the model (Gemma-2B: 5 GB; Qwen1.5-14B: 28 GB). ``--device cpu`` measures
the process's peak resident memory instead and runs fp32 (a CPU without bf16 instructions runs bf16
products ~250x slower).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3
BATCH, P, STEPS = 8, 20, 5
SECONDS_PER_BILLION = 12  # a guess at wall time per billion parameters (draw, save, load twice, tune, score)


def write_data(root: Path, rows: int) -> Path:
    from tsloss_harness.data import write_jsonl
    from tsloss_harness.testbed import problems

    write_jsonl(problems.generate_gsm8k_rows(rows, seed=0), root / "train.jsonl")
    write_jsonl(problems.generate_gsm8k_rows(8, seed=1), root / "test.jsonl")
    return root


def ds_config(work: Path, bf16: bool) -> Path:
    from tsloss_harness.resources import ds_config_path

    ds = json.loads(Path(ds_config_path("z2")).read_text())
    ds["bf16"] = {"enabled": bf16}  # forced: "auto" would also pick bf16 on a GPU that has it
    path = work / "z2_forced.json"
    path.write_text(json.dumps(ds))
    return path


def plan_estimate(model_dir: Path, ds: Path, data: Path, dtype_bytes: int) -> tuple[int, int]:
    """tsloss plan's per-GPU bytes for this run, reserve excluded; and the rows' longest length."""
    from transformers import AutoTokenizer

    from tsloss_harness.data import load_examples
    from tsloss_harness.plan import estimate, load_ds_config, resolve_model
    from tsloss_harness.tune.batches import tokenize

    rows = tokenize(
        load_examples("gsm8k", data, num_samples=BATCH * STEPS), AutoTokenizer.from_pretrained(model_dir), None
    )
    seq_len, answer = max(len(ids) for ids, _ in rows), max(len(ids) - n for ids, n in rows)
    est = estimate(
        resolve_model(str(model_dir)),
        load_ds_config(ds),
        gpus=1,
        gpu_mem_gib=1e6,
        micro_batch=BATCH,
        seq_len=seq_len,
        num_virtual_tokens=P,
        answer_tokens=answer,
        dtype_bytes=dtype_bytes,
        reserve_gib=0.0,
    )
    return est.total, seq_len


def tune(model_dir: Path, data: Path, ds: Path, out: Path) -> dict:
    from tsloss_harness.tune import TuneConfig, run

    config = TuneConfig(
        model=str(model_dir),
        data_dir=str(data),
        num_samples=BATCH * STEPS,
        output_dir=str(out),
        batch_size=BATCH,
        max_steps=STEPS,
        lr=0.01,
        warmup_ratio=0.0,
        num_virtual_tokens=P,
        eval_every=0,
        topology_every=STEPS,
        ds_config=str(ds),
        progress=False,
    )
    summary = run(config)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "metrics": metrics}


def lm_eval(model_dir: Path, prompt_dir: Path, data: Path, out: Path, device: str, dtype: str) -> str:
    """The stock CLI, ``--model tsprompt``, 4 documents of each offline GSM8K task; its scores."""
    lm_eval_bin = Path(sys.executable).with_name("lm_eval")
    cmd = [
        str(lm_eval_bin),
        "--model",
        "tsprompt",
        "--model_args",
        f"pretrained={model_dir},prompt={prompt_dir},dtype={dtype}",
        "--device",
        device,
        "--tasks",
        "gsm8k_offline,gsm8k_answer_offline",
        "--include_path",
        str(REPO / "tasks"),
        "--limit",
        "4",
        "--batch_size",
        "4",
        "--gen_kwargs",
        "max_gen_toks=16",
        "--output_path",
        str(out),
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**env, "TSLOSS_GSM8K_DIR": str(data)}, check=False
    )
    if result.returncode:
        return "failed: " + (result.stderr.strip().splitlines() or ["?"])[-1][-120:]
    (results,) = out.glob("*/results_*.json")
    scores = json.loads(results.read_text())["results"]
    em = scores["gsm8k"].get("exact_match,flexible-extract", float("nan"))
    nll = scores["gsm8k_answer_offline"].get("answer_nll,none", float("nan"))
    return f"ok: EM {em:.2f}, answer NLL {nll:.1f}"


def check_model(name: str, args, work: Path, data: Path, ds: Path) -> dict:
    import torch

    from tsloss_harness.memory import PeakSampler
    from tsloss_harness.testbed.shaped import build_shaped_model

    started = time.perf_counter()
    cuda = args.device == "cuda"
    dtype = "bfloat16" if cuda else "float32"
    model_dir = build_shaped_model(
        name,
        work / name,
        num_layers=1 if args.small else None,
        vocab_size=8192 if args.small else None,
        dtype=dtype,
        device=args.device,
    )
    card = json.loads((model_dir / "shape.json").read_text())
    built_s = time.perf_counter() - started
    plan, seq_len = plan_estimate(model_dir, ds, data, 2 if cuda else 4)
    if cuda:  # the previous model's tensors gone before the counter starts
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    resident = PeakSampler() if not cuda else None
    result = tune(model_dir, data, ds, work / f"{name}-run")
    peak = torch.cuda.max_memory_allocated() if cuda else resident.peak()
    losses = [m["loss"] for m in result["metrics"]]
    scored = lm_eval(model_dir, work / f"{name}-run" / "prompt", data, work / f"{name}-eval", args.device, dtype)
    shutil.rmtree(model_dir, ignore_errors=True)
    step_s = [BATCH / m["samples_per_s"] for m in result["metrics"][1:]]
    return {
        "model": name,
        "layers": card["num_layers"],
        "params_b": card["num_params"] / 1e9,
        "dtype": dtype,
        "seq_len": seq_len,
        "steps": len(losses),
        "finite": all(map(lambda x: x == x and abs(x) != float("inf"), losses)),
        "step_s": min(step_s) if step_s else float("nan"),
        "peak_gib": peak / GIB,
        "plan_gib": plan / GIB,
        "ratio": peak / plan,
        "lm_eval": scored,
        "build_s": built_s,
        "wall_s": time.perf_counter() - started,
    }


def print_table(rows: list[dict], device: str) -> None:
    memory = "max_memory_allocated" if device == "cuda" else "peak resident memory"
    print(f"\n{'model':<14}{'layers':>7}{'params':>8} {'dtype':<9}{'finite':>7}{'s/step':>8}"
          f"{'peak GiB':>10}{'plan GiB':>10}{'ratio':>7}{'wall s':>8}  lm_eval tsprompt")  # fmt: skip
    for r in rows:
        print(
            f"{r['model']:<14}{r['layers']:>7}{r['params_b']:>7.2f}B {r['dtype']:<9}{'yes' if r['finite'] else 'NO':>7}"
            f"{r['step_s']:>8.2f}{r['peak_gib']:>10.2f}{r['plan_gib']:>10.2f}{r['ratio']:>7.2f}{r['wall_s']:>8.0f}"
            f"  {r['lm_eval']}"
        )
    print(f"(peak: {memory} over load + {STEPS} tuner steps, batch {BATCH}, {P} virtual tokens, ZeRO-2, one rank; "
          "plan: tsloss plan for the same run, reserve excluded)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gemma-2b-it,qwen1.5-14b", help="in order; later ones only if time is left")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--small", action="store_true", help="1 layer, 8,192-token vocabulary (plumbing check)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no model that would end after this")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.exit(2, "gpu_check: no CUDA device here (use --device cpu --small for the plumbing)\n")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work / "gsm8k", BATCH * STEPS)
    ds = ds_config(work, bf16=args.device == "cuda")
    started, rows = time.perf_counter(), []
    for name in args.models.split(","):
        size_b = 0.1 if args.small else _params_b(name)
        if rows and time.perf_counter() - started + SECONDS_PER_BILLION * size_b > args.budget_s:
            print(f"gpu_check: skipping {name}: ~{SECONDS_PER_BILLION * size_b:.0f} s would pass --budget-s")
            continue
        rows.append(check_model(name, args, work, data, ds))
        print_table(rows[-1:], args.device)
    print_table(rows, args.device)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if rows and all(r["finite"] and r["lm_eval"].startswith("ok") for r in rows) else 1


def _params_b(name: str) -> float:
    from tsloss_harness.plan import KNOWN_MODELS

    return KNOWN_MODELS[name].num_params / 1e9


if __name__ == "__main__":
    sys.exit(main())
