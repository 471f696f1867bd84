"""What a finished sweep reports: ratios of iterations to convergence against a baseline axis value,
and the board: per cell group (cells that differ only in seed) the iterations and lm-eval scores with
95% CIs over seeds, plus the paper's tables when the grid varies only what they show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tsloss_harness import leaderboard, stats
from tsloss_harness.measurements import collect, tracks_convergence

__all__ = ["CellResult", "convergence_ratios", "read_cell", "over_no_prompt", "render_board", "score_differences"]

# Axes the paper's tables (leaderboard) tell apart; a grid over anything else gets the group table only.
PAPER_AXES = {"setting", "model", "dataset", "method", "regularizer", "num_samples"}


class CellResult(dict):
    """key (axis values with seed), converged_step (None: did not converge), finished (bool), tracked
    (the run checked training accuracy, ``eval_every`` > 0: else converged_step says nothing),
    scores ({task: score %}), sources (run dir, results files)."""


def read_cell(key: dict, run_dir: Path, eval_dir: Path | None) -> CellResult:
    result = CellResult(
        key=key, finished=False, converged_step=None, tracked=True, scores={}, metrics={}, sources=[], topology=None
    )
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        tracked = tracks_convergence(summary.get("config") or {})
        result.update(finished=True, converged_step=summary.get("converged_step"), tracked=tracked)
        result["sources"].append(str(run_dir))
    except (OSError, json.JSONDecodeError):
        pass
    try:  # the prompt directory's provenance: the topology of the prompt that was scored
        result["topology"] = json.loads((run_dir / "prompt" / "tsloss.json").read_text()).get("topology")
    except (OSError, json.JSONDecodeError):
        pass
    if eval_dir is not None:
        result["scores"], result["metrics"], files = read_scores(eval_dir)
        result["sources"] += files
    return result


def read_scores(eval_dir: Path) -> tuple[dict[str, float], dict[str, str], list[str]]:
    """{task: score in %} from the latest lm-eval results file under ``eval_dir``, the metric of each,
    as the leaderboard picks it (``tsloss_harness.measurements.METRIC_PREFERENCE``)."""
    try:
        listed = json.loads((eval_dir / "eval.json").read_text())["results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return {}, {}, []
    files = [f for f in listed if Path(f).is_file()][-1:]
    if not files:
        return {}, {}, []
    measurements, _ = collect(files)
    scores = {m.dataset: m.value for m in measurements if m.kind == "accuracy"}
    metrics = {m.dataset: m.source.rsplit(":", 1)[-1] for m in measurements if m.kind == "accuracy"}
    return scores, metrics, files


# ------------------------------------------------------------------------------------------ ratios


def _value_key(value: Any) -> tuple:
    """Axis values compare as YAML means them: 0 and 0.0 are one value, True is not 1."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ("number", float(value))
    return (type(value).__name__, repr(value))


def _against_baseline(cells: list[CellResult], baseline: dict[str, Any]):
    """For each baseline axis, each group of finished cells that differ only in that axis and seed:
    yields (group, axis, value, {seed: cell} at that value, {seed: cell} at the baseline value) for
    every value other than the baseline's."""
    for axis, base_value in baseline.items():
        groups: dict[tuple, dict[tuple, tuple[Any, dict]]] = {}
        for cell in cells:
            key = cell["key"]
            if axis not in key or not cell["finished"]:
                continue
            rest = tuple((k, v) for k, v in key.items() if k not in (axis, "seed"))
            slot = groups.setdefault(rest, {}).setdefault(_value_key(key[axis]), (key[axis], {}))
            slot[1][key["seed"]] = cell
        for rest, by_value in groups.items():
            if _value_key(base_value) not in by_value:
                continue
            base = by_value[_value_key(base_value)][1]
            for vkey, (value, ours) in by_value.items():
                if vkey != _value_key(base_value):
                    yield dict(rest), axis, value, ours, base


def convergence_ratios(cells: list[CellResult], baseline: dict[str, Any]) -> list[dict]:
    """Against each baseline axis value (``_against_baseline``): every other value's converged_step as
    the ratio of means over converged runs (``stats.ratio_ci``) and the geometric mean of
    per-seed ratios over seeds where both converged (``stats.paired_ratio_ci``), each with its
    95% CI."""
    out = []
    for group, axis, value, ours, base in _against_baseline(cells, baseline):
        if not any(c.get("tracked", True) for c in [*ours.values(), *base.values()]):
            continue  # no run checked its training accuracy: there is nothing to compare
        steps = {s: c["converged_step"] for s, c in ours.items()}
        base_steps = {s: c["converged_step"] for s, c in base.items()}
        entry = {"group": group, "axis": axis, "value": value, "baseline": baseline[axis]}
        out.append(entry | _ratio_entry(steps, base_steps))
    return out


