"""tsloss sweep: the grid and its config (no processes), the ratios against numpy/scipy, and on a real
local Ray cluster started here: a grid equal to runs by hand, Ctrl-C and rerun, a killed cell retried
from its checkpoint, a failing cell reported, the eval stage equal to lm_eval by hand, reuse and
changed configs."""

from __future__ import annotations

import _thread
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, compare_samples, finish_lm_eval, lm_eval_args, read_lm_eval_output, start_lm_eval
from scipy import stats

from tsloss_harness.cli import main as tsloss
from tsloss_harness.data import read_jsonl, write_jsonl
from tsloss_harness.prompt import load_prompt
from tsloss_harness.sweep import SweepError, grid, load_sweep_config, parse_sweep_config, run_sweep
from tsloss_harness.sweep.results import (
    CellResult,
    convergence_ratios,
    group_rows,
    over_no_prompt,
    read_cell,
    score_differences,
)

TINY_TUNE = {"max_steps": 3, "eval_every": 0, "topology_every": 0, "lr": 0.01, "warmup_ratio": 0.0}


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the grid (no processes)


def test_grid_cells_directories_and_values(tmp_path):
    config = parse_sweep_config(
        {
            "output_dir": str(tmp_path / "out"),
            "model": "org/base-model",
            "data_dir": "generated",
            "tune": {"lr": 0.02, "eval_every": 5},
            "axes": {"regularizer": ["none", "tsloss"], "lambda_ts": [0.5, 1]},
            "settings": {
                "single": 1,
                "multi": {"num_samples": 10, "tune": {"lr": 0.03, "batch_size": 4}, "axes": {"regularizer": ["none"]}},
            },
            "seeds": [3, 7],
        }
    )
    cells = grid.expand(config)
    assert len(cells) == 2 * 2 * 2 + 1 * 2 * 2  # single: 2 regs x 2 lambdas x 2 seeds; multi: 1 x 2 x 2
    first = cells[0]
    assert (
        first.dir == (tmp_path / "out" / "setting=single" / "regularizer=none" / "lambda_ts=0.5" / "seed=3").resolve()
    )
    assert first.name == "setting=single/regularizer=none/lambda_ts=0.5/seed=3"
    assert first.key == {"setting": "single", "regularizer": "none", "lambda_ts": 0.5, "seed": 3}
    by_name = {c.name: c.values for c in cells}
    single = by_name["setting=single/regularizer=tsloss/lambda_ts=1/seed=7"]
    multi = by_name["setting=multi/regularizer=none/lambda_ts=0.5/seed=3"]
    # tune < the setting's tune < the cell's axis values; the sweep derives batch, accuracy rows, data, seed
    assert (single["lr"], single["regularizer"], single["lambda_ts"], single["seed"]) == (0.02, "tsloss", 1, 7)
    assert (single["num_samples"], single["batch_size"], single["eval_max_samples"], single["eval_every"]) == (
        1,
        1,
        1,
        5,
    )
    assert (multi["lr"], multi["num_samples"], multi["batch_size"], multi["eval_max_samples"]) == (0.03, 10, 4, 10)
    assert single["data_dir"] == str((tmp_path / "out" / "data" / "gsm8k-seed7-1").resolve())
    assert multi["data_dir"] == str((tmp_path / "out" / "data" / "gsm8k-seed3-10").resolve())
    assert single["output_dir"] == str(
        (tmp_path / "out" / "setting=single" / "regularizer=tsloss" / "lambda_ts=1" / "seed=7" / "tune").resolve()
    )
    assert single["model"] == "org/base-model" and single["progress"] is False
    assert not [c for c in cells if c.key["setting"] == "multi" and c.key["regularizer"] == "tsloss"]
    assert not (tmp_path / "out").exists()  # expanding writes nothing


def test_path_names_show_values_and_never_collide():
    names = grid._path_names("model", ["/a/x/llama", "/b/y/llama", "org/gemma-2b", None, True, 1e-05, "text:x, y"])
    assert names[repr("org/gemma-2b")] == "gemma-2b" and names[repr(None)] == "none" and names[repr(True)] == "true"
    assert names[repr(1e-05)] == "1e-05" and "," not in names[repr("text:x, y")]
    a, b = names[repr("/a/x/llama")], names[repr("/b/y/llama")]
    assert a != b and a.startswith("llama-") and b.startswith("llama-")


