"""``ph_exact``: a regularizer built from the true Vietoris-Rips persistence of the prompt rows.

Where TSLoss (``losses.ts_loss``) uses smooth stand-ins for the diagram, ``ph_exact`` computes the
diagram itself (ripser, as ``topology.prompt_topology`` does), finds the edge behind every birth and
death, and writes the loss with the torch distances of those vertex pairs, so gradients flow through
the diagram, as in topological autoencoders (Moor et al., 2020):

    ph_exact = β_H0 · Var(finite H0 death times) + β_H1 · Σ over finite H1 bars (death - birth)

The first term is the exact quantity L_H0 approximates (every H0 bar is born at 0, so lifetime =
death); the second is the total H1 persistence, what L_H1 aims to suppress. The variance is the
population variance (mean over bars), as L_H0 is a mean over points.

Which edge is behind which value (``persistence_edges``):
- H0: the deaths are the edge lengths of a minimum spanning tree (scipy), exactly: the MST of the
  edges' ranks in ripser's filtration order, which is the tree ripser's own union-find builds, so
  even with ties the pairing is ripser's.
- H1: ripser's representative cocycle of a bar (``do_cocycles=True``) is its whole reduction column:
  the bar's own edge plus edges that come before it in ripser's column order (larger diameter, or equal
  diameter and smaller index). So the birth edge is the cocycle edge last in that order: minimal
  float32 diameter, then largest combinatorial index (ripser's own tie rule). The death edge is the
  one edge whose float32 length is the death value when only one has it (generic data); otherwise
  the pivot triangle of the cocycle's coboundary is found (among triangles with an odd number of
  cocycle edges, Z/2: minimal diameter, then largest index) and its longest edge taken (two equally
  long: the larger index). These rules reproduce ripser's pairing, ties included, using the
  same float32 diameters ripser sees; tests check every recovered value against ripser's diagram.
Where two edges tie, the diagram is not differentiable; the gradient is then that of ripser's pairing.

Distances of the selected pairs are ``||x_i - x_j||`` from ``points`` in fp32 (fp64 for fp64 input):
exact, no epsilon; coinciding rows give distance 0 with gradient 0, never NaN. Cost: one float64
distance matrix (scipy), one ripser call with cocycles and O(P) differences of length d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tsloss_harness.losses import _compute_dtype, _zero
from tsloss_harness.regularizers import DEFAULTS
from tsloss_harness.topology import _as_numpy, euclidean_distances

__all__ = ["PersistenceEdges", "persistence_edges", "ph_exact"]


@dataclass
class PersistenceEdges:
    """Vertex pairs behind the finite bars of the Rips diagram; each array is [n, 2] of row indices."""

    h0_death: np.ndarray  # one MST edge per finite H0 bar
    h1_birth: np.ndarray  # per finite H1 bar, the edge that creates the loop ...
    h1_death: np.ndarray  # ... and the longest edge of the triangle that fills it (same order)


def _edge_index(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """ripser's combinatorial index of edge {i, j}: C(max, 2) + min."""
    hi, lo = np.maximum(i, j), np.minimum(i, j)
    return hi * (hi - 1) // 2 + lo


