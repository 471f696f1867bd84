"""The tuner: answer-position loss, one process on every tiny arch, kill -9 + resume bit-identical, bad
inputs, output schema, converged_step (2 ranks == 1 rank: tests/test_tune_distributed.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, fresh_env, tune_argv, tune_fails

from tsloss_harness.data import load_examples, write_jsonl
from tsloss_harness.ds_config import fill_ds_config as _ds_config
from tsloss_harness.prompt import load_prompt, load_provenance
from tsloss_harness.testbed import tiny
from tsloss_harness.topology import METRIC_KEYS
from tsloss_harness.tune import TuneConfig, TuneError, load_config, run

TRAIN_KEYS = {"step", "epoch", "lr", "loss", "ce", "reg", "samples_per_s"}


def _config(model, data_dir, out, **overrides) -> TuneConfig:
    settings = dict(
        model=str(model),
        data_dir=str(data_dir),
        output_dir=str(out),
        num_samples=4,
        batch_size=2,
        max_steps=4,
        lr=0.01,
        warmup_ratio=0.0,
        eval_every=0,
        eval_max_samples=2,
        topology_every=0,
        progress=False,
    )
    return TuneConfig(**{**settings, **overrides})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def one_row_dir(tmp_path_factory) -> Path:
    """A single short GSM8K-format row a random tiny model can memorise in a few steps."""
    root = tmp_path_factory.mktemp("one")
    write_jsonl([{"question": "What is 2 plus 3?", "answer": "#### 5"}], root / "train.jsonl")
    return root


# ------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_answer_position_loss_equals_full_logits(arch, tiny_model_dirs, gsm8k_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsloss_harness.prompt_config import make_prompt_config
    from tsloss_harness.regularizers import get_regularizer
    from tsloss_harness.tune.batches import collate as _collate
    from tsloss_harness.tune.batches import tokenize as _tokenize
    from tsloss_harness.tune.objective import PromptTuningLoss as _loss_module

    model_dir = tiny_model_dirs[arch]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    c = base.config
    peft_model = get_peft_model(
        base,
        make_prompt_config(
            model_dir,
            num_virtual_tokens=5,
            token_dim=c.hidden_size,
            num_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
        ),
    )
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_(
            0, 0.5, generator=torch.Generator().manual_seed(0)
        )
    rows = _tokenize(load_examples("gsm8k", gsm8k_dir, num_samples=3), tokenizer, None)
    input_ids, attention, labels = _collate(rows, tokenizer.pad_token_id)
    n_answer = int((labels != -100).sum())
    weight = peft_model.prompt_encoder["default"].embedding.weight
    full = peft_model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    full.backward()
    full_grad, weight.grad = weight.grad.clone(), None
    module = _loss_module(peft_model, get_regularizer("none"), {}, 0.0)
    loss, ce_sum, _ = module(input_ids, attention, labels, 1.0 / n_answer)
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce_sum / n_answer, full, rtol=1e-5, atol=1e-5)
    loss.backward()  # the same gradient reaches the prompt
    assert full_grad.abs().sum() > 0
    torch.testing.assert_close(weight.grad, full_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_fused_cross_entropy_with_softcap_and_bias():
    from tsloss_harness.tune.objective import LinearCrossEntropy

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight, bias = (
        torch.randn(70000, 16, generator=g, dtype=torch.float64),
        torch.randn(70000, generator=g, dtype=torch.float64),
    )
    targets = torch.randint(0, 70000, (300,), generator=g)
    ours = LinearCrossEntropy.apply(hidden, weight, bias, targets, 30.0)  # 70000 > one chunk of rows
    (ours_grad,) = torch.autograd.grad(ours * 2.0, hidden)
    logits = torch.tanh((hidden @ weight.T + bias) / 30.0) * 30.0
    reference = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (reference_grad,) = torch.autograd.grad(reference * 2.0, hidden)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours_grad, reference_grad)


# ------------------------------------------------------------------------------- single process


@pytest.mark.slow
@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_one_process_run_and_output_schema(arch, tiny_model_dirs, short_dir, tmp_path):
    out = tmp_path / "run"
    summary = run(
        _config(
            tiny_model_dirs[arch],
            short_dir,
            out,
            eval_every=2,
            topology_every=2,
            save_every=2,
            regularizer="tsloss",
            init="text:x " if arch == "qwen2" else "normal",
        )
    )
    lines = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert TRAIN_KEYS <= r.keys() and all(isinstance(r[k], (int, float)) for k in TRAIN_KEYS)
        assert r["loss"] == pytest.approx(r["ce"] + r["reg"])
    assert [r["epoch"] for r in lines] == [0.5, 1.0, 1.5, 2.0]
    for r in (lines[1], lines[3]):  # every 2 steps: topology and training accuracy
        assert set(METRIC_KEYS) <= r.keys() and 0.0 <= r["accuracy"] <= 1.0
    assert "accuracy" not in lines[0] and "h0_count" not in lines[0]

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert {
        "converged_step",
        "steps",
        "total_steps",
        "epochs",
        "world_size",
        "wall_time_s",
        "samples_per_s",
        "final",
        "prompt_dir",
        "config",
    } <= on_disk.keys()
    assert on_disk["steps"] == 4 and on_disk["world_size"] == 1 and on_disk["final"]["step"] == 4
    assert on_disk["config"]["model"] == str(tiny_model_dirs[arch])
    assert (out / "config.yaml").is_file()

    prompt = load_prompt(out / "prompt")
    hidden = json.loads((tiny_model_dirs[arch] / "config.json").read_text())["hidden_size"]
    assert prompt.shape == (20, hidden) and prompt.dtype == torch.float32
    assert torch.equal(prompt, load_prompt(out / "checkpoints" / "step-4"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    provenance = load_provenance(out / "prompt")
    assert provenance["step"] == 4 and provenance["regularizer"] == "tsloss"


@pytest.mark.slow
def test_init_normal_is_gaussian_0_02(tiny_llama_dir, short_dir, tmp_path):
    # max_steps=1 with warm-up: the first step's learning rate is 0, so the prompt is the init.
    run(_config(tiny_llama_dir, short_dir, tmp_path / "r", max_steps=1, warmup_ratio=1.0, epochs=1))
    prompt = load_prompt(tmp_path / "r" / "prompt")
    assert prompt.mean().abs() < 0.005 and prompt.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.slow
def test_converged_step_on_a_single_learnable_sample(tiny_tokenizer_dir, one_row_dir, tmp_path):
    # Random weights at the usual 0.02 scale give near-uniform logits a prompt cannot sharpen;
    # a larger init scale leaves the model able to memorise one short answer.
    model = tiny.build_tiny_model("llama", tmp_path / "m", tokenizer_dir=tiny_tokenizer_dir, initializer_range=0.2)
    out = tmp_path / "run"
    summary = run(
        _config(
            model,
            one_row_dir,
            out,
            num_samples=1,
            batch_size=8,
            lr=0.3,
            max_steps=40,
            eval_every=1,
            stop_at_convergence=True,
        )
    )
    lines = _lines(out / "metrics.jsonl")
    first_correct = next(r["step"] for r in lines if r["accuracy"] == 1.0)
    assert summary["converged_step"] == first_correct < 40
    assert lines[-1]["step"] == summary["steps"] == first_correct  # stop_at_convergence
    assert lines[0]["accuracy"] == 0.0


# -------------------------------------------------------------------------------- configuration


def test_ds_configs_on_disk():
    # The default is the shipped z2.json (one home): the same filled config as naming that file.
    z2 = str(REPO / "ds_configs" / "z2.json")
    default = _ds_config(TuneConfig(model="m"), world_size=1, total_steps=10)
    assert default == _ds_config(TuneConfig(model="m", ds_config=z2), world_size=1, total_steps=10)
    assert default["zero_optimization"]["stage"] == 2
    for name, stage in (("z3", 3), ("z3_offload", 3)):
        assert json.loads((REPO / "ds_configs" / f"{name}.json").read_text())["zero_optimization"]["stage"] == stage


def test_ds_config_auto_values_come_from_the_flags():
    config = TuneConfig(model="m", batch_size=8, lr=0.1, weight_decay=0.5, adam_eps=1e-6, max_grad_norm=2.0)
    ds = _ds_config(config, world_size=2, total_steps=100)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        8,
        4,
        1,
    )
    assert ds["optimizer"]["params"] | {} == {
        "lr": 0.1,
        "betas": [0.9, 0.999],
        "eps": 1e-6,
        "weight_decay": 0.5,
        "torch_adam": True,
    }
    assert ds["gradient_clipping"] == 2.0
    assert ds["bf16"]["enabled"] is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    ds = _ds_config(TuneConfig(model="m", batch_size=8, micro_batch_size=2), world_size=2, total_steps=1)
    assert ds["gradient_accumulation_steps"] == 2
    assert "auto" not in json.dumps(ds)


def test_yaml_config_and_flag_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: some/model\nlr: 0.5\nnum_samples: 10\nresume: true\n")
    config = load_config(["--config", str(path), "--lr", "0.25", "--num_samples", "none", "--local_rank=0"])
    assert (config.model, config.lr, config.num_samples, config.resume) == ("some/model", 0.25, None, True)


# ------------------------------------------------------------------------------------ bad input


def test_bad_data_fails_before_the_model_loads(tmp_path, capsys):
    # One bad file stands for all: tests/test_data.py checks each message of the data layer.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{bad json\n')
    out = tmp_path / "out"
    # --model is an existing directory but no model: the data fails first, so nothing loads it
    err = tune_fails(["--model", str(REPO), "--data_dir", str(tmp_path / "data"), "--output_dir", str(out)], capsys)
    assert "train.jsonl:2: malformed JSON" in err
    assert not out.exists()


def test_bad_arguments(tiny_llama_dir, gsm8k_dir, tmp_path, capsys):
    common = ["--data_dir", str(gsm8k_dir), "--output_dir", str(tmp_path / "out")]
    assert "model path not found: /no/such/model" in tune_fails(["--model", "/no/such/model", *common], capsys)
    model = ["--model", str(tiny_llama_dir)]
    assert "unknown regularizer 'nope'" in tune_fails([*model, *common, "--regularizer", "nope"], capsys)
    assert "unknown init 'zeros'" in tune_fails([*model, *common, "--init", "zeros"], capsys)
    assert "has only 32 rows" in tune_fails([*model, *common, "--num_samples", "99"], capsys)
    assert "unknown dataset 'squad'" in tune_fails([*model, *common, "--dataset", "squad"], capsys)
    assert "--resume: no engine state" in tune_fails([*model, *common, "--resume"], capsys)
    assert "model path not found: ./missing" in tune_fails(["--model", "./missing", *common], capsys)
    (tmp_path / "run.yaml").write_text("lr: 1\nlearning_rate: 2\n")
    assert "unknown key 'learning_rate'" in tune_fails(
        [*model, *common, "--config", str(tmp_path / "run.yaml")], capsys
    )
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    assert "output_dir is not empty" in tune_fails([*model, *common], capsys)


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tiny_llama_dir, gsm8k_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--model",
        str(tiny_llama_dir),
        "--data_dir",
        str(gsm8k_dir),
        "--output_dir",
        str(out),
        "--num_samples",
        "2",
        "--batch_size",
        "2",
        "--max_steps",
        "5",
        "--warmup_ratio",
        "0",
        "--save_every",
        "1",
        "--eval_every",
        "0",
        "--topology_every",
        "0",
        "--lr",
        "1e30",
        "--max_grad_norm",
        "0",
        "--no-progress",
    ]
    err = tune_fails(argv, capsys, code=1)
    assert err.startswith("tsloss tune: non-finite loss at step") and "last good checkpoint" in err
    steps = [r["step"] for r in _lines(out / "metrics.jsonl")]
    assert not (out / "summary.json").exists() and not (out / "prompt").exists()
    assert torch.isfinite(load_prompt(out / "checkpoints" / f"step-{steps[-1]}")).all()


# --------------------------------------------------------------------------------- kill + resume


# The tuner as `tune.py` runs it, killed with SIGKILL right after step KILL_AT_STEP has logged its
# metrics (and half of the next line, as a kill during a write leaves it): a chosen step, every time.
KILLED_TUNER = """
import os, signal, sys
from tsloss_harness.cli import main
from tsloss_harness.tune import recipe

