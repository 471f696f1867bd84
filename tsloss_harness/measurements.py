"""The leaderboard's inputs as plain measurements: one value per model, data set, setting, method and seed.

- lm-eval results JSON (``results_<date>.json`` of ``lm_eval --output_path``, any model) gives
  accuracy (%) per task; a ``tsprompt`` or ``hf,peft=`` prompt contributes its tsloss.json
  provenance: method, regularizer, seed;
- a tuner run directory gives iterations to convergence (``summary.json`` ``converged_step``, None
  when the run did not converge).

``tsloss_harness.leaderboard`` lays these out as the paper's tables; the sweep reads its cells' scores here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsloss_harness.errors import TslossError

__all__ = ["LeaderboardError", "Measurement", "collect"]

# Inference-time baselines a results file can record (tsloss_harness.baselines), appended to the method.
INFERENCE_METHODS = ("act", "dpc")
# Which lm-eval metric is "accuracy" for a task, first match wins (``--metric TASK=KEY`` overrides).
METRIC_PREFERENCE = (
    "exact_match,strict-match",
    "acc,none",
    "exact_match,none",
    "acc_norm,none",
    "qa_f1_score,none",
    "score,none",
    "f1,none",
    "exact_match,flexible-extract",
)


class LeaderboardError(TslossError, ValueError):
    """An input that is neither an lm-eval results file nor a tuner run; the message is one line."""


@dataclass(frozen=True)
class Measurement:
    """One number: ``kind`` "accuracy" (%, lm-eval) or "iterations" (``converged_step``, None when the
    run did not converge)."""

    kind: str
    model: str
    dataset: str
    setting: str
    method: str
    regularizer: str | None
    seed: int | None
    value: float | None
    source: str


def setting_label(num_samples: Any) -> str:
    """The paper's training settings: 1 row = single-sample, 10 rows = multi-sample."""
    if num_samples is None:
        return "all-samples"
    n = int(num_samples)
    return {1: "single-sample", 10: "multi-sample"}.get(n, f"{n}-sample")


def model_name(name: Any) -> str:
    """A local path shows as its folder name; hub ids (org/name) stay as they are."""
    text = str(name or "?").rstrip("/")
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return Path(text).name
    return text


def collect(
    paths: Iterable[str | Path], metric_overrides: dict[str, str] | None = None
) -> tuple[list[Measurement], list[str]]:
    """Measurements from results files and run directories (folders are searched recursively for
    ``results*.json`` and ``summary.json``). Returns (measurements, warnings)."""
    measurements: list[Measurement] = []
    warnings: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise LeaderboardError(f"{path}: no such file or directory")
        if path.is_file():
            measurements += _from_results_file(path, metric_overrides or {}, warnings)
        elif (path / "summary.json").is_file() or (path / "metrics.jsonl").is_file():
            measurements += _from_run_dir(path, warnings)
        else:
            found = sorted(
                {p.parent for p in path.rglob("summary.json")} | {p.parent for p in path.rglob("metrics.jsonl")}
            )
            results = sorted(p for p in path.rglob("results*.json") if p.parent not in found)
            if not found and not results:
                raise LeaderboardError(f"{path}: holds no lm-eval results*.json and no tuner run (summary.json)")
            for run in found:
                measurements += _from_run_dir(run, warnings)
            for file in results:
                measurements += _from_results_file(file, metric_overrides or {}, warnings)
    return _deduplicate(measurements, warnings), warnings


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise LeaderboardError(f"{path}: unreadable ({err.__class__.__name__})") from None
    except json.JSONDecodeError as err:
        raise LeaderboardError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None


def tracks_convergence(config: dict) -> bool:
    """Whether a run checked its training accuracy (``eval_every`` > 0); if not, its ``converged_step``
    (None) says nothing about convergence."""
    return bool(config.get("eval_every", 1))


def _from_run_dir(path: Path, warnings: list[str]) -> list[Measurement]:
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        warnings.append(f"{path}: no summary.json (run unfinished?); skipped")
        return []
    summary = _read_json(summary_file)
    config = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(config, dict) or "converged_step" not in summary:
        raise LeaderboardError(f"{summary_file}: not a tuner summary (needs 'converged_step' and 'config')")
    step = summary["converged_step"]
    if not tracks_convergence(config):
        return []
    return [
        Measurement(
            kind="iterations",
            model=model_name(config.get("model")),
            dataset=str(config.get("dataset", "?")),
            setting=setting_label(config.get("num_samples")),
            method=str(config.get("method") or "prompt"),
            regularizer=config.get("regularizer"),
            seed=config.get("seed"),
            value=None if step is None else float(step),
            source=str(path),
        )
    ]


