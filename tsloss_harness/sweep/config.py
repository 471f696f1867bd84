"""The sweep config: axes over any TuneConfig field, settings, seeds, resources, retries, eval, baseline.

Reading and checking only: every mistake is a one-line :class:`SweepError` before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsloss_harness.errors import TslossError

__all__ = [
    "EvalConfig",
    "EvalVariant",
    "Resources",
    "Setting",
    "SweepConfig",
    "SweepError",
    "load_sweep_config",
    "parse_sweep_config",
]

# TuneConfig fields the sweep itself sets for every cell: never an axis or a tune value.
RESERVED = {"seed": "use seeds:", "output_dir": "each cell has its own directory", "resume": "the sweep resumes cells"}
# Keys of the one-axis sweep config, with where they went.
LEGACY = {
    "datasets": "axes: {dataset: [...]}",
    "regularizers": "axes: {regularizer: [...]}",
}


class SweepError(TslossError, ValueError):
    """A bad sweep config or command line; the message is one line."""


@dataclass
class Resources:
    """What one cell asks Ray for, and how its processes run."""

    num_cpus: float = 1
    num_gpus: float = 0
    ranks: int | None = None  # processes of the tuner; > 1: the DeepSpeed launcher. Default: num_gpus or 1
    threads: int | None = None  # OMP/MKL threads per process. Default: num_cpus / ranks, at least 1
    fork: bool = True  # a one-rank CPU tuner is forked from a server that imported its libraries (forkserver.py)

    def resolved(self) -> Resources:
        ranks = self.ranks if self.ranks is not None else max(1, int(self.num_gpus))
        threads = self.threads if self.threads is not None else max(1, int(self.num_cpus // ranks))
        return Resources(self.num_cpus, self.num_gpus, ranks, threads, self.fork)


@dataclass
class EvalConfig:
    """lm-eval on each finished cell's prompt, through the stock ``lm_eval`` CLI (``--model tsprompt``)."""

    tasks: list[str] | dict[str, list[str]]  # a mapping: each cell scored on its dataset's tasks
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int | str = 8
    model_args: dict[str, Any] = field(default_factory=dict)  # extra --model_args (dtype, max_length, ...)
    gen_kwargs: str | None = None
    device: str | None = None
    include_path: str | None = None  # default: the package's task folder (tsloss_harness.resources.tasks_dir)
    env: dict[str, str] = field(default_factory=dict)  # e.g. TSLOSS_DATA_DIR, TSLOSS_GSM8K_DIR for offline tasks
    log_samples: bool = False
    no_prompt: bool = False  # also score each model without a prompt (--model hf): the no-prompt baseline
    variants: dict[str, EvalVariant] = field(default_factory=dict)  # name -> further scorings (ACT, DPC)

    def spec(self) -> dict:
        """What a cell's plain scores depend on (a change re-scores the cell)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "variants"}


@dataclass
class EvalVariant:
    """A further scoring of the cells it selects, with model args of its own, written to the cell's
    ``eval-<name>/`` and shown as its own rows (Table III's inference-time columns: ``dpc: true`` on
    tuned prompts, ACT on the model without a prompt)."""

    cells: str | dict[str, Any] = field(default_factory=dict)  # {axis: value} of prompt cells, or "no_prompt"
    tasks: list[str] | dict[str, list[str]] | None = None  # default: eval.tasks
    model_args: dict[str, Any] = field(default_factory=dict)
    # ACT: heads chosen per scored cell first (``tsloss act-calibrate``: limit, beta, threshold, min_gain, env),
    # on rows outside the held-out set, then scored with act=<its file>
    act: dict[str, Any] | None = None

    def selects(self, key: dict | None) -> bool:
        """Whether a cell with axis values ``key`` is scored (None: a no-prompt cell)."""
        if key is None or self.cells == "no_prompt":
            return key is None and self.cells == "no_prompt"
        return all(k in key and key[k] == v for k, v in self.cells.items())


@dataclass
class Setting:
    """A named group of tuner values (the ``setting`` axis): the paper's single- and multi-sample."""

    name: str
    tune: dict[str, Any]  # num_samples included
    axes: dict[str, list]  # this setting's values for some of the axes
    resources: dict[str, Any]


