"""Tuner runs as the report reads them: a run directory loaded, a folder of runs expanded, runs
grouped by what their configs differ in, the checkpoint steps to draw, and Table II's statistics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsloss_harness.data import DataError, read_jsonl
from tsloss_harness.errors import TslossError, first_line
from tsloss_harness.leaderboard import method_label
from tsloss_harness.measurements import model_name
from tsloss_harness.topology import METRIC_KEYS

# Config fields that name what a run is; runs that differ in nothing else but seed form one group.
GROUP_KEYS = (
    "model",
    "dataset",
    "method",
    "regularizer",
    "num_samples",
    "lambda_ts",
    "tau",
    "alpha",
    "beta_h0",
    "beta_h1",
    "init",
    "num_virtual_tokens",
    "lr",
)


class ReportError(TslossError, ValueError):
    """A path that is not a readable tuner run; the message is one line naming it."""


@dataclass
class Run:
    path: Path
    config: dict
    metrics: list[dict]
    summary: dict | None
    checkpoints: list[tuple[int, Path]]  # (step, prompt directory), by step
    label: str = ""

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [(r["step"], r[key]) for r in self.metrics if isinstance(r.get(key), (int, float))]
        steps, values = zip(*rows) if rows else ((), ())
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def load_run(path: str | Path) -> Run:
    """A tuner run directory; ReportError names the file when something is missing or malformed."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory")
    metrics_file = path / "metrics.jsonl"
    if not metrics_file.is_file():
        raise ReportError(f"{path}: no metrics.jsonl (not a tuner run directory)")
    try:
        metrics = read_jsonl(metrics_file)
    except DataError as err:
        raise ReportError(str(err)) from None
    bad = next((i for i, record in enumerate(metrics, 1) if not isinstance(record.get("step"), int)), None)
    if bad is not None:
        raise ReportError(f"{metrics_file}: record {bad} is not a metrics record (needs an integer 'step')")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path / 'summary.json'}: invalid JSON ({err.msg}, line {err.lineno})") from None
    config: dict = {}
    if (path / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise ReportError(f"{path / 'config.yaml'}: invalid YAML ({first_line(err)})") from err
    elif summary and isinstance(summary.get("config"), dict):
        config = summary["config"]
    if not isinstance(config, dict):
        raise ReportError(f"{path / 'config.yaml'}: expected a mapping")
    checkpoints = {}
    for d in (path / "checkpoints").glob("step-*"):
        if d.is_dir() and d.name[5:].isdigit():
            checkpoints[int(d.name[5:])] = d
    if (path / "prompt").is_dir():
        from tsloss_harness.prompt import load_provenance

        step = (load_provenance(path / "prompt") or {}).get("step")
        if isinstance(step, int):
            checkpoints.setdefault(step, path / "prompt")
    return Run(path, config, sorted(metrics, key=lambda r: r["step"]), summary, sorted(checkpoints.items()))


def expand_run_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories as given; a folder that is no run but holds runs (a sweep) stands for them."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / "metrics.jsonl").exists():
            found = sorted(p.parent for p in path.rglob("metrics.jsonl"))
            if not found:
                raise ReportError(f"{path}: no metrics.jsonl in it or below (not a tuner run directory)")
            out += found
        else:
            out.append(path)
    return out


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by every config field in ``GROUP_KEYS`` that differs between them (seed never counts)."""
    differing = [k for k in GROUP_KEYS if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
    groups: dict[str, list[Run]] = {}
    for run in runs:
        parts = []
        for key in differing:
            value = run.config.get(key)
            if key == "regularizer":
                parts.append(str(value))
            elif key == "model":
                parts.append(model_name(value))
            else:
                parts.append(f"{key}={value}")
        label = " · ".join(parts) or method_label(run.config.get("method"), run.config.get("regularizer"))
        groups.setdefault(label, []).append(run)
    for label, members in groups.items():
        members.sort(key=lambda r: (r.seed is None, r.seed if isinstance(r.seed, (int, float)) else 0, str(r.path)))
        for run in members:
            run.label = label
    return groups


def choose_steps(run: Run, wanted: Sequence[int] | None, count: int = 4) -> list[int]:
    """The checkpoint steps to draw: ``wanted`` (each must exist), else ``count`` spread from first to last."""
    available = [s for s, _ in run.checkpoints]
    if wanted:
        missing = [s for s in wanted if s not in available]
        if missing:
            raise ReportError(f"{run.path}: no checkpoint at step {missing[0]} (has {available or 'none'})")
        return list(wanted)
    if len(available) <= count:
        return available
    picks = np.linspace(0, len(available) - 1, count).round().astype(int)
    return [available[i] for i in sorted(set(picks))]


# --------------------------------------------------------------------------------- statistics


def table2(runs: Sequence[Run]) -> dict[str, dict]:
    """Table II statistics per topology metric over the steps of ``runs`` that logged both the metric and
    training accuracy. A step with accuracy and a checkpoint but no logged topology uses the
    checkpoint's tsloss.json topology. Metrics with fewer than 3 pairs are absent."""
    from tsloss_harness.prompt import load_provenance
    from tsloss_harness.topology import topology_accuracy_stats

    pairs: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in METRIC_KEYS}
    for run in runs:
        checkpoints = dict(run.checkpoints)
        for record in run.metrics:
            if not isinstance(record.get("accuracy"), (int, float)):
                continue
            topology = record
            if not any(k in record for k in METRIC_KEYS) and record["step"] in checkpoints:
                topology = (load_provenance(checkpoints[record["step"]]) or {}).get("topology") or {}
            for key in METRIC_KEYS:
                if isinstance(topology.get(key), (int, float)):
                    pairs[key][0].append(float(topology[key]))
                    pairs[key][1].append(float(record["accuracy"]))
    return {key: topology_accuracy_stats(m, a) for key, (m, a) in pairs.items() if len(m) >= 3}
