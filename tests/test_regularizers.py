"""The registry: one signature for all, and what it says of each regularizer's halves and parameters
holds for the implementation it points to."""

import pytest
import torch

from tsloss_harness.regularizers import DEFAULTS, REGULARIZERS, get_regularizer, spec


def _noisy_circle(n: int = 8, dim: int = 12) -> torch.Tensor:
    """Points on a circle (an H1 bar by construction, so ph_exact's H1 term is non-zero), jittered."""
    angle = torch.arange(n, dtype=torch.float64) * (2 * torch.pi / n)
    points = torch.zeros(n, dim, dtype=torch.float64)
    points[:, 0], points[:, 1] = angle.cos(), angle.sin()
    return points + 0.05 * torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


POINTS = _noisy_circle()


def test_every_entry_loads_and_takes_one_signature():
    assert set(REGULARIZERS) == {"tsloss", "h0", "h1", "l2", "pdloss", "none", "ph_exact"}
    for name in REGULARIZERS:
        out = get_regularizer(name)(POINTS, **DEFAULTS)
        assert out.dim() == 0 and torch.isfinite(out)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_declared_parameters_are_the_ones_read(name):
    fn, entry = get_regularizer(name), spec(name)
    base = fn(POINTS, **DEFAULTS).item()
    for param in DEFAULTS:
        changed = fn(POINTS, **{**DEFAULTS, param: DEFAULTS[param] * 3 + 0.5}).item()
        if param in entry.params:
            assert changed != base, f"{name} ignores {param}, which the registry says it reads"
        else:
            assert changed == base, f"{name} reads {param}, which the registry does not list"


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_declared_halves_are_the_beta_weighted_terms(name):
    fn, entry = get_regularizer(name), spec(name)
    off = {f"beta_{h}": 0.0 for h in entry.halves}
    value = fn(POINTS, **{**DEFAULTS, **off}).item()
    if entry.halves:  # every term weighted off: nothing is left
        assert value == 0.0 and fn(POINTS, **DEFAULTS).item() != 0.0
    for half in entry.halves:  # each half alone is a non-zero part of the whole
        alone = fn(POINTS, **{**DEFAULTS, **off, f"beta_{half}": 1.0}).item()
        assert alone != 0.0


def test_unknown_name_is_one_line():
    with pytest.raises(ValueError, match=r"unknown regularizer 'nope' \(choose tsloss, h0"):
        get_regularizer("nope")