@dataclass
class SweepConfig:
    """What to sweep (see the package docstring for the YAML)."""

    output_dir: str = "runs/sweep"
    model: str = "testbed"  # "testbed": the default CPU testbed (built once, cached); else a model dir / hub id
    # "generated": GSM8K-format rows generated per seed and num_samples (gsm8k only); a folder; or None (the hub)
    data_dir: str | None = "generated"
    tune: dict[str, Any] = field(default_factory=dict)  # TuneConfig values for every cell
    axes: dict[str, list] = field(default_factory=dict)  # TuneConfig field -> values; every combination is a cell
    # name -> num_samples, or {num_samples, tune: {...}, axes: {...}, resources: {...}}: the "setting" axis
    settings: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | int = 1  # a count n means seeds 0..n-1
    baseline: dict[str, Any] = field(default_factory=dict)  # {axis: value}: ratios of iterations against it
    resources: dict[str, Any] = field(default_factory=dict)  # per cell: num_cpus, num_gpus, ranks, threads, fork
    retries: int = 2  # further attempts of a cell whose process died
    eval: dict[str, Any] | None = None  # EvalConfig fields
    leaderboard: str = "board.md"

    # ------------------------------------------------------------------ derived, checked views

    def output_path(self) -> Path:
        """``output_dir`` made absolute: the cells' directories, the board and the stop file are under it."""
        return Path(self.output_dir).expanduser().resolve()

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else [int(s) for s in self.seeds]

    def setting_list(self) -> list[Setting]:
        return [_setting(name, value, self) for name, value in self.settings.items()]

    def eval_config(self) -> EvalConfig | None:
        return None if self.eval is None else _eval_config(self.eval)

    def resources_for(self, setting: Setting | None) -> Resources:
        values = {**self.resources, **(setting.resources if setting else {})}
        return _resources(
            values, f"settings.{setting.name}.resources" if setting and setting.resources else "resources"
        )


def load_sweep_config(path: str | Path) -> SweepConfig:
    from tsloss_harness.configfile import read_mapping

    return parse_sweep_config(read_mapping(path, SweepError), str(path))


def parse_sweep_config(values: dict, where: str = "sweep config") -> SweepConfig:
    """A checked SweepConfig from plain values (a YAML mapping)."""
    for key, hint in LEGACY.items():
        if key in values:
            raise SweepError(f"{where}: '{key}' is now an axis: {hint}")
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    config = SweepConfig(**values)
    check(config)
    return config


# ----------------------------------------------------------------------------------------- checks


def check(config: SweepConfig) -> None:
    """Raise SweepError on the first thing wrong with ``config`` (run again after edits in code)."""
    from tsloss_harness.tune import TuneConfig

    tune_fields = {f.name for f in dataclasses.fields(TuneConfig)}
    _tune_values(config.tune, "tune", tune_fields)
    if not isinstance(config.axes, dict):
        raise SweepError("axes: give a mapping of TuneConfig field -> list of values")
    for name, values in config.axes.items():
        _axis(name, values, "axes", tune_fields)
    clash = sorted(set(config.axes) & set(config.tune))
    if clash:
        raise SweepError(f"{clash[0]!r} is both an axis and a tune value: keep one")
    if not isinstance(config.settings, dict):
        raise SweepError("settings: give a mapping of setting name -> num_samples or {num_samples, tune, axes}")
    settings = config.setting_list()
    for setting in settings:
        _tune_values(setting.tune, f"settings.{setting.name}.tune", tune_fields)
        for name, values in setting.axes.items():
            if name not in config.axes:
                raise SweepError(
                    f"settings.{setting.name}.axes: {name!r} is not one of axes ({', '.join(config.axes) or 'none'})"
                )
            _axis(name, values, f"settings.{setting.name}.axes", tune_fields)
        config.resources_for(setting)
    config.resources_for(None)
    seeds = config.seeds
    if isinstance(seeds, bool) or not (isinstance(seeds, int) and seeds >= 1 or _int_list(seeds)):
        raise SweepError(f"seeds: give a count >= 1 or a list of integers, not {seeds!r}")
    if len(set(config.seed_list())) != len(config.seed_list()):
        raise SweepError(f"seeds: repeated seed in {seeds!r}")
    if isinstance(config.retries, bool) or not isinstance(config.retries, int) or config.retries < 0:
        raise SweepError(f"retries must be an integer >= 0, not {config.retries!r}")
    if not isinstance(config.model, str) or not config.model:
        raise SweepError("model: give a model directory, a hub id, 'testbed' or 'testbed:<size>'")
    if config.model.startswith("testbed:"):
        from tsloss_harness.testbed.pretrain import SIZES

        if config.model.split(":", 1)[1] not in SIZES:
            raise SweepError(f"model {config.model!r}: testbed sizes are {', '.join(SIZES)}")
    if config.data_dir is not None and not isinstance(config.data_dir, str):
        raise SweepError(f"data_dir: give 'generated', 'skills', a folder or null, not {config.data_dir!r}")
    if config.data_dir == "skills" and not config.model.startswith("testbed"):
        raise SweepError("data_dir 'skills' is the testbed's held-out-signal rows: use model: testbed:skills")
    if not isinstance(config.leaderboard, str) or not config.leaderboard.endswith((".md", ".csv", ".html")):
        raise SweepError(f"leaderboard: a file name ending in .md, .csv or .html, not {config.leaderboard!r}")
    config.eval_config()
    _check_baseline(config, settings)
    _check_names(config, settings)


