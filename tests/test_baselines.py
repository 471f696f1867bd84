"""The inference-time baselines of Table III: ACT (``act=``, ``hf-act``, ``tsloss act-calibrate``) and
DPC (``dpc=``), against hand computations and independent reference implementations, and through
the stock ``lm_eval`` CLI (four runs started together, as in test_evaluation.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import compare_samples, finish_lm_eval, lm_eval_args, read_lm_eval_output, start_lm_eval

from tsloss_harness.act import ActError, ActPatch, ActSettings, calibrate_attention
from tsloss_harness.dpc import DpcError, DpcSettings, corrupt_prompt, decide, prompt_saliency
from tsloss_harness.prompt import save_prompt, save_raw_prompt
from tsloss_harness.prompt_config import make_prompt_config

P = 5  # virtual tokens
# A 0-shot generation task outside any group (the leaderboard scores groups, and gsm8k_offline's group
# has no score of its own), on the same local rows as gsm8k_offline.
GENERATION_TASK = """\
task: baselines_test_gsm8k
custom_dataset: !function offline_data.gsm8k
output_type: generate_until
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["Question:"]
  do_sample: false
metric_list:
  - metric: exact_match
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
metadata:
  version: 1.0
"""
CHOSEN = ((1, 2), (0, 1))  # (layer, head) pairs of the tiny models (2 layers x 4 heads)


def _matrix(rows: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_llama_dir) -> dict:
    from transformers import AutoConfig

    root = tmp_path_factory.mktemp("baselines")
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    peft_config = make_prompt_config(
        str(tiny_llama_dir),
        num_virtual_tokens=P,
        token_dim=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
    )
    prompt = save_prompt(
        root / "prompt",
        _matrix(P, config.hidden_size, 0),
        peft_config=peft_config,
        provenance={"method": "prompt", "regularizer": "none", "seed": 3},
    )
    return {
        "prompt": prompt,
        "act_none": ActSettings(()).save(root / "act_none.json"),
        "act": ActSettings(CHOSEN).save(root / "act.json"),
        "root": root,
    }


# ------------------------------------------------------------------------------------ ACT: the rule


def test_act_rule_equals_a_hand_computation():
    """beta 0.5, threshold 0.3 on one chosen head (rows worked out by hand in the comments)."""
    head = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                         [0.5, 0.5, 0.0, 0.0],
                         [0.4, 0.4, 0.2, 0.0],
                         [0.3, 0.4, 0.1, 0.2]])  # fmt: skip
    noise = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    other = torch.softmax(noise.tril() - torch.triu(torch.full((4, 4), 1e4), 1), -1)
    weights = torch.stack([other, head])[None]  # [1, 2 heads, 4, 4]
    allowed = torch.ones(4, 4).tril().bool()[None, None]
    # Row 1: key 1 has mean 0.5/1 > 0.3 (sink); key 0 is first. S=0.5, R=0.5: [0.5*(1+0.5*1), 0.25].
    # Row 2: key 1 mean (0.5+0.4)/2=0.45 sink, key 2 0.2 not. S=0.4, R=0.6, gain 0.5*0.4/0.6=1/3.
    # Row 3: key 1 (0.5+0.4+0.4)/3 sink, key 2 (0.2+0.1)/2, key 3 0.2 not. S=0.4, R=0.6, gain 1/3.
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                             [0.75, 0.25, 0.0, 0.0],
                             [0.4 * 4 / 3, 0.2, 0.2 * 4 / 3, 0.0],
                             [0.3 * 4 / 3, 0.2, 0.1 * 4 / 3, 0.2 * 4 / 3]])  # fmt: skip
    out, (sums, counts) = calibrate_attention(weights, allowed, torch.tensor([1]), beta=0.5, threshold=0.3)
    torch.testing.assert_close(out[0, 1], expected)
    torch.testing.assert_close(out[0, 1].sum(-1), torch.ones(4))
    assert torch.equal(out[0, 0], other)  # the untouched head is returned as it was
    torch.testing.assert_close(sums[0, 0], head.sum(0))
    torch.testing.assert_close(counts[0, 0], torch.tensor([4.0, 3.0, 2.0, 1.0]))
    # The last two rows continuing from the first two rows' carried sums: the same rows.
    _, past = calibrate_attention(weights[:, :, :2, :2], allowed[:, :, :2, :2], torch.tensor([1]), 0.5, 0.3)
    rest, _ = calibrate_attention(weights[:, :, 2:], allowed[:, :, 2:], torch.tensor([1]), 0.5, 0.3, past=past)
    torch.testing.assert_close(rest[0, 1], expected[2:])


def _loop_rule(weights: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """The ACT rule written out with loops, for one head of an unpadded causal [T, T] map."""
    out = weights.clone()
    for i in range(weights.shape[0]):
        sinks = [j for j in range(1, i + 1) if float(weights[j : i + 1, j].mean()) > threshold]
        sink_mass = sum(float(weights[i, j]) for j in sinks)
        rest_mass = sum(float(weights[i, j]) for j in range(i + 1) if j not in sinks)
        for j in range(i + 1):
            out[i, j] = beta * weights[i, j] if j in sinks else weights[i, j] * (1 + (1 - beta) * sink_mass / rest_mass)
    return out


def _register_loop_reference(heads_by_layer: dict, beta: float, threshold: float) -> str:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        keys, values = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
        weights = torch.softmax(query @ keys.transpose(2, 3) * scaling + attention_mask, -1, dtype=torch.float32)
        weights = weights.clone()
        for b in range(weights.shape[0]):
            for h in heads_by_layer.get(module.layer_idx, []):
                weights[b, h] = _loop_rule(weights[b, h], beta, threshold)
        return (weights @ values).transpose(1, 2).contiguous(), weights

    AttentionInterface.register("test_act_loop", attention)
    AttentionMaskInterface.register("test_act_loop", eager_mask)
    return "test_act_loop"


@pytest.mark.parametrize("arch", ["llama", "gemma", "qwen2"])
def test_act_in_the_model_equals_the_loop_reference(arch, tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dirs[arch]
    ids = torch.randint(4, 500, (2, 11), generator=torch.Generator().manual_seed(1))
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = reference(ids).logits
    reference.set_attn_implementation(_register_loop_reference({1: [2], 0: [1]}, 0.4, 0.1))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ActPatch(ActSettings(CHOSEN)).apply(model)
    seen = {}
    model.model.layers[1].self_attn.register_forward_hook(lambda m, a, out: seen.update(weights=out[1]))
    with torch.no_grad():
        expected, ours = reference(ids).logits, model(ids).logits
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)
    assert (ours - plain).abs().max() > 1e-3, arch  # the calibration changes the scores
    torch.testing.assert_close(seen["weights"].sum(-1), torch.ones(2, 4, 11))  # rows still sum to one


def test_act_with_the_cached_prompt_equals_the_full_forward(tiny_llama_dir, files, monkeypatch):
    """tsprompt scores from the prompt's key/value cache and generates token by token; with ACT both
    equal the loop reference run on [prompt; text] in one forward, where the prompt's rows count too."""
    from transformers import AutoModelForCausalLM

    from tsloss_harness import baselines
    from tsloss_harness.evaluation import TSPromptLM

    rows = 6  # a prompt whose own rows decide some sinks of the text rows (checked below)
    prompt = _matrix(rows, 64, 0)
    lm = TSPromptLM(
        pretrained=str(tiny_llama_dir),
        prompt=str(save_raw_prompt(files["root"] / "p6.pt", prompt)),
        act=str(files["act"]),
        device="cpu",
        dtype="float32",
        topology=False,
    )
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    reference.set_attn_implementation(_register_loop_reference({1: [2], 0: [1]}, 0.4, 0.1))
    ids = torch.randint(4, 500, (2, 9), generator=torch.Generator().manual_seed(2))

    def full(ids):
        text = reference.get_input_embeddings()(ids)
        return reference(inputs_embeds=torch.cat([prompt.expand(ids.shape[0], -1, -1), text], 1)).logits[:, rows:]

    with torch.no_grad():
        scores = lm._model_call(ids)
        torch.testing.assert_close(scores, full(ids), atol=2e-5, rtol=1e-5)
        generated = lm._model_generate(ids[:1], max_length=9 + 6, stop=[], do_sample=False)
        greedy = full(generated)[0, 8:-1].argmax(-1)
        monkeypatch.setattr(baselines, "with_prompt_stats", lambda cache, stats, batch_size: cache)
        assert (lm._model_call(ids) - scores).abs().max() > 1e-3  # without the prompt rows' sums: other sinks
    assert generated.shape == (1, 15) and generated[0, 9:].tolist() == greedy.tolist()
    assert lm.get_model_info()["act"]["heads"] == [list(p) for p in CHOSEN]


