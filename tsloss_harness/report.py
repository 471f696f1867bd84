"""``tsloss report``: one self-contained page about one tuner run or a group of them.

    tsloss report runs/tsloss-s0 runs/none-s0 -o report.html      (figures inline as base64 PNG)
    tsloss report runs/ -o report.md                               (figures in report_files/)

What it shows, from each run's ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and prompt
directories (``checkpoints/step-N/``, ``prompt/``):

- loss curves (CE and regularizer) and training accuracy over steps;
- topology over training: H0/H1 counts, mean and max lifetimes, persistence entropy (Figs. 2, 6, 10, 11);
- persistence diagrams, barcodes and pairwise-distance heatmaps of the prompt at chosen checkpoints
  (Figs. 2b/d, 7); PCA and t-SNE of the prompt rows over all checkpoints (Figs. 8, 9);
- Table II: Spearman ρ and Mann-Whitney U between each topology metric and training accuracy over
  the logged steps that have both (``topology_accuracy_stats``).

Runs whose configs differ only in ``seed`` form one group: curves show the group mean with a 95% CI
band (Student t) and Table II pools their steps; checkpoint figures use the group's first run (lowest
seed), one row per group, so strategies sit side by side as in the paper's Figs. 6-9.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsloss_harness.data import DataError, read_jsonl
from tsloss_harness.errors import TslossError, first_line
from tsloss_harness.leaderboard import TABLE_CSS, markdown_table, method_label
from tsloss_harness.measurements import model_name
from tsloss_harness.stats import mean_ci
from tsloss_harness.topology import METRIC_KEYS

__all__ = ["ReportError", "Run", "build_report", "load_run", "table2", "write_report"]

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
EMBEDDING_CHECKPOINTS = 8  # checkpoints per PCA/t-SNE panel (t-SNE cost grows with the square of the points)
METRIC_TITLES = {
    "h0_count": "H0 count",
    "h1_count": "H1 count",
    "h0_mean_lifetime": "H0 mean lifetime",
    "h1_mean_lifetime": "H1 mean lifetime",
    "h0_max_lifetime": "H0 max lifetime",
    "h1_max_lifetime": "H1 max lifetime",
    "persistence_entropy": "Persistence entropy",
}


class ReportError(TslossError, ValueError):
    """A path that is not a readable tuner run; the message is one line naming it."""


# -------------------------------------------------------------------------------------- runs


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


# ------------------------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    _plt().close(fig)
    return buffer.getvalue()


def _band(ax, groups: dict[str, list[Run]], key: str, color_of: dict[str, Any]) -> bool:
    """Group mean over seeds with a 95% CI band where >= 2 runs logged the step. False: nothing to draw."""
    drew = False
    for label, runs in groups.items():
        by_step: dict[float, list[float]] = {}
        for run in runs:
            for s, v in zip(*run.series(key)):
                if math.isfinite(v):
                    by_step.setdefault(s, []).append(v)
        if not by_step:
            continue
        steps = np.array(sorted(by_step))
        stats = [mean_ci(by_step[s]) for s in steps]
        mean = np.array([m for m, _, _ in stats])
        half = np.array([h if h is not None else 0.0 for _, h, _ in stats])
        suffix = f" (n={len(runs)})" if len(runs) > 1 else ""
        ax.plot(
            steps, mean, color=color_of[label], label=label + suffix, lw=1.5, marker="." if len(steps) < 30 else None
        )
        if len(runs) > 1:
            low, high = mean - half, mean + half
            if key == "accuracy" or key in METRIC_KEYS:  # the CI of a share or a count/lifetime stays in range
                low, high = np.clip(low, 0, None), np.clip(high, None, 1.0 if key == "accuracy" else None)
            ax.fill_between(steps, low, high, color=color_of[label], alpha=0.2, lw=0)
        drew = True
    return drew


def fig_curves(groups: dict[str, list[Run]], keys: Sequence[tuple[str, str]], color_of, ncols: int = 4) -> bytes | None:
    plt = _plt()
    keys = [(k, t) for k, t in keys if any(len(r.series(k)[0]) for runs in groups.values() for r in runs)]
    if not keys:
        return None
    ncols = min(ncols, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, keys):
        _band(ax, groups, key, color_of)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    top = 1 - 0.35 / (2.7 * nrows)  # room for the legend above the panels
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    return _png(fig)


def _checkpoint_grid(rows: list[tuple[str, Run, list[int]]], draw, title: str, colorbar: list | None = None) -> bytes:
    """One row per group (its first run), one column per chosen checkpoint step; ``colorbar``: the
    images ``draw`` made, sharing one scale, get one colour bar."""
    plt = _plt()
    ncols = max(len(steps) for _, _, steps in rows)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(2.9 * ncols + 0.6 * bool(colorbar is not None), 2.6 * len(rows)), squeeze=False
    )
    for i, (label, run, steps) in enumerate(rows):
        checkpoints = dict(run.checkpoints)
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(steps):
                ax.set_visible(False)
                continue
            draw(ax, checkpoints[steps[j]])
            ax.set_title(f"{label}\nstep {steps[j]}" if len(rows) > 1 else f"step {steps[j]}", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if colorbar:
        fig.colorbar(colorbar[-1], ax=axes.ravel().tolist(), shrink=0.8, label="distance")
    return _png(fig)


class _PromptCache:
    """Prompt matrices and their persistence, loaded once per checkpoint."""

    def __init__(self):
        self._points: dict[Path, np.ndarray] = {}
        self._topology: dict[Path, dict] = {}

    def points(self, path: Path) -> np.ndarray:
        if path not in self._points:
            from tsloss_harness.prompt import load_prompt

            self._points[path] = load_prompt(path).detach().float().numpy().astype(np.float64)
        return self._points[path]

    def topology(self, path: Path) -> dict:
        if path not in self._topology:
            from tsloss_harness.topology import prompt_topology

            self._topology[path] = prompt_topology(self.points(path))
        return self._topology[path]


def fig_diagrams(rows, cache: _PromptCache) -> bytes:
    top = (
        max(
            (
                d[np.isfinite(d[:, 1]), 1].max(initial=0.0)
                for _, run, steps in rows
                for s in steps
                for d in cache.topology(dict(run.checkpoints)[s])["diagrams"]
            ),
            default=1.0,
        )
        or 1.0
    )
    limit = top * 1.1

    def draw(ax, path):
        for dim, (dgm, color) in enumerate(zip(cache.topology(path)["diagrams"], ("C0", "C1"))):
            birth, death = dgm[:, 0], np.where(np.isfinite(dgm[:, 1]), dgm[:, 1], limit)
            ax.scatter(birth, death, s=10, color=color, label=f"H{dim}", alpha=0.8)
        ax.plot([0, limit], [0, limit], color="grey", lw=0.8)
        ax.axhline(limit, color="grey", ls=":", lw=0.8)  # infinite bars are drawn on this line
        ax.set_xlim(-0.02 * limit, limit * 1.02)
        ax.set_ylim(-0.02 * limit, limit * 1.05)
        ax.set_xlabel("birth", fontsize=7)
        ax.set_ylabel("death", fontsize=7)
        ax.legend(fontsize=6, loc="lower right")

    return _checkpoint_grid(rows, draw, "Persistence diagrams (H0 blue, H1 orange; dotted line: infinite)")


def fig_barcodes(rows, cache: _PromptCache) -> bytes:
    top = (
        max(
            (
                d[np.isfinite(d[:, 1]), 1].max(initial=0.0)
                for _, run, steps in rows
                for s in steps
                for d in cache.topology(dict(run.checkpoints)[s])["diagrams"]
            ),
            default=1.0,
        )
        or 1.0
    )
    limit = top * 1.1

    def draw(ax, path):
        y = 0
        for dgm, color in zip(cache.topology(path)["diagrams"], ("C0", "C1")):
            order = np.lexsort((dgm[:, 1], dgm[:, 0])) if len(dgm) else []
            for birth, death in dgm[order]:
                ax.hlines(y, birth, death if math.isfinite(death) else limit, color=color, lw=1.2)
                y += 1
        ax.set_xlim(0, limit)
        ax.set_ylim(-1, max(y, 1))
        ax.set_yticks([])
        ax.set_xlabel("filtration scale", fontsize=7)

    return _checkpoint_grid(rows, draw, "Persistence barcodes (H0 blue, H1 orange)")


def fig_heatmaps(rows, cache: _PromptCache) -> bytes:
    from tsloss_harness.topology import euclidean_distances

    vmax = max(
        euclidean_distances(cache.points(dict(run.checkpoints)[s])).max() for _, run, steps in rows for s in steps
    )
    images = []

    def draw(ax, path):
        images.append(ax.imshow(euclidean_distances(cache.points(path)), cmap="viridis", vmin=0, vmax=vmax))
        ax.set_xlabel("prompt row", fontsize=7)

    return _checkpoint_grid(rows, draw, "Pairwise Euclidean distances between prompt rows", colorbar=images)


def _embedding_figure(groups_rows, cache: _PromptCache, method: str) -> bytes | None:
    """PCA or t-SNE of the prompt rows at up to ``EMBEDDING_CHECKPOINTS`` checkpoints spread over a run,
    fitted jointly so one panel shows the whole evolution; points coloured by step, grey lines follow
    each prompt row from step to step."""
    plt = _plt()
    panels = []
    for label, run in groups_rows:
        steps = choose_steps(run, None, count=EMBEDDING_CHECKPOINTS)
        if not steps:
            continue
        checkpoints = dict(run.checkpoints)
        stacked = np.concatenate([cache.points(checkpoints[s]) for s in steps])
        n_rows = cache.points(checkpoints[steps[0]]).shape[0]
        if method == "pca":
            from sklearn.decomposition import PCA

            if min(stacked.shape) < 2:
                continue
            xy = PCA(n_components=2, random_state=0).fit_transform(stacked)
        else:
            from sklearn.manifold import TSNE

            if len(stacked) < 4:
                continue
            perplexity = float(min(30.0, (len(stacked) - 1) / 3))
            # Exact gradients: for a few hundred points they are several times cheaper than Barnes-Hut.
            tsne = TSNE(
                n_components=2,
                perplexity=perplexity,
                init="pca",
                random_state=0,
                method="exact" if len(stacked) <= 1000 else "barnes_hut",
            )
            xy = tsne.fit_transform(stacked)
        panels.append((label, steps, n_rows, xy))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels) + 0.8, 3.4), squeeze=False)
    for ax, (label, steps, n_rows, xy) in zip(axes.flat, panels):
        colors = np.repeat(steps, n_rows)
        traj = xy.reshape(len(steps), n_rows, 2)
        for r in range(n_rows):
            ax.plot(traj[:, r, 0], traj[:, r, 1], color="grey", lw=0.4, alpha=0.5)
        sc = ax.scatter(
            xy[:, 0], xy[:, 1], c=colors, cmap="viridis", s=12, vmin=min(steps), vmax=max(max(steps), min(steps) + 1)
        )
        ax.set_title(label if len(panels) > 1 else f"{method.upper()} of prompt rows", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.colorbar(sc, ax=axes.ravel().tolist(), label="step")
    return _png(fig)


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


# ------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """The page as a list of blocks: ("h2"|"p", text), ("table", columns, rows), ("figure", name, caption, png)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.{digits}g}"
    return str(value)


