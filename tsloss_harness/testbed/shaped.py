"""Shape-faithful stand-ins for the paper's five models: real widths, heads, vocabularies, biases,
tied or untied heads, Gemma's scaled embeddings (``tsloss_harness.shapes``), fewer layers, random
weights, built locally like the tiny fixtures.

    tsloss shaped gemma-2b-it OUT_DIR [--num-layers 1] [--dtype float32]

The tokenizer is the tiny byte-level BPE (``tiny.build_tokenizer``, ~1,100 tokens learned from
generated GSM8K text) with its vocabulary padded by filler tokens to the model's vocabulary, so
``len(tokenizer) == vocab_size``: every embedding row has an id, lm-eval and PEFT see a tokenizer of the
model's size (no resizing), and text still encodes to the learned ids. Building takes seconds plus the
time to draw and write the weights (one Qwen1.5-14B layer in fp32: 1.9 B parameters, 7.5 GB).
"""

from __future__ import annotations

import json
from pathlib import Path

from tsloss_harness.shapes import ShapeError, architecture

__all__ = ["build_padded_tokenizer", "build_shaped_model"]

FILLER = "<filler_{}>"  # unreachable by the BPE merges: an id only, never produced by encoding text


def build_padded_tokenizer(out_dir, vocab_size: int, *, seed: int = 0) -> Path:
    """``tiny.build_tokenizer`` saved in ``out_dir`` with its vocabulary padded to exactly ``vocab_size``
    ids (fillers after the learned tokens; ids 0..3 stay ``<unk> <s> </s> <pad>``)."""
    from tsloss_harness.testbed.tiny import build_tokenizer

    out_dir = Path(out_dir)
    build_tokenizer(out_dir, seed=seed)
    path = out_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    if vocab_size < len(vocab):
        raise ShapeError(f"vocab_size={vocab_size} is smaller than the tokenizer's {len(vocab)} learned tokens")
    start = len(vocab)
    vocab.update({FILLER.format(i): i for i in range(start, vocab_size)})
    path.write_text(json.dumps(data, ensure_ascii=False))
    return out_dir


def build_shaped_model(
    name: str,
    out_dir,
    *,
    num_layers: int | None = 1,
    vocab_size: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Model ``name`` (``shapes.ARCHITECTURES`` key or hub id) with ``num_layers`` layers (None: all of
    them), random weights (``seed``), saved with its tokenizer as a Hugging Face model directory.

    ``vocab_size`` overrides the vocabulary (default: the model's own) where a test must stay small;
    everything else is the real architecture. ``device`` is where the weights are drawn (``cuda`` for a
    full-depth model on a GPU). A ``shape.json`` card says what was built."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    arch = architecture(name)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ShapeError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    vocab = arch.vocab_size if vocab_size is None else vocab_size
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(build_padded_tokenizer(out_dir, vocab, seed=seed))
    special_ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = arch.hf_config(num_layers=num_layers, vocab_size=vocab, dtype=dtype, special_ids=special_ids)
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.device("meta"):  # no construction-time init: HF's initialisation below draws every weight once
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model.to_empty(device=device)
        model.initialize_weights()  # N(0, 0.02) linears and embeddings, unit norms, RoPE buffers
        model.tie_weights()
    model.generation_config = GenerationConfig(**special_ids)
    # shards of <= 1 GB: writing copies one shard at a time, not the whole model, into memory
    model.save_pretrained(out_dir, max_shard_size="1GB")
    card = {
        "model": arch.key,
        "hub_id": arch.hub_id,
        "source": arch.source,
        "num_layers": config.num_hidden_layers,
        "of_layers": arch.num_layers,
        "vocab_size": vocab,
        "dtype": dtype,
        "seed": seed,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / "shape.json").write_text(json.dumps(card, indent=2) + "\n")
    return out_dir
