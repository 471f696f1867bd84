"""The paper's training figures for a grid of runs, each run named by its key (the axis values that
made it, and its seed, as a sweep's cells are): Fig. 4 (total loss with and without TSLoss), Fig. 5
(total loss by λ_ts), Fig. 6 (topology over training by regularizer). A figure compares the values of
one axis inside each panel, a panel being the runs whose keys agree on everything else; it is drawn
where some panel holds two of its values and the runs logged what it shows, else a line says why not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tsloss_harness.report.figures import fig_panels, group_colors
from tsloss_harness.report.page import METRIC_TITLES, Report
from tsloss_harness.report.runs import Run


@dataclass(frozen=True)
class PaperFigure:
    name: str
    axis: str  # the key compared inside each panel
    values: tuple | None  # the axis values drawn (None: every value)
    keys: tuple[tuple[str, str], ...]  # (metrics.jsonl key, title)
    caption: str
    needs: str  # what the tuner must log for it, said when nothing was

    @property
    def label(self) -> str:
        return self.caption.split(":")[0]  # "Fig. 4"


LOSS = (("loss", "total loss"),)
SEEDS = " (mean over seeds, band: 95% CI; up to the step that half of the runs reached: runs stopped at convergence end early)."
FIGURES = (
    PaperFigure(
        "fig4",
        "regularizer",
        ("none", "tsloss"),
        LOSS,
        "Fig. 4: total loss with and without TSLoss" + SEEDS,
        "loss",
    ),
    PaperFigure(
        "fig5",
        "lambda_ts",
        None,
        LOSS,
        "Fig. 5: total loss (CE + λ_ts · TSLoss) under each λ_ts" + SEEDS,
        "loss",
    ),
    PaperFigure(
        "fig6",
        "regularizer",
        None,
        tuple((k, METRIC_TITLES[k]) for k in ("h0_count", "h1_count", "h0_mean_lifetime", "h1_mean_lifetime")),
        "Fig. 6: topology of the prompt over training under each regularizer" + SEEDS,
        "topology (tune with topology_every > 0)",
    ),
)


def panels_by(keyed: Sequence[tuple[dict, Run]], axis: str, values: tuple | None) -> dict[str, dict[str, list[Run]]]:
    """Runs in panels (their keys without ``axis`` and seed, named by what differs between panels), each
    panel's runs by their ``axis`` value, in grid order; panels holding fewer than two values are left out."""
    grouped: dict[str, tuple[dict, dict[str, list[Run]]]] = {}
    for key, run in keyed:
        if axis not in key or (values is not None and key[axis] not in values):
            continue
        rest = {k: v for k, v in key.items() if k not in (axis, "seed")}
        curves = grouped.setdefault(repr(rest), (rest, {}))[1]
        curves.setdefault(f"{axis}={key[axis]}", []).append(run)
    kept = [(rest, curves) for rest, curves in grouped.values() if len(curves) >= 2]
    differ = [k for k in (kept[0][0] if kept else {}) if len({repr(rest.get(k)) for rest, _ in kept}) > 1]
    return {" · ".join(f"{k}={rest[k]}" for k in differ): curves for rest, curves in kept}


def paper_figures(keyed: Sequence[tuple[dict, Run]], title: str) -> Report:
    """The page of Figs. 4-6 for runs named by their keys."""
    report = Report(title)
    for figure in FIGURES:
        panels = panels_by(keyed, figure.axis, figure.values)
        wanted = " and ".join(figure.values) if figure.values else "two values"
        if not panels:
            report.blocks.append(
                (
                    "p",
                    f"{figure.label}: not drawn, the grid has no {wanted} of "
                    f"{figure.axis} that differ in nothing else.",
                )
            )
            continue
        labels = list(dict.fromkeys(label for curves in panels.values() for label in curves))
        png = fig_panels(panels, figure.keys, group_colors(dict.fromkeys(labels)))
        if png is None:
            report.blocks.append(("p", f"{figure.label}: not drawn, the runs logged no {figure.needs}."))
        else:
            report.blocks.append(("figure", figure.name, figure.caption, png))
    return report