def build_report(
    runs: list[Run], *, steps: Sequence[int] | None = None, tsne: bool = True, title: str | None = None
) -> Report:
    groups = group_runs(runs)
    palette = _plt().get_cmap("tab10")
    color_of = {label: palette(i % 10) for i, label in enumerate(groups)}
    report = Report(title or ("tsloss report: " + ", ".join(groups)))
    cache = _PromptCache()
    detail = [(label, members[0]) for label, members in groups.items() if members[0].checkpoints]
    rows3 = [(label, run, choose_steps(run, steps)) for label, run in detail]  # bad --steps fail first

    report.blocks.append(("h2", "Runs"))
    rows = []
    for run in runs:
        s = run.summary or {}
        final = s.get("final") or (run.metrics[-1] if run.metrics else {})
        rows.append(
            [
                str(run.path),
                run.label,
                _fmt(run.seed),
                _fmt(run.config.get("num_samples")),
                _fmt(s.get("steps", final.get("step"))),
                _fmt(s.get("converged_step")) if run.summary else "unfinished",
                _fmt(final.get("ce")),
                _fmt(final.get("reg")),
                _fmt(final.get("accuracy")),
                _fmt(s.get("wall_time_s"), 3),
            ]
        )
    report.blocks.append(
        (
            "table",
            [
                "Run",
                "Group",
                "Seed",
                "Samples",
                "Steps",
                "Converged at",
                "Final CE",
                "Final reg.",
                "Final acc.",
                "Wall s",
            ],
            rows,
        )
    )

    report.blocks.append(("h2", "Training"))
    png = fig_curves(
        groups,
        [("ce", "Cross-entropy"), ("reg", "Regularizer"), ("loss", "Total loss"), ("accuracy", "Training accuracy")],
        color_of,
    )
    if png:
        report.blocks.append(
            ("figure", "training", "Loss curves and training accuracy (group mean; band: 95% CI over seeds).", png)
        )
    png = fig_curves(groups, [(k, METRIC_TITLES[k]) for k in METRIC_KEYS], color_of)
    if png:
        report.blocks.append(
            ("figure", "topology", "Topology of the prompt over training (paper Figs. 2, 6, 10, 11).", png)
        )
    else:
        report.blocks.append(("p", "No topology metrics were logged (tune with --topology_every)."))

    report.blocks.append(("h2", "Prompt checkpoints"))
    if not detail:
        report.blocks.append(("p", "No checkpoints saved (tune with --save_every)."))
    else:
        if len(runs) > len(detail):
            report.blocks.append(
                (
                    "p",
                    "Each group is shown by its first run: "
                    + "; ".join(f"{label}: {run.path}" for label, run in detail)
                    + ".",
                )
            )
        report.blocks.append(
            ("figure", "diagrams", "Persistence diagrams at chosen checkpoints (Fig. 2b).", fig_diagrams(rows3, cache))
        )
        report.blocks.append(
            ("figure", "barcodes", "Persistence barcodes at chosen checkpoints (Fig. 2d).", fig_barcodes(rows3, cache))
        )
        report.blocks.append(
            ("figure", "heatmaps", "Heatmaps of the pairwise distance matrix (Fig. 7).", fig_heatmaps(rows3, cache))
        )
        png = _embedding_figure(detail, cache, "pca")
        if png:
            report.blocks.append(("figure", "pca", "PCA of the prompt rows over training (Fig. 8).", png))
        if tsne:
            png = _embedding_figure(detail, cache, "tsne")
            if png:
                report.blocks.append(("figure", "tsne", "t-SNE of the prompt rows over training (Fig. 9).", png))

    report.blocks.append(("h2", "Table II: topology metrics against training accuracy"))
    any_stats = False
    for label, members in groups.items():
        stats = table2(members)
        if not stats:
            continue
        any_stats = True
        some = next(iter(stats.values()))
        report.blocks.append(
            (
                "p",
                f"{label}: {some['n']} logged steps with accuracy and topology over "
                f"{len(members)} run(s); Mann-Whitney groups split at accuracy <= "
                f"{_fmt(some['accuracy_threshold'])}.",
            )
        )
        rows = [
            [
                METRIC_TITLES[k],
                _fmt(s["n"]),
                _fmt(s["spearman_rho"], 3) if s["spearman_rho"] is not None else "N/A",
                _fmt(s["spearman_p"], 3) if s["spearman_p"] is not None else "N/A",
                _fmt(s["mannwhitney_u"]),
                _fmt(s["mannwhitney_p"], 3),
            ]
            for k, s in stats.items()
        ]
        report.blocks.append(("table", ["Metric", "n", "Spearman ρ", "p-value", "Mann-Whitney U", "p-value"], rows))
    if not any_stats:
        report.blocks.append(
            (
                "p",
                "Needs at least 3 logged steps with both topology and accuracy "
                "(--eval_every and --topology_every on common steps).",
            )
        )
    return report


