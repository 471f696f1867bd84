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

The package reads in the order a report is made, each module using only those before it: ``runs``
(run directories loaded and grouped, checkpoint steps, Table II's statistics), ``figures`` (the PNGs),
``page`` (the report as a list of blocks, section by section), ``render`` (HTML or Markdown on disk).
"""

from __future__ import annotations

from tsloss_harness.report.page import build_report
from tsloss_harness.report.render import write_report
from tsloss_harness.report.runs import ReportError, Run, load_run, table2

__all__ = ["ReportError", "Run", "build_report", "load_run", "table2", "write_report"]
