"""The regularizer registry: every ``--regularizer`` the tuner takes, what it is made of, and its
hyper-parameters. Torch-free: the implementations (``losses``, ``ph_exact``) are imported when one
is asked for, so validating a config costs nothing.

    from tsloss_harness.regularizers import get_regularizer
    reg = get_regularizer("tsloss")(prompt, tau=0.1, alpha=10.0)     # prompt: [P, d]; loss = ce + λ_ts * reg
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from tsloss_harness.errors import TslossError

# The tuner's defaults for the hyper-parameters (the paper's: τ = 0.1, Table V's best α = 10, β = 1).
DEFAULTS = {"tau": 0.1, "alpha": 10.0, "beta_h0": 1.0, "beta_h1": 1.0}


@dataclass(frozen=True)
class Regularizer:
    """One registry entry. ``halves``: its H0 / H1 terms, each weighted by ``beta_<half>`` (what the
    adaptive weights scale); ``params``: the hyper-parameters it reads."""

    name: str
    target: str  # "module:function"
    halves: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    about: str = ""

    def load(self) -> Callable:
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


_TS = ("tau", "alpha", "beta_h0", "beta_h1")
REGULARIZERS: dict[str, Regularizer] = {
    r.name: r
    for r in (
        Regularizer("tsloss", "tsloss_harness.losses:ts_loss", ("h0", "h1"), _TS, "TSLoss: β_H0·L_H0 + β_H1·L_H1"),
        Regularizer("h0", "tsloss_harness.losses:h0", ("h0",), ("tau", "beta_h0"), "the H0 half of TSLoss alone"),
        Regularizer("h1", "tsloss_harness.losses:h1", ("h1",), ("alpha", "beta_h1"), "the H1 half of TSLoss alone"),
        Regularizer("l2", "tsloss_harness.losses:l2", about="L2-Reg: mean squared row norm"),
        Regularizer("pdloss", "tsloss_harness.losses:pdloss", about="PDLoss: mean pairwise distance"),
        Regularizer("none", "tsloss_harness.losses:none", about="no regularizer (cross-entropy only)"),
        Regularizer(
            "ph_exact",
            "tsloss_harness.ph_exact:ph_exact",
            ("h0", "h1"),
            ("beta_h0", "beta_h1"),
            "exact Rips-diagram loss, gradients through the persistence pairs",
        ),
    )
}


class UnknownRegularizer(TslossError, ValueError):
    """A name the registry does not hold."""


def spec(name: str) -> Regularizer:
    """The registry entry for ``name``; one-line error naming the choices."""
    try:
        return REGULARIZERS[name]
    except KeyError:
        raise UnknownRegularizer(f"unknown regularizer {name!r} (choose {', '.join(REGULARIZERS)})") from None


def get_regularizer(name: str) -> Callable:
    """The function ``f(points, **hyper_parameters) -> 0-dim tensor`` registered as ``name``."""
    return spec(name).load()


def with_half(half: str) -> list[str]:
    """Names of the regularizers that have an ``half`` ("h0" / "h1") term."""
    return [r.name for r in REGULARIZERS.values() if half in r.halves]
