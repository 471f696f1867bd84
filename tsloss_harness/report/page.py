"""The report as a page of blocks, built section by section: runs, training, prompt checkpoints,
Table II. Nothing here writes files (``render`` does)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tsloss_harness.report.figures import (
    PromptCache,
    fig_barcodes,
    fig_curves,
    fig_diagrams,
    fig_embedding,
    fig_heatmaps,
    group_colors,
)
from tsloss_harness.report.runs import Run, choose_steps, group_runs, table2
from tsloss_harness.topology import METRIC_KEYS

METRIC_TITLES = {
    "h0_count": "H0 count",
    "h1_count": "H1 count",
    "h0_mean_lifetime": "H0 mean lifetime",
    "h1_mean_lifetime": "H1 mean lifetime",
    "h0_max_lifetime": "H0 max lifetime",
    "h1_max_lifetime": "H1 max lifetime",
    "persistence_entropy": "Persistence entropy",
}


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
    """The page for ``runs``. ``steps``: the checkpoints of the diagrams, barcodes and heatmaps (default:
    up to 4 spread over each run); ``tsne=False`` skips the t-SNE figure."""
    groups = group_runs(runs)
    color_of = group_colors(groups)
    report = Report(title or ("tsloss report: " + ", ".join(groups)))
    # Checkpoint figures show each group by its first run (lowest seed); a bad --steps fails before any drawing.
    shown = [(label, members[0]) for label, members in groups.items() if members[0].checkpoints]
    checkpoint_rows = [(label, run, choose_steps(run, steps)) for label, run in shown]
    report.blocks += _runs_section(runs)
    report.blocks += _training_section(groups, color_of)
    report.blocks += _checkpoints_section(runs, shown, checkpoint_rows, tsne)
    report.blocks += _table2_section(groups)
    return report


def _runs_section(runs: list[Run]) -> list[tuple]:
    """One table row per run: its group, seed, steps, convergence and final metrics."""
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
    columns = [
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
    ]
    return [("h2", "Runs"), ("table", columns, rows)]


def _training_section(groups: dict[str, list[Run]], color_of: dict[str, Any]) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Training")]
    png = fig_curves(
        groups,
        [("ce", "Cross-entropy"), ("reg", "Regularizer"), ("loss", "Total loss"), ("accuracy", "Training accuracy")],
        color_of,
    )
    if png:
        blocks.append(
            ("figure", "training", "Loss curves and training accuracy (group mean; band: 95% CI over seeds).", png)
        )
    png = fig_curves(groups, [(k, METRIC_TITLES[k]) for k in METRIC_KEYS], color_of)
    if png:
        blocks.append(("figure", "topology", "Topology of the prompt over training (paper Figs. 2, 6, 10, 11).", png))
    else:
        blocks.append(("p", "No topology metrics were logged (tune with --topology_every)."))
    return blocks


def _checkpoints_section(
    runs: list[Run], shown: list[tuple[str, Run]], checkpoint_rows: list[tuple[str, Run, list[int]]], tsne: bool
) -> list[tuple]:
    """Figures of the prompt at ``checkpoint_rows``' steps, then its rows embedded over all of training."""
    blocks: list[tuple] = [("h2", "Prompt checkpoints")]
    if not shown:
        blocks.append(("p", "No checkpoints saved (tune with --save_every)."))
        return blocks
    if len(runs) > len(shown):
        blocks.append(
            (
                "p",
                "Each group is shown by its first run: "
                + "; ".join(f"{label}: {run.path}" for label, run in shown)
                + ".",
            )
        )
    cache = PromptCache()
    blocks += [
        (
            "figure",
            "diagrams",
            "Persistence diagrams at chosen checkpoints (Fig. 2b).",
            fig_diagrams(checkpoint_rows, cache),
        ),
        (
            "figure",
            "barcodes",
            "Persistence barcodes at chosen checkpoints (Fig. 2d).",
            fig_barcodes(checkpoint_rows, cache),
        ),
        (
            "figure",
            "heatmaps",
            "Heatmaps of the pairwise distance matrix (Fig. 7).",
            fig_heatmaps(checkpoint_rows, cache),
        ),
    ]
    png = fig_embedding(shown, cache, "pca")
    if png:
        blocks.append(("figure", "pca", "PCA of the prompt rows over training (Fig. 8).", png))
    if tsne:
        png = fig_embedding(shown, cache, "tsne")
        if png:
            blocks.append(("figure", "tsne", "t-SNE of the prompt rows over training (Fig. 9).", png))
    return blocks


def _table2_section(groups: dict[str, list[Run]]) -> list[tuple]:
    """Table II per group, pooling the steps of its seeds."""
    blocks: list[tuple] = [("h2", "Table II: topology metrics against training accuracy")]
    any_stats = False
    for label, members in groups.items():
        stats = table2(members)
        if not stats:
            continue
        any_stats = True
        some = next(iter(stats.values()))
        blocks.append(
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
        blocks.append(("table", ["Metric", "n", "Spearman ρ", "p-value", "Mann-Whitney U", "p-value"], rows))
    if not any_stats:
        blocks.append(
            (
                "p",
                "Needs at least 3 logged steps with both topology and accuracy "
                "(--eval_every and --topology_every on common steps).",
            )
        )
    return blocks
