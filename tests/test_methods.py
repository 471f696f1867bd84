"""Methods beyond soft prompt tuning: Prefix-Tuning (``prefix``), P-Tuning v2 (``ptuning_v2``), and
adaptive H0/H1 weights. Each method trains in the tuner, saves a prompt directory PEFT loads, and
scores in ``tsprompt`` as ``hf,peft=`` does (stock lm_eval CLI, batch sizes 1 and 4).

Generations are compared too, and also against greedy decoding through PEFT's own forward
(in-process, left-padded batches). With transformers 5.24, ``PeftModel.generate`` of any prompt-learning
adapter no longer applies the prompt (``generate`` passes the cache as ``cache``; PEFT looks for
``past_key_values``), hence the ``transformers<5.24`` pin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import (
    compare_samples,
    finish_lm_eval,
    lm_eval_args,
    read_lm_eval_output,
    start_lm_eval,
    tune_fails,
)

from tsloss_harness.data import load_examples
from tsloss_harness.losses import ts_loss
from tsloss_harness.prompt import load_peft_config, load_prompt, load_provenance
from tsloss_harness.prompt_config import PROMPT_METHODS, make_method_config
from tsloss_harness.regularizers import get_regularizer
from tsloss_harness.testbed import tiny
from tsloss_harness.tune import TuneConfig, run
from tsloss_harness.tune.batches import collate as _collate
from tsloss_harness.tune.batches import tokenize as _tokenize
from tsloss_harness.tune.objective import PromptTuningLoss as _loss_module

P = 5
DEEP = ("prefix", "ptuning_v2")

# One MMLU-CF subject as a multiple-choice task (the offline group would build all 14: slow to start);
# its 5 dev rows are the scored docs.
MC_TASK = """\
task: tsprompt_test_mc
custom_dataset: !function offline_data.mmlu_cf
dataset_kwargs:
  subject: Math
