import numpy as np
import pytest
import torch
from helpers import h0_deaths_by_scipy
from scipy import stats

from tsloss_harness.topology import METRIC_KEYS, prompt_topology, topology_accuracy_stats


def embed(points_2d, dim=16, seed=0):
    """Put 2-D points into a random 2-D plane of R^dim (distances unchanged)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, 2)))
    return np.asarray(points_2d) @ q.T


def test_three_collinear_points_by_hand():
    # H0 merges at 1 and 2, one infinite bar; no loop. PE over lifetimes (1, 2).
    topo = prompt_topology(np.array([[0.0], [1.0], [3.0]]))
    assert topo["h0_count"] == 3 and topo["h1_count"] == 0
    assert topo["h0_mean_lifetime"] == pytest.approx(1.5)
    assert topo["h0_max_lifetime"] == pytest.approx(2.0)
    assert topo["h1_mean_lifetime"] == 0.0 and topo["h1_max_lifetime"] == 0.0
    p = np.array([1 / 3, 2 / 3])
    assert topo["persistence_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()))
    assert set(topo) == set(METRIC_KEYS) | {"diagrams"}
    assert all(type(topo[k]) in (int, float) for k in METRIC_KEYS)


def test_circle_has_one_long_loop():
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    pts = embed(np.c_[np.cos(angles), np.sin(angles)])
    topo = prompt_topology(torch.tensor(pts, dtype=torch.float32))
    h1 = topo["diagrams"][1]
    life = h1[:, 1] - h1[:, 0]
    assert topo["h1_count"] >= 1
    assert life.max() > 1.0  # born at the chord ~0.26, dies near √3
    assert (life > 0.5).sum() == 1  # exactly one long bar
    assert topo["h1_max_lifetime"] == pytest.approx(life.max())
    # H0: every minimum spanning tree of a regular polygon is a path of sides, so all 23 finite bars
    # die at the side 2 sin(π/24)
    side = 2 * np.sin(np.pi / 24)
    assert topo["h0_mean_lifetime"] == pytest.approx(side, rel=1e-6)
    assert topo["h0_max_lifetime"] == pytest.approx(side, rel=1e-6)


def test_two_far_clusters_have_one_long_h0_bar():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 8)) * 0.1
    b = rng.normal(size=(10, 8)) * 0.1 + 20.0
    pts = np.vstack([a, b])
    topo = prompt_topology(pts)
    h0 = topo["diagrams"][0]
    finite = h0[np.isfinite(h0[:, 1])]
    gap = np.linalg.norm(20.0 * np.ones(8))
    assert (finite[:, 1] > 10).sum() == 1
    assert topo["h0_max_lifetime"] == pytest.approx(gap, rel=0.05)
    assert np.isinf(h0[:, 1]).sum() == 1


def test_threshold_leaves_components_infinite():
    rng = np.random.default_rng(1)
    pts = np.vstack([rng.normal(size=(6, 4)) * 0.1, rng.normal(size=(6, 4)) * 0.1 + 10.0])
    whole = prompt_topology(pts)
    cut = prompt_topology(pts, max_edge_length=2.0)
    assert np.isinf(whole["diagrams"][0][:, 1]).sum() == 1
    assert np.isinf(cut["diagrams"][0][:, 1]).sum() == 2  # the clusters never merge below 2.0
    assert cut["h0_count"] == whole["h0_count"] == 12  # counts include infinite bars
    assert cut["h0_max_lifetime"] < 2.0 < whole["h0_max_lifetime"]


@pytest.mark.parametrize("seed", range(3))
def test_h0_is_the_minimum_spanning_tree_of_the_distinct_rows(seed):
    # Rows 9-11 repeat rows 0-2: a repeated row merges at distance 0 (a zero-length bar, which ripser
    # leaves out), so 12 rows have 9 components: 8 finite bars, the MST edges, and one infinite bar.
    x = np.random.default_rng(seed).normal(size=(12, 6))
    x[9:] = x[:3]
    deaths = h0_deaths_by_scipy(x)
    assert len(deaths) == 8
    topo = prompt_topology(x)
    assert topo["h0_count"] == 9
    assert topo["h0_mean_lifetime"] == pytest.approx(deaths.mean(), rel=1e-6)
    assert topo["h0_max_lifetime"] == pytest.approx(deaths.max(), rel=1e-6)
    np.testing.assert_allclose(np.sort(topo["diagrams"][0][:-1, 1]), deaths, rtol=1e-6)


def test_identical_points_give_zero_entropy():
    topo = prompt_topology(np.ones((5, 3)))
    assert topo["persistence_entropy"] == 0.0
    assert topo["h0_mean_lifetime"] == 0.0


def test_accepts_torch_bf16_and_batched_authors_format():
    # [1, P, d] in bf16. Rows 8-11 are rows 0-3 scaled by 1 + 1e-4: distinct in float32, the same in
    # bf16 (rows 0-3 are bf16 values, and 1e-4 relative is below half of bf16's 2^-8 resolution), so
    # the bf16 prompt has 8 distinct rows.
    rows = torch.randn(12, 32, generator=torch.Generator().manual_seed(0)).bfloat16().float()
    rows[8:] = rows[:4] * (1 + 1e-4)
    x = rows.to(torch.bfloat16)[None]
    topo = prompt_topology(x)
    deaths = h0_deaths_by_scipy(x[0].float().numpy())
    assert len(deaths) == 7 and topo["h0_count"] == 8
    assert topo["h0_mean_lifetime"] == pytest.approx(deaths.mean(), rel=1e-6)
    assert prompt_topology(rows)["h0_count"] == 12  # in float32 they are distinct
    with pytest.raises(ValueError, match="shape"):
        prompt_topology(np.zeros(5))


def test_stats_agree_with_scipy():
    rng = np.random.default_rng(0)
    acc = rng.uniform(size=40)
    metric = acc * 2 + rng.normal(size=40) * 0.3
    out = topology_accuracy_stats(metric, acc)
    rho, p = stats.spearmanr(metric, acc)
    assert out["spearman_rho"] == pytest.approx(rho) and out["spearman_p"] == pytest.approx(p)
    med = np.median(acc)
    u, pu = stats.mannwhitneyu(metric[acc <= med], metric[acc > med], alternative="two-sided")
    assert out["mannwhitney_u"] == pytest.approx(u) and out["mannwhitney_p"] == pytest.approx(pu)
    assert out["n_low"] + out["n_high"] == 40


def test_stats_perfect_separation_and_constant_metric():
    acc = np.r_[np.zeros(5), np.ones(5)]
    out = topology_accuracy_stats(np.arange(10.0), acc, threshold=0.5)
    assert out["mannwhitney_u"] == 0.0  # every low-accuracy checkpoint has the smaller metric
    const = topology_accuracy_stats(np.full(10, 20.0), acc, threshold=0.5)
    assert const["spearman_rho"] is None  # the paper's N/A for a constant |H0|
    assert const["mannwhitney_u"] == 12.5 and const["mannwhitney_p"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        topology_accuracy_stats([1, 2], [1, 2])
