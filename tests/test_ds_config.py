"""Bring-your-own DeepSpeed config (tsloss_harness/ds_config.py): the configs the HF docs show, a file
without an optimizer block (the HF Trainer's habit), and one-line refusals naming the key.

The HF configs are copied from the transformers docs ("DeepSpeed" page: the full ZeRO-2 and ZeRO-3
examples ds_config_zero2.json / ds_config_zero3.json, and the ZeRO-2 / ZeRO-3 blocks of its "ZeRO
configuration" section, which carry no optimizer). Expected values follow the HF Trainer's documented
rules (betas (0.9, 0.999), warmup_min_lr 0, bucket sizes h², 0.9·h², 10·h) and, for learning rates, the
linear warm-up/decay formula worked out by hand.
"""

from __future__ import annotations

import copy
import json

import pytest
from helpers import REPO, tune_fails

from tsloss_harness.ds_config import DsConfigError, fill_ds_config
from tsloss_harness.tune import TuneConfig, run

HF_FP16 = {
    "enabled": "auto",
    "loss_scale": 0,
    "loss_scale_window": 1000,
    "initial_scale_power": 16,
    "hysteresis": 2,
    "min_loss_scale": 1,
}
HF_OPTIMIZER = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
HF_SCHEDULER = {
    "type": "WarmupLR",
    "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto"},
}
HF_TOP = {
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 2000,
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}
HF_ZERO2_EXAMPLE = {
    "fp16": HF_FP16, "optimizer": HF_OPTIMIZER, "scheduler": HF_SCHEDULER,
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "allgather_partitions": True, "allgather_bucket_size": 2e8, "overlap_comm": True,
                          "reduce_scatter": True, "reduce_bucket_size": 2e8, "contiguous_gradients": True},
    **HF_TOP,
}  # fmt: skip
HF_ZERO3_EXAMPLE = {
    "fp16": HF_FP16, "optimizer": HF_OPTIMIZER, "scheduler": HF_SCHEDULER,
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "offload_param": {"device": "cpu", "pin_memory": True}, "overlap_comm": True,
                          "contiguous_gradients": True, "sub_group_size": 1e9, "reduce_bucket_size": "auto",
                          "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                          "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
                          "stage3_gather_16bit_weights_on_model_save": True},
    **HF_TOP,
}  # fmt: skip
# The docs' "ZeRO configuration" blocks: no optimizer, no precision, no batch keys.
HF_ZERO2_BLOCK = {"zero_optimization": {
    "stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}, "allgather_partitions": True,
    "allgather_bucket_size": 5e8, "overlap_comm": True, "reduce_scatter": True, "reduce_bucket_size": 5e8,
    "contiguous_gradients": True, "round_robin_gradients": True}}  # fmt: skip
HF_ZERO3_BLOCK = {"zero_optimization": {
    "stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
    "offload_param": {"device": "cpu", "pin_memory": True}, "overlap_comm": True, "contiguous_gradients": True,
    "sub_group_size": 1e9, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
    "stage3_gather_16bit_weights_on_model_save": True}}  # fmt: skip

HIDDEN = 64  # the tiny llama's hidden size (tsloss_harness.testbed.tiny.DEFAULT_SIZE)


def _write(tmp_path, name, ds) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(ds))
    return str(path)


def _fill(tmp_path, ds, model, world_size=1, total_steps=10, **flags) -> dict:
    config = TuneConfig(
        model=str(model),
        ds_config=_write(tmp_path, "ds", ds),
        batch_size=4,
        lr=0.02,
        adam_eps=1e-7,
        weight_decay=0.05,
        max_grad_norm=0.5,
        warmup_ratio=0.25,
        **flags,
    )
    return fill_ds_config(config, world_size, total_steps)


def test_hf_docs_examples_are_completed_from_the_flags(tmp_path, tiny_llama_dir):
    for example in (HF_ZERO2_EXAMPLE, HF_ZERO3_EXAMPLE):
        ds = _fill(tmp_path, copy.deepcopy(example), tiny_llama_dir, world_size=2, total_steps=10)
        assert "auto" not in json.dumps(ds)
        assert ds["optimizer"] == {
            "type": "AdamW",
            "params": {"lr": 0.02, "betas": [0.9, 0.999], "eps": 1e-7, "weight_decay": 0.05},
        }
        # warm-up: ceil(0.25 * 10) = 3 steps; min lr 0 (the HF Trainer's fill)
        assert ds["scheduler"] == {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.02, "warmup_num_steps": 3},
        }
        assert ds["fp16"]["enabled"] is False and ds["fp16"]["initial_scale_power"] == 16
        assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
            4,
            2,
            1,
        )
        assert ds["gradient_clipping"] == 0.5
    zero = ds["zero_optimization"]  # ZeRO-3: the buckets from the hidden size, the rest as written
    assert zero["reduce_bucket_size"] == HIDDEN**2
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * HIDDEN**2)
    assert zero["stage3_param_persistence_threshold"] == 10 * HIDDEN
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True} and zero["sub_group_size"] == 1e9


