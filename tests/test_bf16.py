"""The bf16 path, run on this CPU (which has no bf16 instructions: tiny models only).

bf16 is forced through the DeepSpeed JSON (``"bf16": {"enabled": true}``; ``"auto"`` means "where
the GPU has it"). What stays in fp32 under a bf16 model, and is tested here:
- the fused answer-only cross-entropy: logits come out of the bf16 product (as HF's ``lm_head``),
  their log-sum-exp, softmax and the CE sum are fp32; the logits' gradient returns to bf16 for the
  product with the weight, as autograd through HF's ``logits.float()`` does;
- the regularizers: TSLoss (and the others) upcast the prompt matrix and return fp32;
- adaptive weights: the CE and term gradient norms and the scales are fp32 (logged in float64).
Every method's loss and prompt gradient in bf16 agree with fp32 to bf16 tolerance; two ranks in bf16
(ZeRO-2 and ZeRO-3) train what one fp32 rank trains, to bf16 tolerance."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, two_ranks

from tsloss_harness.data import load_examples
from tsloss_harness.ds_config import fill_ds_config
from tsloss_harness.prompt import load_prompt
from tsloss_harness.prompt_config import PROMPT_METHODS as METHODS
from tsloss_harness.regularizers import get_regularizer
from tsloss_harness.tune import TuneConfig, run
from tsloss_harness.tune.batches import collate, tokenize
from tsloss_harness.tune.objective import LinearCrossEntropy, PromptTuningLoss

P = 5


def _bf16_ds_config(tmp_path, zero: str) -> str:
    ds = json.loads((REPO / "ds_configs" / f"{zero}.json").read_text())
    ds["bf16"] = {"enabled": True}
    if zero == "z3":
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition the tiny model's tensors too
    path = tmp_path / f"{zero}_bf16.json"
    path.write_text(json.dumps(ds))
    return str(path)


def initial_matrix(model_dir, method: str, num_virtual_tokens: int = 20):
    """The matrix a run with ``init="peft"`` (seed 0) starts from, as its prompt directory would store it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tsloss_harness.prompt_config import make_method_config

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = make_method_config(method, str(model_dir), base.config, num_virtual_tokens=num_virtual_tokens, init="peft")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft_model = get_peft_model(base, config)
    return peft_model.get_prompt_embedding_to_save("default").detach().float()