def score_differences(cells: list[CellResult], baseline: dict[str, Any]) -> list[dict]:
    """Against each baseline axis value (``_against_baseline``), per lm-eval task: the score minus the
    baseline's score on the same seed (same rows, same initial prompt), in points, mean and 95% CI
    over the seeds where both were scored."""
    out = []
    for group, axis, value, ours, base in _against_baseline(cells, baseline):
        tasks = sorted({t for c in ours.values() for t in c["scores"]})
        for task in tasks:
            diffs = [
                ours[s]["scores"][task] - base[s]["scores"][task]
                for s in sorted(ours)
                if s in base and task in ours[s]["scores"] and task in base[s]["scores"]
            ]
            if not diffs:
                continue
            mean, half, n = stats.mean_ci(diffs)
            ci = [mean - half, mean + half] if half is not None else [None, None]
            out.append(
                {"group": group, "axis": axis, "value": value, "baseline": baseline[axis], "task": task}
                | {"difference": mean, "ci95": ci, "seeds": n}
            )
    return out


def over_no_prompt(cells: list[CellResult], no_prompt: list[CellResult]) -> list[dict]:
    """Per cell group and task: the score minus the same model's score without a prompt (one number,
    the same held-out rows), in points, mean and 95% CI over seeds."""
    out = []
    groups: dict[tuple, list[CellResult]] = {}
    for cell in cells:
        if cell["finished"]:
            groups.setdefault(tuple((k, v) for k, v in cell["key"].items() if k != "seed"), []).append(cell)
    for rest, members in groups.items():
        model = dict(rest).get("model")
        bases = [b for b in no_prompt if model is None or b["key"].get("model") == model]
        if len(bases) != 1:
            continue
        for task in sorted({t for c in members for t in c["scores"]} & set(bases[0]["scores"])):
            diffs = [c["scores"][task] - bases[0]["scores"][task] for c in members if task in c["scores"]]
            mean, half, n = stats.mean_ci(diffs)
            ci = [mean - half, mean + half] if half is not None else [None, None]
            entry = {"group": dict(rest), "axis": "prompt", "value": "tuned", "baseline": "none", "task": task}
            out.append(entry | {"difference": mean, "ci95": ci, "seeds": n})
    return out


def _group_prefix(group: dict) -> str:
    """``"lambda_ts=0.5 model=x: "``, or nothing for the one group of a single-axis sweep."""
    text = " ".join(f"{k}={v}" for k, v in group.items())
    return f"{text}: " if text else ""


def format_difference(d: dict) -> str:
    return (
        f"{_group_prefix(d['group'])}{d['axis']}={d['value']} − {d['axis']}={d['baseline']} on {d['task']} = "
        f"{_fmt_points(d['difference'])} points (95% CI {_fmt_points(d['ci95'][0])} to {_fmt_points(d['ci95'][1])}; "
        f"paired by seed, {d['seeds']} seeds)"
    )


def _fmt_points(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1f}"


def _ratio_entry(ours: dict, base: dict) -> dict:
    a = [v for v in ours.values() if v is not None]
    b = [v for v in base.values() if v is not None]
    ratio = stats.ratio_ci(a, b) if a and b else (None, None, None)
    # seeds where both converged at a step > 0 (a ratio needs it): the same rows and initial prompt
    pairs = [(ours[s], base[s]) for s in sorted(ours) if s in base and ours[s] and base[s]]
    paired = stats.paired_ratio_ci(*zip(*pairs, strict=True)) if pairs else (None, None, None)
    return {
        "ratio": ratio[0],
        "ci95": [ratio[1], ratio[2]],
        "converged": len(a),
        "runs": len(ours),
        "baseline_converged": len(b),
        "baseline_runs": len(base),
        "paired_ratio": paired[0],
        "paired_ci95": [paired[1], paired[2]],
        "pairs": len(pairs),
    }


def format_ratio(r: dict) -> str:
    return (
        f"{_group_prefix(r['group'])}{r['axis']}={r['value']} ÷ {r['axis']}={r['baseline']} iterations to "
        f"convergence = {_fmt(r['ratio'])} (95% CI {_fmt(r['ci95'][0])}–{_fmt(r['ci95'][1])}; converged "
        f"{r['converged']}/{r['runs']} vs {r['baseline_converged']}/{r['baseline_runs']}); paired by seed "
        f"{_fmt(r['paired_ratio'])} (95% CI {_fmt(r['paired_ci95'][0])}–{_fmt(r['paired_ci95'][1])}, {r['pairs']} seeds)"
    )


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


# ------------------------------------------------------------------------------------------- board


