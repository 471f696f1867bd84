"""constraints.txt (the suite's exact versions) stays in step with pyproject.toml: it pins exactly the
packages ``.[dev]`` needs in this environment (buildtools/freeze_constraints.py walks the installed
metadata), torch excepted. A dependency added to pyproject.toml without refreshing the file fails here.
Versions are compared only by CI's install itself (``pip install -c constraints.txt``), so a shared
development environment that drifted does not fail this test."""

from __future__ import annotations

import importlib.util
import re

from helpers import REPO

LINE = re.compile(r"^([a-z0-9][a-z0-9-]*)==([^\s=]+)$")


def _freeze_constraints():
    spec = importlib.util.spec_from_file_location("freeze_constraints", REPO / "buildtools" / "freeze_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constraints_pin_exactly_what_dev_installs():
    lines = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    pinned = dict(LINE.match(line).groups() for line in lines)  # every line is name==version, names normalised
    assert len(pinned) == len(lines)
    needed = set(_freeze_constraints().render().splitlines()) - {""}
    assert set(pinned) == {LINE.match(line).group(1) for line in needed if not line.startswith("#")}
    assert "torch" not in pinned and "tsloss-harness" not in pinned
    assert {"transformers", "peft", "deepspeed", "lm-eval", "tensorboard"} <= set(pinned)