kill_at, end_of_step = int(os.environ["KILL_AT_STEP"]), recipe.TuneRecipe.end_of_step

def end_of_step_then_kill(self, step, record):
    stop = end_of_step(self, step, record)
    if step == kill_at:
        self.metrics_file.write('{"step": %d, "lo' % (step + 1))
        self.metrics_file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return stop

recipe.TuneRecipe.end_of_step = end_of_step_then_kill
sys.exit(main(["tune", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tiny_llama_dir, gsm8k_dir, tmp_path):
    args = dict(num_samples=6, batch_size=2, max_steps=12, lr=0.01, warmup_ratio=0.1)
    killed = tmp_path / "killed"
    # Checkpoints every 2 steps, killed after step 5: metrics.jsonl runs ahead of the step-4 checkpoint.
    argv = tune_argv(_config(tiny_llama_dir, gsm8k_dir, killed, save_every=2, **args))
    (tmp_path / "killed_tuner.py").write_text(KILLED_TUNER)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "killed_tuner.py"), *argv],
        env={**fresh_env(), "KILL_AT_STEP": "5"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in sorted((killed / "checkpoints").iterdir())] == ["step-2", "step-4"]
    assert (killed / "metrics.jsonl").read_text().endswith('{"step": 6, "lo')
    assert not (killed / "summary.json").exists()
    with pytest.raises(TuneError, match=r"--resume: lr=0.02 differs from the run's lr=0.01"):
        run(_config(tiny_llama_dir, gsm8k_dir, killed, resume=True, **{**args, "lr": 0.02}))
    # The resumed and the uninterrupted run save only at the end: checkpointing must not change training.
    resumed = run(_config(tiny_llama_dir, gsm8k_dir, killed, resume=True, **args))
    straight = run(_config(tiny_llama_dir, gsm8k_dir, tmp_path / "straight", **args))
    assert [r["step"] for r in _lines(killed / "metrics.jsonl")] == list(range(1, 13))
    assert torch.equal(load_prompt(killed / "prompt"), load_prompt(tmp_path / "straight" / "prompt"))
    assert resumed["final"]["loss"] == straight["final"]["loss"]
    untimed = [
        [{k: v for k, v in r.items() if k != "samples_per_s"} for r in _lines(d / "metrics.jsonl")]
        for d in (killed, tmp_path / "straight")
    ]
    assert untimed[0] == untimed[1]  # every step's metrics, the redone ones included