def test_convergence_protocol_config_keeps_the_protocol():
    """configs/sweep_convergence.yaml in the axes syntax: the protocol as the README states it (testbed
    tuner defaults lr 0.01, batch 1, at most 600 steps, stop at convergence)."""
    config = load_sweep_config(REPO / "configs" / "sweep_convergence.yaml")
    cells = grid.expand(config)
    single = [c for c in cells if c.key["setting"] == "single"]
    multi = [c for c in cells if c.key["setting"] == "multi"]
    assert len(single) == 5 * 20 and len(multi) == 4 * 20
    assert {c.key["regularizer"] for c in single} == {"none", "h0", "h1", "tsloss", "ph_exact"}
    assert {c.key["regularizer"] for c in multi} == {"none", "h0", "h1", "tsloss"}
    want = {
        "single": {"num_samples": 1, "batch_size": 1, "num_virtual_tokens": None, "lr": 0.01, "eval_every": 2},
        "multi": {"num_samples": 10, "batch_size": 8, "num_virtual_tokens": 200, "lr": 0.03, "eval_every": 10},
    }
    for c in cells:
        v, w = c.values, want[c.key["setting"]]
        assert (v["num_samples"], v["batch_size"], v.get("num_virtual_tokens"), v["lr"], v["eval_every"]) == tuple(
            w.values()
        )
        assert (v["max_steps"], v["stop_at_convergence"], v["topology_every"], v["eval_max_samples"]) == (
            600,
            True,
            0,
            w["num_samples"],
        )
        assert v["model"] == "testbed" and v["data_dir"].endswith(f"gsm8k-seed{c.key['seed']}-{w['num_samples']}")
    assert config.baseline == {"regularizer": "none"} and config.seed_list() == list(range(20))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"learning_rate": 1}, "unknown key"),
        ({"datasets": ["gsm8k"]}, "now an axis: axes: {dataset"),
        ({"regularizers": ["none"]}, "now an axis: axes: {regularizer"),
        ({"axes": {"lr_typo": [1]}}, "not a TuneConfig field"),
        ({"axes": {"seed": [1, 2]}}, "set by the sweep"),
        ({"axes": {"lr": []}}, "non-empty list"),
        ({"axes": {"lr": [0.1, 0.1]}}, "repeated value"),
        ({"axes": {"regularizer": ["none", "nope"]}}, "unknown regularizer.*nope"),
        ({"axes": {"method": ["prompt", "lora"]}}, "unknown method.*lora"),
        ({"tune": {"lr": 1}, "axes": {"lr": [1, 2]}}, "both an axis and a tune value"),
        ({"tune": {"output_dir": "x"}}, "set by the sweep"),
        ({"baseline": "none"}, "baseline: {regularizer: none}"),
        ({"baseline": {"lr": 1}}, "not an axis"),
        ({"baseline": {"regularizer": "h0"}}, "lack the baseline 'h0'"),
        ({"settings": {"s": {"num_samples": 0}}}, "positive integer"),
        ({"settings": {"s": {"rows": 10}}}, "unknown key"),
        ({"settings": {"s": {"num_samples": 2, "tune": {"learning_rate": 1}}}}, "settings.s.tune"),
        (
            {"settings": {"s": {"num_samples": 2, "axes": {"regularizer": ["tsloss", "h0"]}}}},
            "lack the baseline 'none'",
        ),
        ({"settings": {"s": {"num_samples": 2, "axes": {"lr": [1]}}}}, "'lr' is not one of axes"),
        ({"settings": {"s": {"num_samples": 2, "regularizers": ["none"]}}}, "now an axis"),
        ({"resources": {"num_gpus": 2, "ranks": 1}}, "one rank per GPU"),
        ({"resources": {"cpus": 2}}, "unknown key"),
        ({"resources": {"fork": "no"}}, "fork must be true or false"),
        ({"seeds": 0}, "seeds"),
        ({"retries": -1}, "retries"),
        ({"eval": {"limit": 2}}, "eval.tasks"),
        ({"eval": {"tasks": ["gsm8k"], "model_args": {"prompt": "x"}}}, "come from the cell"),
        ({"eval": {"tasks": ["gsm8k"], "variants": {"plain": {}}}}, "not 'plain'"),
        ({"eval": {"tasks": ["gsm8k"], "variants": {"a": {"cells": "bare"}}}}, "variants.a.cells"),
        ({"eval": {"tasks": ["gsm8k"], "variants": {"a": {"model_args": {"act": "f"}}}}}, "act= comes from act:"),
        ({"eval": {"tasks": ["gsm8k"], "variants": {"a": {"act": {"heads": 2}}}}}, "variants.a.act"),
    ],
)
def test_bad_sweep_configs(tmp_path, change, message):
    config = {"output_dir": str(tmp_path), "model": "m", "baseline": {"regularizer": "none"}, **change}
    config["axes"] = {"regularizer": ["none", "tsloss"], **change.get("axes", {})}
    with pytest.raises(SweepError, match=message):
        parse_sweep_config(config)


def test_a_variant_that_selects_no_cell_is_refused_before_anything_runs(tmp_path, gsm8k_dir):
    variant = {"cells": {"regularizer": "nne"}, "model_args": {"dpc": True}}
    config = parse_sweep_config(
        {
            "output_dir": str(tmp_path / "out"),
            "model": str(tmp_path / "model"),
            "data_dir": str(gsm8k_dir),
            "tune": {**TINY_TUNE, "num_samples": 1},
            "axes": {"regularizer": ["none", "tsloss"]},
            "eval": {"tasks": ["gsm8k_offline"], "variants": {"dpc": variant}},
        }
    )
    with pytest.raises(SweepError, match=r"eval.variants.dpc: cells \{'regularizer': 'nne'\} selects no cell"):
        run_sweep(config, progress=False)
    assert not (tmp_path / "out").exists()  # refused before the grid was prepared


