"""The paper's five shapes: one table for the planner and the fixtures, shape-faithful models built at
reduced depth (and, in tests, reduced vocabulary), and one of them trained on two ZeRO-3 ranks and
scored in tsprompt (slow). The full matrix at real vocabularies: benchmarks/bench_real_shapes.py."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, two_ranks

from tsloss_harness.plan import KNOWN_MODELS, resolve_model
from tsloss_harness.shapes import ARCHITECTURES, ShapeError, architecture
from tsloss_harness.testbed.shaped import FILLER, build_padded_tokenizer, build_shaped_model


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("key", list(ARCHITECTURES))
def test_the_table_builds_what_the_plan_counts(key):
    """HF's modules built from the table (on the meta device) against the planner's own formula,
    and the structural features that make each shape what it is."""
    arch = ARCHITECTURES[key]
    model = _meta_model(arch.hf_config())
    shape = KNOWN_MODELS[key]
    assert sum(p.numel() for p in model.parameters()) == shape.num_params
    assert (shape.hidden_size, shape.num_kv_heads, shape.head_dim, shape.vocab_size) == (
        arch.hidden_size,
        arch.num_kv_heads,
        arch.head_dim,
        arch.vocab_size,
    )
    attention = model.model.layers[0].self_attn
    assert tuple(attention.k_proj.weight.shape) == (arch.num_kv_heads * arch.head_dim, arch.hidden_size)
    assert (attention.q_proj.bias is not None) is arch.qkv_bias is (key == "qwen1.5-14b")
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is arch.tie_word_embeddings
    assert (
        model.config.rms_norm_eps == arch.rms_norm_eps and model.config.rope_parameters["rope_theta"] == arch.rope_theta
    )
    assert hasattr(model.model.embed_tokens, "embed_scale") is arch.scaled_embeddings is (key == "gemma-2b-it")
    assert architecture(arch.hub_id) is arch and resolve_model(arch.hub_id) is shape


def test_unknown_names_and_bad_overrides_fail_in_one_line():
    with pytest.raises(ShapeError, match="unknown model 'gpt-5'; known: gemma-2b-it, "):
        architecture("gpt-5")
    with pytest.raises(ShapeError, match="num_layers must be >= 1"):
        architecture("llama2-13b").hf_config(num_layers=0)


@pytest.mark.slow
def test_padded_tokenizer_covers_the_vocabulary(tmp_path, gsm8k_rows):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_padded_tokenizer(tmp_path / "tok", 5000))
    assert len(tokenizer) == 5000
    text = f"{gsm8k_rows[0]['question']}\n{gsm8k_rows[0]['answer']}"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # the learned tokens still encode text
    learned = min(i for i in range(5000) if tokenizer.convert_ids_to_tokens(i).startswith("<filler_"))
    assert 1000 < learned < 2000 and max(ids) < learned  # fillers come after, and text never produces them
    assert tokenizer.convert_ids_to_tokens(4999) == FILLER.format(4999)
    with pytest.raises(ShapeError, match="smaller than the tokenizer's"):
        build_padded_tokenizer(tmp_path / "small", 500)


def test_tsloss_shaped_offers_the_five_models(capsys):
    """``tsloss shaped``: the CLI over build_shaped_model; its model argument is the table's keys."""
    from tsloss_harness.cli import main as tsloss

    with pytest.raises(SystemExit) as exit_:
        tsloss(["shaped", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tsloss shaped") and all(key in out for key in ARCHITECTURES)
    with pytest.raises(SystemExit) as exit_:
        tsloss(["shaped", "llama-1t", "out"])
    assert exit_.value.code == 2 and "invalid choice: 'llama-1t'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_built_shape_is_the_real_architecture_with_fewer_layers(tmp_path):
    from transformers import AutoConfig

    model_dir = build_shaped_model("gemma-2b-it", tmp_path / "g", num_layers=1, vocab_size=4096)
    config = AutoConfig.from_pretrained(model_dir)
    arch = ARCHITECTURES["gemma-2b-it"]
    assert (config.num_hidden_layers, config.vocab_size) == (1, 4096)
    assert (config.hidden_size, config.num_key_value_heads, config.head_dim, config.intermediate_size) == (
        arch.hidden_size,
        arch.num_kv_heads,
        arch.head_dim,
        arch.intermediate_size,
    )
    card = json.loads((model_dir / "shape.json").read_text())
    assert card["num_params"] == resolve_model(str(model_dir)).num_params  # the plan reads the directory alike
    assert card["source"] == arch.source and card["of_layers"] == 18


@pytest.mark.slow
def test_a_real_shape_on_two_zero3_ranks_equals_one_and_scores_in_tsprompt(tmp_path, short_dir):
    """Gemma-2B's shape (multi-query attention, head_dim 256, tied and scaled embeddings), one layer,
    vocabulary cut to 16,384 for CI time: Prefix-Tuning on two ZeRO-3 CPU ranks trains what one rank
    trains; the prompt directory loads in PEFT and tsprompt's loglikelihoods equal hf,peft=."""
    from tsloss_harness.prompt import load_prompt
    from tsloss_harness.tune import TuneConfig, run

    model_dir = build_shaped_model("gemma-2b-it", tmp_path / "gemma", num_layers=1, vocab_size=16384)
    common = dict(
        model=str(model_dir),
        data_dir=str(short_dir),
        num_samples=3,
        batch_size=2,
        max_steps=2,
        lr=0.05,
        warmup_ratio=0.0,
        eval_every=0,
        topology_every=2,
        progress=False,
        method="prefix",
        init="peft",
        ds_config=str(REPO / "ds_configs" / "z3.json"),
    )
    # one rank takes the two ranks' one-row micro-batches in sequence: the same arithmetic per row
    one = run(TuneConfig(**common, output_dir=str(tmp_path / "one"), micro_batch_size=1))
    two = two_ranks(TuneConfig(**common, output_dir=str(tmp_path / "two")))
    assert two["world_size"] == 2 and one["final"]["loss"] == pytest.approx(two["final"]["loss"], rel=1e-5)
    torch.testing.assert_close(
        load_prompt(tmp_path / "two" / "prompt"), load_prompt(tmp_path / "one" / "prompt"), rtol=1e-5, atol=1e-6
    )
    _tsprompt_equals_peft(model_dir, tmp_path / "two" / "prompt")


def _tsprompt_equals_peft(model_dir, prompt_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tsloss_harness.evaluation import TSPromptLM

    requests = [("Question: What is 2 plus 3?\nAnswer:", " 2+3=5"), ("Q: 7 and 2", " make 9")]

    def loglikelihoods(lm):
        return [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, 0) for r in requests])]

    peft = loglikelihoods(HFLM(pretrained=str(model_dir), peft=str(prompt_dir), device="cpu", dtype="float32"))
    ours = loglikelihoods(TSPromptLM(pretrained=str(model_dir), prompt=str(prompt_dir), device="cpu", dtype="float32"))
    plain = loglikelihoods(HFLM(pretrained=str(model_dir), device="cpu", dtype="float32"))
    assert ours == pytest.approx(peft, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(peft, plain, strict=True)) > 1e-3  # the prefix matters


@pytest.mark.parametrize("key", ["gemma-2b-it", "qwen1.5-14b"])
@pytest.mark.parametrize("method", ["prompt", "prefix", "ptuning_v2"])
def test_plan_counts_what_peft_trains(key, method):
    """The planner's trainable values against PEFT's own modules for each method, at full depth (meta
    device): Prefix-Tuning's MLP on Qwen1.5-14B is 2.1 B values, which the plan must carry."""
    from peft import get_peft_model

    from tsloss_harness.plan import trainable_values
    from tsloss_harness.prompt_config import make_method_config

    model = _meta_model(ARCHITECTURES[key].hf_config())
    with torch.device("meta"):
        peft_model = get_peft_model(model, make_method_config(method, None, model.config, num_virtual_tokens=20))
    trained = sum(p.numel() for p in peft_model.prompt_encoder.parameters())
    assert trainable_values(KNOWN_MODELS[key], method, 20) == trained
