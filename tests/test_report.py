"""tsloss report: figures from small synthetic runs, Table II against scipy, HTML/Markdown output,
clear errors, and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from tsloss_harness import report
from tsloss_harness.cli import main as tsloss
from tsloss_harness.prompt import save_prompt
from tsloss_harness.prompt_config import make_prompt_config
from tsloss_harness.report.page import Report
from tsloss_harness.report.runs import expand_run_paths
from tsloss_harness.topology import METRIC_KEYS, prompt_topology
from tsloss_harness.tune import TuneConfig

P, D = 8, 6


def write_synthetic_run(
    path: Path, *, regularizer: str = "tsloss", seed: int = 0, steps: int = 20, every: int = 5, num_samples: int = 1
) -> Path:
    """A run directory as the tuner writes it: the prompt drifts from N(0, 0.02²) noise towards two
    clusters while accuracy rises; topology is the real ``prompt_topology`` of the saved prompts."""
    rng = np.random.default_rng(seed)
    start = rng.normal(0, 0.02, (P, D))
    if regularizer == "none":  # a loop (H1) in the first two coordinates
        angle = np.linspace(0, 2 * np.pi, P, endpoint=False)
        target = np.zeros((P, D))
        target[:, 0], target[:, 1] = 0.5 * np.cos(angle), 0.5 * np.sin(angle)
    else:  # two tight clusters
        target = np.repeat(rng.normal(0, 0.3, (2, D)), P // 2, axis=0)
    target += rng.normal(0, 0.01, (P, D))
    speed = 1.0 if regularizer == "none" else 1.6
    config = dataclasses.asdict(
        TuneConfig(
            model="/models/tiny-llama",
            output_dir=str(path),
            regularizer=regularizer,
            seed=seed,
            num_samples=num_samples,
            max_steps=steps,
            eval_every=every,
            topology_every=every,
            save_every=every,
        )
    )
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    peft_config = make_prompt_config(
        config["model"], num_virtual_tokens=P, token_dim=D, num_layers=2, num_attention_heads=2
    )
    records, converged = [], None
    for step in range(1, steps + 1):
        t = min(1.0, speed * step / steps)
        ce = float(2.5 * np.exp(-4 * t) + 0.05 * rng.random())
        record = {
            "step": step,
            "epoch": float(step),
            "lr": 5e-5 * (1 - t),
            "loss": ce + 0.1 * (1 - t),
            "ce": ce,
            "reg": 0.1 * (1 - t),
            "samples_per_s": 10.0,
        }
        if step % every == 0:
            points = (1 - t) * start + t * target
            metrics = prompt_topology(points)
            record.update({k: metrics[k] for k in METRIC_KEYS})
            record["accuracy"] = float(min(1.0, round(step / steps + 0.3 * rng.random(), 2)))
            if record["accuracy"] == 1.0 and converged is None:
                converged = step
            save_prompt(
                path / "checkpoints" / f"step-{step}",
                torch.tensor(points, dtype=torch.float32),
                peft_config=peft_config,
                provenance={
                    "step": step,
                    "seed": seed,
                    "regularizer": regularizer,
                    "topology": {k: metrics[k] for k in METRIC_KEYS},
                },
            )
        records.append(record)
    shutil.copytree(path / "checkpoints" / f"step-{steps}", path / "prompt")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "converged_step": converged,
        "steps": steps,
        "total_steps": steps,
        "epochs": float(steps),
        "world_size": 1,
        "wall_time_s": 1.5,
        "samples_per_s": 10.0,
        "final": records[-1],
        "prompt_dir": str(path / "prompt"),
        "config": config,
    }
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    return path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for regularizer in ("none", "tsloss"):
        for seed in (0, 1):
            write_synthetic_run(root / f"{regularizer}-s{seed}", regularizer=regularizer, seed=seed)
    return root


@pytest.fixture(scope="module")
def built_report(runs_root) -> Report:
    return report.build_report([report.load_run(p) for p in expand_run_paths([runs_root])])


@pytest.fixture(scope="module")
def html_report(built_report, tmp_path_factory) -> Path:
    return report.write_report(built_report, tmp_path_factory.mktemp("report") / "report.html")


FIGURES = ("training", "topology", "diagrams", "barcodes", "heatmaps", "pca", "tsne")


def _image(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


@pytest.mark.slow
def test_every_figure_renders_from_a_small_run(built_report):
    figures = {b[1]: b[3] for b in built_report.blocks if b[0] == "figure"}
    assert set(figures) == set(FIGURES)
    for name, png in figures.items():
        image = _image(png)
        assert image.shape[0] > 150 and image.shape[1] > 150, name
        # Something drawn in colour (lines, points, heatmap), not a blank canvas with axes.
        rgb = image[..., :3]
        assert (rgb.max(axis=2) - rgb.min(axis=2) > 0.3).mean() > 0.001, name
    runs_table = next(b for b in built_report.blocks if b[0] == "table")
    assert [row[1] for row in runs_table[2]] == ["none", "none", "tsloss", "tsloss"]  # seeds group, regularizers differ


@pytest.mark.slow
def test_single_run_without_checkpoints_or_topology(tmp_path):
    run_dir = write_synthetic_run(tmp_path / "run", steps=6, every=3)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.rmtree(run_dir / "prompt")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k not in METRIC_KEYS}) + "\n" for r in lines)
    )
    built = report.build_report([report.load_run(run_dir)])
    assert [b[1] for b in built.blocks if b[0] == "figure"] == ["training"]
    text = " ".join(b[1] for b in built.blocks if b[0] == "p")
    assert "--topology_every" in text and "--save_every" in text


def test_table2_agrees_with_scipy(runs_root):
    members = [report.load_run(runs_root / f"tsloss-s{seed}") for seed in (0, 1)]
    result = report.table2(members)
    records = [r for run in members for r in run.metrics if "accuracy" in r]
    accuracy = np.array([r["accuracy"] for r in records])
    assert set(result) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        metric = np.array([r[key] for r in records])
        got = result[key]
        assert got["n"] == len(records) == 8
        if np.ptp(metric) == 0:
            assert got["spearman_rho"] is None
        else:
            rho, p = stats.spearmanr(metric, accuracy)
            assert got["spearman_rho"] == pytest.approx(rho) and got["spearman_p"] == pytest.approx(p)
        low, high = metric[accuracy <= np.median(accuracy)], metric[accuracy > np.median(accuracy)]
        u, p = stats.mannwhitneyu(low, high, alternative="two-sided")
        assert got["mannwhitney_u"] == pytest.approx(u) and got["mannwhitney_p"] == pytest.approx(p)


def test_table2_falls_back_to_checkpoint_topology(runs_root, tmp_path):
    """Accuracy steps without logged topology take it from the checkpoint's tsloss.json."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs_root / "tsloss-s0", run_dir)
    full = report.table2([report.load_run(run_dir)])
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k not in METRIC_KEYS}) + "\n" for r in lines)
    )
    fallback = report.table2([report.load_run(run_dir)])
    for key in METRIC_KEYS:  # tsloss.json stores the float32 prompt's topology: equal to float32 precision
        for stat in ("n", "mannwhitney_u", "spearman_rho"):
            expected = full[key][stat]
            assert fallback[key][stat] == (None if expected is None else pytest.approx(expected, rel=1e-4, abs=1e-6))


