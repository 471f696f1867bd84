import math

import pytest
import torch

from tsloss_harness import losses
from tsloss_harness.losses import TSLoss, ts_loss


def reference_ts_loss(x, tau, alpha, beta_h0=1.0, beta_h1=1.0, lam_r=1.0, lam_a=1.0):
    """Plain-Python transcription of the conventions (i != j everywhere), for small point sets."""
    pts = [list(map(float, row)) for row in x]
    n = len(pts)
    d = [[math.dist(pts[i], pts[j]) for j in range(n)] for i in range(n)]
    s = [-tau * math.log(sum(math.exp(-d[i][j] / tau) for j in range(n) if j != i)) for i in range(n)]
    s_bar = sum(s) / n
    l_h0 = sum((si - s_bar) ** 2 for si in s) / n
    pairs = [d[i][j] for i in range(n) for j in range(n) if i != j]
    delta = sum(p * math.exp(-alpha * p) for p in pairs) / sum(math.exp(-alpha * p) for p in pairs)
    zeta = sum(p * math.exp(alpha * p) for p in pairs) / sum(math.exp(alpha * p) for p in pairs)
    l_h1 = sum(lam_r * max(0.0, delta - p) ** 2 + lam_a * max(0.0, p - zeta) ** 2 for p in pairs) / len(pairs)
    return beta_h0 * l_h0 + beta_h1 * l_h1


def test_two_points_have_no_spread():
    # Both points have the same nearest-neighbour distance and every pair sits at δ = ζ = 1.
    x = torch.tensor([[0.0], [1.0]])
    assert ts_loss(x, tau=0.1, alpha=10.0).item() == pytest.approx(0.0, abs=1e-7)


def test_three_collinear_points_by_hand():
    # Points 0, 1, 3 on a line, τ = 1: s = (1 - ln(1+e^-2), 1 - ln(1+e^-1), 2 - ln(1+e^-1)).
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    s = [1 - math.log(1 + math.exp(-2)), 1 - math.log(1 + math.exp(-1)), 2 - math.log(1 + math.exp(-1))]
    l_h0 = sum((v - sum(s) / 3) ** 2 for v in s) / 3
    assert l_h0 == pytest.approx(0.188530, abs=1e-6)
    assert ts_loss(x, tau=1.0, alpha=1.0, beta_h1=0.0).item() == pytest.approx(l_h0, rel=1e-12)
    # α = 1: δ = Σ D e^-D / Σ e^-D over the ordered pairs (each distance twice).
    e = math.exp
    delta = (1 * e(-1) + 2 * e(-2) + 3 * e(-3)) / (e(-1) + e(-2) + e(-3))
    zeta = (1 * e(1) + 2 * e(2) + 3 * e(3)) / (e(1) + e(2) + e(3))
    l_h1 = 2 * (max(0, delta - 1) ** 2 + max(0, 3 - zeta) ** 2) / 6
    assert ts_loss(x, tau=1.0, alpha=1.0, beta_h0=0.0).item() == pytest.approx(l_h1, rel=1e-12)
    assert ts_loss(x, tau=1.0, alpha=1.0, beta_h0=2.0, beta_h1=0.5).item() == pytest.approx(
        2.0 * l_h0 + 0.5 * l_h1, rel=1e-12
    )


def test_square_corners_by_hand():
    # Unit square: every point has two neighbours at 1 and one at √2, so L_H0 = 0;
    # L_H1 = mean of relu(δ - D)² + relu(D - ζ)² with δ, ζ between 1 and √2.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    assert ts_loss(x, tau=0.5, alpha=2.0, beta_h1=0.0).item() == pytest.approx(0.0, abs=1e-12)
    r2 = math.sqrt(2)
    w1, w2 = 8 * math.exp(-2.0), 4 * math.exp(-2.0 * r2)
    delta = (w1 * 1 + w2 * r2) / (w1 + w2)
    v1, v2 = 8 * math.exp(2.0), 4 * math.exp(2.0 * r2)
    zeta = (v1 * 1 + v2 * r2) / (v1 + v2)
    expected = (8 * (delta - 1) ** 2 + 4 * (r2 - zeta) ** 2) / 12
    assert ts_loss(x, tau=0.5, alpha=2.0, beta_h0=0.0).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_points(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    kw = dict(tau=0.3, alpha=2.0, beta_h0=0.7, beta_h1=1.3, lambda_repel=0.5, lambda_attract=2.0)
    ref = reference_ts_loss(x.tolist(), 0.3, 2.0, 0.7, 1.3, 0.5, 2.0)
    assert ts_loss(x, **kw).item() == pytest.approx(ref, rel=1e-9)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: ts_loss(p, tau=0.5, alpha=3.0), (x,))
    assert torch.autograd.gradcheck(lambda p: ts_loss(p, tau=0.2, alpha=8.0, lambda_repel=2.0), (x,))
    assert torch.autograd.gradcheck(lambda p: losses.pdloss(p), (x,))


def test_detach_thresholds_changes_gradient_not_value():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = ts_loss(a, beta_h0=0.0, alpha=2.0), ts_loss(b, beta_h0=0.0, alpha=2.0, detach_thresholds=True)
    assert la.item() == pytest.approx(lb.item(), rel=1e-12)
    la.backward(), lb.backward()
    assert not torch.allclose(a.grad, b.grad)


