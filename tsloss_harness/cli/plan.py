"""``tsloss plan``: which shipped DeepSpeed config fits a model on given GPUs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def _gib(x: int) -> str:
    return f"{x / 2**30:.1f}"


def plan(argv: list[str]) -> int:
    """``tsloss plan``: choose the ds_configs/ file that fits; exit 0 when one fits, 1 when none does."""
    from tsloss_harness import plan as planning
    from tsloss_harness.plan import (
        DTYPE_BYTES,
        KNOWN_MODELS,
        PlanError,
        estimate,
        load_ds_config,
        resolve_model,
    )
    from tsloss_harness.prompt_config import PROMPT_METHODS
    from tsloss_harness.resources import resource_dir

    parser = argparse.ArgumentParser(prog="tsloss plan", description=planning.__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help=f"local HF model dir, cached hub id, a count like 7b, or: {', '.join(KNOWN_MODELS)}",
    )
    parser.add_argument("--gpus", type=int, required=True, help="GPUs (ranks) in the run")
    parser.add_argument("--gpu-mem", type=float, required=True, help="memory of one GPU in GiB")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row, prompt excluded (default 512)")
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=256,
        help="answer tokens per row: the only positions given logits (default 256)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, as the tuner's (default 8)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="rows per GPU (default batch/gpus)")
    parser.add_argument("--num-virtual-tokens", type=int, default=20, help="prompt length P (default 20)")
    parser.add_argument(
        "--method", choices=PROMPT_METHODS, default="prompt", help="the tuner's --method (default prompt)"
    )
    parser.add_argument(
        "--prefix-hidden-size", type=int, default=None, help="--method prefix: MLP width (default d_kv)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16", help="model dtype (default bf16)")
    parser.add_argument("--reserve-gib", type=float, default=1.5, help="CUDA context, NCCL, allocator slack")
    parser.add_argument("--ds-configs", type=Path, default=resource_dir("ds_configs"), help="folder of DeepSpeed JSONs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")  # fmt: skip
    args = parser.parse_args(argv)

    if args.gpus < 1 or args.gpu_mem <= 0 or args.seq_len < 1 or args.num_virtual_tokens < 0:
        raise PlanError("--gpus, --gpu-mem and --seq-len must be positive")
    micro = args.micro_batch_size or args.batch_size // args.gpus
    if micro < 1 or args.batch_size % (micro * args.gpus):
        raise PlanError(f"batch_size={args.batch_size} is not a multiple of micro_batch_size*gpus={micro}*{args.gpus}")
    shape = resolve_model(args.model)
    files = sorted(args.ds_configs.glob("*.json"))
    if not files:
        raise PlanError(f"{args.ds_configs}: no DeepSpeed JSON files")
    configs = {f.name: load_ds_config(f) for f in files}
    # cheapest first: fewer collectives, then no PCIe traffic for offloaded parameters
    order = sorted(configs, key=lambda k: (configs[k]["stage"], configs[k]["offload_param"] is not None, k))
    estimates = [
        estimate(shape, configs[name], name=name, gpus=args.gpus, gpu_mem_gib=args.gpu_mem, micro_batch=micro,
                 seq_len=args.seq_len, num_virtual_tokens=args.num_virtual_tokens,
                 answer_tokens=args.answer_tokens, dtype_bytes=DTYPE_BYTES[args.dtype], reserve_gib=args.reserve_gib,
                 method=args.method, prefix_hidden_size=args.prefix_hidden_size)
        for name in order
    ]  # fmt: skip
    choice = next((e for e in estimates if e.fits), None)
    if args.json:
        print(json.dumps({
            "model": shape.name, "num_params": shape.num_params, "gpus": args.gpus, "gpu_mem_gib": args.gpu_mem,
            "micro_batch": micro, "choice": choice.config if choice else None,
            "estimates": [asdict(e) for e in estimates],
        }))  # fmt: skip
        return 0 if choice else 1
    return _print_plan(args, shape, micro, estimates, choice)


def _print_plan(args, shape, micro: int, estimates: list, choice) -> int:
    """The human-readable plan; 0 when a config fits, 1 when none does."""
    print(f"model {shape.name}: {shape.num_params / 1e9:.2f}B parameters, {shape.num_layers} layers, hidden "
          f"{shape.hidden_size}, vocab {shape.vocab_size}; {args.dtype}")  # fmt: skip
    print(f"{args.gpus} GPU(s) x {args.gpu_mem:g} GiB; micro-batch {micro} x ({args.num_virtual_tokens} prompt + "
          f"{args.seq_len} tokens), {min(args.answer_tokens, args.seq_len)} answer tokens per row")  # fmt: skip
    header = "".join(f"{c:>9}" for c in ("weights", "activ.", "prompt", "reserve", "total"))
    print(f"\n  {'config':<18}{header}  fits  max micro-batch")
    for e in estimates:
        mark = "*" if e is choice else " "
        print(f"{mark} {e.config:<18}{_gib(e.weights):>9}{_gib(e.activations):>9}{e.prompt / 2**20:>8.1f}M"
              f"{_gib(e.reserve):>9}{_gib(e.total):>9}  {'yes' if e.fits else 'no':<4}  {e.max_micro_batch}")  # fmt: skip
    print("  (GiB per GPU)")
    if choice is None:
        print(f"\nnothing fits in {args.gpu_mem:g} GiB: shorten --seq-len, lower the micro-batch, or add GPUs")
        return 1
    host = f"; host RAM for parameters: {_gib(choice.host)} GiB" if choice.offload else ""
    print(f"\nuse --ds_config {args.ds_configs.name}/{choice.config}{host}")
    return 0