def test_bf16_is_forced_by_the_json_and_auto_follows_the_gpu(tmp_path):
    forced = fill_ds_config(
        TuneConfig(model="m", ds_config=_bf16_ds_config(tmp_path, "z2")), world_size=1, total_steps=1
    )
    assert forced["bf16"]["enabled"] is True  # honoured on a machine without CUDA
    auto = fill_ds_config(TuneConfig(model="m"), world_size=1, total_steps=1)
    assert auto["bf16"]["enabled"] is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_fused_cross_entropy_of_bf16_inputs_is_fp32():
    """Reference: HF's bf16 path, ``F.cross_entropy(lm_head(hidden).float(), ...)``, autograd for the
    gradient. A bf16 log-softmax would be off by ~1e-3 relative (bf16 has 8 bits of mantissa)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(70, 64, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(30000, 64, generator=g) * 0.3).bfloat16()  # 30000 x 70 logits: several row chunks
    targets = torch.randint(0, 30000, (70,), generator=g)
    ours = LinearCrossEntropy.apply(hidden, weight, None, targets, 0.0)
    assert ours.dtype == torch.float32
    (ours_grad,) = torch.autograd.grad(ours * 3.0, hidden)
    reference = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")
    (reference_grad,) = torch.autograd.grad(reference * 3.0, hidden)
    torch.testing.assert_close(ours, reference, rtol=2e-6, atol=0)
    assert ours_grad.dtype == torch.bfloat16
    # the same roundings, summed in another order (row chunks): bf16-size differences, normwise
    assert (ours_grad.float() - reference_grad.float()).norm() / reference_grad.float().norm() < 1e-2


def _module(model_dir, method: str, dtype, adaptive):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tsloss_harness.prompt_config import make_method_config

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).requires_grad_(False)
    torch.manual_seed(0)  # PEFT's own (seeded) initialisation: the same prompt in both dtypes, then rounded
    peft_model = get_peft_model(base, make_method_config(method, str(model_dir), base.config, num_virtual_tokens=P))
    peft_model.prompt_encoder.to(dtype)
    kwargs = {"tau": 0.1, "alpha": 10.0, "beta_h0": 1.0, "beta_h1": 1.0}
    return peft_model, PromptTuningLoss(peft_model, get_regularizer("tsloss"), kwargs, 0.5, adaptive)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_in_bf16_agrees_with_fp32(method, tiny_llama_dir, gsm8k_dir):
    """Loss, CE, regularizer, the prompt encoder's gradients and the adaptive scale: bf16 model (with
    the fp32 islands) against the fp32 model, from the same prompt values."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = tokenize(load_examples("gsm8k", gsm8k_dir, num_samples=3), tokenizer, None)
    batch = collate(rows, tokenizer.pad_token_id)
    n_answer = int((batch[2] != -100).sum())
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        peft_model, module = _module(tiny_llama_dir, method, dtype, {"h0": 0.5})
        params = list(peft_model.prompt_encoder.parameters())
        with torch.no_grad():  # both start from the same bf16-representable prompt values
            for p, start in zip(params, results[torch.float32]["params"] if results else params, strict=True):
                p.copy_(start.bfloat16())
        loss, ce_sum, reg = module(*batch, 1.0 / n_answer)
        assert ce_sum.dtype == reg.dtype == loss.dtype == torch.float32
        grads = torch.autograd.grad(loss, params)
        results[dtype] = {
            "loss": loss.item(),
            "ce": ce_sum.item(),
            "reg": reg.item(),
            "grads": grads,
            "scale": module.adaptive_scales.clone(),
            "params": [p.detach().clone() for p in params],
        }
    want, got = results[torch.float32], results[torch.bfloat16]
    for key in ("loss", "ce"):  # measured: ~2e-5 (a bf16 log-softmax alone is off by ~3e-3)
        assert got[key] == pytest.approx(want[key], rel=1e-3), key
    assert got["reg"] == pytest.approx(want["reg"], rel=2e-2, abs=1e-6)  # measured: <= 1e-2
    assert got["scale"][0].item() == pytest.approx(want["scale"][0].item(), rel=2e-2)  # measured: <= 9e-3
    for w, g in zip(want["grads"], got["grads"], strict=True):
        assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()
        cosine = F.cosine_similarity(w.flatten().double(), g.flatten().double(), dim=0)
        assert cosine > 0.999 and (g.norm().item() / w.norm().item()) == pytest.approx(1.0, rel=1e-2)  # 2e-3