def group_rows(cells: list[CellResult], no_prompt: list[CellResult]) -> tuple[list[str], list[list[str]], list[dict]]:
    """One row per cell group: its axis values, seeds finished, iterations to converge and each task's
    score, mean ± 95% CI half-width over seeds (Student t)."""
    axes = [k for k in (cells[0]["key"] if cells else {}) if k != "seed"]
    tasks = sorted({t for c in cells + no_prompt for t in c["scores"]})
    groups: dict[tuple, list[CellResult]] = {}
    for cell in cells:
        groups.setdefault(tuple(cell["key"].get(a) for a in axes), []).append(cell)
    columns = axes + ["seeds", "iterations to converge"] + [f"{t} (%)" for t in tasks]
    rows, records = [], []
    for values, members in groups.items():
        done = [c for c in members if c["finished"]]
        steps = [c["converged_step"] for c in done if c.get("tracked", True)]  # [] when untracked: "—"
        row = [str(v) for v in values] + [f"{len(done)}/{len(members)}", _iterations(steps)]
        row += [_mean_ci([c["scores"][t] for c in done if t in c["scores"]]) for t in tasks]
        rows.append(row)
        records.append(
            {
                "group": dict(zip(axes, values, strict=True)),
                "finished": len(done),
                "cells": len(members),
                "converged_steps": steps,
                "scores": {t: [c["scores"].get(t) for c in done] for t in tasks},
            }
        )
    for base in no_prompt:  # the model without a prompt (--model hf): one row per model
        variant = f" + {base['key']['eval']}" if "eval" in base["key"] else ""
        label = f"no prompt{variant}: {base['key'].get('model')}"
        head = [label] + [""] * (len(axes) - 1) + [""] if axes else [label]
        rows.append(head + ["—"] + [_mean_ci([base["scores"][t]] if t in base["scores"] else []) for t in tasks])
    return columns, rows, records


def _iterations(steps: list) -> str:
    converged = [s for s in steps if s is not None]
    if not steps:
        return "—"
    if not converged:
        return f"not conv. (0/{len(steps)})"
    return _mean_ci(converged, digits=1) + (
        "" if len(converged) == len(steps) else f" ({len(converged)}/{len(steps)} conv.)"
    )


def _mean_ci(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    mean, half, n = stats.mean_ci(values)
    text = f"{mean:.{digits}f}" if half is None or math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"
    return f"{text} (n={n})"


def topology_against_scores(cells: list[CellResult]) -> list[dict]:
    """Table II over the sweep's scored prompts: per task and topology metric, Spearman's ρ and
    Mann-Whitney U (``topology.topology_accuracy_stats``) between the metric of each cell's final
    prompt and its held-out score, pooled over every cell (seeds, and e.g. steps or methods)."""
    from tsloss_harness.topology import METRIC_KEYS, topology_accuracy_stats

    out = []
    for task in sorted({t for c in cells for t in c["scores"]}):
        scored = [c for c in cells if c["topology"] and task in c["scores"]]
        if len(scored) < 3:
            continue
        for metric in METRIC_KEYS:
            values = [c["topology"][metric] for c in scored if metric in c["topology"]]
            if len(values) == len(scored):
                stats = topology_accuracy_stats(values, [c["scores"][task] for c in scored])
                out.append({"task": task, "metric": metric, **stats})
    return out


def _table2_markdown(rows: list[dict]) -> str:
    def fmt(v, digits=3):
        return "N/A" if v is None else f"{v:.{digits}g}"

    columns = ["task", "metric", "n", "Spearman ρ", "p", "Mann-Whitney U", "p"]
    body = [
        [r["task"], r["metric"], str(r["n"]), fmt(r["spearman_rho"]), fmt(r["spearman_p"])]
        + [fmt(r["mannwhitney_u"], 4), fmt(r["mannwhitney_p"])]
        for r in rows
    ]
    return (
        "\n### Table II: topology of the scored prompts against their scores\n\n"
        + leaderboard.markdown_table(columns, body)
        + "\n\nover every scored cell; U compares the metric of the cells at or below the median score with the rest.\n"
    )


def _differences_markdown(differences: list[dict]) -> str:
    rows = [
        [" ".join(f"{k}={v}" for k, v in d["group"].items()), f"{d['axis']}={d['value']} − {d['baseline']}", d["task"]]
        + [_fmt_points(d["difference"]), f"{_fmt_points(d['ci95'][0])} to {_fmt_points(d['ci95'][1])}", str(d["seeds"])]
        for d in differences
    ]
    columns = ["group", "against the baseline", "task", "difference (points)", "95% CI", "seeds"]
    return "\n### Scores against the baseline, paired by seed\n\n" + leaderboard.markdown_table(columns, rows) + "\n"


def render_board(
    cells: list[CellResult], no_prompt: list[CellResult], varying: set[str], differences: list[dict] = ()
) -> tuple[str, list[dict]]:
    """The board's markdown and its group records (groups.json)."""
    columns, rows, records = group_rows(cells, no_prompt)
    text = (
        "### Sweep: cell groups (cells that differ only in seed)\n\n"
        + leaderboard.markdown_table(columns, rows)
        + "\n\nmean ± 95% CI half-width over seeds (Student t); iterations over converged runs; scores: lm-eval, "
        "the leaderboard's metric per task.\n"
    )
    if varying <= PAPER_AXES:
        sources = [s for c in cells + no_prompt for s in c["sources"]]
        if sources:
            measurements, _ = collect(sources)
            text += "\n" + leaderboard.render(leaderboard.build_tables(measurements), "md")
    else:
        text += f"\nThe paper's tables are left out: they do not tell apart the axes {', '.join(sorted(varying - PAPER_AXES))}.\n"
    if differences:
        text += _differences_markdown(differences)
    table2 = topology_against_scores([c for c in cells if c["key"].get("eval", "plain") == "plain"])
    if table2:
        text += _table2_markdown(table2)
    return text, records