def test_act_bad_settings_fail_with_one_line(tmp_path, tiny_llama_dir):
    from tsloss_harness.act import load_settings
    from tsloss_harness.act_eval import ActHFLM

    (tmp_path / "x.json").write_text('{"heads": [[0, 1]]}')
    with pytest.raises(ActError, match=r"x.json: not an ACT file"):
        load_settings(tmp_path / "x.json")
    with pytest.raises(ActError, match=r"missing.json: cannot read"):
        load_settings(tmp_path / "missing.json")
    with pytest.raises(ActError, match="beta must be in"):
        ActSettings(((0, 1),), beta=1.5)
    ActSettings(((2, 0),)).save(tmp_path / "too_deep.json")
    with pytest.raises(ActError) as err:
        ActHFLM(pretrained=str(tiny_llama_dir), act=str(tmp_path / "too_deep.json"), device="cpu")
    assert "\n" not in str(err.value) and "head (2, 0) does not exist in a model of 2 layers x 4 heads" in str(
        err.value
    )


# ------------------------------------------------------------------------------------ ACT: calibration


@pytest.mark.slow  # lm-eval runs
def test_calibration_keeps_the_heads_that_beat_no_calibration(
    tiny_llama_dir, files, tasks_dir, env, monkeypatch, capsys
):
    from tsloss_harness.act import load_settings
    from tsloss_harness.cli import main as tsloss
    from tsloss_harness.evaluation import TSPromptLM
    from tsloss_harness.testbed.problems import generate_gsm8k_rows

    monkeypatch.setenv("TSLOSS_GSM8K_DIR", env["TSLOSS_GSM8K_DIR"])
    out = files["root"] / "calibrated.json"
    model_args = f"pretrained={tiny_llama_dir},prompt={files['prompt']},dtype=float32,topology=false"
    argv = [
        "act-calibrate",
        "--model",
        "tsprompt",
        "--model_args",
        model_args,
        "--tasks",
        "gsm8k_answer_offline",
        "--include_path",
        str(tasks_dir),
        "--limit",
        "3",
        "--device",
        "cpu",
        "-o",
        str(out),
    ]
    assert tsloss(argv) == 0
    settings = load_settings(out)
    cal = settings.calibration
    assert cal["objective"] == "loglikelihood" and cal["num_examples"] == 3 and len(cal["scores"]) == 8
    floor = cal["baseline"] + 1e-6 * abs(cal["baseline"])
    assert [list(p) for p in settings.heads] == [[layer, head] for layer, head, s in cal["scores"] if s > floor]
    # Recorded scores are what lm-eval's model gives: the mean log-likelihood of each reference answer.
    rows = generate_gsm8k_rows(16, seed=2)[:3]  # conftest's test.jsonl: the rows the task read
    layer, head, recorded = cal["scores"][1]
    assert (layer, head) == (0, 1) and abs(recorded - cal["baseline"]) > 1e-3  # this head changes the score
    one = ActSettings(((layer, head),)).save(files["root"] / "one.json")
    lm = TSPromptLM(
        pretrained=str(tiny_llama_dir),
        prompt=str(files["prompt"]),
        act=str(one),
        device="cpu",
        dtype="float32",
        topology=False,
    )
    from lm_eval.api.instance import Instance

    # lm-eval's requests of this loglikelihood task: (doc_to_text, doc_to_target = " " + answer).
    requests = [
        Instance("loglikelihood", r, (f"Question: {r['question']}\nAnswer:", " " + r["answer"]), 0) for r in rows
    ]
    lls = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert recorded == pytest.approx(sum(lls) / 3, abs=1e-4)
    # A generation task cannot be scored by accuracy without generating: one line.
    capsys.readouterr()
    assert tsloss([*argv[:6], "gsm8k_offline", *argv[7:], "--objective", "acc"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after lm-eval's own progress bars
    assert last.startswith("tsloss act-calibrate: --objective acc needs loglikelihood or multiple-choice tasks")


# ------------------------------------------------------------------------------------------ DPC


def test_dpc_trigger_equals_a_hand_computation():
    # Per-token flows 1, 3 | 5, 1: beta = mean(1, 3) = 2; latter half: 5 > 2, 1 < 2 -> affected 0.5.
    flows = torch.tensor([[0.5, 0.5, 0.0], [1.0, 1.0, 1.0], [1.0, 3.0, 1.0], [0.2, 0.3, 0.5]])
    fired = decide(flows, DpcSettings(ratio=0.4))
    assert (fired.threshold, fired.affected, fired.fired) == (2.0, 0.5, True)
    assert fired.token == 1  # column sums over the latter half: 1.2, 3.3, 1.5
    assert not decide(flows, DpcSettings(ratio=0.5)).fired  # "more than" the ratio
    assert decide(flows, DpcSettings(ratio=0.0, beta_scale=3.0)).affected == 0.0  # beta 6: nothing above


def test_dpc_corruption_equals_a_hand_computation():
    prompt = torch.tensor([[0.9, -0.1, 0.4, 2.0],
                           [5.0, 5.0, 5.0, 5.0],
                           [-0.05, 0.3, -1.0, 0.2]])  # fmt: skip
    # Row 1 masked; 25% of the 8 remaining values = 2 smallest magnitudes (-0.05, -0.1) set to zero.
    expected = torch.tensor([[0.9, 0.0, 0.4, 2.0],
                             [0.0, 0.0, 0.0, 0.0],
                             [0.0, 0.3, -1.0, 0.2]])  # fmt: skip
    assert torch.equal(corrupt_prompt(prompt, 1, 25.0), expected)
    assert torch.equal(corrupt_prompt(prompt, 1, 0.0)[0], prompt[0])


def _register_scaled_attention(scales: dict) -> str:
    """Eager attention whose weights are multiplied by (1 + E[layer]), E an all-zero [T, T] parameter."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        keys, values = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
        weights = torch.softmax(query @ keys.transpose(2, 3) * scaling + attention_mask, -1, dtype=query.dtype)
        weights = weights * (1 + scales[module.layer_idx])
        return (weights @ values).transpose(1, 2).contiguous(), weights

    AttentionInterface.register("test_scaled", attention)
    AttentionMaskInterface.register("test_scaled", eager_mask)
    return "test_scaled"


def test_dpc_saliency_and_trigger_equal_a_hand_computation(tiny_llama_dir):
    """The flow from prompt token j to rationale token t, |sum_h A * dL/dA| at (row predicting t, j), is
    |dL/dE| for E scaling that attention entry in every head by (1 + E): computed here through that
    scaling instead of the attention weights' gradients; then the trigger, by hand."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval()
    prompt = _matrix(3, 64, 4).double()
    context, rationale = torch.tensor([1, 40, 41, 42]), torch.tensor([50, 60, 70, 80, 90, 100])
    flows = prompt_saliency(model, prompt, context, rationale, [0, 1])
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass

    scales = {layer: torch.zeros(13, 13, dtype=torch.float64, requires_grad=True) for layer in (0, 1)}
    model.set_attn_implementation(_register_scaled_attention(scales))
    inputs = torch.cat([prompt, model.get_input_embeddings()(torch.cat([context, rationale]))])[None]
    rows = list(range(3 + 4 - 1, 3 + 4 + 6 - 1))  # the rows that predict the rationale tokens
    loss = torch.nn.functional.cross_entropy(model(inputs_embeds=inputs).logits[0, rows], rationale, reduction="sum")
    grads = torch.autograd.grad(loss, [scales[0], scales[1]])
    expected = (grads[0].abs() + grads[1].abs())[rows, :3] / 2  # [6 rationale tokens, 3 prompt tokens]
    torch.testing.assert_close(flows.double(), expected, atol=1e-6, rtol=1e-4)
    assert expected.max() > 1e-3
    # The trigger: beta = mean prompt flow into tokens 0-2; affected = share of tokens 3-5 above it;
    # the masked token = the prompt token with the most flow into tokens 3-5.
    per_token = [float(expected[t].sum()) for t in range(6)]
    beta = (per_token[0] + per_token[1] + per_token[2]) / 3
    affected = sum(per_token[t] > beta for t in (3, 4, 5)) / 3
    column = [float(expected[3:, j].sum()) for j in range(3)]
    trigger = decide(flows, DpcSettings(ratio=0.0))
    assert trigger.threshold == pytest.approx(beta, rel=1e-4)
    assert trigger.affected == affected and trigger.fired == (affected > 0)
    assert trigger.token == column.index(max(column))


@pytest.mark.slow  # three models, generation
def test_dpc_generates_again_from_the_corrupted_prompt(tiny_llama_dir, files):
    """With the trigger always firing, tsprompt's answer is the plain answer of the corrupted prompt."""
    from lm_eval.api.instance import Instance

    from tsloss_harness.evaluation import TSPromptLM
    from tsloss_harness.prompt import load_prompt

    request = Instance(
        "generate_until",
        {},
        ("Question: What is 33 plus 4?\nAnswer:", {"until": ["Question:"], "max_gen_toks": 10, "do_sample": False}),
        0,
    )
    common = {"pretrained": str(tiny_llama_dir), "device": "cpu", "dtype": "float32", "topology": False}
    dpc = TSPromptLM(prompt=str(files["prompt"]), dpc=True, dpc_ratio=0.0, dpc_beta_scale=1e-9, **common)
    (answer,) = dpc.generate_until([request], disable_tqdm=True)
    report = dpc.get_model_info()["dpc"]
    assert report["instances"] == 1 and report["fired"] == 1
    (token,) = map(int, report["fired_tokens"])
    corrupted = save_raw_prompt(
        files["root"] / "corrupted.safetensors", corrupt_prompt(load_prompt(files["prompt"]), token, 10.0)
    )
    plain = TSPromptLM(prompt=str(files["prompt"]), **common).generate_until([request], disable_tqdm=True)[0]
    (expected,) = TSPromptLM(prompt=str(corrupted), **common).generate_until([request], disable_tqdm=True)
    assert answer == expected and answer != plain


def test_dpc_fails_in_one_line_where_it_cannot_apply(tiny_llama_dir, files):
    from lm_eval.api.instance import Instance

    from tsloss_harness.evaluation import TSPromptLM

    common = {"pretrained": str(tiny_llama_dir), "prompt": str(files["prompt"]), "device": "cpu", "dtype": "float32"}
    lm = TSPromptLM(dpc=True, **common)
    with pytest.raises(DpcError, match="^tsprompt: dpc= applies to generate_until tasks only"):
        lm.loglikelihood([Instance("loglikelihood", {}, ("Question: 1?\nAnswer:", " 1"), 0)], disable_tqdm=True)
    with pytest.raises(DpcError, match="act= and dpc= together are not supported"):
        TSPromptLM(dpc=True, act=str(files["act"]), **common)
    with pytest.raises(DpcError, match=r"dpc_ratio must be in \[0, 1\], got 2.0"):
        TSPromptLM(dpc=True, dpc_ratio=2, **common)
    with pytest.raises(DpcError, match="dpc_gamma: set dpc=true"):
        TSPromptLM(dpc_gamma=5, **common)


# ------------------------------------------------------------------------------- the stock CLI


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_llama_dir, files, tasks_dir, env) -> dict:
    root = tmp_path_factory.mktemp("cli")
    own_tasks = root / "tasks"
    shutil.copytree(tasks_dir, own_tasks, ignore=shutil.ignore_patterns("__pycache__"))
    (own_tasks / "offline" / "baselines_test_gsm8k.yaml").write_text(GENERATION_TASK)
    base = f"pretrained={tiny_llama_dir}"
    prompt = f"{base},prompt={files['prompt']}"
    tasks = "baselines_test_gsm8k,gsm8k_answer_offline"
    specs = {
        "tsprompt": ("tsprompt", prompt, tasks),
        "act_none": ("tsprompt", f"{prompt},act={files['act_none']}", tasks),
        "dpc_never": ("tsprompt", f"{prompt},dpc=true,dpc_ratio=1", "baselines_test_gsm8k"),
        "hf_act": ("hf-act", f"{base},act={files['act']}", "gsm8k_answer_offline"),
    }
    procs = {}
    for name, (model, model_args, task_list) in specs.items():
        args = lm_eval_args(model, model_args, task_list, own_tasks, root / name, batch_size=2, limit=3)
        procs[name] = (start_lm_eval(args, env, root / f"{name}.log"), root / f"{name}.log", root / name)
    try:
        yield {
            name: {"stdout": finish_lm_eval(proc, log), **read_lm_eval_output(out), "dir": out}
            for name, (proc, log, out) in procs.items()
        }
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow  # lm-eval runs
def test_cli_act_without_heads_and_dpc_that_never_fires_equal_tsprompt(cli_runs):
    plain = cli_runs["tsprompt"]
    assert compare_samples(plain, cli_runs["act_none"], "baselines_test_gsm8k") == 3
    assert compare_samples(plain, cli_runs["act_none"], "gsm8k_answer_offline") == 3
    assert compare_samples(plain, cli_runs["dpc_never"], "baselines_test_gsm8k") == 3
    dpc = cli_runs["dpc_never"]["results"]["config"]["dpc"]
    assert (dpc["ratio"], dpc["instances"], dpc["fired"]) == (1.0, 3, 0)
    assert cli_runs["act_none"]["results"]["config"]["act"]["heads"] == []
    assert cli_runs["hf_act"]["results"]["config"]["act"]["heads"] == [list(p) for p in CHOSEN]


@pytest.mark.slow  # lm-eval runs
def test_leaderboard_gives_each_method_its_own_column(cli_runs):
    from tsloss_harness.leaderboard import build_tables
    from tsloss_harness.measurements import collect

    measurements, _ = collect([run["dir"] for run in cli_runs.values()], {"gsm8k_answer_offline": "greedy_answer,none"})
    methods = {(m.dataset, m.method) for m in measurements}
    task = "baselines_test_gsm8k"
    assert {
        (task, "prompt"),
        (task, "prompt+act"),
        (task, "prompt+dpc(ratio=1.0)"),  # not the default trigger: its setting names the column
        ("gsm8k_answer_offline", "base+act"),
    } <= methods
    table3 = next(t for t in build_tables(measurements) if t.name == "III")
    assert {"prompt", "prompt+act", "prompt+dpc(ratio=1.0)", "base+act"} <= set(table3.columns)


@pytest.mark.slow  # a fresh interpreter
def test_hf_act_is_registered_at_startup(env):
    code = "from lm_eval.api.registry import get_model; print(get_model('hf-act').__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "ActHFLM"


def test_act_file_is_plain_json(files):
    data = json.loads(files["act"].read_text())
    assert data["kind"] == "tsloss-act" and data["heads"] == [[1, 2], [0, 1]] and data["beta"] == 0.4


@pytest.mark.slow  # lm-eval runs
def test_response_cache_keeps_act_and_dpc_answers_apart(
    tmp_path, tiny_llama_dir, files, tasks_dir, gsm8k_dir, monkeypatch
):
    """lm-eval's --use_cache keys answers by the request alone: plain and ACT / DPC runs sharing a cache
    path must still each get their own (uncached) answers; the cached runs go plain first."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("TSLOSS_GSM8K_DIR", str(gsm8k_dir))
    manager = TaskManager(include_path=str(tasks_dir))
    prompt = f"pretrained={tiny_llama_dir},prompt={files['prompt']},dtype=float32"
    base = f"pretrained={tiny_llama_dir},dtype=float32"
    scores, generations = ["gsm8k_answer_offline"], ["gsm8k_offline"]  # ACT moves scores, DPC generations
    runs = [
        ("tsprompt", prompt, scores),
        ("tsprompt", f"{prompt},act={files['act']}", scores),
        ("tsprompt", prompt, generations),
        ("tsprompt", f"{prompt},dpc=true,dpc_ratio=0,dpc_beta_scale=1e-9", generations),
        ("hf", base, scores),
        ("hf-act", f"{base},act={files['act']}", scores),
    ]

    def answers(model, model_args, tasks, cache=None):
        results = simple_evaluate(
            model=model, model_args=model_args, tasks=tasks, num_fewshot=0, limit=2, batch_size=1,
            device="cpu", use_cache=None if cache is None else str(cache), log_samples=True,
            gen_kwargs="max_gen_toks=8", task_manager=manager,
        )  # fmt: skip
        return [row["resps"] for rows in results["samples"].values() for row in rows]

    uncached = [answers(*run) for run in runs]
    # ACT changes these answers (DPC's need not on this fixture: its trigger is per instance); the cache must
    # still hand every run its own.
    assert uncached[1] != uncached[0] and uncached[5] != uncached[4]
    cache = tmp_path / "cache" / "lm"
    assert [answers(*run, cache=cache) for run in runs] == uncached