def test_duplicate_rows_give_finite_gradients():
    # Small integers in 8 rows: the centred values are multiples of 1/8 and every Gram product and sum
    # is exact in fp32, so coinciding rows are at distance exactly 0, where the backward must take the
    # zero subgradient instead of 0/0.
    x = torch.randint(-3, 4, (8, 16), generator=torch.Generator().manual_seed(0)).float()
    x[3] = x[1]
    x[4] = x[1]
    x.requires_grad_()
    loss = ts_loss(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    d = losses.pairwise_distances(x.detach())
    assert d[1, 3].item() == d[1, 4].item() == d[3, 4].item() == 0.0


@pytest.mark.parametrize("dtype, unit_roundoff", [(torch.float32, 2.0**-24), (torch.float64, 2.0**-53)])
def test_duplicate_rows_are_within_the_gram_formulas_rounding(dtype, unit_roundoff):
    # General values: |a|² + |b|² - 2a·b of equal rows a = b is three dot products of the same d numbers
    # (in whatever order the matrix product sums them), each within γ_d·|a|² of the exact |a|², γ_d =
    # d·u / (1 - d·u); so the distance is at most sqrt(4·γ_d·|a|²), no epsilon under the root.
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x[3] = x[1]
    x[4] = x[1]
    x.requires_grad_()
    loss = ts_loss(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    centred = x.detach() - x.detach().mean(dim=0)
    gamma = 16 * unit_roundoff / (1 - 16 * unit_roundoff)
    bound = math.sqrt(4 * gamma * (centred[1] ** 2).sum().item())
    d = losses.pairwise_distances(x.detach())
    assert max(d[1, 3].item(), d[1, 4].item(), d[3, 4].item()) <= bound


def test_large_distances_stay_finite():
    # Distances up to ~1e4 with α = 20: exp(20 * 1e4) would overflow a naive softmax.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(10, 8, generator=g) * 3e3).requires_grad_()
    loss = ts_loss(x, alpha=20.0)
    loss.backward()
    assert losses.pairwise_distances(x).max() > 5e3
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_bf16_input_is_finite_and_close_to_fp32():
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(20, 64, generator=g) * 0.02
    xbf = x32.to(torch.bfloat16).requires_grad_()
    loss = ts_loss(xbf)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(xbf.grad.float()).all()
    assert loss.item() == pytest.approx(ts_loss(xbf.detach().float()).item(), rel=1e-6)


def test_pairwise_distances_match_cdist():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 128, generator=g) * 0.02 + 5.0  # large common offset: centring keeps precision
    d = losses.pairwise_distances(x)
    ref = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.all(d.diagonal() == 0)
    assert torch.allclose(d.double(), ref, atol=1e-5, rtol=1e-5)


def test_baselines():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    assert losses.l2(x).item() == pytest.approx((0 + 25 + 4) / 3)
    assert losses.pdloss(x).item() == pytest.approx((5 + 2 + math.sqrt(9 + 4)) / 3)
    kw = dict(tau=0.2, alpha=5.0, beta_h0=2.0, beta_h1=3.0)
    assert losses.h0(x, **kw).item() == pytest.approx(ts_loss(x, **{**kw, "beta_h1": 0.0}).item())
    assert losses.h1(x, **kw).item() == pytest.approx(ts_loss(x, **{**kw, "beta_h0": 0.0}).item())
    assert losses.h0(x, **kw).item() + losses.h1(x, **kw).item() == pytest.approx(ts_loss(x, **kw).item())
    y = x.clone().requires_grad_()
    zero = losses.none(y, **kw)
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(y.grad) == 0


def test_module_form():
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    module = TSLoss(tau=0.2, alpha=5.0)
    assert module(x).item() == pytest.approx(ts_loss(x, tau=0.2, alpha=5.0).item())
    with pytest.raises(TypeError):
        TSLoss(temperature=1.0)


def test_single_row_prompt_has_no_pairs():
    x = torch.randn(1, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = ts_loss(x)
    loss.backward()
    assert loss.item() == 0.0


@pytest.mark.parametrize("regularizer, params", [("ts_loss", {}), ("h1", {"detach_thresholds": True}), ("pdloss", {})])
def test_value_and_gradient_do_not_depend_on_the_thread_count(regularizer, params):
    # 200 rows (the multi-sample setting's prompt): 40,000 pairs, a sum torch would split across threads.
    # At this scale the soft quantiles weigh many pairs and many pairs are hinged, so split sums round
    # differently; a one-thread sweep cell and a two-thread run of the same seed must see the same bits.
    x = 0.1 * torch.randn(200, 128, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()

    def value_and_gradient(num_threads):
        torch.set_num_threads(num_threads)
        points = x.clone().requires_grad_()
        loss = getattr(losses, regularizer)(points, alpha=10.0, **params)
        loss.backward()
        return loss.detach(), points.grad

    try:
        (one, grad_one), (two, grad_two) = value_and_gradient(1), value_and_gradient(2)
        assert torch.get_num_threads() == 2  # the regularizer gives back the threads it borrowed
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and torch.equal(grad_one, grad_two)
