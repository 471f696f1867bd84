"""Cost of the Table III baselines ACT and DPC against plain ``tsprompt``, on the same documents, in one process.

    python benchmarks/bench_baselines.py [--docs 24] [--batch-size 8] [--repeats 3]

Builds a small random Llama (tsloss_harness.testbed.tiny, 4 layers x 256, 4 heads) and a P-token
prompt, takes generated GSM8K-format rows, and times lm-eval's own request paths of ``tsprompt``
(models loaded once, outside the timing; each method's best of ``--repeats``):

* generation (``generate_until``, 0-shot "Question: ...\\nAnswer:", greedy, ``--max-gen-toks``):
  plain, ``act=`` (``--act-heads`` per layer), ``dpc=true`` with the default trigger, and ``dpc=true``
  forced to fire on every document (``dpc_ratio=0``, ``dpc_beta_scale=1e-9``: saliency pass plus a
  second generation each);
* loglikelihood of the reference answers: plain and ``act=`` (DPC does not apply).

Prints samples/s per method and its ratio to plain tsprompt, by wall clock and by this process's CPU
time (the fairer one on a shared machine), and how often DPC fired.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_fixture(root: Path, virtual_tokens: int) -> tuple[Path, Path]:
    import torch

    from tsloss_harness.prompt import save_raw_prompt
    from tsloss_harness.testbed import tiny

    model_dir = tiny.build_tiny_model(
        "llama", root / "model", hidden_size=256, num_hidden_layers=4, intermediate_size=688,
        num_attention_heads=4, num_key_value_heads=4,
    )  # fmt: skip
    matrix = torch.randn(virtual_tokens, 256, generator=torch.Generator().manual_seed(0)) * 0.5
    return model_dir, save_raw_prompt(root / "prompt.safetensors", matrix)


def requests(docs: int, max_gen_toks: int):
    from lm_eval.api.instance import Instance

    from tsloss_harness.testbed.problems import generate_gsm8k_rows

    rows = generate_gsm8k_rows(docs, seed=2)
    gen = [Instance("generate_until", r, (f"Question: {r['question']}\nAnswer:",
                                          {"until": ["Question:"], "max_gen_toks": max_gen_toks, "do_sample": False}), i)
           for i, r in enumerate(rows)]  # fmt: skip
    ll = [Instance("loglikelihood", r, (f"Question: {r['question']}\nAnswer:", f" {r['answer']}"), i)
          for i, r in enumerate(rows)]  # fmt: skip
    return gen, ll


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process) over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--act-heads", default="0-1", help="ACT heads in every layer (of 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from tsloss_harness.act import ActSettings, parse_index_list
    from tsloss_harness.evaluation import TSPromptLM

    root = Path(tempfile.mkdtemp(prefix="bench_baselines_"))
    model_dir, prompt = build_fixture(root, args.virtual_tokens)
    heads = tuple((layer, head) for layer in range(4) for head in parse_index_list(args.act_heads, 4, "--act-heads"))
    act_file = ActSettings(heads).save(root / "act.json")
    gen, ll = requests(args.docs, args.max_gen_toks)
    common = {
        "pretrained": str(model_dir),
        "prompt": str(prompt),
        "device": "cpu",
        "dtype": "float32",
        "batch_size": args.batch_size,
        "topology": False,
    }
    models = {
        "tsprompt": TSPromptLM(**common),
        f"+ACT ({len(heads)} heads)": TSPromptLM(act=str(act_file), **common),
        "+DPC (default trigger)": TSPromptLM(dpc=True, **common),
        "+DPC (fires always)": TSPromptLM(dpc=True, dpc_ratio=0.0, dpc_beta_scale=1e-9, **common),
    }
    print(
        f"{args.docs} documents, batch {args.batch_size}, P={args.virtual_tokens}, "
        f"max_gen_toks={args.max_gen_toks}, threads={args.threads}, best of {args.repeats}"
    )
    for kind, reqs, names in (("generate_until", gen, list(models)), ("loglikelihood", ll, list(models)[:2])):
        results = {}
        for name in names:
            lm = models[name]
            call = lm.generate_until if kind == "generate_until" else lm.loglikelihood
            results[name] = best_time(lambda call=call, reqs=reqs: call(reqs, disable_tqdm=True), args.repeats)
        wall0, cpu0 = results["tsprompt"]
        print(f"\n{kind}:")
        for name, (wall, cpu) in results.items():
            print(
                f"  {name:<24} {len(reqs) / wall:8.2f} samples/s  {wall0 / wall:6.3f}x wall  "
                f"{cpu0 / cpu:6.3f}x CPU  vs tsprompt"
            )
    for name in list(models)[2:]:
        report = models[name]._dpc.report()
        print(
            f"{name}: fired on {report['fired']} of {report['instances']} generations "
            f"({report['too_short']} too short to judge)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
