"""The report's figures, each returned as PNG bytes: curves over training per group, and the prompt
at chosen checkpoints (diagrams, barcodes, distance heatmaps, PCA/t-SNE). matplotlib and sklearn are
imported on first use."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tsloss_harness.report.runs import Run, choose_steps
from tsloss_harness.stats import mean_ci
from tsloss_harness.topology import METRIC_KEYS

EMBEDDING_CHECKPOINTS = 8  # checkpoints per PCA/t-SNE panel (t-SNE cost grows with the square of the points)


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


def group_colors(groups: dict[str, list[Run]]) -> dict[str, Any]:
    """One tab10 colour per group, in group order, the same in every figure."""
    palette = _plt().get_cmap("tab10")
    return {label: palette(i % 10) for i, label in enumerate(groups)}


def _band(ax, groups: dict[str, list[Run]], key: str, color_of: dict[str, Any], min_share: float = 0.0) -> bool:
    """Group mean over seeds with a 95% CI band where >= 2 runs logged the step, at the steps that at
    least ``min_share`` of the group's runs logged (runs that stop at convergence leave the slow ones
    alone at the end). False: nothing to draw."""
    drew = False
    for label, runs in groups.items():
        by_step: dict[float, list[float]] = {}
        for run in runs:
            for s, v in zip(*run.series(key)):
                if math.isfinite(v):
                    by_step.setdefault(s, []).append(v)
        by_step = {s: v for s, v in by_step.items() if len(v) >= min_share * len(runs)}
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


def _over_steps(ax, title: str, fontsize: int) -> None:
    """The look of a curve over training steps."""
    ax.set_title(title, fontsize=fontsize)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


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
        _over_steps(ax, title, fontsize=10)
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


class PromptCache:
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


def _diagram_limit(rows, cache: PromptCache) -> float:
    """The scale shared by every diagram or barcode panel: 10% above the largest finite death."""
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
    return top * 1.1


def fig_diagrams(rows, cache: PromptCache) -> bytes:
    limit = _diagram_limit(rows, cache)

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


def fig_barcodes(rows, cache: PromptCache) -> bytes:
    limit = _diagram_limit(rows, cache)

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


def fig_heatmaps(rows, cache: PromptCache) -> bytes:
    from tsloss_harness.topology import euclidean_distances

    vmax = max(
        euclidean_distances(cache.points(dict(run.checkpoints)[s])).max() for _, run, steps in rows for s in steps
    )
    images = []

    def draw(ax, path):
        images.append(ax.imshow(euclidean_distances(cache.points(path)), cmap="viridis", vmin=0, vmax=vmax))
        ax.set_xlabel("prompt row", fontsize=7)

    return _checkpoint_grid(rows, draw, "Pairwise Euclidean distances between prompt rows", colorbar=images)


def fig_embedding(groups_rows, cache: PromptCache, method: str) -> bytes | None:
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


def fig_panels(
    panels: dict[str, dict[str, list[Run]]], keys: Sequence[tuple[str, str]], color_of, log_keys=("loss",)
) -> bytes | None:
    """One axes per (panel, key): each panel's curves (label -> runs, mean ± 95% CI over seeds, while at
    least half of the runs are still training) for each key. One key: panels in rows of up to 4;
    several keys: a row per panel, a column per key."""
    plt = _plt()
    cells = [
        (p, k, t)
        for p, curves in panels.items()
        for k, t in keys
        if any(len(r.series(k)[0]) for rs in curves.values() for r in rs)
    ]
    if not cells:
        return None
    ncols = len(keys) if len(keys) > 1 else min(4, len(cells))
    nrows = math.ceil(len(cells) / ncols) if len(keys) == 1 else len(panels)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    row_of, column_of = {p: i for i, p in enumerate(panels)}, {k: j for j, (k, _) in enumerate(keys)}
    used = []
    for i, (panel, key, title) in enumerate(cells):
        ax = axes.flat[i] if len(keys) == 1 else axes[row_of[panel], column_of[key]]
        _band(ax, panels[panel], key, color_of, min_share=0.5)
        if key in log_keys and all(v > 0 for rs in panels[panel].values() for r in rs for v in r.series(key)[1]):
            ax.set_yscale("log")
        _over_steps(ax, f"{panel}: {title}" if panel else title, fontsize=9)
        used.append(ax)
    for ax in axes.flat:
        if ax not in used:
            ax.set_visible(False)
    labels = list(dict.fromkeys(label for curves in panels.values() for label in curves))
    handles = [plt.Line2D([], [], color=color_of[label], lw=1.5) for label in labels]
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.8 * nrows)))
    return _png(fig)
