"""The paper's Figs. 4-6 over a grid of runs named by their keys: which runs share a panel, which
curve they join, and what is drawn or said when the grid does not vary what a figure compares."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tsloss_harness.report.paper import FIGURES, panels_by, paper_figures
from tsloss_harness.report.runs import Run


def _run(name: str, loss_scale: float, topology: bool = False) -> Run:
    metrics = []
    for step in range(1, 11):
        record = {"step": step, "loss": loss_scale * np.exp(-step / 4) + 0.01}
        if topology and step % 5 == 0:
            record |= {
                "h0_count": 8,
                "h1_count": step * loss_scale,
                "h0_mean_lifetime": step * loss_scale,
                "h1_mean_lifetime": loss_scale,
            }
        metrics.append(record)
    return Run(Path(name), {}, metrics, None, [])


def _grid(topology: bool = False) -> list[tuple[dict, Run]]:
    keyed = []
    for setting in ("single", "multi"):
        for regularizer, scale in (("none", 2.0), ("tsloss", 1.0), ("h0", 1.5)):
            for seed in (0, 1):
                key = {"setting": setting, "regularizer": regularizer, "lambda_ts": 1.0, "seed": seed}
                keyed.append((key, _run(f"{setting}-{regularizer}-{seed}", scale + seed, topology)))
    # a setting with CE only: nothing to compare it with, in no panel
    keyed.append(({"setting": "ce_only", "regularizer": "none", "lambda_ts": 1.0, "seed": 0}, _run("ce", 2.0)))
    return keyed


def test_a_panel_holds_the_runs_that_differ_only_in_the_axis_and_seed():
    keyed = _grid()
    panels = panels_by(keyed, "regularizer", ("none", "tsloss"))
    assert list(panels) == ["setting=single", "setting=multi"]  # named by what differs between panels
    assert {label: [r.path.name for r in runs] for label, runs in panels["setting=multi"].items()} == {
        "regularizer=none": ["multi-none-0", "multi-none-1"],
        "regularizer=tsloss": ["multi-tsloss-0", "multi-tsloss-1"],
    }
    every = panels_by(keyed, "regularizer", None)
    assert list(every["setting=single"]) == ["regularizer=none", "regularizer=tsloss", "regularizer=h0"]
    assert panels_by(keyed, "lambda_ts", None) == {}  # one value of lambda_ts: nothing to compare
    one_panel = panels_by([kr for kr in keyed if kr[0]["setting"] == "single"], "regularizer", None)
    assert list(one_panel) == [""]  # a single panel needs no name


def _colours_drawn(png: bytes, colours: list) -> list[bool]:
    import matplotlib.image

    rgb = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return [bool((np.abs(rgb - np.asarray(c[:3])).max(axis=2) < 0.06).sum() > 50) for c in colours]


def test_figures_are_drawn_where_the_grid_varies_what_they_compare():
    from matplotlib import colormaps

    tab10 = colormaps["tab10"]
    report = paper_figures(_grid(topology=True), "grid")
    figures = {b[1]: b[3] for b in report.blocks if b[0] == "figure"}
    assert set(figures) == {"fig4", "fig6"}
    # Fig. 4: exactly two curves (CE, TSLoss); Fig. 6: all three regularizers.
    assert _colours_drawn(figures["fig4"], [tab10(0), tab10(1), tab10(2)]) == [True, True, False]
    assert _colours_drawn(figures["fig6"], [tab10(0), tab10(1), tab10(2)]) == [True, True, True]
    said = " ".join(b[1] for b in report.blocks if b[0] == "p")
    assert "Fig. 5: not drawn" in said and "lambda_ts" in said


def test_a_figure_whose_metrics_were_not_logged_says_so():
    keyed = [({"lambda_ts": lam, "seed": s}, _run(f"{lam}-{s}", 1 + lam)) for lam in (0, 0.5, 10) for s in (0, 1)]
    report = paper_figures(keyed, "lambda")
    assert [b[1] for b in report.blocks if b[0] == "figure"] == ["fig5"]
    said = " ".join(b[1] for b in report.blocks if b[0] == "p")
    assert "Fig. 4: not drawn" in said and "Fig. 6: not drawn" in said
    assert len(FIGURES) == 3


def test_curves_end_where_fewer_than_half_of_the_runs_are_still_training():
    from tsloss_harness.report.figures import _band, _plt

    def stopped(steps: int) -> Run:
        run = _run(f"stopped-{steps}", 1.0)
        run.metrics = run.metrics[:steps]
        return run

    fig, ax = _plt().subplots()
    _band(ax, {"two long": [stopped(10), stopped(10), stopped(4)]}, "loss", {"two long": "C0"}, min_share=0.5)
    _band(ax, {"one long": [stopped(10), stopped(4), stopped(4)]}, "loss", {"one long": "C1"}, min_share=0.5)
    assert [line.get_xdata().max() for line in ax.lines] == [10, 4]
    _plt().close(fig)
