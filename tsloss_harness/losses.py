"""Regularizers of the soft prompt matrix: TSLoss (paper section IV) and its baselines.

Every regularizer takes the prompt matrix ``points`` of shape [P, d] (one row per virtual token)
and the same keyword hyper-parameters (each uses the ones it needs and ignores the rest), and returns
a scalar tensor. The caller applies the overall weight λ_ts: ``loss = ce + lambda_ts * reg(points)``.

Conventions where the paper is vague or wrong (see README, "Deviations from the paper"):
- Only pairs i != j enter anything. The paper's Eq. 1 sums j over all points, so the self term
  D_ii = 0 dominates the soft-min and s_i ≈ -τ·log(1 + …) says nothing about the neighbours.
- δ and ζ (Eq. 4-5) are softmax-weighted means over all ordered pairs i != j.
- L_H1 (Eq. 3) is a mean over the P(P-1) ordered pairs i != j (the paper writes 1/n² over all i, j).

Cost: distances come from the Gram matrix of the centred points (one [P, d] x [d, P] product), so
nothing of size P x P x d is ever built; forward and backward are two small matrix products.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from tsloss_harness.regularizers import DEFAULTS  # the registry's table; it names this module by string only

__all__ = [
    "TSLoss",
    "h0",
    "h1",
    "l2",
    "none",
    "pairwise_distances",
    "pdloss",
    "ts_loss",
]


def _compute_dtype(points: torch.Tensor) -> torch.dtype:
    # bf16/fp16 prompts are regularized in fp32; fp64 stays fp64 (gradcheck).
    return torch.float64 if points.dtype == torch.float64 else torch.float32


class _PairwiseDistances(torch.autograd.Function):
    """D_ij = ||x_i - x_j|| with a hand-written backward: one [P, P] x [P, d] product.

    Autograd through the Gram formula would run two such products plus the centring's backward;
    the gradient is Σ_j W_ij (x_i - x_j) with W = (G + Gᵀ) / D, i.e. rowsum(W) * x - W @ x.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x - x.mean(dim=0, keepdim=True)  # distances are translation invariant; centring limits cancellation
        gram = y @ y.T
        sq_norms = gram.diagonal().clone()  # the Gram's own diagonal: D_ii is then exactly 0
        sq = gram.mul_(-2.0).add_(sq_norms[:, None]).add_(sq_norms[None, :]).clamp_min_(0.0)
        sq.fill_diagonal_(0.0)
        dist = sq.sqrt_()
        ctx.save_for_backward(x, dist)
        return dist

    @staticmethod
    def backward(ctx, grad_dist: torch.Tensor) -> torch.Tensor:
        x, dist = ctx.saved_tensors
        positive = dist > 0
        # coinciding rows (D = 0): zero subgradient instead of 0/0
        w = torch.where(positive, (grad_dist + grad_dist.T) / torch.where(positive, dist, 1.0), 0.0)
        # Σ_j W_ij (x_i - x_j) = (diag(rowsum W) - W) @ x: the Laplacian of W, one product, nothing [P, d] besides
        laplacian = w.neg_()
        laplacian.diagonal().sub_(laplacian.sum(dim=1))
        return laplacian @ x


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _OneThreadSum(torch.autograd.Function):
    """Sum of all the elements, on one thread whatever the thread count.

    torch splits a sum of over 32,768 elements (P > 181 pairs' worth) across its threads, so the
    last bits depend on the thread count and training amplifies them: a one-thread sweep cell and a
    two-thread run of the same seed would diverge. One thread is torch's own order, so results at
    one thread (every sweep cell) and at P <= 181 are what they always were.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        with _one_thread():
            return x.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.expand(ctx.shape)


class _OneThreadBroadcast(torch.autograd.Function):
    """A scalar expanded to ``shape``; its gradient (a sum over the shape) is summed on one thread."""

    @staticmethod
    def forward(ctx, scalar: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return scalar.expand(shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        with _one_thread():
            return grad.sum(), None


def _threads_could_split(x: torch.Tensor) -> bool:
    # torch's CPU threads; a GPU reduction does not depend on them, and one thread is one thread already.
    return x.device.type == "cpu" and torch.get_num_threads() > 1


def _sum(x: torch.Tensor) -> torch.Tensor:
    return _OneThreadSum.apply(x) if _threads_could_split(x) else x.sum()


def _broadcast(scalar: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _OneThreadBroadcast.apply(scalar, like.shape) if _threads_could_split(like) else scalar


def pairwise_distances(points: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix [P, P] of the rows of ``points``, differentiable, in fp32 or fp64.

    Exact: no epsilon inside the square root. The points are centred first (distances are
    translation invariant) so the Gram-matrix formula loses little to cancellation. Where two rows
    coincide the distance is 0 and its gradient is 0 (the subgradient), never NaN/inf.
    """
    if points.dim() != 2:
        raise ValueError(f"expected a prompt matrix of shape [P, d], got shape {tuple(points.shape)}")
    return _PairwiseDistances.apply(points.to(_compute_dtype(points)))


def _off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


def _zero(points: torch.Tensor) -> torch.Tensor:
    # A zero that stays on the autograd graph, so callers can always call .backward().
    return points.to(_compute_dtype(points)).sum() * 0.0