def _int_list(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _tune_values(values: Any, where: str, tune_fields: set[str]) -> None:
    if not isinstance(values, dict):
        raise SweepError(f"{where}: give a mapping of TuneConfig fields to values")
    unknown = sorted(set(values) - tune_fields)
    if unknown:
        raise SweepError(f"unknown tuner setting(s) under '{where}': {', '.join(unknown)}")
    for key in values:
        if key in RESERVED:
            raise SweepError(f"{where}: {key!r} is set by the sweep ({RESERVED[key]})")


def _axis(name: str, values: Any, where: str, tune_fields: set[str]) -> None:
    if name == "setting":
        raise SweepError(f"{where}: 'setting' is the axis of settings: define it under settings:")
    if name not in tune_fields:
        raise SweepError(f"{where}: {name!r} is not a TuneConfig field (an axis names one)")
    if name in RESERVED:
        raise SweepError(f"{where}: {name!r} is set by the sweep ({RESERVED[name]})")
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}.{name}: give a non-empty list of values")
    for value in values:
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise SweepError(f"{where}.{name}: values must be numbers, strings, booleans or null, not {value!r}")
    if len({repr(v) for v in values}) != len(values):
        raise SweepError(f"{where}.{name}: repeated value in {values!r}")


def _setting(name: Any, value: Any, config: SweepConfig) -> Setting:
    if not isinstance(name, str) or not name or "/" in name:
        raise SweepError(f"setting name {name!r}: give a plain name")
    if isinstance(value, dict):
        if "regularizers" in value:
            raise SweepError(f"setting {name!r}: 'regularizers' is now an axis: axes: {{regularizer: [...]}}")
        unknown = sorted(set(value) - {"num_samples", "tune", "axes", "resources"})
        if unknown or "num_samples" not in value:
            raise SweepError(
                f"setting {name!r}: give a number of rows or {{num_samples: N, tune: {{...}}, axes: {{...}}, resources: {{...}}}}"
                + (f" (unknown key(s) {', '.join(unknown)})" if unknown else "")
            )
        num_samples, tune = value["num_samples"], dict(value.get("tune") or {})
        axes, resources = dict(value.get("axes") or {}), dict(value.get("resources") or {})
    else:
        num_samples, tune, axes, resources = value, {}, {}, {}
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise SweepError(f"setting {name!r}: num_samples must be a positive integer, not {num_samples!r}")
    if "num_samples" in tune or "num_samples" in config.tune or "num_samples" in config.axes:
        raise SweepError(f"setting {name!r}: num_samples comes from the setting; drop it from tune/axes")
    return Setting(name, {**tune, "num_samples": num_samples}, axes, resources)


