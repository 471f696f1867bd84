"""ZeRO-3 memory of the tuner: the output layer is whole only while the fused cross-entropy runs.

Registered as an external parameter of the loss module (or read as ``lm_head.weight`` inside the
engine's forward, which makes DeepSpeed 0.19 register it by itself), the output layer was gathered at
the start of every later forward and held, next to the embedding, to its end."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

from tsloss_harness.memory import PeakSampler, status
from tsloss_harness.tune import TuneConfig


@pytest.mark.slow
def test_zero3_gathers_the_output_layer_only_for_the_cross_entropy(tiny_llama_dir, short_dir, tmp_path):
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    from tsloss_harness.tune import distributed
    from tsloss_harness.tune.recipe import TuneRecipe

    ds = json.loads((REPO / "ds_configs" / "z3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition the tiny model's tensors too
    (tmp_path / "z3.json").write_text(json.dumps(ds))
    config = TuneConfig(
        model=str(tiny_llama_dir),
        data_dir=str(short_dir),
        output_dir=str(tmp_path / "run"),
        num_samples=2,
        batch_size=2,
        max_steps=3,
        eval_every=0,
        topology_every=0,
        progress=False,
        ds_config=str(tmp_path / "z3.json"),
    )
    with distributed.run_context():
        recipe = TuneRecipe(config)
        recipe.setup()
        try:
            base = recipe.peft_model.get_base_model()
            lm_head, embedding = base.get_output_embeddings(), base.get_input_embeddings()
            weight = dict.__getitem__(lm_head._parameters, "weight")  # the object itself, read past DeepSpeed
            assert weight is not dict.__getitem__(embedding._parameters, "weight")  # untied: two V x h matrices
            seen = []
            hook = embedding.register_forward_pre_hook(lambda module, args: seen.append(weight.ds_status))
            recipe.train()
            hook.remove()
            external = [id(p) for m in recipe.module.modules() for p in getattr(m, "_external_params", {}).values()]
        finally:
            recipe.close()
    assert seen == [ZeroParamStatus.NOT_AVAILABLE] * 3  # partitioned while the embedding runs, every step
    assert id(weight) not in external


def test_peak_sampler_sees_an_allocation_in_its_phase():
    import time

    import numpy as np

    sampler = PeakSampler(phase="before", interval=0.001)
    time.sleep(0.05)
    sampler.phase = "during"
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    time.sleep(0.05)
    del block
    sampler.phase = "after"
    time.sleep(0.05)
    assert sampler.peaks["during"] - sampler.peaks["before"] >= 60 * 2**20
    assert sampler.peaks["after"] < sampler.peaks["during"] and sampler.peak() == sampler.peaks["during"]
    assert set(status()) == {"VmRSS", "RssAnon", "VmHWM"}
