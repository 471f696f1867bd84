"""Two DeepSpeed ranks (two CPU processes) end where one rank running the same micro-batches ends, for
every ZeRO stage and for Prefix-Tuning with adaptive weights; and the command line the ranks get
carries the whole config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, tune_argv, two_ranks

from tsloss_harness.prompt import load_prompt
from tsloss_harness.tune import TuneConfig, load_config, run

# name: (DeepSpeed config, settings of its own)
CASES = {
    "prompt-z2": ("z2", {}),
    "prompt-z3": ("z3", {}),
    "prompt-z3_offload": ("z3_offload", {}),
    # Prefix-Tuning (its MLP partitioned too) with an adaptive H0 weight: the ratio holds per micro-batch,
    # so the single rank runs the step's two micro-batches in sequence, as the two ranks run one each.
    "prefix-adaptive-z3": ("z3", {"method": "prefix", "lr": 0.05, "adaptive_ratio_h0": 0.5}),
}


def _config(model, data_dir, out, **overrides) -> TuneConfig:
    # 3 rows, global batch 2: the second step has one row, so rank 1 runs the no-target dummy row. The
    # last step evaluates by generation (under ZeRO-3 both ranks generate) and computes topology.
    settings = dict(
        model=str(model),
        data_dir=str(data_dir),
        output_dir=str(out),
        num_samples=3,
        batch_size=2,
        max_steps=4,
        lr=0.01,
        warmup_ratio=0.0,
        eval_every=4,
        eval_max_samples=2,
        topology_every=4,
        progress=False,
    )
    return TuneConfig(**{**settings, **overrides})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_command_line_carries_every_field():
    # Booleans both ways from their defaults (a dropped --no-progress would turn the bar back on),
    # None and a string "none" (the regularizer, which must stay a string).
    config = TuneConfig(
        model="m",
        data_dir=None,
        regularizer="none",
        stop_at_convergence=True,
        progress=False,
        adaptive_ratio_h0=0.5,
        micro_batch_size=1,
        max_steps=7,
    )
    assert load_config(tune_argv(config)) == config


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_one_rank(case, tiny_llama_dir, short_dir, tmp_path):
    zero, own = CASES[case]
    ds_config = json.loads((REPO / "ds_configs" / f"{zero}.json").read_text())
    if zero.startswith("z3"):  # partition even the tiny model's small tensors (ZeRO-3 keeps those whole by default)
        ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "ds.json").write_text(json.dumps(ds_config))
    settings = dict(ds_config=str(tmp_path / "ds.json"), **own)
    adaptive = "adaptive_ratio_h0" in own
    one = run(
        _config(tiny_llama_dir, short_dir, tmp_path / "one", micro_batch_size=1 if adaptive else None, **settings)
    )
    two = two_ranks(_config(tiny_llama_dir, short_dir, tmp_path / "two", **settings))
    assert two["world_size"] == 2 and one["world_size"] == 1
    torch.testing.assert_close(
        load_prompt(tmp_path / "two" / "prompt"), load_prompt(tmp_path / "one" / "prompt"), rtol=1e-5, atol=1e-6
    )
    one_lines, two_lines = _lines(tmp_path / "one" / "metrics.jsonl"), _lines(tmp_path / "two" / "metrics.jsonl")
    assert len(one_lines) == len(two_lines) == 4
    for a, b in zip(one_lines, two_lines, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == b["lr"]
        if adaptive:
            assert a["beta_h0"] == pytest.approx(b["beta_h0"], rel=1e-5)
    assert two["final"]["accuracy"] == one["final"]["accuracy"]
    assert two["final"]["h0_mean_lifetime"] == pytest.approx(one["final"]["h0_mean_lifetime"], rel=1e-4)


def test_run_context_restores_the_process_state():
    """What a run changes in the process is undone on exit, so later runs and model loads are not
    affected (a ZeRO-3 config left registered made later ``from_pretrained`` calls partition)."""
    import os

    import torch.nn.functional as F
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    from tsloss_harness.tune import distributed

    linear, rank_before, rng = F.linear, os.environ.get("LOCAL_RANK"), torch.get_rng_state()
    with distributed.run_context():
        assert os.environ["LOCAL_RANK"] == (rank_before or "0")
        kept = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_batch_size": 1})  # noqa: F841
        assert is_deepspeed_zero3_enabled()
        F.linear = lambda *args: None
        torch.rand(1)
    assert not is_deepspeed_zero3_enabled()
    assert F.linear is linear and os.environ.get("LOCAL_RANK") == rank_before
    assert torch.equal(torch.get_rng_state(), rng)
