"""The prompt directory: the one contract between the tuner and everything downstream.

A prompt directory is a plain PEFT prompt-tuning adapter plus one provenance file::

    adapter_config.json         PeftConfig.to_dict(), inference_mode=True  (as PeftModel.save_pretrained)
    adapter_model.safetensors   {"prompt_embeddings": [P, d]}, metadata {"format": "pt"}
    tsloss.json                 provenance: base model, method, regularizer, seed, step, topology, ...

so ``PeftModel.from_pretrained(base_model, prompt_dir)`` and lm-eval's ``--model hf
--model_args pretrained=BASE,peft=PROMPT_DIR`` load it unchanged. ``load_prompt`` reads that, any
PEFT prompt-learning adapter, or a bare tensor file (``.safetensors``, ``.pt`` such as the paper's
authors' ``[1, P, d]``) and returns the ``[P, d]`` matrix; nothing beyond tensors is ever unpickled.

Prefix-Tuning (``method="prefix"``, PEFT ``PrefixTuningConfig(prefix_projection=True)``) and P-Tuning
v2 (``method="ptuning_v2"``, ``prefix_projection=False``) adapters store ``prompt_embeddings`` too, as
PEFT saves them: the key/value prefix itself, [P, num_layers*2*token_dim] with ``token_dim`` = the
model's key/value width (num_key_value_heads * head_dim; PEFT sizes it so for grouped-query
attention). One row per virtual token: every layer's key then value, heads then head_dim. For
``prefix`` that is the reparameterisation MLP's output (PEFT saves that and drops the MLP, whatever
``inference_mode``), so ``load_prompt`` returns the same kind of matrix for both: the prefix the
decoder sees, which is also what the regularizers and ``prompt_topology`` see.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from tsloss_harness.errors import TslossError, first_line
from tsloss_harness.files import replace_dir
from tsloss_harness.prompt_config import expected_embedding_shape

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "EMBEDDINGS_KEY",
    "PROVENANCE_NAME",
    "PromptLoadError",
    "load_peft_config",
    "load_prompt",
    "load_provenance",
    "save_prompt",
    "save_raw_prompt",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft.utils.CONFIG_NAME
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft.utils.SAFETENSORS_WEIGHTS_NAME
LEGACY_WEIGHTS_NAME = "adapter_model.bin"  # peft.utils.WEIGHTS_NAME (older PEFT, safe_serialization=False)
PROVENANCE_NAME = "tsloss.json"
EMBEDDINGS_KEY = "prompt_embeddings"  # the key PEFT's prompt-learning encoders save and load
PROVENANCE_FORMAT = 1

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class PromptLoadError(TslossError, ValueError):
    """A path that holds no usable prompt; the message names the path and what is wrong."""


# ----------------------------------------------------------------------------------------- save


def save_prompt(out_dir: str | os.PathLike, embeddings: torch.Tensor, *, peft_config, provenance: Mapping) -> Path:
    """Write the prompt directory ``out_dir`` atomically and return its path.

    Everything is written into a temporary sibling directory that is renamed into place when
    complete; an existing prompt directory at ``out_dir`` is replaced only then (a directory that is
    neither empty nor a prompt/adapter directory is refused rather than deleted). ``embeddings``
    ([P, d], any dtype/device) is stored as is, on CPU. ``provenance`` holds what the caller knows
    (base_model, method, regularizer, regularizer_params, seed, step, dataset, init, ...); its keys
    win over the ones filled in here: format, base_model (from the config), peft_type,
    num_virtual_tokens, token_dim, dtype, package_version, git_commit, time. ``topology`` is stored as
    given (the caller measures it; this module never computes it).
    """
    import torch

    out_dir = Path(out_dir)
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if not isinstance(provenance, Mapping):
        raise TypeError(f"provenance must be a dict, got {type(provenance).__name__}")
    expected = expected_embedding_shape(peft_config)
    if tuple(embeddings.shape) != expected:
        raise ValueError(
            f"embeddings of shape {list(embeddings.shape)} do not match the PEFT config "
            f"({getattr(peft_config.peft_type, 'value', peft_config.peft_type)}: {list(expected)})"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
    if out_dir.exists() and not _replaceable(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a prompt directory; refusing to replace it")

    tensor = embeddings.detach().to("cpu").contiguous()
    record = _provenance_record(tensor, peft_config, provenance)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_adapter(tmp, tensor, peft_config)
        _write_json(tmp / PROVENANCE_NAME, record)
        _fsync_dir(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def save_raw_prompt(path: str | os.PathLike, embeddings: torch.Tensor) -> Path:
    """Export ``embeddings`` as one bare tensor file: ``.safetensors`` (key ``prompt_embeddings``) or
    ``.pt``/``.pth``/``.bin`` (``torch.save`` of the tensor). Stored as is, on CPU; written atomically."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r} (use .safetensors, .pt, .pth or .bin)")
    tensor = embeddings.detach().to("cpu").contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".safetensors":
            save_file({EMBEDDINGS_KEY: tensor}, tmp_name, metadata={"format": "pt"})
        else:
            torch.save(tensor, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _write_adapter(directory: Path, tensor: torch.Tensor, peft_config) -> None:
    """Exactly what ``PeftModel.save_pretrained`` writes for a prompt-learning adapter."""
    from safetensors.torch import save_file

    save_file({EMBEDDINGS_KEY: tensor}, str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    config = copy.deepcopy(peft_config)
    config.inference_mode = True  # save_pretrained always stores inference_mode=True
    config.save_pretrained(str(directory))  # to_dict() as sorted, indented JSON


def _replaceable(path: Path) -> bool:
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return not names or bool(names & {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PROVENANCE_NAME})


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _provenance_record(tensor: torch.Tensor, peft_config, provenance: Mapping) -> dict:

    import tsloss_harness

    record: dict[str, Any] = {
        "format": PROVENANCE_FORMAT,
        "base_model": peft_config.base_model_name_or_path,
        "peft_type": getattr(peft_config.peft_type, "value", peft_config.peft_type),
        "num_virtual_tokens": int(tensor.shape[0]),
        "token_dim": int(tensor.shape[1]),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "package_version": tsloss_harness.__version__,
        "git_commit": _git_commit(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(provenance)
    return _json_safe(record)


@functools.cache
def _git_commit() -> str | None:
    """HEAD of the git checkout this package lives in (``+dirty`` when tracked files differ); None
    when it is not a checkout, git is missing, or anything else goes wrong."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None  # installed inside some other repository (e.g. a venv in a project)
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _json_safe(obj: Any, where: str = "provenance") -> Any:
    """Plain JSON values from numpy/torch scalars and arrays, enums and paths; non-finite floats
    become None (strict JSON has no NaN/Infinity)."""
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, Enum):
        return _json_safe(obj.value, where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.generic, np.ndarray)):
        return _json_safe(obj.tolist(), where)
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.detach().cpu().tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [_json_safe(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise TypeError(f"{where}: {type(obj).__name__} is not JSON-serialisable")


# ----------------------------------------------------------------------------------------- load


def load_prompt(path: str | os.PathLike) -> torch.Tensor:
    """The ``[P, d]`` prompt matrix (stored dtype, CPU) held at ``path``.

    ``path`` is a prompt directory, any PEFT prompt-learning adapter directory
    (``adapter_model.safetensors`` or the older ``adapter_model.bin``), a ``.safetensors`` file (one
    tensor, or several with one named ``prompt_embeddings``), or a ``.pt``/``.pth``/``.bin`` file read
    with ``torch.load(weights_only=True)`` holding a tensor or a dict of them. ``[1, P, d]`` (as the
    paper's authors saved prompts) is squeezed. Anything else raises ``PromptLoadError``.
    """

    path = Path(path)
    if not path.exists():
        raise PromptLoadError(f"{path}: no such file or directory")
    if path.is_dir():
        return _load_adapter_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        content = _read_safetensors(path)
    elif suffix in _TORCH_SUFFIXES:
        content = _read_torch(path)
    else:
        raise PromptLoadError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
            "expected a directory, .safetensors, .pt, .pth or .bin"
        )
    return _as_prompt_matrix(path, _pick_tensor(path, content))


def load_provenance(path: str | os.PathLike) -> dict | None:
    """tsloss.json of a prompt directory; None for bare tensor files and PEFT dirs without one."""
    path = Path(path)
    if not path.exists():
        raise PromptLoadError(f"{path}: no such file or directory")
    file = path / PROVENANCE_NAME
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PromptLoadError(f"{file}: unreadable provenance ({first_line(err)})") from err
    if not isinstance(record, dict):
        raise PromptLoadError(f"{file}: provenance is a JSON {type(record).__name__}, not an object")
    return record


def load_peft_config(path: str | os.PathLike):
    """The ``PeftConfig`` (subclass for its peft_type) in ``path/adapter_config.json``."""
    from peft import PeftConfig

    path = Path(path)
    file = path / ADAPTER_CONFIG_NAME
    if not file.is_file():
        raise PromptLoadError(f"{path}: no {ADAPTER_CONFIG_NAME} (not a PEFT adapter directory)")
    try:
        return PeftConfig.from_pretrained(str(path))
    except Exception as err:  # PEFT raises ValueError/TypeError/KeyError for malformed configs
        raise PromptLoadError(f"{file}: invalid PEFT config ({first_line(err)})") from err


def _load_adapter_dir(path: Path) -> torch.Tensor:
    config = None
    if (path / ADAPTER_CONFIG_NAME).is_file():
        config = load_peft_config(path)
        if not config.is_prompt_learning:
            raise PromptLoadError(
                f"{path}: PEFT adapter of type {getattr(config.peft_type, 'value', config.peft_type)}, "
                "not a prompt-learning adapter"
            )
    if (path / ADAPTER_WEIGHTS_NAME).is_file():
        content = _read_safetensors(path / ADAPTER_WEIGHTS_NAME)
    elif (path / LEGACY_WEIGHTS_NAME).is_file():
        content = _read_torch(path / LEGACY_WEIGHTS_NAME)
    else:
        raise PromptLoadError(f"{path}: directory holds no {ADAPTER_WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}")
    if not isinstance(content, dict) or EMBEDDINGS_KEY not in content:
        keys = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise PromptLoadError(f"{path}: adapter weights have no {EMBEDDINGS_KEY!r} (found {keys})")
    matrix = _as_prompt_matrix(path, content[EMBEDDINGS_KEY])
    if config is not None:
        try:
            expected = expected_embedding_shape(config)
        except ValueError:
            expected = None  # a prompt-learning type we do not size yet: take the tensor as stored
        if expected is not None and tuple(matrix.shape) != expected:
            raise PromptLoadError(
                f"{path}: {EMBEDDINGS_KEY} has shape {list(matrix.shape)}, adapter_config.json says {list(expected)}"
            )
    return matrix


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError, OSError, ... for corrupt or truncated files
        raise PromptLoadError(f"{path}: unreadable safetensors file ({first_line(err)})") from err


def _read_torch(path: Path) -> Any:
    import torch

    try:
        # weights_only: tensors and plain containers only; any other pickled object is refused.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"pickled object ({found.group(1)})" if found else "pickled objects"
        raise PromptLoadError(
            f"{path}: refused, holds a {what} beyond tensors (torch.load weights_only=True)"
        ) from None
    except Exception as err:  # RuntimeError/EOFError/OSError for corrupt or truncated files
        raise PromptLoadError(f"{path}: unreadable torch file ({first_line(err)})") from err


def _pick_tensor(path: Path, content: Any) -> torch.Tensor:
    import torch

    if isinstance(content, torch.Tensor):
        return content
    if isinstance(content, dict):
        if isinstance(content.get(EMBEDDINGS_KEY), torch.Tensor):
            return content[EMBEDDINGS_KEY]
        tensors = [v for v in content.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        keys = sorted(map(str, content))
        what = "no tensor" if not tensors else f"{len(tensors)} tensors and none named {EMBEDDINGS_KEY!r}"
        raise PromptLoadError(f"{path}: holds {what} (keys: {keys})")
    raise PromptLoadError(f"{path}: holds a {type(content).__name__}, not a tensor")


def _as_prompt_matrix(path: Path, tensor: Any) -> torch.Tensor:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise PromptLoadError(f"{path}: holds a {type(tensor).__name__}, not a tensor")
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 2:
        raise PromptLoadError(f"{path}: tensor of shape {list(tensor.shape)} is not a prompt ([P, d] or [1, P, d])")
    if 0 in tensor.shape:
        raise PromptLoadError(f"{path}: empty prompt tensor of shape {list(tensor.shape)}")
    if not tensor.is_floating_point():
        raise PromptLoadError(f"{path}: {tensor.dtype} tensor is not a prompt (floating point embeddings expected)")
    return tensor.contiguous()