@pytest.mark.slow
@pytest.mark.parametrize("zero, method", [("z2", "prompt"), ("z3", "prefix")])
def test_two_ranks_in_bf16_train_what_one_fp32_rank_trains(zero, method, tiny_llama_dir, short_dir, tmp_path):
    """bf16 forced on two CPU ranks against fp32 on one (the other method x stage pairs:
    benchmarks/bench_real_shapes.py --bf16-tiny). Step-1 values are one forward+backward in each dtype
    from the same prompt; after three AdamW steps the prompts differ by a small part of how far they moved."""
    lr = 0.01
    common = dict(
        model=str(tiny_llama_dir),
        data_dir=str(short_dir),
        num_samples=3,
        batch_size=2,
        max_steps=3,
        lr=lr,
        warmup_ratio=0.0,
        eval_every=0,
        topology_every=3,
        progress=False,
        method=method,
        init="peft",
        adaptive_ratio_h0=0.5,
    )
    ds32 = json.loads((REPO / "ds_configs" / f"{zero}.json").read_text())
    ds32["bf16"] = {"enabled": False}
    (tmp_path / "fp32.json").write_text(json.dumps(ds32))
    one = run(
        TuneConfig(
            **common, output_dir=str(tmp_path / "fp32"), micro_batch_size=1, ds_config=str(tmp_path / "fp32.json")
        )
    )
    two = two_ranks(TuneConfig(**common, output_dir=str(tmp_path / "bf16"), ds_config=_bf16_ds_config(tmp_path, zero)))
    assert two["world_size"] == 2
    lines = {
        name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("fp32", "bf16")
    }
    for a, b in zip(lines["fp32"], lines["bf16"], strict=True):
        assert all(map(math.isfinite, (b["loss"], b["ce"], b["reg"], b["beta_h0"])))
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-3)  # every step (measured: <= 1.4e-4)
    a, b = lines["fp32"][0], lines["bf16"][0]  # step 1: the same prompt, one forward+backward in each dtype
    assert b["ce"] != a["ce"]  # bf16 did run: its weights are rounded
    assert b["reg"] == pytest.approx(a["reg"], rel=2e-2) and b["beta_h0"] == pytest.approx(a["beta_h0"], rel=2e-2)
    # AdamW moves every element by ~lr a step whatever the size of its gradient, so where a gradient is
    # near 0 bf16 can flip a step's sign: compare normwise, against how far fp32 moved the matrix
    start = initial_matrix(tiny_llama_dir, method)
    fp32, bf16 = load_prompt(tmp_path / "fp32" / "prompt"), load_prompt(tmp_path / "bf16" / "prompt")
    assert (bf16 - fp32).norm() < 0.25 * (fp32 - start).norm()  # measured: 0.10 (prompt), 0.03 (prefix)
    assert two["final"]["h0_mean_lifetime"] == pytest.approx(one["final"]["h0_mean_lifetime"], rel=5e-2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt", "ptuning_v2"])  # a soft prompt and a prefix adapter
def test_tsprompt_equals_hf_peft_in_bf16(method, tiny_tokenizer_dir, tmp_path):
    """lm-eval loglikelihoods, model and prompt in bf16: tsprompt (prompt cached once, in bf16) against
    ``hf,peft=`` (PEFT's forward), to bf16 resolution; on a tiny llama with sharper weights (N(0, 0.2²))
    so that the prompt moves the scores well past that resolution."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoConfig

    from tsloss_harness.evaluation import TSPromptLM
    from tsloss_harness.prompt import save_prompt
    from tsloss_harness.prompt_config import expected_embedding_shape, make_method_config
    from tsloss_harness.testbed import tiny

    model = str(tiny.build_tiny_model("llama", tmp_path / "m", tokenizer_dir=tiny_tokenizer_dir, initializer_range=0.2))
    config = make_method_config(method, model, AutoConfig.from_pretrained(model), num_virtual_tokens=P)
    matrix = torch.randn(*expected_embedding_shape(config), generator=torch.Generator().manual_seed(0))
    prompt_dir = save_prompt(tmp_path / method, matrix, peft_config=config, provenance={"method": method})
    requests = [("Question: What is 2 plus 3?\nAnswer:", " 2+3=5"), ("Natalia sold clips", " in April, and then")]

    def loglikelihoods(lm):
        return [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, 0) for r in requests])]

    peft = loglikelihoods(HFLM(pretrained=model, peft=str(prompt_dir), device="cpu", dtype="bfloat16"))
    ours = loglikelihoods(TSPromptLM(pretrained=model, prompt=str(prompt_dir), device="cpu", dtype="bfloat16"))
    plain = loglikelihoods(HFLM(pretrained=model, device="cpu", dtype="bfloat16"))
    # bf16 keeps 8 significant bits: one step at |x| is 2^(floor(log2 |x|) - 7), 0.25 for scores of 32-64;
    # the two paths were measured equal or one step apart (e.g. -45.5 against -45.25)
    for a, b in zip(ours, peft, strict=True):
        assert abs(a - b) <= 2.0 ** (math.floor(math.log2(max(abs(a), abs(b)))) - 7), (ours, peft)
    assert max(abs(a - b) for a, b in zip(peft, plain, strict=True)) > 1.0  # the prompt matters
