"""The grid: every combination of settings x axes x seeds is a cell with its own directory, its tuner
config resolved exactly as the tuner will read it, and a state (finished, changed, to run).

A cell's directory shows its axis values, ``<output_dir>/setting=single/regularizer=tsloss/seed=3``::

    tune.yaml      the resolved TuneConfig the tuner runs (``--config``)
    tune.log       the tuner's output, every attempt (each starts with a header line)
    tune/          the tuner's run directory (config.yaml, metrics.jsonl, summary.json, prompt/, checkpoints/)
    eval.log       lm_eval's output;  eval/  its results (``--output_path``) and eval.json (what was scored)
    cell.json      the cell's record: axis values, state, attempts with their exit codes and last error lines
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsloss_harness.sweep.config import Resources, Setting, SweepConfig, SweepError

__all__ = ["Cell", "config_diff", "eval_done", "expand", "prepare", "tune_state"]

# Config fields that may differ between a finished run and its cell without making it another run.
NOT_COMPARED = {"resume", "progress", "output_dir"}


@dataclass
class Cell:
    key: dict[str, Any]  # setting (when there are settings), axis values, seed: the directory's order
    dir: Path
    values: dict[str, Any]  # TuneConfig values, before the tuner's own parsing
    resources: Resources
    config: dict[str, Any] = field(default_factory=dict)  # the resolved TuneConfig (prepare)

    @property
    def name(self) -> str:
        return "/".join(self.dir.parts[-len(self.key) :])

    @property
    def group(self) -> tuple:
        """The cell's key without the seed: cells of one group differ only in seed."""
        return tuple((k, v) for k, v in self.key.items() if k != "seed")

    @property
    def run_dir(self) -> Path:
        return self.dir / "tune"

    @property
    def model(self) -> str:
        return str(self.config.get("model") or self.values["model"])


# ------------------------------------------------------------------------------------ expansion