def _triangle_index(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """ripser's combinatorial index of triangle {a, b, c}: C(v0, 3) + C(v1, 2) + v2, v0 > v1 > v2."""
    v = np.sort(np.stack([a, b, c]), axis=0)
    return v[2] * (v[2] - 1) * (v[2] - 2) // 6 + v[1] * (v[1] - 1) // 2 + v[0]


def _ripser_order(d32: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Argsort of simplices as ripser's filtration order: diameter up, then combinatorial index down."""
    return np.lexsort((-index, d32))


def _mst_edges(d32: np.ndarray, thresh: float) -> np.ndarray:
    """ripser's H0 pairing: Kruskal over the edges in its filtration order, i.e. the (unique) minimum
    spanning tree of the edges' ranks in that order. Ranks, not lengths, go to scipy: its dense input
    reads values within 1e-8 of 0 as "no edge" (np.ma.masked_values), which would drop coinciding rows."""
    from scipy.sparse.csgraph import minimum_spanning_tree

    n = len(d32)
    i, j = np.triu_indices(n, 1)
    rank = np.empty(len(i), dtype=np.float64)
    rank[_ripser_order(d32[i, j], _edge_index(i, j))] = np.arange(1, len(i) + 1)
    weights = np.zeros((n, n))
    weights[i, j] = rank
    tree = minimum_spanning_tree(weights).tocoo()
    keep = d32[tree.row, tree.col] <= np.float32(thresh)  # longer edges: bars still alive, infinite
    return np.stack([tree.row[keep], tree.col[keep]], axis=1).astype(np.int64)


def _h1_edges(cocycles: list[np.ndarray], deaths: np.ndarray, d32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Birth and death edges [k, 2] of k H1 bars from their representative cocycles ([m, 3]: i, j,
    value) and death values (float32, as ripser reports them)."""
    n = len(d32)
    bar = np.concatenate([np.full(len(c), b) for b, c in enumerate(cocycles)])
    u, v = (np.concatenate([np.asarray(c)[:, col] for c in cocycles]).astype(np.int64) for col in (0, 1))
    # birth: per bar, the cocycle edge last in ripser's column order = first in filtration order
    order = np.lexsort((-_edge_index(u, v), d32[u, v], bar))
    first = order[np.unique(bar[order], return_index=True)[1]]
    birth = np.stack([u[first], v[first]], axis=1)
    # death: the edge of that length when only one edge has it (generic data: every bar) ...
    i, j = np.triu_indices(n, 1)
    lengths = d32[i, j]
    by_length = np.argsort(lengths, kind="stable")
    lo = np.searchsorted(lengths[by_length], deaths, side="left")
    hi = np.searchsorted(lengths[by_length], deaths, side="right")
    unique = hi - lo == 1
    pick = by_length[np.minimum(lo, len(lengths) - 1)]
    death = np.stack([i[pick], j[pick]], axis=1)
    # ... else ripser's rule: the first triangle (filtration order) of the cocycle's coboundary (Z/2)
    tied = np.flatnonzero(~unique)
    if len(tied):
        death[tied] = _death_edges_from_coboundary(bar, u, v, tied, d32)
    return birth, death


def _death_edges_from_coboundary(
    bar: np.ndarray, u: np.ndarray, v: np.ndarray, bars: np.ndarray, d32: np.ndarray
) -> np.ndarray:
    """Death edges [len(bars), 2] of the given bars: the longest side of the pivot triangle of the
    coboundary of each bar's cocycle (edges u-v of bar ``bar``)."""
    n = len(d32)
    keep = np.isin(bar, bars)
    bar, u, v = np.searchsorted(bars, bar[keep]), u[keep], v[keep]
    k = len(bars)
    in_cocycle = np.zeros((k, n, n), dtype=np.int8)
    in_cocycle[bar, u, v] = in_cocycle[bar, v, u] = 1
    m = len(u)
    tb, tu, tv, tw = np.repeat(bar, n), np.repeat(u, n), np.repeat(v, n), np.tile(np.arange(n), m)
    odd = (tw != tu) & (tw != tv)
    odd &= (in_cocycle[tb, tu, tv] + in_cocycle[tb, tu, tw] + in_cocycle[tb, tv, tw]) % 2 == 1
    tb, tu, tv, tw = tb[odd], tu[odd], tv[odd], tw[odd]
    sides = np.stack([d32[tu, tv], d32[tu, tw], d32[tv, tw]])  # [3, t]
    diameter = sides.max(axis=0)
    order = np.lexsort((-_triangle_index(tu, tv, tw), diameter, tb))
    first = order[np.unique(tb[order], return_index=True)[1]]
    if len(first) != k:
        raise RuntimeError("ripser returned an H1 cocycle whose coboundary is empty; cannot pair its death")
    # the death edge: the triangle's longest side; equally long sides go to the larger edge index
    ends = np.array([[tu, tv], [tu, tw], [tv, tw]])[:, :, first]  # [3 sides, 2 ends, k]
    side_index = _edge_index(ends[:, 0], ends[:, 1])
    longest = sides[:, first] == diameter[first]
    pick = np.argmax(np.where(longest, side_index, -1), axis=0)
    death = ends[pick, :, np.arange(k)]
    return death


def persistence_edges(points: Any, max_edge_length: float | None = None) -> PersistenceEdges:
    """The vertex pairs whose distances are the finite births and deaths of the Rips diagram of
    ``points`` ([P, d] tensor or array; H0 and H1, Z/2). ``max_edge_length`` as in ``prompt_topology``:
    bars alive at that threshold are infinite and have no death edge, so they are left out.

    H0 has one edge per finite bar of the full pairing, zero-length ones included (coinciding rows),
    which ripser leaves out of its diagram: P - 1 edges when the complex is connected.
    """
    from ripser import ripser

    distances = euclidean_distances(_as_numpy(points))
    n = len(distances)
    empty = np.zeros((0, 2), dtype=np.int64)
    if n < 2:
        return PersistenceEdges(empty, empty, empty)
    # As in prompt_topology: above the enclosing radius nothing is born or dies.
    enclosing = float(distances.max(axis=1).min())
    thresh = enclosing if max_edge_length is None else min(float(max_edge_length), math.inf)
    result = ripser(distances, distance_matrix=True, maxdim=1, thresh=thresh, coeff=2, do_cocycles=True)
    d32 = distances.astype(np.float32)  # the diameters ripser compares
    h1 = result["dgms"][1]
    finite = np.isfinite(h1[:, 1])
    cocycles = [c for c, alive in zip(result["cocycles"][1], finite) if alive]
    birth, death = _h1_edges(cocycles, h1[finite, 1].astype(np.float32), d32) if cocycles else (empty, empty)
    return PersistenceEdges(_mst_edges(d32, thresh), birth.astype(np.int64), death.astype(np.int64))


def _edge_lengths(x: torch.Tensor, edges: np.ndarray) -> torch.Tensor:
    index = torch.as_tensor(edges, dtype=torch.long, device=x.device)
    # ||x_i - x_j|| of the selected pairs only: exact, and the gradient at a 0 distance is 0.
    # (index_select: its backward, index_add, is several times faster on CPU than x[index]'s.)
    return torch.linalg.vector_norm(x.index_select(0, index[:, 0]) - x.index_select(0, index[:, 1]), dim=1)


def ph_exact(
    points: torch.Tensor,
    *,
    beta_h0: float = DEFAULTS["beta_h0"],
    beta_h1: float = DEFAULTS["beta_h1"],
    max_edge_length: float | None = None,
    **_unused: object,
) -> torch.Tensor:
    """``beta_h0 · Var(finite H0 deaths) + beta_h1 · Σ finite H1 lifetimes`` of the Rips diagram of
    the rows of ``points`` [P, d], differentiable through the edges behind the diagram (module doc).

    Computed in fp32 (fp64 for fp64 input); a 0-dim tensor. Fewer than two rows: 0.
    """
    if points.dim() != 2:
        raise ValueError(f"expected a prompt matrix of shape [P, d], got shape {tuple(points.shape)}")
    total = _zero(points)
    if points.shape[0] < 2 or not (beta_h0 or beta_h1):
        return total
    x = points.to(_compute_dtype(points))
    edges = persistence_edges(x, max_edge_length)
    n0, n1 = len(edges.h0_death), len(edges.h1_birth)
    lengths = _edge_lengths(x, np.concatenate([edges.h0_death, edges.h1_death, edges.h1_birth]))
    if beta_h0 and n0:
        deaths = lengths[:n0]
        total = total + beta_h0 * ((deaths - deaths.mean()) ** 2).mean()
    if beta_h1 and n1:
        total = total + beta_h1 * (lengths[n0 : n0 + n1] - lengths[n0 + n1 :]).sum()
    return total