def _parse_model_args(args: Any) -> dict:
    if isinstance(args, dict):
        return {str(k): v for k, v in args.items()}
    out = {}
    for part in str(args or "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _prompt_provenance(config: dict, model_args: dict) -> dict | None:
    report = config.get("tsprompt")
    if isinstance(report, dict) and isinstance(report.get("provenance"), dict):
        return report["provenance"]
    adapter = model_args.get("prompt") or model_args.get("peft")
    if adapter and Path(str(adapter)).is_dir():
        from tsloss_harness.prompt import PromptLoadError, load_provenance

        try:
            return load_provenance(adapter)
        except PromptLoadError:
            return None
    return None


def _with_inference_methods(method: str, config: dict) -> str:
    """ "prompt" -> "prompt+act" / "prompt+dpc" when lm-eval scored with ACT or DPC (``config.act`` /
    ``config.dpc``, written by tsprompt and hf-act): their own Table III columns. DPC settings other
    than the defaults name their column (``prompt+dpc(ratio=0.1)``), so two settings never share one."""
    parts = [method]
    for name in INFERENCE_METHODS:
        if isinstance(config.get(name), dict):
            parts.append(name + (_dpc_changes(config[name]) if name == "dpc" else ""))
    return "+".join(parts)


def _dpc_changes(recorded: dict) -> str:
    import dataclasses

    from tsloss_harness.dpc import DpcSettings

    changed = [
        f"{f.name}={recorded[f.name]}"
        for f in dataclasses.fields(DpcSettings)
        if f.name in recorded and recorded[f.name] != f.default
    ]
    return f"({','.join(changed)})" if changed else ""


def _pick_metric(task: str, scores: dict, overrides: dict[str, str]) -> str | None:
    if task in overrides:
        return overrides[task] if overrides[task] in scores else None
    for key in METRIC_PREFERENCE:
        if isinstance(scores.get(key), (int, float)):
            return key
    return None


def _from_results_file(path: Path, overrides: dict[str, str], warnings: list[str]) -> list[Measurement]:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise LeaderboardError(f"{path}: not an lm-eval results file (no 'results' object)")
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    model_args = _parse_model_args(config.get("model_args"))
    provenance = _prompt_provenance(config, model_args)
    if provenance is not None:
        model = provenance.get("base_model") or model_args.get("pretrained") or config.get("model")
        method, regularizer = provenance.get("method") or "prompt", provenance.get("regularizer")
        seed = provenance.get("seed")
        num_samples = provenance.get("num_samples")
    else:
        model = model_args.get("pretrained") or config.get("model")
        adapter = model_args.get("prompt") or model_args.get("peft")
        method, regularizer, seed, num_samples = ("adapter" if adapter else "base"), None, None, None
    method = _with_inference_methods(method, config)
    # A group's score stands for its subtasks (MMLU-CF: one row, not one per subject); a group lm-eval
    # gives no score (gsm8k_offline: no aggregate_metric_list) leaves its subtasks' rows.
    groups = data.get("group_subtasks") if isinstance(data.get("group_subtasks"), dict) else {}
    subtasks = {
        t
        for g, members in groups.items()
        if g in data["results"] and _pick_metric(g, data["results"][g], overrides) is not None
        for t in members
        if t != g
    }
    found = []
    for task, scores in data["results"].items():
        if task in subtasks:
            continue
        key = _pick_metric(task, scores, overrides)
        if key is None and any(
            t != task for t in groups.get(task) or []
        ):  # a scoreless group: its subtasks have the rows
            continue
        if key is None:
            warnings.append(f"{path}: task {task} has no accuracy metric (use --metric {task}=KEY); skipped")
            continue
        found.append(
            Measurement(
                kind="accuracy",
                model=model_name(model),
                dataset=task,
                setting=setting_label(num_samples) if num_samples is not None else "",
                method=method,
                regularizer=regularizer,
                seed=seed,
                value=100.0 * float(scores[key]),
                source=f"{path}:{key}",
            )
        )
    return found


def _deduplicate(measurements: list[Measurement], warnings: list[str]) -> list[Measurement]:
    """The same seed measured twice (a results file evaluated again) counts once: the later input wins."""
    kept: dict[tuple, Measurement] = {}
    out: list[Measurement] = []
    for m in measurements:
        if m.seed is None:
            out.append(m)
            continue
        key = (m.kind, m.model, m.dataset, m.setting, m.method, m.regularizer, m.seed)
        if key in kept:
            warnings.append(f"{m.source}: repeats seed {m.seed} of {kept[key].source}; the later one counts")
        kept[key] = m
    return out + list(kept.values())
