"""The project's tools as child processes (``tsloss demo``, ``tsloss sweep``): their environment and the
stock ``lm_eval`` command line.

- A child never inherits a launcher's rendezvous variables: a ``python tune.py`` or ``lm_eval`` that
  finds ``RANK``/``MASTER_PORT`` tries to join that process group.
- Thread counts are set for every math library (torch reads ``OMP_NUM_THREADS`` at start-up): a tiny
  model's ops gain nothing from more threads, and busy cores slow multi-threaded generation many-fold.
- ``lm_eval`` is the one next to this interpreter (the environment's, where the package's start-up
  hook registers ``--model tsprompt``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["OFFLINE_ENV", "RENDEZVOUS_VARS", "child_env", "die_with_parent", "format_model_args", "lm_eval_command"]

RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def child_env(
    threads: int | None = None, extra: dict[str, str] | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: this process's environment) without rendezvous variables, with ``threads``
    threads per math library and ``extra`` on top."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in RENDEZVOUS_VARS}
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARS})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def die_with_parent(parent: int) -> None:
    """In a child of ``parent`` (Linux): SIGTERM from the kernel when the parent exits
    (PR_SET_PDEATHSIG), and exit now (70) if it already has, before the call."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))
    if os.getppid() != parent:
        os._exit(70)


def format_model_args(args: dict[str, Any]) -> str:
    """``k=v,k=v`` for ``--model_args``; lm-eval splits at commas, so no value may hold one."""
    for key, value in args.items():
        if "," in str(value):
            raise ValueError(f"lm-eval model arg {key}={value!r} holds a comma (lm-eval splits --model_args at commas)")
    return ",".join(f"{k}={v}" for k, v in args.items())


def lm_eval_command(
    model: str,
    model_args: dict[str, Any],
    tasks: Iterable[str],
    output_path: str | Path,
    *,
    include_path: str | Path | None = None,
    batch_size: int | str | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    gen_kwargs: str | None = None,
    device: str | None = None,
    log_samples: bool = False,
) -> list[str]:
    """The stock CLI's argv (``lm_eval --model M --model_args ... --tasks ... --output_path ...``), run
    as ``python -m lm_eval`` by this interpreter: its environment's lm-eval, with ``tsprompt`` registered."""
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        model,
        "--model_args",
        format_model_args(model_args),
        "--tasks",
        ",".join(tasks),
        "--output_path",
        str(output_path),
    ]
    optional = {
        "--include_path": include_path,
        "--batch_size": batch_size,
        "--num_fewshot": num_fewshot,
        "--limit": limit,
        "--gen_kwargs": gen_kwargs,
        "--device": device,
    }
    for flag, value in optional.items():
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + (["--log_samples"] if log_samples else [])
