"""tsprompt vs hf,peft= throughput on the same tasks and prompt, in one process.

    python benchmarks/bench_plugin.py [--limit 24] [--batch-size 8] [--repeats 2]

Builds a small random Llama (tsloss_harness.testbed.tiny) and a P-token prompt directory, writes local
GSM8K (generation) and MMLU-CF (multiple choice, 0-shot) files -- or uses the real GSM8K rows when
TSLOSS_GSM8K_DIR is set -- and times lm-eval's ``simple_evaluate`` on the offline task groups for
both models, alternating them ``--repeats`` times and keeping each one's best time (the models are
loaded once, outside the timing). Prints samples/s per task and the tsprompt / hf,peft ratio
(goal: >= 1.0x), by wall clock and by this process's CPU time -- the latter is the fairer one on a
machine shared with other work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tsloss_harness.data import MMLU_CF_SUBJECTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def build_fixture(root: Path, virtual_tokens: int) -> tuple[Path, Path]:
    import torch
    from transformers import AutoConfig

    from tsloss_harness.data import write_jsonl
    from tsloss_harness.prompt import save_prompt
    from tsloss_harness.prompt_config import make_prompt_config
    from tsloss_harness.testbed import problems, tiny

    model_dir = tiny.build_tiny_model(
        "llama", root / "model", hidden_size=256, num_hidden_layers=4, intermediate_size=688,
        num_attention_heads=4, num_key_value_heads=4,
    )  # fmt: skip
    config = AutoConfig.from_pretrained(model_dir)
    matrix = torch.randn(virtual_tokens, config.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.5
    peft_config = make_prompt_config(
        str(model_dir), num_virtual_tokens=virtual_tokens, token_dim=config.hidden_size,
        num_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
    )  # fmt: skip
    prompt_dir = save_prompt(root / "prompt", matrix, peft_config=peft_config, provenance={"method": "bench"})

    data = root / "data"
    write_jsonl(problems.generate_gsm8k_rows(64, seed=1), data / "gsm8k" / "train.jsonl")
    write_jsonl(problems.generate_gsm8k_rows(64, seed=2), data / "gsm8k" / "test.jsonl")
    rows = problems.generate_gsm8k_rows(len(MMLU_CF_SUBJECTS) * 12, seed=3)
    for i, subject in enumerate(MMLU_CF_SUBJECTS):
        mc = []
        for row in rows[i * 12 : (i + 1) * 12]:
            n = int(row["answer"].rsplit("#### ", 1)[1])
            mc.append({"Question": row["question"], "A": str(n), "B": str(n + 1), "C": str(n + 2), "D": str(n + 3),
                       "Answer": "A"})  # fmt: skip
        write_jsonl(mc[:5], data / "mmlu_cf" / f"{subject}_dev.jsonl")
        write_jsonl(mc[5:], data / "mmlu_cf" / f"{subject}_val.jsonl")
    os.environ.setdefault("TSLOSS_DATA_DIR", str(data))
    os.environ.setdefault("TSLOSS_GSM8K_DIR", str(data / "gsm8k"))
    return model_dir, prompt_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=24, help="documents per task (MMLU-CF: per subject / 4)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tsloss_harness.evaluation import TSPromptLM

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench_plugin-")
    model_dir, prompt_dir = build_fixture(Path(tmp.name), args.virtual_tokens)
    task_manager = TaskManager(include_path=str(REPO / "tasks"))
    common = dict(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=args.batch_size)
    models = {
        "hf,peft=": HFLM(peft=str(prompt_dir), **common),
        "tsprompt": TSPromptLM(prompt=str(prompt_dir), **common),
    }
    # (group, lm-eval limit, samples per run): MMLU-CF's limit applies per subject.
    mmlu_limit = max(1, args.limit // len(MMLU_CF_SUBJECTS))
    tasks = [
        ("gsm8k_offline", args.limit, args.limit),
        ("mmlu_cf_offline", mmlu_limit, mmlu_limit * len(MMLU_CF_SUBJECTS)),
    ]

    best: dict[tuple[str, str], float] = {}
    best_cpu: dict[tuple[str, str], float] = {}
    outputs: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeats):
        for task, limit, _samples in tasks:
            for name, lm in models.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                results = simple_evaluate(
                    model=lm, tasks=[task], task_manager=task_manager, limit=limit, num_fewshot=0,
                    gen_kwargs=f"max_gen_toks={args.max_gen_toks}", bootstrap_iters=0, log_samples=False,
                    verbosity="ERROR",
                )  # fmt: skip
                elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                best[name, task] = min(elapsed, best.get((name, task), float("inf")))
                best_cpu[name, task] = min(cpu, best_cpu.get((name, task), float("inf")))
                outputs[name, task] = results["results"]

    print(f"\ntiny llama (hidden 256, 4 layers), P={args.virtual_tokens}, batch size {args.batch_size}, "
          f"best of {args.repeats}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(
        f"{'task':<16} {'samples':>7} {'hf,peft= s/s':>13} {'tsprompt s/s':>13} {'ratio':>6} {'ratio (CPU time)':>17}  same scores"
    )
    for task, _limit, samples in tasks:
        ref, ours = samples / best["hf,peft=", task], samples / best["tsprompt", task]
        cpu_ratio = best_cpu["hf,peft=", task] / best_cpu["tsprompt", task]
        same = outputs["hf,peft=", task] == outputs["tsprompt", task]
        print(f"{task:<16} {samples:>7} {ref:>13.2f} {ours:>13.2f} {ours / ref:>5.2f}x {cpu_ratio:>16.2f}x  {same}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
