"""``tsloss plan``: model resolution, config choice, and the activation estimate against memory
measured on CPU forward+backward runs of the tiny llama with a trainable prompt.

What is compared:
- ``saved``: the bytes of every distinct tensor autograd keeps for backward (saved_tensors_hooks,
  parameters excluded) must equal the formula's saved decoder activations + fp32 log-softmax.
- ``peak``: the high-water mark of bytes allocated by torch's CPU allocator during one
  forward+backward (profiler memory events, summed in time order) must lie at or below the
  estimate's ``peak`` (by at most 2%) and above 60% of it: the estimate is a tight upper bound.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from tsloss_harness.cli import main as tsloss
from tsloss_harness.plan import KNOWN_MODELS, PlanError, activation_bytes, estimate, load_ds_config, resolve_model

NUM_VIRTUAL = 20


def tuner_step(model, batch, seq_len, answer_tokens, padded):
    """One forward+backward as the tuner runs it: prompt + decoder + lm_head at answer positions + CE."""
    config = model.config
    decoder, head = getattr(model, model.base_model_prefix), model.get_output_embeddings()
    gen = torch.Generator().manual_seed(0)
    prompt = (torch.randn(NUM_VIRTUAL, config.hidden_size, generator=gen) * 0.02).requires_grad_()
    ids = torch.randint(4, config.vocab_size, (batch, seq_len), generator=gen)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if padded:
        mask[0, : seq_len // 2] = 0
    labels = torch.full((batch, seq_len), -100)
    labels[:, -answer_tokens:] = ids[:, -answer_tokens:]

    def run():
        embeds = decoder.embed_tokens(ids)
        embeds = torch.cat([prompt.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1)
        full_mask = torch.cat([mask.new_ones(batch, NUM_VIRTUAL), mask], dim=1)
        hidden = decoder(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False).last_hidden_state
        answer = labels != -100
        logits = head(hidden[:, NUM_VIRTUAL - 1 : NUM_VIRTUAL - 1 + seq_len][answer])
        F.cross_entropy(logits.float(), labels[answer], reduction="sum").backward()

    return run


def saved_bytes(model, run):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storages.values())


def peak_allocated_bytes(run):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    models = {}
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=dtype)
        models[size] = model.requires_grad_(False)
    return resolve_model(str(tiny_llama_dir)), models


SLOW = pytest.mark.slow  # a few seconds each on 2 CPU cores: the fast tier keeps the first case
CASES = [  # (dtype bytes, micro-batch, seq_len, answer tokens, padded)
    (4, 1, 400, 200, False),  # logits dominate the transient
    pytest.param(2, 1, 600, 10, False, marks=SLOW),  # a layer's backward dominates
    pytest.param(2, 3, 300, 50, True, marks=SLOW),  # padding: repeated kv heads and the sdpa mask per layer
    pytest.param(4, 2, 300, 100, True, marks=SLOW),
]


@pytest.mark.parametrize("dtype_bytes, batch, seq_len, answer, padded", CASES)
def test_saved_activations_match_the_formula(tiny_llama, dtype_bytes, batch, seq_len, answer, padded):
    shape, models = tiny_llama
    model = models[dtype_bytes]
    est = activation_bytes(
        shape, micro_batch=batch, seq_len=seq_len, num_virtual_tokens=NUM_VIRTUAL, answer_tokens=answer,
        dtype_bytes=dtype_bytes, padded=padded,
    )  # fmt: skip
    measured = saved_bytes(model, tuner_step(model, batch, seq_len, answer, padded))
    # what the formula leaves out: the label and answer-mask tensors (a few bytes per token)
    assert measured == pytest.approx(est["saved"] + est["logits_saved"], rel=0.005)


@pytest.mark.parametrize("dtype_bytes, batch, seq_len, answer, padded", CASES)
def test_peak_is_a_tight_upper_bound(tiny_llama, dtype_bytes, batch, seq_len, answer, padded):
    shape, models = tiny_llama
    model = models[dtype_bytes]
    est = activation_bytes(
        shape, micro_batch=batch, seq_len=seq_len, num_virtual_tokens=NUM_VIRTUAL, answer_tokens=answer,
        dtype_bytes=dtype_bytes, padded=padded,
    )  # fmt: skip
    ratio = peak_allocated_bytes(tuner_step(model, batch, seq_len, answer, padded)) / est["peak"]
    assert 0.6 <= ratio <= 1.02, f"measured peak / estimate = {ratio:.3f}"


def test_config_json_gives_the_true_parameter_count(tiny_llama):
    shape, models = tiny_llama
    assert shape.num_params == sum(p.numel() for p in models[4].parameters())


def test_known_models_have_their_published_sizes():
    published = {"gemma-2b-it": 2.51e9, "open-llama-7b": 6.74e9, "deepseek-7b-chat": 6.91e9,
                 "llama2-13b": 13.02e9, "qwen1.5-14b": 14.17e9}  # fmt: skip
    for key, size in published.items():
        assert KNOWN_MODELS[key].num_params == pytest.approx(size, rel=0.01), key
    assert resolve_model("meta-llama/Llama-2-13b-hf") is KNOWN_MODELS["llama2-13b"]  # hub ids too


def test_parameter_counts_and_missing_models():
    shape = resolve_model("7b")
    assert shape.num_params == 7_000_000_000 and shape.hidden_size % 128 == 0
    assert resolve_model("350M").num_params == 350_000_000
    with pytest.raises(PlanError, match="nobody/no-such-model"):
        resolve_model("nobody/no-such-model")  # offline, not cached: fails at once


def test_weights_follow_the_zero_stage(tmp_path):
    shape = KNOWN_MODELS["llama2-13b"]
    kw = dict(gpus=8, gpu_mem_gib=24, micro_batch=1, seq_len=512, num_virtual_tokens=20, answer_tokens=256,
              dtype_bytes=2)  # fmt: skip
    layer = 4 * 5120**2 + 3 * 5120 * 13824 + 2 * 5120  # one Llama-2-13B layer: attention, MLP, two norms
    gathered = (shape.largest_module + layer + 50_000_000) * 2  # + the layer ZeRO-3 keeps at the turn
    z2 = estimate(shape, dict(stage=2, offload_param=None, offload_optimizer=None, prefetch_bucket=5e7), **kw)
    z3 = estimate(shape, dict(stage=3, offload_param=None, offload_optimizer=None, prefetch_bucket=5e7), **kw)
    off = estimate(shape, dict(stage=3, offload_param="cpu", offload_optimizer="cpu", prefetch_bucket=5e7), **kw)
    assert z2.weights == shape.num_params * 2 and not z2.fits  # 26 GB of bf16 weights
    assert z3.weights == pytest.approx(shape.num_params * 2 / 8 + gathered, rel=1e-6) and z3.fits
    assert off.weights == gathered and off.host == shape.num_params * 2
    assert z2.activations == z3.activations == off.activations
    # One GPU: the partition is the whole parameter and a gather is a view of it; no layer is kept apart.
    one = {**kw, "gpus": 1}
    z3_one = estimate(shape, dict(stage=3, offload_param=None, offload_optimizer=None, prefetch_bucket=5e7), **one)
    off_one = estimate(shape, dict(stage=3, offload_param="cpu", offload_optimizer="cpu", prefetch_bucket=5e7), **one)
    assert z3_one.weights == (shape.num_params + shape.largest_module) * 2
    assert off_one.weights == gathered  # offloaded: every gather copies to the GPU, on one GPU too


def test_stage_is_read_from_the_file(tmp_path):
    offloaded = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}
    (tmp_path / "a.json").write_text(json.dumps(offloaded))
    (tmp_path / "b.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert load_ds_config(tmp_path / "a.json")["offload_param"] == "cpu"
    assert load_ds_config(tmp_path / "b.json")["stage"] == 2


def test_cli_picks_the_cheapest_config_that_fits(capsys):
    assert tsloss(["plan", "--model", "gemma-2b-it", "--gpus", "8", "--gpu-mem", "24"]) == 0
    assert "use --ds_config ds_configs/z2.json" in capsys.readouterr().out
    assert tsloss(["plan", "--model", "qwen1.5-14b", "--gpus", "8", "--gpu-mem", "24", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["choice"] == "z3.json" and [e["config"] for e in plan["estimates"]] == [
        "z2.json", "z3.json", "z3_offload.json"]  # fmt: skip
    assert tsloss(["plan", "--model", "qwen1.5-14b", "--gpus", "1", "--gpu-mem", "1", "--seq-len", "4096"]) == 1
    assert "nothing fits" in capsys.readouterr().out
    assert tsloss(["plan", "--model", "7b", "--gpus", "3", "--gpu-mem", "24"]) == 2  # 8 rows do not split over 3 GPUs
    assert "batch_size=8" in capsys.readouterr().err


@pytest.mark.slow
def test_linear_is_torch_s_again_after_a_zero3_run(tiny_llama_dir, gsm8k_dir, tmp_path):
    """A ZeRO-3 run in this process must not leave DeepSpeed's F.linear behind: it saves every linear
    input for backward, which the measurements above (and any later in-process work) would carry."""
    from pathlib import Path

    from tsloss_harness.tune import TuneConfig, run

    z3 = Path(__file__).resolve().parent.parent / "ds_configs" / "z3.json"
    linear = F.linear
    run(
        TuneConfig(
            model=str(tiny_llama_dir),
            data_dir=str(gsm8k_dir),
            num_samples=1,
            batch_size=1,
            max_steps=1,
            eval_every=0,
            topology_every=0,
            progress=False,
            output_dir=str(tmp_path / "run"),
            ds_config=str(z3),
        )
    )
    assert F.linear is linear
