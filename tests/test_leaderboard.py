"""tsloss leaderboard: hand-written lm-eval results and run summaries give exactly the expected tables."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from tsloss_harness.cli import main as tsloss

MODEL = "/models/tiny-llama"


def _results(path: Path, scores: dict, *, provenance: dict | None = None, groups: dict | None = None) -> None:
    """An lm-eval results file as ``lm_eval --output_path`` writes it (the fields the leaderboard reads)."""
    config = {
        "model": "tsprompt" if provenance else "hf",
        "model_args": f"pretrained={MODEL}" + (",prompt=/runs/x/prompt" if provenance else ""),
    }
    if provenance:
        config["tsprompt"] = {"prompt": "/runs/x/prompt", "topology": {}, "provenance": provenance}
    data = {
        "results": {task: {"alias": task, **s} for task, s in scores.items()},
        "group_subtasks": groups or {task: [] for task in scores},
        "config": config,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _run(path: Path, *, regularizer: str, seed: int, converged: int | None, num_samples: int = 1) -> None:
    path.mkdir(parents=True)
    config = {
        "model": MODEL,
        "dataset": "gsm8k",
        "method": "prompt",
        "regularizer": regularizer,
        "seed": seed,
        "num_samples": num_samples,
    }
    (path / "summary.json").write_text(json.dumps({"converged_step": converged, "steps": 30, "config": config}))


@pytest.fixture()
def inputs(tmp_path) -> list[Path]:
    prov = {"base_model": MODEL, "method": "prompt", "num_samples": 1}
    res = tmp_path / "results"
    _results(res / "base" / "results_2026-01-01T00-00-00.json", {"gsm8k_offline": {"exact_match,strict-match": 0.10}})
    _results(
        res / "none0" / "results_a.json",
        {"gsm8k_offline": {"exact_match,strict-match": 0.15, "exact_match,flexible-extract": 0.9}},
        provenance=dict(prov, regularizer="none", seed=0),
    )
    _results(
        res / "ts0" / "results_a.json",
        {
            "gsm8k_offline": {"exact_match,strict-match": 0.20},
            "mmlu_cf": {"acc,none": 0.50},
            "mmlu_cf_math": {"acc,none": 0.40},
        },
        provenance=dict(prov, regularizer="tsloss", seed=0),
        groups={"gsm8k_offline": [], "mmlu_cf": ["mmlu_cf_math"], "mmlu_cf_math": []},
    )
    _results(
        res / "ts1" / "results_a.json",
        {"gsm8k_offline": {"exact_match,strict-match": 0.30}},
        provenance=dict(prov, regularizer="tsloss", seed=1),
    )
    runs = tmp_path / "runs"
    for seed, step in enumerate((10, 14, None)):
        _run(runs / f"none-{seed}", regularizer="none", seed=seed, converged=step)
    for seed, step in enumerate((6, 8, 7)):
        _run(runs / f"tsloss-{seed}", regularizer="tsloss", seed=seed, converged=step)
    _run(runs / "tsloss-multi-0", regularizer="tsloss", seed=0, converged=20, num_samples=10)
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "metrics.jsonl").write_text('{"step": 1}\n')
    return [res, runs]


EXPECTED_MD = """\
### Table III: accuracy (%) per model, data set and method

| Model | Dataset | base | prompt | prompt+tsloss |
|---|---|---|---|---|
| tiny-llama | gsm8k_offline | 10.0 (n=1) | 15.0 (n=1) | 25.0 ± {tsloss_accuracy_half} (n=2) |
| tiny-llama | mmlu_cf | — | — | 50.0 (n=1) |

n = runs per cell; mean ± 95% CI half-width (Student t).
Metric: acc,none (mmlu_cf), exact_match,strict-match (gsm8k_offline).

### Table IV: iterations to converge (first step with 100% training accuracy)

| Model | Method | single-sample gsm8k | multi-sample gsm8k |
|---|---|---|---|
| tiny-llama | prompt | 12.0 ± {ce_half} (2/3 conv.) | — |
| tiny-llama | prompt+tsloss | 7.0 ± {tsloss_half} (n=3) | 20.0 (n=1) |

n = runs per cell; mean ± 95% CI half-width (Student t).
Runs that did not converge are excluded from the mean and counted as (converged/runs).

### Table VI: convergence of the loss components against the CE baseline