def _h0_term(dist: torch.Tensor, off_diag: torch.Tensor, tau: float) -> torch.Tensor:
    """L_H0 (Eq. 1-2): variance over points of the soft nearest-neighbour distance s_i."""
    neg_inf = torch.finfo(dist.dtype).min
    logits = torch.where(off_diag, -dist / tau, torch.full_like(dist, neg_inf))
    soft_nn = -tau * torch.logsumexp(logits, dim=1)
    return ((soft_nn - soft_nn.mean()) ** 2).mean()


def _h1_term(
    dist: torch.Tensor,
    off_diag: torch.Tensor,
    alpha: float,
    lambda_repel: float,
    lambda_attract: float,
    detach_thresholds: bool,
) -> torch.Tensor:
    """L_H1 (Eq. 3-5): squared hinge below the soft low quantile δ and above the soft high quantile ζ."""
    # Over the P(P-1) ordered pairs i != j, kept as a masked [P, P] matrix: boolean indexing would add
    # a gather and a scatter (backward) that cost more than the arithmetic at P = 100.
    neg_inf = torch.finfo(dist.dtype).min

    def soft_quantile(sharpness: float) -> torch.Tensor:  # one softmax over all the pairs at once
        weights = torch.softmax(torch.where(off_diag, sharpness * dist, neg_inf).flatten(), dim=0)
        return _sum(weights.view_as(dist) * dist)

    delta, zeta = soft_quantile(-alpha), soft_quantile(alpha)
    if detach_thresholds:
        delta, zeta = delta.detach(), zeta.detach()
    repel = torch.relu(_broadcast(delta, dist) - dist) ** 2
    attract = torch.relu(dist - _broadcast(zeta, dist)) ** 2
    n = dist.shape[0]
    return _sum((lambda_repel * repel + lambda_attract * attract) * off_diag) / (n * (n - 1))


def ts_loss(
    points: torch.Tensor,
    *,
    tau: float = DEFAULTS["tau"],
    alpha: float = DEFAULTS["alpha"],
    beta_h0: float = DEFAULTS["beta_h0"],
    beta_h1: float = DEFAULTS["beta_h1"],
    lambda_repel: float = 1.0,
    lambda_attract: float = 1.0,
    detach_thresholds: bool = False,
    **_unused: object,
) -> torch.Tensor:
    """TSLoss without λ_ts: ``beta_h0 * L_H0 + beta_h1 * L_H1`` (paper Eq. 1-6, diagonal excluded).

    ``points``: [P, d] prompt matrix (any float dtype; computed in fp32, or fp64 for fp64 input).
    Returns a 0-dim tensor in the compute dtype; gradients flow through δ and ζ unless
    ``detach_thresholds``. A prompt of fewer than two rows has no pairs and gives 0.
    """
    n = points.shape[0]
    if n < 2:
        return _zero(points)
    dist = pairwise_distances(points)
    off_diag = _off_diagonal(n, dist.device)
    terms = []
    if beta_h0:
        terms.append(beta_h0 * _h0_term(dist, off_diag, tau))
    if beta_h1:
        terms.append(beta_h1 * _h1_term(dist, off_diag, alpha, lambda_repel, lambda_attract, detach_thresholds))
    return sum(terms[1:], terms[0]) if terms else _zero(points)


def h0(points: torch.Tensor, *, beta_h0: float = DEFAULTS["beta_h0"], **kwargs: object) -> torch.Tensor:
    """The H0 half of TSLoss alone (β_H1 = 0): the ablation "CE + H0 only"."""
    kwargs.pop("beta_h1", None)
    return ts_loss(points, beta_h0=beta_h0, beta_h1=0.0, **kwargs)


def h1(points: torch.Tensor, *, beta_h1: float = DEFAULTS["beta_h1"], **kwargs: object) -> torch.Tensor:
    """The H1 half of TSLoss alone (β_H0 = 0): the ablation "CE + H1 only"."""
    kwargs.pop("beta_h0", None)
    return ts_loss(points, beta_h0=0.0, beta_h1=beta_h1, **kwargs)


def l2(points: torch.Tensor, **_unused: object) -> torch.Tensor:
    """The paper's L2-Reg: mean over prompt rows of the squared row norm."""
    x = points.to(_compute_dtype(points))
    return (x * x).sum(dim=1).mean()


def pdloss(points: torch.Tensor, **_unused: object) -> torch.Tensor:
    """The paper's "pairwise distance loss" (undefined there): mean Euclidean distance over pairs i != j."""
    n = points.shape[0]
    if n < 2:
        return _zero(points)
    dist = pairwise_distances(points)
    return _sum(dist[_off_diagonal(n, dist.device)]) / (n * (n - 1))


def none(points: torch.Tensor, **_unused: object) -> torch.Tensor:
    """No regularizer (plain cross-entropy prompt tuning); a graph-connected zero."""
    return _zero(points)


class TSLoss(nn.Module):
    """``nn.Module`` form of :func:`ts_loss` holding its hyper-parameters (λ_ts excluded); unset ones
    are the tuner's defaults (``regularizers.DEFAULTS``)."""

    def __init__(self, **params: float | bool) -> None:
        super().__init__()
        known = set(inspect.signature(ts_loss).parameters) - {"points", "_unused"}
        unknown = set(params) - known
        if unknown:
            raise TypeError(f"unknown TSLoss hyper-parameter(s): {', '.join(sorted(unknown))}")
        self.params = {**DEFAULTS, **params}

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return ts_loss(points, **self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())
