"""What a run changes in the process, set and restored in one place, and the cross-rank reductions.

``python tune.py`` is one rank: DeepSpeed still wants the environment its launcher would give (the
rank variables and a rendezvous port). A run inside a longer process (a sweep, a notebook, the tests)
must leave that process as it found it: the rank variables (a child process that inherited them, e.g.
lm_eval started after a run, would try to rendezvous on this process's port), torch's
``F.linear`` (ZeRO-3's ``zero.Init`` swaps it for its own, which "persists unless manually reset" and
keeps every linear input for backward) and the global RNG (the loop seeds it per step).
"""

from __future__ import annotations

import contextlib
import os
import socket

import torch

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def run_context():
    """Inside: rank variables present (one rank unless a launcher set them); on exit the variables,
    ``torch.nn.functional.linear`` and the CPU/CUDA RNG states are what they were before, and no
    ZeRO-3 config is left registered with transformers (it would make every later ``from_pretrained``
    in the process build a partitioned model)."""
    import torch.nn.functional as F

    linear = F.linear
    previous = _single_rank_env()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        F.linear = linear
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _single_rank_env() -> dict[str, str | None]:
    """Set the launcher's variables for one rank unless present; return what they were (None: unset)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return previous


def sum_over_ranks(values: torch.Tensor, device) -> torch.Tensor:
    """``values`` (CPU) summed over all ranks, back on the CPU; itself with one rank."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return values
    on_device = values.to(device)
    torch.distributed.all_reduce(on_device)
    return on_device.cpu()


def finite_on_all_ranks(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every rank, so that all ranks stop at the same micro-batch,
    before any collective backward."""
    finite = torch.isfinite(loss.detach()).all().float().reshape(1)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())