| Model | Dataset | Setting | Configuration | Iterations to converge | Improvement |
|---|---|---|---|---|---|
| tiny-llama | gsm8k | single-sample | CE baseline | 12.0 ± {ce_half} (2/3 conv.) | — |
| tiny-llama | gsm8k | single-sample | CE + TSLoss | 7.0 ± {tsloss_half} | {improvement}% [{improvement_low}, {improvement_high}] |

3 seeds per cell; mean ± 95% CI half-width (Student t).
Improvement = 1 - mean(iterations) / mean(CE baseline iterations); 95% CI of the ratio by the delta method on its logarithm (Welch dof), over converged runs.
"""


def _half_width(values: list[float]) -> float:
    """95% CI half-width of the mean, Student t with n-1 dof, from scipy: t.ppf(0.975, n-1) · sd / √n."""
    return stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)


def _expected_markdown() -> str:
    """EXPECTED_MD for the ``inputs`` fixture. The means and counts above are by hand from the fixture;
    every interval is derived here with scipy, never from the package."""
    ce, tsloss = [10.0, 14.0], [6.0, 8.0, 7.0]  # converged steps of the single-sample runs (seed 2 of CE never)
    # Improvement = 1 - r, r = mean(tsloss) / mean(ce) = 7/12; the CI of log r is ± t(Welch dof) · se with
    # se² = Σ s²/(n·m²) over both samples (delta method: Var(log m) ≈ s²/(n·m²)).
    va, vb = stats.tvar(tsloss) / (3 * 7.0**2), stats.tvar(ce) / (2 * 12.0**2)
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    spread = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    low, high = (7 / 12) * math.exp(-spread), (7 / 12) * math.exp(spread)
    numbers = {
        "tsloss_accuracy_half": _half_width([20.0, 30.0]),  # seeds 0 and 1 of tsloss on gsm8k_offline
        "ce_half": _half_width(ce),
        "tsloss_half": _half_width(tsloss),
        "improvement": 100 * (1 - 7 / 12),
        "improvement_low": 100 * (1 - high),
        "improvement_high": 100 * (1 - low),
    }
    return EXPECTED_MD.format(**{key: f"{value:.1f}" for key, value in numbers.items()})


def test_markdown_is_exactly_the_expected_table(inputs, tmp_path, capsys):
    out = tmp_path / "board.md"
    assert tsloss(["leaderboard", *[str(p) for p in inputs] + ["-o", str(out)]]) == 0
    # The derived numbers, rounded as printed: 63.5, 25.4, 2.5, 41.7% [-77.7, 80.9].
    assert out.read_text() == _expected_markdown()
    assert "unfinished: no summary.json" in capsys.readouterr().err


def test_csv_is_long_form_with_missing_cells(inputs, tmp_path):
    out = tmp_path / "board.csv"
    assert tsloss(["leaderboard", *[str(p) for p in inputs] + ["-o", str(out)]]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 6 + 4 + 2  # III: 2x3 cells, IV: 2x2, VI: 2
    missing = [r for r in rows if r["table"] == "III" and r["dataset"] == "mmlu_cf" and r["method"] == "base"]
    assert missing[0]["n_runs"] == "0" and missing[0]["mean"] == ""
    baseline = next(
        r for r in rows if r["table"] == "IV" and r["method"] == "prompt" and r["setting"] == "single-sample"
    )
    assert (baseline["n"], baseline["n_runs"], baseline["mean"], baseline["values"]) == ("2", "3", "12.0", "10;14;")
    ts = next(r for r in rows if r["table"] == "VI" and r["method"] == "prompt+tsloss")
    assert float(ts["ratio_to_baseline"]) == pytest.approx(7 / 12, abs=1e-6)


def test_html_and_metric_override(inputs, tmp_path, capsys):
    out = tmp_path / "board.html"
    args = [str(p) for p in inputs] + ["-o", str(out), "--metric", "gsm8k_offline=exact_match,flexible-extract"]
    assert tsloss(["leaderboard", *args]) == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<table>") == 3
    # Only the seed-0 CE prompt has flexible-extract; the others are skipped with a warning, not zeroed.
    assert "<td>tiny-llama</td><td>gsm8k_offline</td><td>90.0</td><td>—</td>" in text
    assert capsys.readouterr().err.count("has no accuracy metric") == 3


def test_bad_inputs_fail_with_one_line(tmp_path, capsys):
    assert tsloss(["leaderboard", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": ')
    assert tsloss(["leaderboard", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json: invalid JSON" in err and err.count("\n") == 1
    assert tsloss(["leaderboard", str(bad), "-o", str(tmp_path / "x.txt")]) == 2
    assert "unknown extension" in capsys.readouterr().err
