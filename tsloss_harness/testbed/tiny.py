"""Tiny, fully local stand-ins for the paper's models (random weights, for plumbing).

No weights can be downloaded here, so tests, the demo and the testbed run on:

* ``build_tokenizer``: a byte-level BPE trained on that text (round-trips any string);
* ``build_tiny_model``: a randomly initialised Llama / Gemma / Qwen2 causal LM saved as a normal
  Hugging Face model directory (config, safetensors weights, tokenizer).

``python -m tsloss_harness.testbed.tiny llama OUT_DIR`` builds one model directory from the shell.
Heavy libraries are imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

ARCHS = ("llama", "gemma", "qwen2")

# Llama-style special-token layout: ids 0..3.
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}

# "A few hundred thousand parameters" at the tokenizer's ~2000-token vocabulary.
DEFAULT_SIZE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=2048,
)

# Qwen2's pre-tokenizer split (letters, single digits, punctuation runs, whitespace), as in Llama 3.
# It must equal transformers' Qwen2Tokenizer regex: transformers 5 rebuilds that pipeline whenever a
# qwen2 model directory is loaded, so any other split would tokenize differently there.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def build_tokenizer(out_dir, *, vocab_size: int = 2000, seed: int = 0, texts=None) -> Path:
    """Train a byte-level BPE on generated GSM8K text (or ``texts``) and save it in ``out_dir``.

    Saved as a Hugging Face fast tokenizer: ``<unk> <s> </s> <pad>`` are ids 0..3, ``<s>`` is
    prepended on encode like Llama's tokenizer (what lm-eval's HFLM expects of a causal LM), padding
    is on the left, and decoding returns the original text byte for byte. Digits are split one per
    token, as in Llama, Gemma and Qwen2. The vocabulary comes out smaller than ``vocab_size`` when the
    text has fewer merges to learn (generated text: ~1100 tokens).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        from tsloss_harness.testbed.problems import generate_gsm8k_rows

        texts = [f"{r['question']}\n{r['answer']}" for r in generate_gsm8k_rows(3000, seed=seed)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=2048,
        padding_side="left",  # decoder-only batches pad on the left
        clean_up_tokenization_spaces=False,  # would break exact round-trips (" ." -> ".")
        **SPECIAL_TOKENS,
    )
    out_dir = Path(out_dir)
    hf_tok.save_pretrained(out_dir)
    return out_dir


def _config_for(arch: str, vocab_size: int, special_ids: dict, size: dict):
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    config_cls = {"llama": LlamaConfig, "gemma": GemmaConfig, "qwen2": Qwen2Config}[arch]
    size = {**DEFAULT_SIZE, **size}
    # Gemma's default head_dim is 256 whatever the width; keep heads * head_dim == hidden.
    size.setdefault("head_dim", size["hidden_size"] // size["num_attention_heads"])
    size.setdefault("vocab_size", vocab_size)
    if size["vocab_size"] < vocab_size:
        raise ValueError(f"vocab_size={size['vocab_size']} is smaller than the tokenizer's {vocab_size} tokens")
    return config_cls(**size, **special_ids, dtype="float32")


def build_tiny_model(arch: str, out_dir, *, seed: int = 0, tokenizer_dir=None, **size_overrides) -> Path:
    """A randomly initialised ``arch`` causal LM plus tokenizer, saved as an HF model directory.

    ``size_overrides`` (hidden_size, num_hidden_layers, intermediate_size, num_attention_heads,
    num_key_value_heads, vocab_size, ...) go straight into the architecture's config.
    Same seed and sizes give identical weights; the global torch RNG is left untouched.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        build_tokenizer(out_dir)
        tokenizer_dir = out_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special_ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = _config_for(arch, len(tokenizer), special_ids, size_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(**special_ids)
    model.save_pretrained(out_dir)
    if Path(tokenizer_dir).resolve() != out_dir.resolve():
        tokenizer.save_pretrained(out_dir)
    return out_dir
