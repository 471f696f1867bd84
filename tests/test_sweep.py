import json
from pathlib import Path

import pytest
import yaml

from tsloss_harness.sweep import SweepError, load_sweep_config, main, run_sweep


@pytest.fixture
def sweep_yaml(tmp_path, tiny_llama_dir):
    config = {
        "output_dir": str(tmp_path / "sweep"),
        "model": str(tiny_llama_dir),
        "datasets": ["gsm8k"],
        "data_dir": "generated",
        "settings": {"single": 1},
        "regularizers": ["none", "tsloss"],
        "seeds": 2,
        "tune": {"max_steps": 2, "eval_every": 1, "topology_every": 0, "lr": 0.01, "progress": False},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_sweep_runs_reuses_and_reports(sweep_yaml, capsys):
    assert main(["--config", str(sweep_yaml)]) == 0
    out = capsys.readouterr().out
    assert "4 runs (0 reused)" in out
    assert "tsloss ÷ none iterations to convergence" in out
    root = sweep_yaml.parent / "sweep"
    for reg in ("none", "tsloss"):
        for seed in (0, 1):
            summary = json.loads((root / "gsm8k" / "single" / reg / f"seed-{seed}" / "summary.json").read_text())
            assert summary["config"]["regularizer"] == reg and summary["config"]["seed"] == seed
            assert summary["steps"] == 2
    # CE and TSLoss of one seed train on the same generated row; seeds differ.
    data = sorted((root / "data").iterdir())
    assert len(data) == 2 and data[0].joinpath("train.jsonl").read_text() != data[1].joinpath("train.jsonl").read_text()
    assert "Table IV" in (root / "board.md").read_text()
    ratios = json.loads((root / "ratios.json").read_text())
    assert [r["regularizer"] for r in ratios] == ["tsloss"] and ratios[0]["runs"] == 2
    assert "paired by seed" in out
    for key in ("ratio", "ci95", "converged", "baseline_converged", "paired_ratio", "paired_ci95", "pairs"):
        assert key in ratios[0]

    # A second call reuses every finished run; an interrupted one (no summary) is redone.
    (root / "gsm8k" / "single" / "tsloss" / "seed-1" / "summary.json").unlink()
    result = run_sweep(load_sweep_config(sweep_yaml))
    assert result["runs"] == 4 and result["reused"] == 3


def test_bad_sweep_configs(tmp_path, sweep_yaml, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("regularizers: [none]\nlearning_rate: 1\n")
    with pytest.raises(SweepError, match="unknown key"):
        load_sweep_config(bad)
    config = load_sweep_config(sweep_yaml)
    config.regularizers = ["none", "nope"]
    with pytest.raises(SweepError, match="nope"):
        run_sweep(config)
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read sweep config" in capsys.readouterr().err


def test_reuse_tolerates_fields_added_at_their_default(tmp_path):
    import dataclasses

    from tsloss_harness.sweep import _finished
    from tsloss_harness.tune import TuneConfig

    resolved = dataclasses.asdict(TuneConfig(model="m", seed=3))
    stored = dict(resolved)
    del stored["max_grad_norm"]  # as if the run predates the field; the new value is its default
    (tmp_path / "summary.json").write_text(json.dumps({"config": stored, "steps": 1}))
    assert _finished(tmp_path, resolved) == {"config": stored, "steps": 1}
    assert _finished(tmp_path, {**resolved, "max_grad_norm": 0.5}) is None  # not the default: redo
    assert _finished(tmp_path, {**resolved, "seed": 4}) is None
    (tmp_path / "summary.json").write_text(json.dumps({"config": {**resolved, "gone": 1}}))
    assert _finished(tmp_path, resolved) is None  # a field that no longer exists: redo


@pytest.mark.slow
def test_settings_carry_their_own_tuner_values_and_regularizers(sweep_yaml):
    config = load_sweep_config(sweep_yaml)
    config.seeds = 1
    config.settings = {
        "single": 1,
        "multi": {"num_samples": 3, "tune": {"num_virtual_tokens": 4, "lr": 0.02}, "regularizers": ["none"]},
    }
    result = run_sweep(config)
    assert result["runs"] == 3  # single: none + tsloss; multi: none only
    root = sweep_yaml.parent / "sweep" / "gsm8k"
    multi = json.loads((root / "multi" / "none" / "seed-0" / "summary.json").read_text())["config"]
    single = json.loads((root / "single" / "tsloss" / "seed-0" / "summary.json").read_text())["config"]
    assert (multi["num_virtual_tokens"], multi["lr"], multi["num_samples"], multi["batch_size"]) == (4, 0.02, 3, 3)
    assert (single["num_virtual_tokens"], single["lr"], single["num_samples"], single["batch_size"]) == (20, 0.01, 1, 1)
    assert multi["data_dir"].endswith("gsm8k-seed0-3") and single["data_dir"].endswith("gsm8k-seed0-1")
    assert not (root / "multi" / "tsloss").exists()
    assert [(r["setting"], r["regularizer"]) for r in result["ratios"]] == [("single", "tsloss")]


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"num_samples": 0}, "positive integer"),
        ({"rows": 10}, "unknown key"),
        ({"num_samples": 2, "tune": {"learning_rate": 1}}, "settings.bad.tune"),
        ({"num_samples": 2, "regularizers": ["tsloss"]}, "lack the baseline"),
        ({"num_samples": 2, "regularizers": ["none", "nope"]}, "nope"),
    ],
)
def test_bad_settings(sweep_yaml, setting, message):
    config = load_sweep_config(sweep_yaml)
    config.settings = {"bad": setting}
    with pytest.raises(SweepError, match=message):
        run_sweep(config)


def test_ratios_from_converged_steps(sweep_yaml, monkeypatch):
    """The printed ratios come from each run's converged_step: unpaired over converged runs, paired
    over the seeds where both converged (runs replaced by summaries with known steps)."""
    import dataclasses

    from tsloss_harness import leaderboard, tune

    steps = {("none", 0): 20, ("none", 1): 40, ("none", 2): None, ("tsloss", 0): 10, ("tsloss", 1): 30, ("tsloss", 2): 50}

    def fake_run(config):
        summary = {"config": dataclasses.asdict(config), "converged_step": steps[(config.regularizer, config.seed)], "steps": 1}
        out = Path(config.output_dir)
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(tune, "run", fake_run)
    config = load_sweep_config(sweep_yaml)
    config.seeds = 3
    (r,) = run_sweep(config)["ratios"]
    assert (r["converged"], r["baseline_converged"], r["pairs"]) == (3, 2, 2)
    assert r["ratio"] == pytest.approx(30 / 30) and r["ci95"] == list(leaderboard.ratio_ci([10, 30, 50], [20, 40])[1:])
    assert r["paired_ratio"] == pytest.approx((10 / 20 * 30 / 40) ** 0.5)
    assert r["paired_ci95"] == list(leaderboard.paired_ratio_ci([10, 30], [20, 40])[1:])
