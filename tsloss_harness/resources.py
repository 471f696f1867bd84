"""Files the package ships (read through ``importlib.resources``, so a wheel install has them too).

- ``tasks/``: lm-eval task folder (``--include_path``): MMLU-CF and the offline variants;
- ``ds_configs/``: the DeepSpeed configs (``z2.json`` is the tuner's default);
- ``configs/``: tuner and sweep YAML configs (the demo's, the paper's, the sweep protocols).

The repository's top-level ``tasks``, ``ds_configs`` and ``configs`` are links to these folders.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from tsloss_harness.errors import TslossError


def resource_dir(name: str) -> Path:
    """The installed folder ``tsloss_harness/<name>`` (a real directory: lm-eval and DeepSpeed read paths)."""
    return Path(str(files("tsloss_harness").joinpath(name)))


def tasks_dir() -> Path:
    """The lm-eval task folder to pass as ``--include_path``."""
    return resource_dir("tasks")


def ds_config_path(name: str) -> Path:
    """A shipped DeepSpeed config by name: ``z2``, ``z3``, ``z3_offload`` (with or without ``.json``)."""
    return _shipped("ds_configs", name, ".json")


def config_path(name: str) -> Path:
    """A shipped YAML config by name: ``demo``, ``paper_gsm8k``, ``sweep_convergence``, ..."""
    return _shipped("configs", name, ".yaml")


def _shipped(folder: str, name: str, suffix: str) -> Path:
    path = resource_dir(folder) / (name if name.endswith(suffix) else name + suffix)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in resource_dir(folder).glob(f"*{suffix}")))
        raise TslossError(f"no shipped {folder} file {name!r} (shipped: {known})")
    return path
