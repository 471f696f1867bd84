"""YAML files of flat settings into dataclasses: the one loader behind ``tsloss tune --config`` and
``tsloss sweep --config``. Unknown keys and unreadable values fail in one line naming the file."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsloss_harness.errors import TslossError, first_line


def read_mapping(path: str | Path, error: type[TslossError] = TslossError) -> dict:
    """The top-level mapping of a YAML file (an empty file is ``{}``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: invalid YAML ({first_line(e)})") from e
    if not isinstance(loaded, dict):
        raise error(f"{path}: expected a mapping of setting names to values")
    return loaded


def field_parser(f: dataclasses.Field) -> Callable[[str], Any]:
    """Text -> value for a scalar dataclass field (``int | None`` takes "none"/"null")."""
    kind = str(f.type)
    base = int if kind.startswith("int") else float if kind.startswith("float") else str

    def parse(text: str):
        if "None" in kind and text.lower() in ("none", "null"):
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse names the type in its error message
    return parse


def check_keys(cls, values: dict, where: str, error: type[TslossError] = TslossError) -> dict:
    """``values`` with numbers written as strings (PyYAML reads ``5e-5`` as one) parsed as the
    fields' types; one-line error on the first unknown key or unparsable number."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    parsed = {}
    for key, value in values.items():
        kind = str(fields[key].type)
        if isinstance(value, str) and kind.startswith(("int", "float")):
            try:
                value = field_parser(fields[key])(value)
            except ValueError:
                raise error(f"{where}: {key}: not a number: {value!r}") from None
        parsed[key] = value
    return parsed