# -------------------------------------------------------------------------------------- output


def render_html(report: Report) -> str:
    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    for block in report.blocks:
        kind = block[0]
        if kind == "h2":
            parts.append(f"<h2>{html.escape(block[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in block[2]
            )
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "figure":
            _, name, caption, png = block
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure id="{name}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    css = TABLE_CSS + "figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>'
        f"<style>{css}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def render_markdown(report: Report, figure_dir: Path, link_prefix: str) -> str:
    """Markdown text; figures are written as PNG files into ``figure_dir`` and linked relatively."""
    parts = [f"# {report.title}"]
    for block in report.blocks:
        kind = block[0]
        if kind == "h2":
            parts.append(f"## {block[1]}")
        elif kind == "p":
            parts.append(block[1])
        elif kind == "table":
            parts.append(markdown_table(block[1], block[2]))
        elif kind == "figure":
            _, name, caption, png = block
            figure_dir.mkdir(parents=True, exist_ok=True)
            (figure_dir / f"{name}.png").write_bytes(png)
            parts.append(f"![{caption}]({link_prefix}/{name}.png)\n\n*{caption}*")
    return "\n\n".join(parts) + "\n"


def write_report(report: Report, output: str | Path, fmt: str | None = None) -> Path:
    """Write ``report`` as html (one self-contained file) or md (``<stem>_files/*.png`` beside it)."""
    output = Path(output)
    fmt = fmt or ("md" if output.suffix.lower() in (".md", ".markdown") else "html")
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        text = render_html(report)
    elif fmt == "md":
        figure_dir = output.with_name(f"{output.stem}_files")
        text = render_markdown(report, figure_dir, figure_dir.name)
    else:
        raise ReportError(f"unknown format {fmt!r} (html, md)")
    output.write_text(text)
    return output
