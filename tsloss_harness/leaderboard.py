"""``tsloss leaderboard``: the paper's tables from lm-eval results files and tuner run directories.

    tsloss leaderboard results/ runs/ -o board.md        (or .csv, .html; stdout without -o)

Inputs are collected into plain measurements (``tsloss_harness.measurements``: one value per model,
data set, setting, method and seed) and laid out here as:

- Table III  accuracy (%) per model x data set (rows) and method (columns), from lm-eval results
  JSON (``results_<date>.json`` of ``lm_eval --output_path``, any model; a ``tsprompt`` or
  ``hf,peft=`` prompt contributes its tsloss.json provenance: method, regularizer, seed);
- Table IV   iterations to convergence (``summary.json`` ``converged_step``) per model x method
  (rows) and setting x data set (columns), from tuner run directories;
- Table VI   the regularizer ablation of Table IV with the relative improvement over the CE baseline
  (regularizer ``none``).

Several seeds aggregate to mean ± 95% CI half-width (Student t, n-1 degrees of freedom; the intervals
are ``tsloss_harness.stats``); a cell nobody measured shows "—", never 0. Runs that did not converge
are left out of the mean and counted: "62.0 ± 3.1 (18/20 conv.)", or "not conv. (0/20)".
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tsloss_harness.measurements import LeaderboardError, Measurement
from tsloss_harness.stats import mean_ci, ratio_ci

__all__ = ["Table", "build_tables", "method_label", "render"]

MISSING = "—"
# Table columns in the paper's order: the plain prompt first, the proposed regularizer last.
REGULARIZER_ORDER = ("none", "l2", "pdloss", "h0", "h1", "tsloss")
ABLATION_NAMES = {
    "none": "CE baseline",
    "h0": "CE + H0 only",
    "h1": "CE + H1 only",
    "tsloss": "CE + TSLoss",
    "l2": "CE + L2",
    "pdloss": "CE + PDLoss",
}


def method_label(method: str | None, regularizer: str | None) -> str:
    """ "prompt" for plain prompt tuning, "prompt+tsloss" with a regularizer; the column names."""
    method = method or "prompt"
    return method if regularizer in (None, "", "none") else f"{method}+{regularizer}"


# ---------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A rendered table: display text for every cell plus long-form records for CSV."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _cell(values: list[float | None], digits: int, show_n: bool) -> tuple[str, dict]:
    """Display text and CSV record of one cell; None values are runs that did not converge."""
    done = [v for v in values if v is not None]
    record: dict[str, Any] = {
        "n": len(done),
        "n_runs": len(values),
        "mean": "",
        "ci95": "",
        "values": ";".join("" if v is None else f"{v:g}" for v in values),
    }
    if not values:
        return MISSING, record
    if not done:
        return f"not conv. (0/{len(values)})", record
    mean, half, n = mean_ci(done)
    record["mean"], record["ci95"] = round(mean, 6), "" if half is None else round(half, 6)
    text = _fmt(mean, digits) if half is None else f"{_fmt(mean, digits)} ± {_fmt(half, digits)}"
    if len(done) < len(values):
        text += f" ({len(done)}/{len(values)} conv.)"
    elif show_n:
        text += f" (n={n})"
    return text, record


def _method_key(label: tuple[str, str | None]) -> tuple:
    method, regularizer = label
    reg = regularizer or "none"
    order = REGULARIZER_ORDER.index(reg) if reg in REGULARIZER_ORDER else len(REGULARIZER_ORDER)
    return (method != "base", method != "prompt", method, order, reg)


def _n_note(cells: list[list[float | None]]) -> tuple[bool, list[str]]:
    """Show n in every cell unless all filled cells share it (then one note says so)."""
    sizes = {len(c) for c in cells if c}
    if len(sizes) <= 1:
        n = sizes.pop() if sizes else 0
        return False, (
            [f"{n} seed{'s' if n != 1 else ''} per cell; mean ± 95% CI half-width (Student t)."] if n > 1 else []
        )
    return True, ["n = runs per cell; mean ± 95% CI half-width (Student t)."]


def table_accuracy(ms: list[Measurement]) -> Table | None:
    """Table III: accuracy (%) per model x data set, one column per method."""
    ms = [m for m in ms if m.kind == "accuracy"]
    if not ms:
        return None
    methods = sorted({(m.method, m.regularizer) for m in ms}, key=_method_key)
    rows_keys = sorted({(m.model, m.dataset) for m in ms})
    grid = {
        (r, c): [m.value for m in ms if (m.model, m.dataset) == r and (m.method, m.regularizer) == c]
        for r in rows_keys
        for c in methods
    }
    show_n, notes = _n_note(list(grid.values()))
    table = Table(
        "III",
        "Table III: accuracy (%) per model, data set and method",
        ["Model", "Dataset"] + [method_label(*c) for c in methods],
        [],
        notes=notes,
    )
    for r in rows_keys:
        row = list(r)
        for c in methods:
            text, record = _cell(grid[(r, c)], 1, show_n)
            row.append(text)
            table.records.append(
                {
                    "table": "III",
                    "model": r[0],
                    "dataset": r[1],
                    "setting": "",
                    "method": method_label(*c),
                    "metric": "accuracy_pct",
                    **record,
                }
            )
        table.rows.append(row)
    metrics = sorted({m.source.rsplit(":", 1)[-1] + f" ({m.dataset})" for m in ms})
    table.notes.append("Metric: " + ", ".join(metrics) + ".")
    return table


def table_convergence(ms: list[Measurement]) -> Table | None:
    """Table IV: iterations to 100% training accuracy per model x method, columns setting x data set."""
    ms = [m for m in ms if m.kind == "iterations"]
    if not ms:
        return None
    methods = sorted({(m.method, m.regularizer) for m in ms}, key=_method_key)
    columns = sorted({(m.setting, m.dataset) for m in ms}, key=lambda c: (_setting_key(c[0]), c[1]))
    models = sorted({m.model for m in ms})
    grid = {
        (mo, me, c): [
            m.value for m in ms if m.model == mo and (m.method, m.regularizer) == me and (m.setting, m.dataset) == c
        ]
        for mo in models
        for me in methods
        for c in columns
    }
    show_n, notes = _n_note(list(grid.values()))
    table = Table(
        "IV",
        "Table IV: iterations to converge (first step with 100% training accuracy)",
        ["Model", "Method"] + [f"{s} {d}" for s, d in columns],
        [],
        notes=notes,
    )
    for mo in models:
        for me in methods:
            if not any(grid[(mo, me, c)] for c in columns):
                continue
            row = [mo, method_label(*me)]
            for c in columns:
                text, record = _cell(grid[(mo, me, c)], 1, show_n)
                row.append(text)
                table.records.append(
                    {
                        "table": "IV",
                        "model": mo,
                        "dataset": c[1],
                        "setting": c[0],
                        "method": method_label(*me),
                        "metric": "converged_step",
                        **record,
                    }
                )
            table.rows.append(row)
    table.notes.append("Runs that did not converge are excluded from the mean and counted as (converged/runs).")
    return table


def _setting_key(setting: str) -> tuple:
    return ({"single-sample": 0, "multi-sample": 1}.get(setting, 2), setting)


def table_ablation(ms: list[Measurement]) -> Table | None:
    """Table VI: per model, data set, setting and method, each regularizer against the CE baseline
    (regularizer none): iterations to converge and relative improvement 1 - mean/mean_baseline."""
    ms = [m for m in ms if m.kind == "iterations"]
    groups = sorted(
        {(m.model, m.dataset, m.setting, m.method) for m in ms}, key=lambda g: (g[0], g[1], _setting_key(g[2]), g[3])
    )
    entries = []  # (group, regularizer, values, baseline values)
    for group in groups:
        runs = [m for m in ms if (m.model, m.dataset, m.setting, m.method) == group]
        by_reg: dict[str, list] = {}
        for m in runs:
            by_reg.setdefault(m.regularizer or "none", []).append(m.value)
        if "none" not in by_reg or len(by_reg) < 2:
            continue
        base = [v for v in by_reg["none"] if v is not None]
        for reg in sorted(by_reg, key=lambda r: _method_key((group[3], r))):
            entries.append((group, reg, by_reg[reg], base))
    if not entries:
        return None
    show_n, notes = _n_note([values for _, _, values, _ in entries])
    table = Table(
        "VI",
        "Table VI: convergence of the loss components against the CE baseline",
        ["Model", "Dataset", "Setting", "Configuration", "Iterations to converge", "Improvement"],
        [],
        notes=notes,
    )
    for group, reg, values, base in entries:
        text, record = _cell(values, 1, show_n)
        done = [v for v in values if v is not None]
        improvement = MISSING if reg == "none" or not done or not base else _improvement(done, base, record)
        name = ABLATION_NAMES.get(reg, f"CE + {reg}")
        if group[3] != "prompt":
            name = f"{name} ({group[3]})"
        table.rows.append([group[0], group[1], group[2], name, text, improvement])
        table.records.append(
            {
                "table": "VI",
                "model": group[0],
                "dataset": group[1],
                "setting": group[2],
                "method": method_label(group[3], reg),
                "metric": "converged_step",
                **record,
            }
        )
    table.notes.append(
        "Improvement = 1 - mean(iterations) / mean(CE baseline iterations); 95% CI of the ratio "
        "by the delta method on its logarithm (Welch dof), over converged runs."
    )
    return table


def _improvement(values: list[float], base: list[float], record: dict) -> str:
    ratio, low, high = ratio_ci(values, base)
    record["ratio_to_baseline"] = round(ratio, 6)
    text = f"{100 * (1 - ratio):.1f}%"
    if low is not None:
        record["ratio_ci95_low"], record["ratio_ci95_high"] = round(low, 6), round(high, 6)
        text += f" [{100 * (1 - high):.1f}, {100 * (1 - low):.1f}]"
    return text


def build_tables(measurements: list[Measurement]) -> list[Table]:
    return [
        t for t in (table_accuracy(measurements), table_convergence(measurements), table_ablation(measurements)) if t
    ]


# ------------------------------------------------------------------------------------- rendering


CSV_FIELDS = (
    "table",
    "model",
    "dataset",
    "setting",
    "method",
    "metric",
    "n",
    "n_runs",
    "mean",
    "ci95",
    "ratio_to_baseline",
    "ratio_ci95_low",
    "ratio_ci95_high",
    "values",
)


def render(tables: list[Table], fmt: str) -> str:
    """The tables as ``md``, ``html`` (one self-contained page) or ``csv`` (long form: one row per cell)."""
    if fmt == "md":
        return "\n".join(_markdown(t) for t in tables)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for t in tables:
            for record in t.records:
                writer.writerow({k: record.get(k, "") for k in CSV_FIELDS})
        return buffer.getvalue()
    if fmt == "html":
        body = "\n".join(html_table(t) for t in tables)
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>tsloss leaderboard</title>'
            f"<style>{TABLE_CSS}</style></head><body>\n<h1>tsloss leaderboard</h1>\n{body}\n</body></html>\n"
        )
    raise LeaderboardError(f"unknown format {fmt!r} (md, csv, html)")


TABLE_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1em}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    ".note{color:#555;font-size:.9em;margin:.2em 0}"
)


def _escape_md(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_escape_md(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_escape_md(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(t: Table) -> str:
    notes = "".join(f"\n{n}" for n in t.notes)
    return f"### {t.title}\n\n{markdown_table(t.columns, t.rows)}\n{notes}\n"


def html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in t.rows)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in t.notes)
    return f"<h2>{html.escape(t.title)}</h2>\n<table><tr>{head}</tr>{body}</table>{notes}"