def test_a_file_without_optimizer_gets_adamw_from_the_flags(tmp_path, tiny_llama_dir):
    ds = _fill(tmp_path, copy.deepcopy(HF_ZERO2_BLOCK), tiny_llama_dir)
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 0.02, "betas": [0.9, 0.999], "eps": 1e-7, "weight_decay": 0.05, "torch_adam": True},
    }
    assert ds["zero_force_ds_cpu_optimizer"] is False  # the optimizer is offloaded: DeepSpeed must accept torch's
    assert "scheduler" not in ds  # the tuner's own linear schedule
    assert ds["zero_optimization"] == HF_ZERO2_BLOCK["zero_optimization"]
    # An AdamW block that leaves parameters out: they come from the flags, not DeepSpeed's defaults (lr 1e-3).
    ds = _fill(tmp_path, {"optimizer": {"type": "Adam", "params": {"betas": [0.8, 0.99]}}}, tiny_llama_dir)
    assert ds["optimizer"]["params"] == {"betas": [0.8, 0.99], "lr": 0.02, "eps": 1e-7, "weight_decay": 0.05}


@pytest.mark.parametrize(
    "ds, message",
    [
        ({"fp16": {"enabled": True}}, "fp16.enabled=true: the tuner trains in fp32 or bf16"),
        ({"amp": {"enabled": True}}, "amp.enabled=true"),
        ({"optimizer": {"type": "Lamb", "params": {}}}, "optimizer.type='Lamb': the tuner trains with AdamW"),
        ({"optimizer": {"type": "Adam", "params": {"adam_w_mode": False}}}, "optimizer.params.adam_w_mode=false"),
        (
            {"optimizer": {"type": "AdamW", "params": {"lr": 3e-5}}},
            "optimizer.params.lr=3e-05 disagrees with --lr (0.02)",
        ),
        ({"gradient_clipping": 1.0}, "gradient_clipping=1.0 disagrees with --max_grad_norm (0.5)"),
        (
            {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 500}}},
            "scheduler.params.warmup_num_steps=500 disagrees with --warmup_ratio (3)",
        ),
        (
            {"scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": "auto"}}},
            'no flag fills "auto" at scheduler.params.cycle_min_lr',
        ),
        (
            {"train_micro_batch_size_per_gpu": 3},
            "train_micro_batch_size_per_gpu=3 disagrees with --micro_batch_size (4)",
        ),
    ],
)
def test_what_the_tuner_cannot_use_fails_naming_the_key(ds, message, tmp_path, tiny_llama_dir):
    with pytest.raises(DsConfigError) as info:
        _fill(tmp_path, ds, tiny_llama_dir)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "config_json", [None, '{"model_type": "no_such_type"}', '{"model_type": "llama", "hidden_size": "wide"}']
)
def test_an_unreadable_model_config_for_the_buckets_is_one_line(config_json, tmp_path):
    """ZeRO-3's "auto" buckets need the model's hidden size: a missing directory, an unknown model type
    or a bad field value is a DsConfigError naming the model."""
    model = tmp_path / "model"
    if config_json is not None:
        model.mkdir()
        (model / "config.json").write_text(config_json)
    with pytest.raises(DsConfigError, match="for the ZeRO bucket sizes") as info:
        _fill(tmp_path, copy.deepcopy(HF_ZERO3_EXAMPLE), model)
    assert str(model) in str(info.value) and "\n" not in str(info.value)


def test_refusal_through_the_cli_is_one_line(tmp_path, tiny_llama_dir, short_dir, capsys):
    argv = [
        "--model",
        str(tiny_llama_dir),
        "--data_dir",
        str(short_dir),
        "--output_dir",
        str(tmp_path / "out"),
        "--ds_config",
        _write(tmp_path, "fp16", {**HF_ZERO2_BLOCK, "fp16": {"enabled": True}}),
        "--no-progress",
    ]
    assert "fp16.enabled=true" in tune_fails(argv, capsys)


def _run(tmp_path, name, ds, model, data_dir, **flags) -> list[dict]:
    out = tmp_path / name
    run(
        TuneConfig(
            model=str(model),
            data_dir=str(data_dir),
            num_samples=2,
            batch_size=2,
            max_steps=3,
            lr=0.01,
            warmup_ratio=0.1,
            eval_every=0,
            topology_every=0,
            progress=False,
            output_dir=str(out),
            ds_config=_write(tmp_path, name, ds),
            **flags,
        )
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["z2_without_optimizer_bf16", "hf_zero3_block"])
def test_trains_with_a_file_that_names_no_optimizer(name, tmp_path, tiny_llama_dir, short_dir):
    if name == "hf_zero3_block":
        ds = copy.deepcopy(HF_ZERO3_BLOCK)
    else:  # the report: the shipped z2.json without its optimizer block, bf16 on
        ds = json.loads((REPO / "ds_configs" / "z2.json").read_text())
        del ds["optimizer"]
        ds["bf16"]["enabled"] = True
    lines = _run(tmp_path, name, ds, tiny_llama_dir, short_dir)
    # The HF linear schedule, by hand: 3 steps, ceil(0.1 * 3) = 1 warm-up step -> 0, lr, lr / 2.
    assert [r["lr"] for r in lines] == pytest.approx([0.0, 0.01, 0.005])
    assert lines[2]["ce"] < lines[1]["ce"]  # the step at lr 0.01 trained the prompt