output_type: multiple_choice
test_split: Math_dev
doc_to_text: "{{Question.strip()}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{['A', 'B', 'C', 'D'].index(Answer.strip())}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def _peft_model(model_dir, method: str, seed: int = 0, num_virtual_tokens: int = P):
    """A trainable PEFT model of ``method`` on ``model_dir`` with PEFT's (seeded) initialisation."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(seed)
    return get_peft_model(
        base, make_method_config(method, str(model_dir), base.config, num_virtual_tokens=num_virtual_tokens)
    )


def _batch(model_dir, data_dir, n: int = 3):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = _tokenize(load_examples("gsm8k", data_dir, num_samples=n), tokenizer, None)
    return rows, _collate(rows, tokenizer.pad_token_id)


def _config(model, data, out, **overrides) -> TuneConfig:
    settings = dict(
        model=str(model),
        data_dir=str(data),
        output_dir=str(out),
        num_samples=2,
        batch_size=2,
        max_steps=2,
        lr=0.05,
        warmup_ratio=0.0,
        eval_every=0,
        topology_every=0,
        progress=False,
    )
    return TuneConfig(**{**settings, **overrides})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------ the regularized matrix


def test_methods_and_the_regularized_matrix(tiny_llama_dir):
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(tiny_llama_dir)
    d_kv = c.num_key_value_heads * c.head_dim
    assert d_kv < c.hidden_size  # grouped-query attention: the prefix is as wide as the keys/values, not d
    expected = {
        "prompt": (P, c.hidden_size),
        "prefix": (P, c.num_hidden_layers * 2 * d_kv),
        "ptuning_v2": (P, c.num_hidden_layers * 2 * d_kv),
    }
    for method in PROMPT_METHODS:
        peft_model = _peft_model(tiny_llama_dir, method)
        module = _loss_module(peft_model, get_regularizer("none"), {}, 0.0)
        matrix = module.prompt_matrix()
        assert tuple(matrix.shape) == expected[method], method
        # the matrix is what PEFT saves as the adapter (for prefix: the MLP's output, not its input)
        torch.testing.assert_close(matrix.detach(), peft_model.get_prompt_embedding_to_save("default"), msg=method)
        table = peft_model.prompt_encoder["default"].embedding.weight
        assert tuple(table.shape) == ((P, d_kv) if method == "prefix" else expected[method]), method


@pytest.mark.parametrize("method", DEEP)
@pytest.mark.parametrize("arch", [a if a == "llama" else pytest.param(a, marks=pytest.mark.slow) for a in tiny.ARCHS])
def test_prefix_loss_equals_peft_forward(arch, method, tiny_model_dirs, gsm8k_dir):
    """The tuner's prefix (its own key/value cache, logits at answer positions only) gives PEFT's
    full-logits loss and the same gradient on every prompt-encoder parameter (the MLP's too)."""
    model_dir = tiny_model_dirs[arch]
    peft_model = _peft_model(model_dir, method)
    rows, (input_ids, attention, labels) = _batch(model_dir, gsm8k_dir)
    n_answer = int((labels != -100).sum())
    params = list(peft_model.prompt_encoder["default"].parameters())
    full = peft_model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    want = torch.autograd.grad(full, params)
    module = _loss_module(peft_model, get_regularizer("none"), {}, 0.0)
    loss, ce_sum, _ = module(input_ids, attention, labels, 1.0 / n_answer)
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(loss, params)
    for w, g in zip(want, got):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ adaptive weights


@pytest.mark.parametrize("method, adaptive", [("prompt", {"h0": 0.5, "h1": 0.2}), ("ptuning_v2", {"h0": 0.3})])
def test_adaptive_gradient_keeps_the_ratio(method, adaptive, tiny_llama_dir, gsm8k_dir):
    """Measured independently: the CE gradient through PEFT's own forward, the H0/H1 gradients by
    autograd on the matrix; the tuner's gradient must be CE + a·g_H0 + b·g_H1 with ||a·g_H0|| = r_H0·||g_CE||
    (a fixed β for a half that is not adaptive)."""
    lam, beta_h1 = 2.0, 3.0
    peft_model = _peft_model(tiny_llama_dir, method)
    table = peft_model.prompt_encoder["default"].embedding.weight  # = the regularized matrix for these methods
    _, (input_ids, attention, labels) = _batch(tiny_llama_dir, gsm8k_dir)
    n_answer = int((labels != -100).sum())
    (g_ce,) = torch.autograd.grad(peft_model(input_ids=input_ids, attention_mask=attention, labels=labels).loss, table)
    leaf = table.detach().clone().requires_grad_(True)
    terms = {"h0": ts_loss(leaf, beta_h0=1.0, beta_h1=0.0), "h1": ts_loss(leaf, beta_h0=0.0, beta_h1=1.0)}
    g_term = {h: torch.autograd.grad(value, leaf)[0] for h, value in terms.items()}

    kwargs = dict(tau=0.1, alpha=10.0, beta_h0=1.0, beta_h1=beta_h1)
    module = _loss_module(peft_model, get_regularizer("tsloss"), kwargs, lam, adaptive)
    loss, _, reg = module(input_ids, attention, labels, 1.0 / n_answer)
    (got,) = torch.autograd.grad(loss, table)

    scale = {h: r * g_ce.norm() / g_term[h].norm() for h, r in adaptive.items()}  # = λ·β_h
    want = g_ce + sum(scale[h] * g_term[h] for h in adaptive)
    if "h1" not in adaptive:  # the fixed half goes through the loss as before
        want = want + lam * beta_h1 * g_term["h1"]
        assert reg.item() == pytest.approx(beta_h1 * terms["h1"].item(), rel=1e-5)
    else:
        assert reg.item() == 0.0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for h, r in adaptive.items():  # the stated ratio, on the gradient actually applied
        others = want - g_ce - scale[h] * g_term[h]
        assert (got - g_ce - others).norm() / g_ce.norm() == pytest.approx(r, rel=1e-4)
    assert module.adaptive_halves == tuple(adaptive)
    torch.testing.assert_close(
        module.adaptive_scales, torch.stack([scale[h] for h in adaptive]).double(), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        module.adaptive_values, torch.stack([terms[h] for h in adaptive]).double().detach(), rtol=1e-5, atol=0
    )


@pytest.mark.slow
def test_adaptive_run_logs_the_betas_it_used(tiny_llama_dir, short_dir, tmp_path):
    """Step 1 of a run (learning rate 0 under full warm-up: the saved prompt is the one the step saw)
    logs β_H0 = r·||∇CE|| / (λ·||∇L_H0||), measured here on PEFT's forward; with two micro-batches the
    ratio holds per micro-batch: β = r·(||∇CE_1|| + ||∇CE_2||) / (λ·||∇L_H0||)."""
    lam, r0, r1 = 0.5, 0.4, 0.1
    common = dict(
        max_steps=1,
        warmup_ratio=1.0,
        epochs=1,
        method="ptuning_v2",
        lambda_ts=lam,
        adaptive_ratio_h0=r0,
        adaptive_ratio_h1=r1,
    )
    one = run(_config(tiny_llama_dir, short_dir, tmp_path / "one", **common))
    two = run(_config(tiny_llama_dir, short_dir, tmp_path / "two", micro_batch_size=1, **common))
    matrix = load_prompt(tmp_path / "one" / "prompt")
    assert torch.equal(matrix, load_prompt(tmp_path / "two" / "prompt"))
    assert load_provenance(tmp_path / "one" / "prompt")["regularizer_params"]["adaptive_ratio_h0"] == r0

    peft_model = _peft_model(tiny_llama_dir, "ptuning_v2", num_virtual_tokens=matrix.shape[0])
    table = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        table.copy_(matrix)
    rows, _ = _batch(tiny_llama_dir, short_dir, n=2)
    n_total = sum(len(ids) - n_ctx for ids, n_ctx in rows)

    def ce_grad(subset) -> torch.Tensor:  # ∇ of (the subset's answer-token CE sum) / (answer tokens in the step)
        from transformers import AutoTokenizer

        ids, mask, labels = _collate(subset, AutoTokenizer.from_pretrained(tiny_llama_dir).pad_token_id)
        n = int((labels != -100).sum())
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss * n / n_total
        return torch.autograd.grad(loss, table)[0]

    leaf = matrix.clone().requires_grad_(True)
    norms = {
        h: torch.autograd.grad(ts_loss(leaf, beta_h0=float(h == "h0"), beta_h1=float(h == "h1")), leaf)[0].norm()
        for h in ("h0", "h1")
    }
    whole = ce_grad(rows).norm()
    split = ce_grad(rows[:1]).norm() + ce_grad(rows[1:]).norm()
    assert split > whole * 1.001  # the per-micro-batch semantics are visible here
    for summary, ce_norm in ((one, whole), (two, split)):
        record = summary["final"]
        for h, r in (("h0", r0), ("h1", r1)):
            assert record[f"beta_{h}"] == pytest.approx((r * ce_norm / (lam * norms[h])).item(), rel=2e-4)
        values = {h: ts_loss(matrix, beta_h0=float(h == "h0"), beta_h1=float(h == "h1")).item() for h in ("h0", "h1")}
        assert record["reg"] == pytest.approx(sum(record[f"beta_{h}"] * values[h] for h in values), rel=1e-4)
        assert record["loss"] == pytest.approx(record["ce"] + lam * record["reg"])


@pytest.mark.slow
def test_adaptive_betas_logged_every_step_with_a_fixed_half(tiny_llama_dir, short_dir, tmp_path):
    run(
        _config(
            tiny_llama_dir,
            short_dir,
            tmp_path / "r",
            max_steps=3,
            regularizer="ph_exact",
            beta_h1=2.0,
            adaptive_ratio_h0=0.5,
            topology_every=3,
        )
    )
    lines = _lines(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(r["beta_h0"] > 0 and r["beta_h1"] == 2.0 for r in lines)
    assert len({r["beta_h0"] for r in lines}) == 3  # recomputed each step


def test_bad_method_options_fail_with_one_line(tiny_llama_dir, gsm8k_dir, tmp_path, capsys):
    common = ["--model", str(tiny_llama_dir), "--data_dir", str(gsm8k_dir), "--output_dir", str(tmp_path / "out")]
    assert "unknown method 'lora'" in tune_fails([*common, "--method", "lora"], capsys)
    assert "init 'vocab' is for --method prompt" in tune_fails(
        [*common, "--method", "prefix", "--init", "vocab"], capsys
    )
    assert "prefix_hidden_size must be >= 1 and is for --method prefix" in tune_fails(
        [*common, "--method", "ptuning_v2", "--prefix_hidden_size", "8"], capsys
    )
    err = tune_fails([*common, "--regularizer", "h0", "--adaptive_ratio_h1", "0.1"], capsys)
    assert "adaptive_ratio_h1 needs a regularizer with an H1 term (tsloss, h1, ph_exact), got 'h0'" in err
    assert "adaptive_ratio_h0 needs a regularizer with an H0 term" in tune_fails(
        [*common, "--regularizer", "l2", "--adaptive_ratio_h0", "0.1"], capsys
    )
    assert "adaptive_ratio_h0 must be a finite number >= 0" in tune_fails(
        [*common, "--adaptive_ratio_h0", "-1"], capsys
    )
    assert "adaptive_ratio_h0 needs lambda_ts > 0" in tune_fails(
        [*common, "--adaptive_ratio_h0", "1", "--lambda_ts", "0"], capsys
    )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ train, save, score (lm_eval CLI)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir, gsm8k_dir) -> dict[str, Path]:
    """A prompt directory per prefix method, trained a few steps by the tuner (PEFT's init, so the
    prefix clearly moves the tiny model's outputs), with a checkpoint to compare against."""
    root = tmp_path_factory.mktemp("trained")
    dirs = {}
    for method in DEEP:
        extra = {"prefix_hidden_size": 24} if method == "prefix" else {}
        summary = run(
            _config(
                tiny_llama_dir,
                gsm8k_dir,
                root / method,
                method=method,
                init="peft",
                max_steps=3,
                topology_every=3,
                save_every=2,
                regularizer="tsloss",
                **extra,
            )
        )
        dirs[method] = Path(summary["prompt_dir"])
    return dirs


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_llama_dir, trained, tasks_dir, env):
    """hf,peft= at batch size 1 per method, against tsprompt at batch size 1 (prefix) and 4 (ptuning_v2),
    all started together. Both methods' adapters reach tsprompt the same way (an inference-mode
    PREFIX_TUNING table; only the loading differs), so one batch size each covers both (each lm_eval
    process costs ~20 s of CPU on start-up); batch invariance per method is checked in-process below."""
    root = tmp_path_factory.mktemp("runs")
    base = f"pretrained={tiny_llama_dir}"
    specs = {}
    tasks = "gsm8k_offline,tsprompt_test_mc"
    for method, prompt_dir in trained.items():
        specs[f"{method}_hf_peft_bs1"] = ("hf", f"{base},peft={prompt_dir}", tasks, 1)
        bs = 1 if method == "prefix" else 4
        specs[f"{method}_tsprompt_bs{bs}"] = ("tsprompt", f"{base},prompt={prompt_dir}", tasks, bs)
    (tasks_dir / "offline" / "tsprompt_test_mc.yaml").write_text(MC_TASK)
    clean_env = {
        k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    procs = {}
    for name, (model, model_args, task_list, bs) in specs.items():
        args = lm_eval_args(model, model_args, task_list, tasks_dir, root / name, bs, limit=3)
        procs[name] = (start_lm_eval(args, clean_env, root / f"{name}.log"), root / f"{name}.log", root / name)
    try:
        yield {
            name: {"stdout": finish_lm_eval(proc, log), **read_lm_eval_output(out)}
            for name, (proc, log, out) in procs.items()
        }
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("method", DEEP)
def test_trained_prefix_is_a_peft_adapter(method, trained, tiny_llama_dir, capsys):
    from peft import PeftModel, PeftType
    from transformers import AutoModelForCausalLM

    from tsloss_harness.evaluation import prompt_report
    from tsloss_harness.topology import prompt_topology

    prompt_dir = trained[method]
    config = load_peft_config(prompt_dir)
    assert config.peft_type == PeftType.PREFIX_TUNING and config.prefix_projection is (method == "prefix")
    if method == "prefix":
        assert config.encoder_hidden_size == 24
    provenance = load_provenance(prompt_dir)
    assert provenance["method"] == method and provenance["step"] == 3
    matrix = load_prompt(prompt_dir)
    assert matrix.shape == (20, config.num_layers * 2 * config.token_dim)
    assert not torch.equal(matrix, load_prompt(prompt_dir.parent / "checkpoints" / "step-2"))  # it trained
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        plain = base(ids).logits
        model = PeftModel.from_pretrained(base, str(prompt_dir)).eval()
        # loaded in inference mode, both methods hold the prefix itself (PEFT keeps no MLP there)
        assert torch.equal(model.prompt_encoder["default"].embedding.weight, matrix)
        prefixed = model(input_ids=ids).logits
    assert (prefixed - plain).abs().max() > 0.05  # guards the comparison below: the prefix matters
    # topology of the saved prefix: the tuner's final metrics, the report, the CLI all see the same matrix
    metrics = prompt_topology(matrix)
    assert provenance["topology"]["h0_mean_lifetime"] == pytest.approx(metrics["h0_mean_lifetime"], rel=1e-5)
    assert prompt_report(prompt_dir)["topology"] == pytest.approx({key: metrics[key] for key in provenance["topology"]})
    from tsloss_harness.cli import main as tsloss

    capsys.readouterr()
    assert tsloss(["topology", str(prompt_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == pytest.approx(provenance["topology"])


@pytest.mark.slow
@pytest.mark.parametrize("method, run_name", [("prefix", "tsprompt_bs1"), ("ptuning_v2", "tsprompt_bs4")])
def test_tsprompt_equals_hf_peft_on_prefixes(method, run_name, compared):
    reference, other = compared[f"{method}_hf_peft_bs1"], compared[f"{method}_{run_name}"]
    assert compare_samples(reference, other, "tsprompt_test_mc") == 3  # loglikelihoods of the 4 choices, acc
    assert compare_samples(reference, other, "gsm8k") == 3  # the same generations
    assert all(row["resps"][0][0] for row in other["samples"]["gsm8k"].values())
    for task, metrics in reference["results"]["results"].items():
        for key, value in metrics.items():
            if isinstance(value, float) and "stderr" not in key:
                assert other["results"]["results"][task][key] == pytest.approx(value, abs=1e-6), (task, key)
    report = other["results"]["config"]["tsprompt"]
    assert report["provenance"]["method"] == method and report["token_dim"] == 128


def _greedy_through_peft_forward(model, ids: list[int], new_tokens: int) -> list[int]:
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(new_tokens):
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
    return seq[0, len(ids) :].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("method", DEEP)
def test_tsprompt_generation_equals_greedy_through_peft_forward(method, trained, tiny_llama_dir):
    """Left-padded batch of contexts of different lengths through tsprompt's cached-prefix generate =
    each context alone, greedy, through PEFT's prefix forward;
    and tsprompt's loglikelihoods do not depend on the batch size."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tsloss_harness.evaluation import TSPromptLM

    lm = TSPromptLM(pretrained=str(tiny_llama_dir), prompt=str(trained[method]), device="cpu", dtype="float32")
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(trained[method])
    ).eval()
    g = torch.Generator().manual_seed(1)
    contexts = [torch.randint(4, 500, (n,), generator=g).tolist() for n in (9, 15, 12)]
    pad = lm.tokenizer.pad_token_id
    width, new = max(map(len, contexts)), 6
    batch = torch.tensor([[pad] * (width - len(c)) + c for c in contexts])
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
    out = lm._model_generate(batch, max_length=width + new, stop=["never-in-output"], attention_mask=mask)
    want = [_greedy_through_peft_forward(reference, c, new) for c in contexts]
    assert out[:, width:].tolist() == want
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    assert want != [_greedy_through_peft_forward(base, c, new) for c in contexts]  # the prefix matters
    requests = [("Question: 2 plus 3?", " Answer: 5"), ("Q", " a longer continuation here"), ("x y z", " w")]
    by_batch = {}
    for bs in (1, 4):
        lm.batch_size_per_gpu = bs
        by_batch[bs] = [ll for ll, _ in lm.loglikelihood([_ll_request(c, t) for c, t in requests])]
    assert by_batch[1] == pytest.approx(by_batch[4], abs=1e-5)


def _ll_request(context: str, continuation: str):
    from lm_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)


@pytest.mark.slow
def test_tsprompt_refuses_a_prefix_for_another_model(trained, tiny_tokenizer_dir, tmp_path):
    from tsloss_harness.evaluation import TSPromptLM
    from tsloss_harness.prompt import PromptLoadError

    other = tiny.build_tiny_model("llama", tmp_path / "m", tokenizer_dir=tiny_tokenizer_dir, num_hidden_layers=3)
    with pytest.raises(PromptLoadError) as err:
        TSPromptLM(pretrained=str(other), prompt=str(trained["ptuning_v2"]), device="cpu")
    assert str(err.value) == (
        f"{trained['ptuning_v2']}: prefix width 128 (2 layers x 2 x 32) does not match the "
        "model's key/value width 192 (3 layers x 2 x 32)"
    )
