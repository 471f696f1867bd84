"""Write constraints.txt: the exact versions, in this environment, of everything ``pip install -e ".[dev]"``
installs (the dependency closure of pyproject.toml's dependencies and extras, torch excepted).

    python buildtools/freeze_constraints.py            # writes constraints.txt beside pyproject.toml
    python buildtools/freeze_constraints.py --check    # exit 1 if constraints.txt differs from this environment

Refresh it only from an environment that passed the suite: install as the README says (without
``-c constraints.txt`` to take newer releases), run ``python -m pytest -q``, then run this script.
torch is left out: its build depends on the hardware (CPU here, a CUDA build on a cluster), and the
README installs it first. Reading the installed metadata (not ``pip freeze``) keeps packages that are
merely present in the environment, but not required, out of the file.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
EXCLUDED = {"torch"}  # installed first, per hardware
HEADER = """\
# Exact versions the test suite passed with (pip install -c constraints.txt -e ".[dev]").
# pyproject.toml keeps open ranges for users who need other versions. torch is installed first, per hardware.
# Refresh: python buildtools/freeze_constraints.py (from an environment that passed the suite; see the script).
"""


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def closure(requirements: list[str], extras: tuple[str, ...]) -> dict[str, str]:
    """name -> installed version for ``requirements`` (evaluated with ``extras``) and everything they need."""
    pinned: dict[str, str] = {}
    todo = [(Requirement(r), extras) for r in requirements]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        req, active = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in active or ("",)):
            continue
        name = _name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in seen or name in EXCLUDED:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"freeze_constraints: {req.name} is required but not installed in this environment")
        pinned[name] = dist.version
        todo += [(Requirement(r), tuple(sorted(req.extras))) for r in dist.requires or []]
    return pinned


def render(extras: tuple[str, ...] = ("dev",)) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    requirements = list(project["dependencies"]) + [r for e in extras for r in optional.get(e, [])]
    pinned = closure(requirements, ())
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pinned.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with constraints.txt instead of writing it")
    args = parser.parse_args(argv)
    text, path = render(), ROOT / "constraints.txt"
    if args.check:
        if path.is_file() and path.read_text() == text:
            return 0
        print(f"{path} differs from this environment; rerun without --check to refresh it", file=sys.stderr)
        return 1
    path.write_text(text)
    print(f"wrote {path} ({text.count(chr(10)) - HEADER.count(chr(10))} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