def test_bad_config_file_fails_in_one_line(tmp_path, capsys):
    assert tsloss(["sweep", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tsloss sweep: config file not found") and "\n" not in err
    path = _write(
        tmp_path / "bad.yaml",
        {
            "output_dir": str(tmp_path / "out"),
            "axes": {"lr": ["fast"]},
            "tune": {"num_samples": 1},
            "model": str(tmp_path),
        },
    )
    assert tsloss(["sweep", "--config", str(path), "--no-progress"]) == 2
    assert "not a number: 'fast'" in capsys.readouterr().err  # the tuner's own parsing, before anything runs


def test_reuse_tolerates_fields_added_at_their_default():
    import dataclasses

    from tsloss_harness.tune import TuneConfig

    resolved = dataclasses.asdict(TuneConfig(model="m", seed=3))
    stored = dict(resolved)
    del stored["max_grad_norm"]  # as if the run predates the field; the new value is its default
    assert grid.config_diff(stored, resolved, TuneConfig) is None
    assert (
        grid.config_diff(stored, {**resolved, "max_grad_norm": 0.5}, TuneConfig)
        == "max_grad_norm: (absent, default 1.0) -> 0.5"
    )
    assert grid.config_diff(stored, {**resolved, "seed": 4}, TuneConfig) == "seed: 3 -> 4"
    assert grid.config_diff({**stored, "resume": True, "output_dir": "elsewhere"}, resolved, TuneConfig) is None
    assert "no longer has: gone" in grid.config_diff({**resolved, "gone": 1}, resolved, TuneConfig)


# ----------------------------------------------------------------------------- ratios, independently


def _delta_method_ratio(a, b):
    """Ratio of means with the log-ratio delta-method CI and Welch-Satterthwaite dof, from numpy."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / (len(a) * a.mean() ** 2), b.var(ddof=1) / (len(b) * b.mean() ** 2)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    r = a.mean() / b.mean()
    return r, r * math.exp(-half), r * math.exp(half)


def test_cell_entry_script_runs_the_tuner():
    """Cells start the tuner as a script file (the DeepSpeed launcher runs files); it must reach the
    tuner's own flags, not fail at import (fast tier: the grid tests that exercise it are slow)."""
    import subprocess

    from tsloss_harness.sweep.task import ENTRY

    done = subprocess.run([sys.executable, ENTRY, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--num_virtual_tokens" in done.stdout


@pytest.mark.parametrize(
    "name", ["sweep_convergence", "table2_topology", "table3_heldout", "table4_methods", "table5_sensitivity"]
)
def test_shipped_protocols_parse_and_expand(name):
    """Every shipped protocol is a valid grid; a setting that holds an axis at one value (Table V's
    alpha at lambda_ts = 100) needs no baseline cell for that axis."""
    from tsloss_harness.resources import config_path
    from tsloss_harness.sweep.grid import expand

    config = load_sweep_config(config_path(f"{name}.yaml"))
    cells = expand(config)
    per_setting = {}
    for cell in cells:
        per_setting.setdefault(cell.key.get("setting"), set()).add(cell.key["seed"])
    assert all(seeds == set(config.seed_list()) for seeds in per_setting.values())
    if name == "table5_sensitivity":
        counts = {s.name: 1 for s in config.setting_list()}
        for s in config.setting_list():
            for axis, values in config.axes.items():
                counts[s.name] *= len(s.axes.get(axis, values))
        assert len(cells) == sum(counts.values()) * len(config.seed_list())
        assert counts == {"lambda": 7, "alpha": 3, "adaptive_h0": 4, "adaptive_h1": 4}


def test_skills_cells_tune_on_their_seed_and_are_scored_on_the_shared_heldout_rows(tmp_path):
    from tsloss_harness.sweep import _evals_for, _prepare_variants
    from tsloss_harness.sweep.grid import _write_skills, expand
    from tsloss_harness.testbed import skills

    values = {
        "output_dir": str(tmp_path / "out"),
        "model": "testbed:skills",
        "data_dir": "skills",
        "axes": {"dataset": ["gsm8k", "mmlu_cf:Testbed"]},
        "settings": {"s": 4},
        "seeds": 2,
        "eval": {
            "tasks": {"gsm8k": ["gsm8k_offline"], "mmlu_cf:Testbed": ["testbed_choice_offline"]},
            "no_prompt": True,
        },
    }
    config = parse_sweep_config(values)
    eval_config = config.eval_config()
    for cell in expand(config):
        seed, dataset = cell.key["seed"], cell.key["dataset"]
        folder = Path(cell.values["data_dir"])
        assert folder.parent.name == f"skills-seed{seed}-4"
        _write_skills(folder.parent, seed, 4)
        cell.config = {"dataset": dataset}
        (scored,) = _evals_for(config, cell, eval_config, bare=False)
        skill = {v: k for k, v in skills.DATASETS.items()}[dataset]
        assert scored["tasks"] == [skills.EVAL_TASKS[skill]]
        train_file, heldout_file = skills.LAYOUT[skill][1:]
        assert read_jsonl(folder / train_file) == skills.train_rows(skill, 4, seed)
        heldout = Path(scored["env"]["TSLOSS_DATA_DIR"]) / skills.LAYOUT[skill][0] / heldout_file
        assert read_jsonl(heldout) == skills.heldout_rows(skill)
        assert Path(scored["env"]["TSLOSS_GSM8K_DIR"]) == heldout.parent.parent / "gsm8k"
    cell.config = {"model": "m"}  # a no-prompt cell: every task
    assert sorted(_evals_for(config, cell, eval_config, bare=True)[0]["tasks"]) == [
        "gsm8k_offline",
        "testbed_choice_offline",
    ]
    with pytest.raises(SweepError, match="name none for dataset"):
        cell.config = {"dataset": "gsm8k"}
        other = parse_sweep_config(values | {"eval": {"tasks": {"mmlu_cf:Testbed": ["x"]}}})
        _evals_for(other, cell, other.eval_config(), bare=False)
    # ACT's heads are chosen on rows of the training stream, none of them held out
    act = {
        "tasks": ["gsm8k_offline", "testbed_choice_offline"],
        "variants": {"act": {"cells": "no_prompt", "act": {"limit": 5}}},
    }
    with_act = parse_sweep_config(values | {"eval": act})
    cell.config = {"model": "m"}
    (calibrated,) = _evals_for(with_act, cell, with_act.eval_config(), bare=True)
    _prepare_variants(with_act, {"no-prompt": [calibrated]})
    assert (calibrated["variant"], calibrated["act"]["limit"]) == ("act", 5)
    for skill, (folder, _, heldout_file) in skills.LAYOUT.items():
        rows = read_jsonl(Path(calibrated["act"]["env"]["TSLOSS_DATA_DIR"]) / folder / heldout_file)
        assert len(rows) == 5 and not {skills.row_key(r) for r in rows} & {
            skills.row_key(r) for r in skills.heldout_rows(skill)
        }
    assert Path(calibrated["act"]["env"]["TSLOSS_GSM8K_DIR"]).name == "gsm8k"
    with pytest.raises(SweepError, match="testbed:skills"):
        parse_sweep_config(values | {"model": "some/model"})
    with pytest.raises(SweepError, match="testbed sizes"):
        parse_sweep_config(values | {"model": "testbed:huge"})


def test_convergence_ratios_from_converged_steps():
    """Per group of cells differing only in the baseline axis and seed: unpaired over converged runs,
    paired over the seeds where both converged; 0 and 0.0 are one axis value."""
    steps = {  # (setting, lambda_ts, seed) -> converged_step (None: did not converge)
        ("single", 0.0, 0): 20,
        ("single", 0.0, 1): 40,
        ("single", 0.0, 2): None,
        ("single", 0.0, 3): 30,
        ("single", 0.5, 0): 10,
        ("single", 0.5, 1): 30,
        ("single", 0.5, 2): 50,
        ("single", 0.5, 3): 36,
        ("multi", 0.0, 0): 100,
        ("multi", 1.0, 0): 80,
    }
    cells = [
        CellResult(key={"setting": s, "lambda_ts": lam, "seed": seed}, finished=True, converged_step=v, scores={})
        for (s, lam, seed), v in steps.items()
    ]
    cells.append(
        CellResult(
            key={"setting": "single", "lambda_ts": 0.5, "seed": 9}, finished=False, converged_step=None, scores={}
        )
    )
    single, multi = convergence_ratios(cells, {"lambda_ts": 0})
    assert (single["group"], single["value"], multi["group"], multi["value"]) == (
        {"setting": "single"},
        0.5,
        {"setting": "multi"},
        1.0,
    )
    assert (
        single["converged"],
        single["runs"],
        single["baseline_converged"],
        single["baseline_runs"],
        single["pairs"],
    ) == (4, 4, 3, 4, 3)
    ratio, low, high = _delta_method_ratio([10, 30, 50, 36], [20, 40, 30])
    assert single["ratio"] == pytest.approx(ratio) and single["ci95"] == pytest.approx([low, high])
    logs = np.log([10 / 20, 30 / 40, 36 / 30])
    ci = stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    assert single["paired_ratio"] == pytest.approx(math.exp(logs.mean()))
    assert single["paired_ci95"] == pytest.approx([math.exp(ci.low), math.exp(ci.high)])
    assert (
        multi["ratio"] == pytest.approx(0.8) and multi["ci95"] == [None, None] and multi["paired_ci95"] == [None, None]
    )


def test_cells_that_never_checked_training_accuracy_have_no_iterations(tmp_path):
    """eval_every: 0 (the held-out protocols): no ratio of iterations and "—" on the board, where a
    tracked run that never reached 100% reads "not conv."."""
    cells = []
    for eval_every, group in ((0, "heldout"), (2, "tracked")):
        for regularizer in ("none", "tsloss"):
            for seed in (0, 1):
                run_dir = tmp_path / group / regularizer / str(seed)
                run_dir.mkdir(parents=True)
                summary = {"converged_step": None, "config": {"eval_every": eval_every}}
                (run_dir / "summary.json").write_text(json.dumps(summary))
                cells.append(read_cell({"protocol": group, "regularizer": regularizer, "seed": seed}, run_dir, None))
    ratios = convergence_ratios(cells, {"regularizer": "none"})
    assert [r["group"] for r in ratios] == [{"protocol": "tracked"}]
    _, rows, _ = group_rows(cells, [])
    assert {(row[0], row[1]): row[3] for row in rows} == {
        ("heldout", "none"): "—",
        ("heldout", "tsloss"): "—",
        ("tracked", "none"): "not conv. (0/2)",
        ("tracked", "tsloss"): "not conv. (0/2)",
    }


def test_score_differences_are_paired_by_seed_and_over_the_no_prompt_model():
    """Score minus the baseline's on the same seed (seeds missing a score on either side drop out);
    and each group's scores minus the model's single no-prompt score; CIs by Student t (scipy)."""
    scores = {  # (regularizer, seed) -> {task: %}
        ("none", 0): {"a": 30.0, "b": 50.0},
        ("none", 1): {"a": 40.0, "b": 55.0},
        ("none", 2): {"a": 20.0},
        ("tsloss", 0): {"a": 35.0, "b": 40.0},
        ("tsloss", 1): {"a": 38.0, "b": 60.0},
        ("tsloss", 2): {"a": 29.0, "b": 70.0},
        ("tsloss", 3): {"a": 90.0},  # no baseline on seed 3
    }
    cells = [
        CellResult(key={"regularizer": r, "seed": seed}, finished=True, converged_step=None, scores=v)
        for (r, seed), v in scores.items()
    ]
    by_task = {d["task"]: d for d in score_differences(cells, {"regularizer": "none"})}
    assert (by_task["a"]["value"], by_task["a"]["seeds"], by_task["b"]["seeds"]) == ("tsloss", 3, 2)
    diffs = [5.0, -2.0, 9.0]
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert by_task["a"]["difference"] == pytest.approx(4.0)
    assert by_task["a"]["ci95"] == pytest.approx([ci.low, ci.high])
    assert by_task["b"]["difference"] == pytest.approx(-2.5)

    base = CellResult(key={"model": "m"}, finished=True, converged_step=None, scores={"a": 25.0, "c": 1.0})
    over = {(d["group"]["regularizer"], d["task"]): d for d in over_no_prompt(cells, [base])}
    assert set(over) == {("none", "a"), ("tsloss", "a")}  # b and c: not scored on both sides
    assert over["none", "a"]["difference"] == pytest.approx(5.0) and over["tsloss", "a"]["seeds"] == 4
    ci = stats.ttest_1samp([5.0, 15.0, -5.0], 0.0).confidence_interval(0.95)
    assert over["none", "a"]["ci95"] == pytest.approx([ci.low, ci.high])


# ----------------------------------------------------------------------------- on a real Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs owned by this test process; its GCS address lets other drivers join."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024**2,
        logging_level="WARNING",
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _by_hand(values: dict, out: Path) -> Path:
    """The cell's run started by hand: ``python tune.py`` flags, run by the tuner's own main in this process
    at one torch thread (as a cell runs)."""

    flags = [f"--{k}={v}" for k, v in values.items() if k != "output_dir" and v is not None and not isinstance(v, bool)]
    flags += [f"--{'' if v else 'no-'}{k}" for k, v in values.items() if isinstance(v, bool)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert tsloss(["tune", *flags, f"--output_dir={out}"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _pids_of_running_cells(root: Path) -> list[int]:
    pids = []
    for marker in root.rglob("running.json"):
        try:
            pid = json.loads(marker.read_text()).get("pid")
        except (OSError, json.JSONDecodeError):
            continue
        pids += [pid] if pid else []
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").is_file() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def _ctrl_c_when(condition, root: Path, timeout: float = 1800) -> dict:
    """A thread that presses Ctrl-C in the main thread (KeyboardInterrupt, as SIGINT does) once
    ``condition()`` holds; it notes the pids of the cells running then. It watches until the caller
    sets ``stop``; the timeout only bounds a forgotten thread (a cell that first builds DeepSpeed's
    ops takes minutes, so a short one could give up before the condition holds)."""
    state: dict = {"pids": [], "fired": False, "stop": threading.Event()}

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline and not state["stop"].is_set():
            if condition():
                state.update(pids=_pids_of_running_cells(root), fired=True)
                _thread.interrupt_main()
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return state


@pytest.mark.slow
def test_grid_interrupted_and_rerun_equals_runs_by_hand(ray_cluster, tiny_llama_dir, gsm8k_dir, tmp_path, capsys):
    root = tmp_path / "grid"
    path = _write(
        tmp_path / "grid.yaml",
        {
            "output_dir": str(root),
            "model": str(tiny_llama_dir),
            "data_dir": str(gsm8k_dir),
            "tune": {**TINY_TUNE, "num_samples": 2, "eval_every": 3},  # accuracy checked: ratios exist
            "axes": {"regularizer": ["none", "tsloss"], "lambda_ts": [0.5, 1.0]},
            "seeds": 2,
            "baseline": {"regularizer": "none"},
        },
    )
    # 1. Ctrl-C the sweep once two cells finished: it stops the running cells' processes and exits 130.
    ctrl_c = _ctrl_c_when(lambda: len(list(root.rglob("tune/summary.json"))) >= 2, root)
    # The handler an interactive `tsloss sweep` has; an earlier in-process test may have left another one, and
    # interrupt_main does nothing unless SIGINT has a Python handler (the full suite's runs ended uninterrupted).
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = tsloss(["sweep", "--config", str(path), "--no-progress"])
    finally:
        ctrl_c["stop"].set()
        signal.signal(signal.SIGINT, found)
    assert ctrl_c["fired"], "Ctrl-C was never pressed: the condition did not hold while the sweep ran"
    assert code == 130, f"the sweep was not interrupted (SIGINT handler before the test: {found!r})"
    assert "interrupted" in capsys.readouterr().err
    assert ctrl_c["pids"] and not [p for p in ctrl_c["pids"] if _alive(p)]  # no cell process left
    assert not list(root.rglob("running.json"))
    finished = {p.parent.parent: p.stat().st_mtime_ns for p in root.rglob("tune/summary.json")}
    assert 2 <= len(finished) < 8
    # a started cell either finished or ran when Ctrl-C came (2 at a time on 2 CPUs); the queued ones never started
    assert len(list(root.rglob("tune.log"))) <= len(finished) + 2
    assert not list(root.rglob(".stop-*"))  # every task returned: the stop file is gone

    # 2. Run it again: only the unfinished cells run; the finished ones are untouched.
    result = run_sweep(load_sweep_config(path), address=ray_cluster, progress=False)
    assert (result["cells"], result["ran"], result["reused"], result["failed"]) == (
        8,
        8 - len(finished),
        len(finished),
        [],
    )
    assert all(
        cell.stat().st_mtime_ns == mtime
        for cell, mtime in ((c / "tune" / "summary.json", m) for c, m in finished.items())
    )
    page = (root / "report.html").read_text()  # the paper's figures over the grid: both axes vary
    assert 'id="fig4"' in page and 'id="fig5"' in page and "Fig. 6: not drawn" in page
    ratios = json.loads((root / "ratios.json").read_text())
    assert sorted((r["group"]["lambda_ts"], r["value"], r["runs"]) for r in ratios) == [
        (0.5, "tsloss", 2),
        (1.0, "tsloss", 2),
    ]

    # 3. Every cell equals its run by hand.
    config = load_sweep_config(path)
    for cell in grid.expand(config):
        grid.prepare([cell])
        hand = _by_hand(cell.values, tmp_path / "hand" / cell.name)
        assert torch.equal(load_prompt(cell.run_dir / "prompt"), load_prompt(hand / "prompt")), cell.name
        ran = [json.loads(line)["loss"] for line in (cell.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert ran == [json.loads(line)["loss"] for line in (hand / "metrics.jsonl").read_text().splitlines()]
        assert "(forked from the fork server)" in (cell.dir / "tune.log").read_text()  # one rank, no GPU
        summary = json.loads((cell.run_dir / "summary.json").read_text())["config"]
        assert (summary["regularizer"], summary["lambda_ts"], summary["seed"]) == (
            cell.key["regularizer"],
            cell.key["lambda_ts"],
            cell.key["seed"],
        )


# A second driver of the test's cluster: Ctrl-C (interrupt_main) at random moments while cells that have
# nothing to run end within milliseconds of being started, so the interrupts cross their completions.
_CTRL_C_AS_CELLS_END = """
import _thread, random, signal, sys, threading, time
from pathlib import Path
import ray
from tsloss_harness.sweep import engine

# interrupt_main does nothing while SIGINT is ignored, as a background job's children inherit it
signal.signal(signal.SIGINT, signal.default_int_handler)
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="WARNING")
root, rounds = Path(sys.argv[2]), int(sys.argv[3])
random.seed(0)
interrupted = 0
for i in range(rounds):
    specs = [
        {"name": f"{i}/{k}", "key": {"k": k}, "dir": str(root / f"{i}-{k}"), "config": None, "evals": [],
         "num_cpus": 1, "num_gpus": 0, "attempt": 1}
        for k in range(4)
    ]
    timer = threading.Timer(random.uniform(0.0, 0.03), _thread.interrupt_main)
    try:
        timer.start()
        try:
            engine.run_cells(specs, 0, root, progress=False)
        except engine.SweepInterrupted:
            interrupted += 1
        finally:
            timer.cancel()
            timer.join()
    except KeyboardInterrupt:  # pressed once run_cells had returned
        pass
print("interrupted", interrupted, "left", sorted(p.name for p in root.glob(".stop-*")))
"""


@pytest.mark.slow
def test_ctrl_c_as_cells_end_never_brings_the_driver_down(ray_cluster, tmp_path):
    """Ray 2.60 aborts a driver whose ray.cancel crosses the task's completion ("Tried to complete task
    that was not pending", ray-project/ray#54846): the sweep stops its cells through a stop file
    instead, and removes it once every task has returned."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_AS_CELLS_END, ray_cluster, str(tmp_path), "300"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    interrupted, left = done.stdout.split("interrupted ")[1].split(" left ")
    assert int(interrupted) >= 50, done.stdout  # the interrupts did land while cells were in flight
    assert left.strip() == "[]"


@pytest.mark.slow
def test_killed_cell_is_retried_from_its_checkpoint_and_a_failing_cell_is_reported(
    ray_cluster, tiny_llama_dir, gsm8k_dir, tmp_path
):
    bad = tmp_path / "bad"
    write_jsonl([{"question": "What is 2 plus 3?"}], bad / "train.jsonl")  # no answer: bad data
    root = tmp_path / "kill"
    tune = {**TINY_TUNE, "max_steps": 40, "save_every": 1, "warmup_ratio": 0.1}
    path = _write(
        tmp_path / "kill.yaml",
        {
            "output_dir": str(root),
            "model": str(tiny_llama_dir),
            "data_dir": str(gsm8k_dir),
            "tune": tune,
            "settings": {"good": 3, "bad": {"num_samples": 1, "tune": {"data_dir": str(bad)}}},
            "axes": {"regularizer": ["tsloss"]},
            "seeds": [0],
            "retries": 1,
        },
    )
    good = root / "setting=good" / "regularizer=tsloss" / "seed=0"
    result: dict = {}
    sweep = threading.Thread(target=lambda: result.update(run_sweep(load_sweep_config(path), progress=False)))
    sweep.start()
    try:  # SIGKILL the good cell's tuner from outside once it has checkpointed a few steps
        deadline, killed = time.time() + 300, None
        while time.time() < deadline and killed is None and sweep.is_alive():
            metrics = good / "tune" / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                killed = json.loads((good / "running.json").read_text())["pid"]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.01)
    finally:
        sweep.join(timeout=600)
    assert killed is not None, "the cell finished before it could be killed"
    ((failed_name, failed_error),) = result["failed"]
    assert failed_name == "setting=bad/regularizer=tsloss/seed=0"
    assert failed_error.startswith("tsloss tune: ") and "answer" in failed_error
    bad_record = json.loads((root / failed_name / "cell.json").read_text())
    assert bad_record["state"] == "failed" and len(bad_record["attempts"]) == 1  # bad input: not retried
    first, second = json.loads((good / "cell.json").read_text())["attempts"]
    assert (
        first["error"].startswith("killed by SIGKILL") and second["ok"] and second["resumed_from"].startswith("step-")
    )
    assert "resume from step-" in (good / "tune.log").read_text()
    config = grid.expand(load_sweep_config(path))[0]
    grid.prepare([config])
    straight = _by_hand(config.values, tmp_path / "straight")
    assert torch.equal(load_prompt(good / "tune" / "prompt"), load_prompt(straight / "prompt"))
    steps = [json.loads(line)["step"] for line in (good / "tune" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


@pytest.mark.slow
@pytest.mark.parametrize("forked", [False, True])
def test_a_cells_process_dies_with_its_worker(ray_cluster, tmp_path, forked):
    """A worker killed outright cannot end its cell's process group: the kernel does (PR_SET_PDEATHSIG),
    so no orphaned run goes on writing into a cell that is being retried; a forked cell dies with the
    worker's fork server."""
    import ray

    def sleep_in_a_cell(cell_dir: str, forked: bool) -> int:  # as a cell runs its tuner; its worker dies by SIGKILL
        import json
        import os
        import signal
        import sys
        import threading
        import time
        from pathlib import Path

        from tsloss_harness.sweep import task

        marker = task._Marker(Path(cell_dir) / "running.json", "token")

        def kill_once_started():  # the OOM killer's SIGKILL, once the child runs
            while not json.loads(marker.path.read_text()).get("pid"):
                time.sleep(0.05)
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_once_started, daemon=True).start()
        sleep = Path(cell_dir) / "sleep.py"
        sleep.write_text("import time\ntime.sleep(300)\n")
        cmd = [sys.executable, str(sleep)] if forked else ["/bin/sleep", "300"]
        return task._run_child(
            cmd, Path(cell_dir) / "log", "sleep", dict(os.environ), Path(cell_dir), marker, "tune", forked
        )[0]

    ref = ray.remote(sleep_in_a_cell).options(max_retries=0).remote(str(tmp_path), forked)
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(ref, timeout=120)
    child = json.loads((tmp_path / "running.json").read_text())["pid"]
    try:
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("forked", [False, True])
def test_a_running_cell_ends_its_process_group_when_the_stop_file_appears(tmp_path, forked):
    from tsloss_harness.sweep import task

    stop_file = tmp_path / ".stop-run"
    marker = task._Marker(tmp_path / "running.json", "token", stop_file)

    def stop_once_started():  # Ctrl-C at the driver, once the child runs
        while not json.loads(marker.path.read_text()).get("pid"):
            time.sleep(0.05)
        stop_file.touch()

    threading.Thread(target=stop_once_started, daemon=True).start()
    sleep = tmp_path / "sleep.py"
    sleep.write_text("import time\ntime.sleep(120)\n")
    cmd = [sys.executable, str(sleep)] if forked else ["/bin/sleep", "120"]
    started = time.monotonic()
    with pytest.raises(task._Stopped) as stopped:
        task._run_child(cmd, tmp_path / "log", "sleep", dict(os.environ), tmp_path, marker, "tune", forked)
    assert stopped.value.stage == "tune" and time.monotonic() - started < 60  # not the child's 120 s
    assert not _alive(json.loads(marker.path.read_text())["pid"])
    with pytest.raises(task._Stopped):  # a stage that starts after it: no child at all
        task._run_child(["/bin/false"], tmp_path / "log", "eval", dict(os.environ), tmp_path, marker, "eval")
    assert "eval" not in json.loads(marker.path.read_text())["stage"]


@pytest.fixture(scope="module")
def scored_sweep(ray_cluster, tiny_llama_dir, gsm8k_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    path = _write(
        root / "scored.yaml",
        {
            "output_dir": str(root / "out"),
            "model": str(tiny_llama_dir),
            "data_dir": str(gsm8k_dir),
            "tune": {**TINY_TUNE, "num_samples": 2, "regularizer": "tsloss"},
            "seeds": [1],
            "eval": {
                "tasks": ["gsm8k_offline"],
                "limit": 3,
                "batch_size": 2,
                "gen_kwargs": "max_gen_toks=12",
                "model_args": {"dtype": "float32"},  # no device: each command picks CPU here by itself
                "log_samples": True,
                "no_prompt": True,
                "env": {"TSLOSS_GSM8K_DIR": str(gsm8k_dir)},
                "variants": {  # Table III's inference-time columns
                    "dpc": {"model_args": {"dpc": True}},
                    "act": {"cells": "no_prompt", "act": {"limit": 2, "env": {"TSLOSS_GSM8K_DIR": str(gsm8k_dir)}}},
                },
            },
        },
    )
    return path, run_sweep(load_sweep_config(path), progress=False)


@pytest.mark.slow
def test_eval_stage_equals_lm_eval_by_hand(scored_sweep, tiny_llama_dir, env, tmp_path):
    path, result = scored_sweep
    assert (result["ran"], result["failed"]) == (1, [])
    cell = Path(load_sweep_config(path).output_dir) / "seed=1"
    args = lm_eval_args(
        "tsprompt",
        f"pretrained={tiny_llama_dir},prompt={cell / 'tune' / 'prompt'}",
        "gsm8k_offline",
        REPO / "tasks",
        tmp_path / "hand",
        batch_size=2,
        limit=3,
    )
    finish_lm_eval(start_lm_eval(args, env, tmp_path / "hand.log"), tmp_path / "hand.log")
    hand, swept = read_lm_eval_output(tmp_path / "hand"), read_lm_eval_output(cell / "eval")
    assert compare_samples(hand, swept, "gsm8k") == 3
    want = hand["results"]["results"]["gsm8k"]
    got = swept["results"]["results"]["gsm8k"]
    assert {k: v for k, v in got.items() if "," in k} == {k: v for k, v in want.items() if "," in k}
    # The board shows the score per cell group, and the no-prompt baseline ran as --model hf.
    groups = json.loads((cell.parent / "groups.json").read_text())
    assert groups[0]["scores"]["gsm8k"] == [100 * want["exact_match,strict-match"]]
    (base_results,) = (cell.parent / "no-prompt").glob("*/eval/*/results_*.json")
    base_config = json.loads(base_results.read_text())["config"]
    assert base_config["model"] == "hf" and "prompt" not in str(base_config["model_args"])
    assert "no prompt: " in (cell.parent / "board.md").read_text()


@pytest.mark.slow
def test_variants_score_dpc_on_the_prompt_and_act_on_the_bare_model(scored_sweep, tiny_llama_dir):
    path, result = scored_sweep
    assert result["failed"] == []
    out = Path(load_sweep_config(path).output_dir)
    cell = out / "seed=1"
    # DPC: the cell's own prompt, scored again by tsprompt with dpc=true; the results record it
    dpc = read_lm_eval_output(cell / "eval-dpc")
    assert dpc["results"]["config"]["model"] == "tsprompt"
    args = dpc["results"]["config"]["model_args"]
    assert (args["prompt"], args["dpc"], len(dpc["samples"]["gsm8k"])) == (str(cell / "tune" / "prompt"), True, 3)
    # ACT: heads chosen on the bare model first, then --model hf-act with act=<that file>
    (bare,) = (out / "no-prompt").iterdir()
    act_file = bare / "eval-act" / "act.json"
    calibration = json.loads(act_file.read_text())["calibration"]
    assert (calibration["model"], calibration["limit"], calibration["tasks"]) == ("hf", 2, "gsm8k_offline")
    act = read_lm_eval_output(bare / "eval-act")
    assert (act["results"]["config"]["model"], act["results"]["config"]["model_args"]["act"]) == (
        "hf-act",
        str(act_file),
    )
    # each is its own board row; DPC is compared with the plain scoring of the same prompt
    board = (out / "board.md").read_text()
    assert f"no prompt + act: {tiny_llama_dir}" in board and f"no prompt: {tiny_llama_dir}" in board
    groups = {json.dumps(g["group"], sort_keys=True) for g in json.loads((out / "groups.json").read_text())}
    assert groups == {'{"eval": "plain"}', '{"eval": "dpc"}'}
    (against,) = [d for d in json.loads((out / "differences.json").read_text()) if d["axis"] == "eval"]
    assert (against["value"], against["baseline"], against["task"], against["seeds"]) == ("dpc", "plain", "gsm8k", 1)


@pytest.mark.slow
def test_finished_cells_are_reused_and_a_changed_config_is_reported(scored_sweep, capsys):
    path, _ = scored_sweep
    assert tsloss(["sweep", "--config", str(path), "--no-progress"]) == 0  # nothing to run: no Ray, no process
    assert "1 cells: 1 reused, 0 run, 0 failed" in capsys.readouterr().out
    config = yaml.safe_load(path.read_text())
    config["tune"]["lr"] = 0.02
    changed = _write(path.with_name("changed.yaml"), config)
    summary = Path(config["output_dir"]) / "seed=1" / "tune" / "summary.json"
    before = summary.read_text()
    assert tsloss(["sweep", "--config", str(changed), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "seed=1: finished with another config (lr: 0.01 -> 0.02); --rerun-changed" in err
    assert summary.read_text() == before  # reported, neither reused nor deleted


@pytest.mark.slow
def test_a_cell_no_node_can_hold_is_refused(ray_cluster, tiny_llama_dir, gsm8k_dir, tmp_path, capsys):
    path = _write(
        tmp_path / "gpu.yaml",
        {
            "output_dir": str(tmp_path / "out"),
            "model": str(tiny_llama_dir),
            "data_dir": str(gsm8k_dir),
            "tune": {**TINY_TUNE, "num_samples": 1},
            "resources": {"num_cpus": 1, "num_gpus": 2},
        },
    )
    assert tsloss(["sweep", "--config", str(path), "--no-progress"]) == 2
    assert (
        "tsloss sweep: cell seed=0 asks for 1 CPU(s) and 2 GPU(s); the largest node has 2 and 0"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "out" / "seed=0" / "tune").exists()