@pytest.mark.slow
def test_html_is_self_contained(html_report):
    text = html_report.read_text()
    images = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert len(images) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:|file:|/)', text)
    assert "Table II" in text and "Spearman" in text and "N/A" in text  # H0 count is constant: N/A as in the paper


@pytest.mark.slow
def test_markdown_writes_figures_beside_it(runs_root, tmp_path):
    out = tmp_path / "out" / "report.md"
    assert tsloss(["report", str(runs_root / "tsloss-s0"), "-o", str(out), "--steps", "5,20", "--no-tsne"]) == 0
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((out.parent / link).is_file() for link in links)
    assert "report_files/tsne.png" not in text and "| Metric | n | Spearman ρ |" in text


def test_errors_are_one_line(tmp_path, runs_root, capsys):
    assert tsloss(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    bad = tmp_path / "bad"
    shutil.copytree(runs_root / "none-s0", bad)
    with open(bad / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    assert tsloss(["report", str(bad), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl:21:" in err
    assert tsloss(["report", str(runs_root / "none-s0"), "--steps", "6", "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at step 6" in err and not (tmp_path / "r.html").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium (Debian package chromium) is not installed")
def test_chromium_screenshot_shows_the_figures(html_report, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        f"--user-data-dir={tmp_path / 'profile'}",
        html_report.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = _image(shot.read_bytes())[..., :3]
    assert image.shape[:2] == (2400, 1280)
    # Text and tables are black/grey; only the figures put colour on the page.
    coloured = (image.max(axis=2) - image.min(axis=2)) > 0.3
    assert coloured.mean() > 0.01
    rows_with_colour = np.flatnonzero(coloured.any(axis=1))
    assert rows_with_colour.max() - rows_with_colour.min() > 1000  # several figures down the page
