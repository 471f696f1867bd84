"""``tsloss sweep --config sweep.yaml``: the tuner over data sets x settings x regularizers x seeds,
then the leaderboard.

The paper's convergence protocol (Tables IV and VI: CE, CE+H0, CE+H1, CE+TSLoss; single- and
multi-sample) is ``configs/sweep_convergence.yaml``; on the CPU testbed it runs in one command::

    tsloss sweep --config configs/sweep_convergence.yaml

A setting is a number of training rows, or ``{num_samples, tune, regularizers}`` with tuner values and
regularizers for that setting alone (the multi-sample setting needs a longer prompt on the testbed).
Each run is an ordinary tuner run directory, ``<output_dir>/<dataset>/<setting>/<regularizer>/seed-<s>``.
A run whose ``summary.json`` holds the same resolved tuner config is reused, never redone; a run that
was interrupted (no summary) is started again from scratch. At the end the sweep writes the
leaderboard (``board.md``) and prints the measured TSLoss ÷ CE ratio of iterations to convergence: the
ratio of means over converged runs, and the geometric mean of per-seed ratios (runs of one seed share
their rows and initial prompt), each with a 95% CI.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsloss_harness.errors import TslossError

__all__ = ["SweepConfig", "load_sweep_config", "run_sweep"]


@dataclass
class SweepConfig:
    """What to sweep. ``tune`` holds TuneConfig values shared by every run."""

    output_dir: str = "runs/sweep"
    model: str = "testbed"  # "testbed": the default CPU testbed (built once, cached); else a model dir / hub id
    datasets: list[str] = field(default_factory=lambda: ["gsm8k"])
    # "generated": GSM8K-format rows generated per seed (gsm8k only); a folder; or None for the hub
    data_dir: str | None = "generated"
    # name -> num_samples, or name -> {num_samples: N, tune: {...}, regularizers: [...]}: TuneConfig
    # values for that setting only (on top of ``tune``), and its own regularizers (default: ``regularizers``)
    settings: dict[str, Any] = field(default_factory=lambda: {"single": 1, "multi": 10})
    regularizers: list[str] = field(default_factory=lambda: ["none", "h0", "h1", "tsloss"])
    seeds: list[int] | int = 20  # a count n means seeds 0..n-1
    tune: dict[str, Any] = field(default_factory=dict)
    baseline: str = "none"  # the denominator of the printed ratios
    leaderboard: str = "board.md"


class SweepError(TslossError, ValueError):
    """A bad sweep config; the message is one line."""


def load_sweep_config(path: str | Path) -> SweepConfig:
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"cannot read sweep config {path}: {str(e).splitlines()[0]}") from None
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return SweepConfig(**values)


def _seeds(config: SweepConfig) -> list[int]:
    return list(range(config.seeds)) if isinstance(config.seeds, int) else [int(s) for s in config.seeds]


def _settings(config: SweepConfig) -> dict[str, tuple[int, dict[str, Any], list[str]]]:
    """Each setting as (num_samples, its own tuner values, its regularizers)."""
    settings = {}
    for name, value in config.settings.items():
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"num_samples", "tune", "regularizers"})
            if unknown or "num_samples" not in value:
                raise SweepError(
                    f"setting {name!r}: give a number of rows or {{num_samples: N, tune: {{...}}, regularizers: [...]}}"
                    + (f" (unknown key(s) {', '.join(unknown)})" if unknown else "")
                )
            num_samples, tune = value["num_samples"], dict(value.get("tune") or {})
            regularizers = list(value.get("regularizers") or config.regularizers)
        else:
            num_samples, tune, regularizers = value, {}, list(config.regularizers)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise SweepError(f"setting {name!r}: num_samples must be a positive integer, not {num_samples!r}")
        if config.baseline not in regularizers:
            raise SweepError(f"setting {name!r}: its regularizers lack the baseline {config.baseline!r}")
        settings[name] = (num_samples, tune, regularizers)
    return settings


def _model(config: SweepConfig) -> str:
    if config.model != "testbed":
        return config.model
    from tsloss_harness.testbed import build_testbed

    return str(build_testbed())


def _data_dir(config: SweepConfig, dataset: str, seed: int, num_rows: int) -> str | None:
    """Per-seed generated rows, so each seed trains on its own sample(s) (CE and TSLoss share them)."""
    if config.data_dir != "generated":
        return config.data_dir
    if dataset != "gsm8k":
        raise SweepError(f"data_dir 'generated' exists for gsm8k only, not {dataset!r}: give a data folder")
    from tsloss_harness.data import write_jsonl
    from tsloss_harness.testbed.problems import generate_gsm8k_rows

    folder = Path(config.output_dir) / "data" / f"gsm8k-seed{seed}-{num_rows}"
    if not (folder / "train.jsonl").is_file():
        write_jsonl(generate_gsm8k_rows(num_rows, seed=10_000 + seed), folder / "train.jsonl")
    return str(folder)


def _finished(run_dir: Path, resolved: dict) -> dict | None:
    """The run's summary if it finished with the same tuner config, else None.

    A setting the stored config lacks (a field added to TuneConfig since) counts as equal when the
    new value is that field's default: the old run trained exactly that way.
    """
    from tsloss_harness.tune import TuneConfig

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    stored = summary.get("config")
    if not isinstance(stored, dict) or set(stored) - set(resolved):
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(TuneConfig) if f.default is not dataclasses.MISSING}
    for key, value in resolved.items():
        if key in stored:
            if stored[key] != value:
                return None
        elif key not in defaults or defaults[key] != value:
            return None
    return summary


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or reuse) every run of the sweep, write the leaderboard; return summaries and ratios."""
    from tsloss_harness import leaderboard
    from tsloss_harness.regularizers import REGULARIZERS
    from tsloss_harness.tune import TuneConfig, run

    settings = _settings(config)
    bad = sorted({r for _, _, regs in settings.values() for r in regs if r not in REGULARIZERS})
    if bad:
        raise SweepError(f"unknown regularizer(s) {', '.join(bad)} (choose from {', '.join(REGULARIZERS)})")
    tune_fields = {f.name for f in dataclasses.fields(TuneConfig)}
    for where, values in [("tune", config.tune)] + [(f"settings.{n}.tune", t) for n, (_, t, _) in settings.items()]:
        unknown = sorted(set(values) - tune_fields)
        if unknown:
            raise SweepError(f"unknown tuner setting(s) under '{where}': {', '.join(unknown)}")

    model = _model(config)
    shared: dict[str, Any] = {"progress": False}
    if config.model == "testbed":
        from tsloss_harness.testbed import TUNE_DEFAULTS

        shared.update(TUNE_DEFAULTS)
        shared["stop_at_convergence"] = True
    shared.update(config.tune)

    out = Path(config.output_dir)
    seeds = _seeds(config)
    plan = [
        (dataset, setting, reg, seed) for dataset in config.datasets for setting, (_, _, regs) in settings.items()
        for reg in regs for seed in seeds
    ]
    from tqdm.auto import tqdm

    results: dict[tuple, dict] = {}
    reused = 0
    for dataset, setting, reg, seed in tqdm(plan, desc="sweep", unit="run"):
        num_samples, setting_tune, _ = settings[setting]
        run_dir = out / dataset / setting / reg / f"seed-{seed}"
        tune_config = TuneConfig(
            **{
                **shared,
                **setting_tune,
                "model": model,
                "dataset": dataset,
                "data_dir": _data_dir(config, dataset, seed, num_samples),
                "num_samples": num_samples,
                # the paper's batch of 8, or the whole set when it is smaller (single-sample: 1)
                "batch_size": {**config.tune, **setting_tune}.get("batch_size", min(8, num_samples)),
                "regularizer": reg,
                "seed": seed,
                "output_dir": str(run_dir),
                "eval_max_samples": num_samples,
            }
        )
        summary = _finished(run_dir, dataclasses.asdict(tune_config))
        if summary is not None:
            reused += 1
        else:
            if run_dir.exists():  # interrupted earlier: start that run again from nothing
                shutil.rmtree(run_dir)
            summary = run(tune_config)
        results[(dataset, setting, reg, seed)] = summary

    measurements, warnings = leaderboard.collect([out])
    tables = leaderboard.build_tables(measurements)
    board = out / config.leaderboard
    board.write_text(leaderboard.render(tables, "md"))

    ratios = []
    for dataset in config.datasets:
        for setting, (_, _, regs) in settings.items():
            base = [results[(dataset, setting, config.baseline, s)]["converged_step"] for s in seeds]
            for reg in regs:
                if reg == config.baseline:
                    continue
                ours = [results[(dataset, setting, reg, s)]["converged_step"] for s in seeds]
                a, b = [v for v in ours if v is not None], [v for v in base if v is not None]
                ratio = leaderboard.ratio_ci(a, b) if a and b else (None, None, None)
                # seeds where both converged (at a step > 0: a ratio needs it), same rows and initial prompt
                pairs = [(o, c) for o, c in zip(ours, base) if o and c]
                paired = leaderboard.paired_ratio_ci(*zip(*pairs)) if pairs else (None, None, None)
                ratios.append(
                    {
                        "dataset": dataset,
                        "setting": setting,
                        "regularizer": reg,
                        "baseline": config.baseline,
                        "ratio": ratio[0],
                        "ci95": [ratio[1], ratio[2]],
                        "converged": len(a),
                        "baseline_converged": len(b),
                        "runs": len(seeds),
                        "paired_ratio": paired[0],
                        "paired_ci95": [paired[1], paired[2]],
                        "pairs": len(pairs),
                    }
                )
    (out / "ratios.json").write_text(json.dumps(ratios, indent=2) + "\n")
    return {"runs": len(plan), "reused": reused, "leaderboard": str(board), "ratios": ratios, "warnings": warnings}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"