def expand(config: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, in a fixed order (settings, axes in config order, seeds). Pure: builds
    nothing, writes nothing."""
    out = config.output_path()
    settings: list[Setting | None] = config.setting_list() or [None]
    names = {axis: _path_names(axis, _all_values(config, axis)) for axis in config.axes}
    seeds = config.seed_list()
    cells = []
    for setting in settings:
        axes = {axis: (setting.axes.get(axis, values) if setting else values) for axis, values in config.axes.items()}
        resources = config.resources_for(setting)
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo, strict=True))
            for seed in seeds:
                key = ({"setting": setting.name} if setting else {}) | point | {"seed": seed}
                parts = [f"setting={setting.name}"] if setting else []
                parts += [f"{axis}={names[axis][repr(v)]}" for axis, v in point.items()] + [f"seed={seed}"]
                cell_dir = out.joinpath(*parts)
                values = _tune_values(config, setting, point, seed, out, cell_dir)
                cells.append(Cell(key, cell_dir, values, resources))
    return cells


def _all_values(config: SweepConfig, axis: str) -> list:
    values = list(config.axes[axis])
    for setting in config.setting_list():
        values += [v for v in setting.axes.get(axis, []) if repr(v) not in {repr(x) for x in values}]
    return values


def _path_names(axis: str, values: list) -> dict[str, str]:
    """repr(value) -> a directory-safe name showing the value; values whose names collide get a hash."""
    names = {}
    for value in values:
        if value is None or isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, str) and "/" in value.rstrip("/"):
            text = value.rstrip("/").rsplit("/", 1)[-1]  # a model path or hub id shows its last part
        else:
            text = str(value)
        # lm-eval splits --model_args at commas: a prompt path must not hold one
        names[repr(value)] = re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:60].strip(".") or "_"
    taken: dict[str, int] = {}
    for name in names.values():
        taken[name] = taken.get(name, 0) + 1
    for key, name in names.items():
        if taken[name] > 1:
            names[key] = f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"
    return names


def _tune_values(
    config: SweepConfig, setting: Setting | None, point: dict, seed: int, out: Path, cell_dir: Path
) -> dict:
    """Precedence: testbed tuner defaults < tune < the setting's tune < the cell's axis values; then the
    values the sweep derives (batch size and accuracy rows from num_samples, the data, seed, output)."""
    given = {**config.tune, **(setting.tune if setting else {}), **point}
    model = given.get("model", config.model)
    values: dict[str, Any] = {"progress": False}
    if is_testbed(model):
        from tsloss_harness.testbed import TUNE_DEFAULTS

        values.update(TUNE_DEFAULTS, stop_at_convergence=True)
    values.update(given)
    values["model"] = model if is_testbed(model) else _local_path(model)
    num_samples = values.get("num_samples")
    if num_samples is not None:
        # the paper's batch of 8, or the whole set when it is smaller (single-sample: 1)
        if "batch_size" not in given:
            values["batch_size"] = min(8, num_samples)
        if "eval_max_samples" not in given:
            values["eval_max_samples"] = num_samples
    if "data_dir" in given:
        values["data_dir"] = _local_path(given["data_dir"])
    elif config.data_dir == "generated":
        values["data_dir"] = str(_generated_dir(out, values.get("dataset", "gsm8k"), seed, num_samples))
    elif config.data_dir == "skills":
        values["data_dir"] = str(_skills_dir(out, values.get("dataset", "gsm8k"), seed, num_samples))
    else:
        values["data_dir"] = _local_path(config.data_dir)
    if values.get("ds_config"):
        values["ds_config"] = _local_path(values["ds_config"])
    values.update(seed=seed, output_dir=str(cell_dir / "tune"))
    return values


def _local_path(value: Any) -> Any:
    """An existing relative path made absolute (cells run elsewhere); hub ids and None stay as they are."""
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def is_testbed(model: Any) -> bool:
    """``testbed`` (the default size) or ``testbed:<size>`` (``testbed.pretrain.SIZES``)."""
    return isinstance(model, str) and (model == "testbed" or model.startswith("testbed:"))


def skills_heldout_dir(out: Path) -> Path:
    """The held-out rows of ``data_dir: skills`` (one set for every seed): the eval's data root."""
    return out / "data" / "skills-heldout"


def skills_calibration_dir(out: Path) -> Path:
    """Rows of ``data_dir: skills`` that ACT chooses its heads on: never held out, in the held-out layout."""
    return out / "data" / "skills-calibration"


def write_skills_calibration(out: Path, num_rows: int) -> None:
    from tsloss_harness.testbed.skills import write_calibration_data

    write_calibration_data(skills_calibration_dir(out), num_rows)


def _skills_dir(out: Path, dataset: str, seed: int, num_samples: int | None) -> Path:
    from tsloss_harness.testbed.skills import DATASETS, LAYOUT

    skill = {d: s for s, d in DATASETS.items()}.get(dataset)
    if skill is None:
        raise SweepError(f"data_dir 'skills' holds datasets {', '.join(DATASETS.values())}, not {dataset!r}")
    if num_samples is None:
        raise SweepError("data_dir 'skills' needs num_samples (settings, tune or an axis)")
    return out / "data" / f"skills-seed{seed}-{num_samples}" / LAYOUT[skill][0]


def _generated_dir(out: Path, dataset: str, seed: int, num_samples: int | None) -> Path:
    if dataset != "gsm8k":
        raise SweepError(f"data_dir 'generated' exists for gsm8k only, not {dataset!r}: give a data folder")
    if num_samples is None:
        raise SweepError("data_dir 'generated' needs num_samples (settings, tune or an axis)")
    return out / "data" / f"gsm8k-seed{seed}-{num_samples}"


# ---------------------------------------------------------------------------------- preparation


def prepare(cells: list[Cell]) -> None:
    """Build what cells share (the testbed, generated rows) and resolve each cell's TuneConfig."""
    from tsloss_harness.testbed import build_testbed

    testbeds: dict[str, str] = {}
    for c in cells:
        if is_testbed(c.values["model"]):
            name = c.values["model"]
            if name not in testbeds:
                testbeds[name] = str(build_testbed(size=name.partition(":")[2] or "default"))
            c.values["model"] = testbeds[name]
    for c in cells:
        folder = Path(c.values["data_dir"] or "")
        if folder.parent.name.startswith("skills-seed") and folder.parent.parent.name == "data":
            _write_skills(folder.parent, c.values["seed"], c.values["num_samples"])
    for c in cells:
        folder = Path(c.values["data_dir"] or "")
        if (
            folder.name.startswith("gsm8k-seed")
            and folder.parent.name == "data"
            and not (folder / "train.jsonl").is_file()
        ):
            _generate_rows(folder, c.values["seed"], c.values["num_samples"])
    _resolve(cells)


def _write_skills(root: Path, seed: int, num_rows: int) -> None:
    """A seed's training rows of both skills, and the held-out rows every seed is scored on."""
    from tsloss_harness.testbed.skills import LAYOUT, write_skill_data

    if not all((root / folder / train).is_file() for folder, train, _ in LAYOUT.values()):
        write_skill_data(root, num_rows, seed=seed)
    heldout = skills_heldout_dir(root.parent.parent)
    if not all((heldout / folder / f).is_file() for folder, train, test in LAYOUT.values() for f in (train, test)):
        write_skill_data(heldout, None)


def _generate_rows(folder: Path, seed: int, num_rows: int) -> None:
    """Per-seed rows, so each seed trains on its own sample(s) (every axis value of a seed shares them)."""
    from tsloss_harness.data import write_jsonl
    from tsloss_harness.testbed.problems import generate_gsm8k_rows

    write_jsonl(generate_gsm8k_rows(num_rows, seed=10_000 + seed), folder / "train.jsonl")


def _resolve(cells: list[Cell]) -> None:
    """Each cell's TuneConfig as the tuner itself reads it from YAML (``tune.load_config``): the values
    its summary.json will hold."""
    import yaml

    from tsloss_harness.tune import TuneError, load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cell.yaml"
        for c in cells:
            path.write_text(yaml.safe_dump(c.values, sort_keys=False))
            try:
                c.config = dataclasses.asdict(load_config(["--config", str(path)]))
            except TuneError as e:
                raise SweepError(f"cell {c.name}: {str(e).replace(str(path) + ': ', '')}") from None


# ---------------------------------------------------------------------------------------- states


def tune_state(cell: Cell) -> tuple[str, str | None]:
    """("done", None): summary.json holds this config; ("changed", what differs): it holds another;
    ("todo", None): no finished run."""
    from tsloss_harness.tune import TuneConfig

    try:
        summary = json.loads((cell.run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "todo", None
    stored = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(stored, dict):
        return "changed", "summary.json holds no config"
    return ("done", None) if (diff := config_diff(stored, cell.config, TuneConfig)) is None else ("changed", diff)


def config_diff(stored: dict, resolved: dict, tune_config_class: type) -> str | None:
    """None when a run with config ``stored`` is the run ``resolved`` asks for, else what differs.

    A field the stored config lacks (added to TuneConfig since) counts as equal when the new value is
    that field's default: the old run trained exactly that way."""
    defaults = {
        f.name: f.default for f in dataclasses.fields(tune_config_class) if f.default is not dataclasses.MISSING
    }
    gone = sorted(set(stored) - set(resolved) - NOT_COMPARED)
    if gone:
        return f"the run has field(s) TuneConfig no longer has: {', '.join(gone)}"
    for key, value in resolved.items():
        if key in NOT_COMPARED:
            continue
        if key in stored:
            if stored[key] != value:
                return f"{key}: {stored[key]!r} -> {value!r}"
        elif key not in defaults or defaults[key] != value:
            return f"{key}: (absent, default {defaults.get(key)!r}) -> {value!r}"
    return None


def eval_dir_name(spec: dict) -> str:
    """``eval``, or ``eval-<variant>`` for a variant's scoring."""
    return f"eval-{spec['variant']}" if "variant" in spec else "eval"


def eval_done(cell: Cell, spec: dict) -> bool:
    """The cell's prompt was scored with exactly this eval spec."""
    try:
        return json.loads((cell.dir / eval_dir_name(spec) / "eval.json").read_text()).get("spec") == spec
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