def _resources(values: Any, where: str) -> Resources:
    if not isinstance(values, dict):
        raise SweepError(f"{where}: give a mapping (num_cpus, num_gpus, ranks, threads, fork)")
    known = {f.name for f in dataclasses.fields(Resources)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    r = Resources(**values)
    for name in ("num_cpus", "num_gpus"):
        v = getattr(r, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise SweepError(f"{where}.{name} must be a number >= 0, not {v!r}")
    for name in ("ranks", "threads"):
        v = getattr(r, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SweepError(f"{where}.{name} must be an integer >= 1, not {v!r}")
    if not isinstance(r.fork, bool):
        raise SweepError(f"{where}.fork must be true or false, not {r.fork!r}")
    r = r.resolved()
    if r.num_gpus > 1 and r.num_gpus != int(r.num_gpus):
        raise SweepError(f"{where}.num_gpus: more than one GPU must be a whole number, not {r.num_gpus}")
    if r.num_gpus >= 1 and r.ranks != int(r.num_gpus):
        raise SweepError(f"{where}: ranks={r.ranks} with num_gpus={r.num_gpus}: a cell runs one rank per GPU")
    return r


def _eval_config(values: Any) -> EvalConfig:
    if not isinstance(values, dict):
        raise SweepError("eval: give a mapping with at least tasks: [...]")
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SweepError(f"eval: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = dict(values)
    tasks = values.get("tasks")
    if isinstance(tasks, dict):
        values["tasks"] = {str(dataset): _task_list(names, f"eval.tasks.{dataset}") for dataset, names in tasks.items()}
        if not values["tasks"]:
            raise SweepError("eval.tasks: give one or more lm-eval task names")
    else:
        values["tasks"] = _task_list(tasks, "eval.tasks")
    model_args = values.get("model_args") or {}
    if isinstance(model_args, str):
        model_args = dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)
    if not isinstance(model_args, dict) or {"pretrained", "prompt", "peft"} & set(model_args):
        raise SweepError("eval.model_args: a mapping of extra model args (pretrained and prompt come from the cell)")
    values["model_args"] = model_args
    if not isinstance(values.get("env") or {}, dict):
        raise SweepError("eval.env: give a mapping of environment variables")
    values["env"] = {str(k): str(v) for k, v in (values.get("env") or {}).items()}
    for name in ("num_fewshot",):
        v = values.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise SweepError(f"eval.{name} must be an integer >= 0, not {v!r}")
    limit = values.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise SweepError(f"eval.limit must be a number > 0, not {limit!r}")
    variants = values.get("variants") or {}
    if not isinstance(variants, dict):
        raise SweepError("eval.variants: give a mapping of name -> {cells, tasks, model_args, act}")
    values["variants"] = {str(name): _variant(str(name), v) for name, v in variants.items()}
    return EvalConfig(**values)


ACT_CALIBRATION_KEYS = {"limit", "beta", "threshold", "min_gain", "env"}


def _variant(name: str, values: Any) -> EvalVariant:
    where = f"eval.variants.{name}"
    if name in ("", "plain") or not name.replace("_", "").replace("-", "").isalnum():
        raise SweepError(f"{where}: a variant name is letters, digits, - and _ (and not 'plain')")
    if not isinstance(values, dict) or set(values) - {f.name for f in dataclasses.fields(EvalVariant)}:
        raise SweepError(f"{where}: give a mapping with keys among cells, tasks, model_args, act")
    cells = values.get("cells", {})
    if cells != "no_prompt" and not isinstance(cells, dict):
        raise SweepError(f"{where}.cells: no_prompt, or a mapping of axis -> value")
    tasks = values.get("tasks")
    if isinstance(tasks, dict):
        tasks = {str(d): _task_list(names, f"{where}.tasks.{d}") for d, names in tasks.items()}
    elif tasks is not None:
        tasks = _task_list(tasks, f"{where}.tasks")
    model_args = values.get("model_args") or {}
    if not isinstance(model_args, dict) or {"pretrained", "prompt", "peft", "act"} & set(model_args):
        raise SweepError(f"{where}.model_args: a mapping of extra model args (act= comes from act:)")
    act = values.get("act")
    if act is not None and (not isinstance(act, dict) or set(act) - ACT_CALIBRATION_KEYS):
        raise SweepError(f"{where}.act: a mapping with keys among {', '.join(sorted(ACT_CALIBRATION_KEYS))}")
    return EvalVariant(cells, tasks, dict(model_args), None if act is None else dict(act))


def _task_list(tasks: Any, where: str) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    if not tasks or not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise SweepError(f"{where}: give one or more lm-eval task names")
    return tasks


def _check_baseline(config: SweepConfig, settings: list[Setting]) -> None:
    if not isinstance(config.baseline, dict):
        hint = f"{{regularizer: {config.baseline}}}" if isinstance(config.baseline, str) else "{axis: value}"
        raise SweepError(f"baseline names an axis value: baseline: {hint}")
    for axis, value in config.baseline.items():
        if axis == "setting":
            if value not in config.settings:
                raise SweepError(
                    f"baseline: setting {value!r} is not one of settings ({', '.join(config.settings) or 'none'})"
                )
            continue
        if axis not in config.axes:
            raise SweepError(f"baseline: {axis!r} is not an axis (axes: {', '.join(config.axes) or 'none'})")
        for setting in settings or [None]:
            values = setting.axes.get(axis, config.axes[axis]) if setting else config.axes[axis]
            # a setting that holds an axis at one value does not vary it: no ratio there, no baseline needed
            if value not in values and (len(values) > 1 or not setting):
                where = f"setting {setting.name!r}: its" if setting else "axes:"
                raise SweepError(f"{where} {axis} values {values} lack the baseline {value!r}")


def _check_names(config: SweepConfig, settings: list[Setting]) -> None:
    """Values the tuner would refuse, found before anything runs."""
    from tsloss_harness.prompt_config import PROMPT_METHODS as METHODS

    def values_of(name: str) -> list:
        found = list(config.axes.get(name, []))
        found += [config.tune[name]] if name in config.tune else []
        for s in settings:
            found += s.axes.get(name, []) + ([s.tune[name]] if name in s.tune else [])
        return found

    bad = sorted({str(m) for m in values_of("method") if m not in METHODS})
    if bad:
        raise SweepError(f"unknown method(s) {', '.join(bad)} (choose from {', '.join(METHODS)})")
    regularizers = values_of("regularizer")
    if regularizers:
        from tsloss_harness.regularizers import REGULARIZERS

        bad = sorted({str(r) for r in regularizers if r not in REGULARIZERS})
        if bad:
            raise SweepError(f"unknown regularizer(s) {', '.join(bad)} (choose from {', '.join(REGULARIZERS)})")
