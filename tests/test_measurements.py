"""Collecting measurements: a group lm-eval gives no score (gsm8k_offline: one task, no aggregate) is
read through its subtasks, and a scored group (MMLU-CF) still stands for its subjects."""

from __future__ import annotations

import json

from tsloss_harness.measurements import collect


def test_scoreless_group_is_read_through_its_subtasks(tmp_path):
    data = {  # as lm_eval --tasks gsm8k_offline,mmlu_cf writes it (the fields the leaderboard reads)
        "results": {
            "gsm8k_offline": {"alias": "gsm8k_offline"},
            "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25},
            "mmlu_cf": {"alias": "mmlu_cf", "acc,none": 0.5},
            "mmlu_cf_math": {"alias": "mmlu_cf_math", "acc,none": 0.4},
            "orphan": {"alias": "orphan", "bleu,none": 3.0},
        },
        "group_subtasks": {"gsm8k_offline": ["gsm8k"], "mmlu_cf": ["mmlu_cf_math"], "orphan": []},
        "config": {"model": "hf", "model_args": "pretrained=/m/tiny"},
    }
    path = tmp_path / "results_x.json"
    path.write_text(json.dumps(data))
    measurements, warnings = collect([path])
    assert sorted((m.dataset, m.value) for m in measurements) == [("gsm8k", 25.0), ("mmlu_cf", 50.0)]
    assert warnings == [f"{path}: task orphan has no accuracy metric (use --metric orphan=KEY); skipped"]


def test_dpc_settings_other_than_the_defaults_name_their_column():
    from tsloss_harness.measurements import _with_inference_methods

    recorded = {"ratio": 0.5, "beta_scale": 1.0, "gamma": 10.0, "layers": "deep", "instances": 100, "fired": 0}
    assert _with_inference_methods("prompt", {"dpc": recorded}) == "prompt+dpc"
    assert _with_inference_methods("prompt", {"dpc": recorded | {"ratio": 0.1}}) == "prompt+dpc(ratio=0.1)"
    assert _with_inference_methods("base", {"act": {"heads": []}}) == "base+act"


def test_a_run_that_never_checked_training_accuracy_measures_no_iterations(tmp_path):
    for eval_every in (0, 2):
        run = tmp_path / f"eval_every={eval_every}"
        run.mkdir()
        config = {"model": "/m/tiny", "dataset": "gsm8k", "num_samples": 1, "eval_every": eval_every}
        (run / "summary.json").write_text(json.dumps({"converged_step": None, "config": config}))
    measurements, warnings = collect([tmp_path])
    assert [(m.kind, m.value, m.source) for m in measurements] == [("iterations", None, str(tmp_path / "eval_every=2"))]
    assert warnings == []
