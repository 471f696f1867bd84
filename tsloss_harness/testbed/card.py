"""A testbed's card: ``testbed.json`` (what was built, from what, how, what it reached) and its README."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

CARD_NAME = "testbed.json"


def read_card(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / CARD_NAME).read_text())
    except (OSError, ValueError):
        return None


def build_card(
    model,
    *,
    key,
    arch,
    size_name,
    size,
    corpus_info,
    seed,
    losses,
    stopped_early,
    corpus_tokens,
    val_loss,
    wall_s,
    cpu_s,
) -> dict:
    """testbed.json: what was built, from what, how, and what it reached."""
    import torch

    from tsloss_harness import __version__

    cfg, tail = model.config, losses[-20:]
    return {
        "key": key,
        "arch": arch,
        "model_class": type(model).__name__,
        "size": size_name,
        "shape": {
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "vocab_size": cfg.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "corpus": corpus_info,
        "training": {
            **asdict(size),
            "optimizer": "AdamW(betas=(0.9, 0.95))",
            "schedule": "linear warm-up, cosine decay",
        },
        "steps": len(losses),
        "steps_planned": size.steps,
        "stopped_early": stopped_early,
        "tokens_seen": len(losses) * size.batch_size * size.seq_len,
        "corpus_tokens": corpus_tokens,
        "loss_first": losses[0] if losses else None,
        "loss_final": sum(tail) / len(tail) if tail else None,  # mean of the last 20 steps
        "val_loss": val_loss,
        "seed": seed,
        "wall_s": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "torch_threads": torch.get_num_threads(),
        "versions": {"tsloss_harness": __version__, "torch": torch.__version__},
    }


def card_readme(card: dict) -> str:
    s, c = card["shape"], card["corpus"]
    corpus = (
        f"generated GSM8K-format rows ({c['rows']})" if c["kind"] == "generated" else f"{c['path']} ({c['rows']} rows)"
    )
    early = " (stopped early by the time cap)" if card["stopped_early"] else ""
    return (
        f"# tsloss-harness testbed: {card['arch']} / {card['size']}\n\n"
        f"A tiny {card['model_class']} ({s['num_hidden_layers']} layers x {s['hidden_size']} hidden, "
        f"{s['vocab_size']}-token BPE, {s['parameters']:,} parameters) pretrained from random weights "
        f"on {corpus} by `tsloss testbed`, so that soft prompts can steer it.\n\n"
        f"- steps: {card['steps']}{early} of {card['training']['batch_size']} x {card['training']['seq_len']} tokens "
        f"({card['tokens_seen']:,} tokens seen)\n"
        f"- loss: {card['loss_first']:.3f} -> {card['loss_final']:.3f} (train, last 20 steps); "
        f"held-out {card['val_loss'] if card['val_loss'] is None else round(card['val_loss'], 3)}\n"
        f"- seed: {card['seed']}; wall time {card['wall_s']} s ({card['cpu_s']} s CPU)\n\n"
        f"Load it with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`. "
        f"Full record: `{CARD_NAME}`.\n"
    )
