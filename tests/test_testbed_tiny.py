"""tsloss_harness.testbed.tiny: the tiny tokenizer and model directories of every architecture."""

import json
import unicodedata

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsloss_harness.data import read_jsonl
from tsloss_harness.testbed import problems, tiny

MODEL_CLASSES = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
ODD_TEXTS = [
    "  two leading spaces, tabs\tand\n\nnewlines  ",
    "Ünïcödé, 世界, emoji 🙂, and a decomposed e\u0301",
    "$1,234.56 - 7.5% = ?   #### -12",
    "",
]


def _texts(rows):
    return [f"{r['question']}\n{r['answer']}" for r in rows]


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trips_and_specials(tiny_tokenizer_dir, gsm8k_rows):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2, 3]
    assert tok.padding_side == "left" and tok.model_max_length == 2048
    assert 500 < len(tok) <= 2000
    for text in _texts(gsm8k_rows) + ODD_TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    # Like Hugging Face's own tokenizers, special-token strings in text map to the special ids
    # (lm-eval relies on it to avoid a double BOS).
    assert tok("<s>Tom</s>", add_special_tokens=False)["input_ids"][::2] == [tok.bos_token_id, tok.eos_token_id]
    assert tok.convert_ids_to_tokens(tok("4096", add_special_tokens=False)["input_ids"]) == list("4096")
    # Common words of the training text are single tokens: the BPE actually learned merges.
    assert len(tok("She sold clips", add_special_tokens=False)["input_ids"]) == 3
    assert tok("sold", add_special_tokens=False)["input_ids"] != tok(" sold", add_special_tokens=False)["input_ids"]


def test_tokenizer_is_deterministic(tmp_path):
    texts = _texts(problems.generate_gsm8k_rows(300, seed=5))
    a = tiny.build_tokenizer(tmp_path / "a", vocab_size=600, texts=texts)
    b = tiny.build_tokenizer(tmp_path / "b", vocab_size=600, texts=texts)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    assert len(json.loads((a / "tokenizer.json").read_text())["model"]["vocab"]) == 600


@pytest.mark.slow
def test_tokenizer_round_trips_real_gsm8k(real_gsm8k_dir, tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    split = "test.jsonl" if (real_gsm8k_dir / "test.jsonl").is_file() else "train.jsonl"
    texts = _texts(read_jsonl(real_gsm8k_dir / split))
    assert texts
    for text in texts:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_model_dir_loads_and_generates(arch, tiny_model_dirs, tiny_tokenizer_dir, gsm8k_rows):
    model_dir = tiny_model_dirs[arch]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert type(model).__name__ == MODEL_CLASSES[arch]
    assert model.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in load_file(model_dir / "model.safetensors").values())
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 1e6
    cfg, gen = model.config, model.generation_config
    assert cfg.vocab_size == len(tok) and cfg.max_position_embeddings == 2048
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )

    # transformers 5 loads qwen2 dirs through Qwen2Tokenizer, which rebuilds its own pipeline (same
    # split, plus NFC): the model dir must still tokenize (NFC) text exactly like its tokenizer.
    base = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    for text in _texts(gsm8k_rows) + ODD_TEXTS:
        text = unicodedata.normalize("NFC", text)
        assert tok(text)["input_ids"] == base(text)["input_ids"], text

    batch = tok([gsm8k_rows[0]["question"], "Tom has 3 apples."], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # left padding
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert logits.shape == (*batch["input_ids"].shape, cfg.vocab_size)
    assert torch.isfinite(logits).all()
    assert out.shape == (2, batch["input_ids"].shape[1] + 5)


def test_weights_are_deterministic_per_seed(tmp_path, tiny_llama_dir, tiny_tokenizer_dir):
    rng_before = torch.random.get_rng_state()
    same = tiny.build_tiny_model("llama", tmp_path / "same", seed=0, tokenizer_dir=tiny_tokenizer_dir)
    other = tiny.build_tiny_model("llama", tmp_path / "other", seed=1, tokenizer_dir=tiny_tokenizer_dir)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    ref, a, b = (load_file(d / "model.safetensors") for d in (tiny_llama_dir, same, other))
    assert ref.keys() == a.keys() == b.keys()
    assert all(torch.equal(ref[k], a[k]) for k in ref)
    assert not all(torch.equal(ref[k], b[k]) for k in ref)


def test_size_overrides_and_errors(tmp_path, tiny_tokenizer_dir):
    d = tiny.build_tiny_model(
        "gemma",
        tmp_path / "big",
        tokenizer_dir=tiny_tokenizer_dir,
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=3,
        intermediate_size=160,
        vocab_size=2048,
    )
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["head_dim"], cfg["vocab_size"]) == (96, 3, 16, 2048)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert model.get_input_embeddings().weight.shape == (2048, 96)
    with pytest.raises(ValueError, match="vocab_size"):
        tiny.build_tiny_model("llama", tmp_path / "small", tokenizer_dir=tiny_tokenizer_dir, vocab_size=100)
    with pytest.raises(ValueError, match="mistral"):
        tiny.build_tiny_model("mistral", tmp_path / "x", tokenizer_dir=tiny_tokenizer_dir)


def test_own_tokenizer_when_none_given(tmp_path):
    assert tiny.build_tiny_model("qwen2", tmp_path / "q", hidden_size=32, num_hidden_layers=1) == tmp_path / "q"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    tok = AutoTokenizer.from_pretrained(tmp_path / "q")
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert model.config.vocab_size == len(tok)
