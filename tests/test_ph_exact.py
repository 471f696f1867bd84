import subprocess
import sys

import numpy as np
import pytest
import torch

from tsloss_harness.ph_exact import persistence_edges, ph_exact
from tsloss_harness.regularizers import REGULARIZERS, get_regularizer
from tsloss_harness.topology import euclidean_distances, prompt_topology


def finite(diagram):
    return diagram[np.isfinite(diagram[:, 1])]


def circle(n, radius=1.0, dim=5):
    angle = 2 * np.pi * np.arange(n) / n
    x = np.zeros((n, dim))
    x[:, 0], x[:, 1] = radius * np.cos(angle), radius * np.sin(angle)
    return x


@pytest.mark.parametrize("seed", range(6))
def test_edges_reproduce_ripser_diagram(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30, 3))
    if seed % 2:  # a grid: many equal distances, ripser's tie rules decide the pairing
        x = np.round(x * 2) / 2
    d32 = euclidean_distances(x).astype(np.float32)
    edges = persistence_edges(x)
    h0, h1 = (finite(d) for d in prompt_topology(x)["diagrams"])
    mst = np.sort(d32[edges.h0_death[:, 0], edges.h0_death[:, 1]])
    assert len(mst) == len(x) - 1
    # ripser leaves zero-length bars (coinciding rows) out of its diagram; ph_exact keeps them
    np.testing.assert_array_equal(mst[mst > 0], np.sort(h0[:, 1]).astype(np.float32))
    assert len(h1) > 0
    got = np.stack([d32[tuple(edges.h1_birth.T)], d32[tuple(edges.h1_death.T)]], axis=1)
    np.testing.assert_array_equal(got, h1.astype(np.float32))  # same bars, same order, bit for bit


@pytest.mark.parametrize("seed", range(3))
def test_value_is_the_diagram_statistics(seed):
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(seed))
    h0, h1 = (finite(d) for d in prompt_topology(x)["diagrams"])
    assert ph_exact(x, beta_h1=0.0).item() == pytest.approx(np.var(h0[:, 1]), rel=1e-5)
    assert ph_exact(x, beta_h0=0.0).item() == pytest.approx((h1[:, 1] - h1[:, 0]).sum(), rel=1e-5)
    both = ph_exact(x, beta_h0=2.0, beta_h1=0.5).item()
    assert both == pytest.approx(2 * np.var(h0[:, 1]) + 0.5 * (h1[:, 1] - h1[:, 0]).sum(), rel=1e-5)


def test_circle_has_one_loop_from_side_to_diagonal():
    n = 12
    x = circle(n)
    side, chord_120 = 2 * np.sin(np.pi / n), np.sqrt(3.0)
    edges = persistence_edges(x)
    assert len(edges.h1_birth) == 1
    value = ph_exact(torch.tensor(x, dtype=torch.float64), beta_h0=0.0).item()
    # born when the sides close the polygon; dies when the equilateral triangles of 120-degree
    # chords enter (n divisible by 3), which fills the loop
    assert value == pytest.approx(chord_120 - side, rel=1e-6)
    # all sides equal: H0 deaths have no spread
    assert ph_exact(torch.tensor(x), beta_h1=0.0).item() == pytest.approx(0.0, abs=1e-12)


def test_max_edge_length_drops_infinite_bars():
    x = circle(12)
    side = 2 * np.sin(np.pi / 12)
    # threshold between the side and the loop's death: the loop stays alive (infinite), H0 all dead
    edges = persistence_edges(x, max_edge_length=side * 1.5)
    assert len(edges.h1_birth) == 0 and len(edges.h0_death) == 11
    # below the side length nothing dies
    assert len(persistence_edges(x, max_edge_length=side * 0.5).h0_death) == 0
    assert ph_exact(torch.tensor(x), max_edge_length=side * 0.5).item() == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_gradients_match_finite_differences(seed):
    # A noisy circle in 3-D: a loop by construction, so both halves carry gradient in every case; the
    # noise makes the distances distinct, so the pairing is stable under gradcheck's 1e-6 steps.
    noise = np.random.default_rng(seed).normal(size=(10, 3))
    x = torch.tensor(circle(10, dim=3) + 0.1 * noise)
    assert len(persistence_edges(x).h1_birth) >= 1
    x.requires_grad_(True)
    torch.autograd.gradcheck(lambda p: ph_exact(p, beta_h0=1.0, beta_h1=0.7), (x,), eps=1e-6, atol=1e-7)


def test_gradient_through_h1_terms():
    # a noisy circle: one clear loop, and no two distances equal, so the pairing is stable
    x = torch.tensor(circle(9) + 0.03 * np.random.default_rng(0).normal(size=(9, 5)))
    assert len(persistence_edges(x).h1_birth) == 1
    x.requires_grad_(True)
    torch.autograd.gradcheck(lambda p: ph_exact(p, beta_h0=0.0), (x,), eps=1e-6, atol=1e-7)
    ph_exact(x, beta_h0=0.0).backward()
    assert x.grad.abs().sum() > 0


def test_duplicates_are_finite():
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:3], x[:1]]).requires_grad_(True)  # four coinciding rows
    value = ph_exact(x)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    assert len(persistence_edges(x).h0_death) == len(x) - 1  # zero-length MST edges included
    same = torch.zeros(5, 4, requires_grad=True)
    value = ph_exact(same)
    value.backward()
    assert value.item() == 0.0 and torch.equal(same.grad, torch.zeros(5, 4))


def test_dtypes_shapes_and_degenerate_sizes():
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    assert ph_exact(x).dtype == torch.float32
    assert ph_exact(x.bfloat16()).dtype == torch.float32
    assert ph_exact(x.double()).dtype == torch.float64
    one = torch.randn(1, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ph_exact(one).backward()  # graph-connected zero
    two = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    assert ph_exact(two).item() == 0.0  # one H0 bar: no spread, no loop
    with pytest.raises(ValueError, match="shape"):
        ph_exact(torch.zeros(1, 4, 3))


@pytest.mark.slow
def test_registered_and_lazy():
    assert "ph_exact" in REGULARIZERS
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(2))
    kwargs = dict(tau=0.1, alpha=10.0, beta_h0=1.0, beta_h1=1.0)  # what the tuner passes
    assert get_regularizer("ph_exact")(x, **kwargs).item() == ph_exact(x).item()
    code = "import sys, tsloss_harness.losses; print(sorted({'ripser', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
