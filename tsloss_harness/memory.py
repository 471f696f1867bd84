"""Memory: ZeRO-3 gathering for one call, and the process's resident memory as the kernel counts it.

``gathered_while``: the tuner's fused cross-entropy uses the output layer's weight outside
``lm_head.forward``. Registering it as an external parameter of the whole loss module (what ZeRO-3
offers for that) keeps it gathered for the entire forward: on an untied model the output layer and
the input embedding, each vocabulary x hidden, were whole on every rank at once while the embedding
ran (Qwen1.5-14B: 2 x 3.1 GB in fp32), which is what killed a two-rank ZeRO-3 run of one Qwen1.5-14B
layer on a 24 GB machine. Gathering only around the cross-entropy holds one of them at a time.

``rss`` / ``peak_rss``: /proc/self/status (Linux), bytes: what the benchmarks compare with ``tsloss plan``.
"""

from __future__ import annotations

import contextlib

__all__ = ["gathered_while", "peak_rss", "rss"]


def gathered_while(params):
    """Context: ZeRO-3 parameters among ``params`` whole inside it, partitioned again on exit.

    Parameters DeepSpeed already holds gathered (or is gathering) are left to it: partitioning them
    here would pull them from under the module that fetched them. Without ZeRO-3: a no-op."""
    params = [p for p in params if p is not None and hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if any(p.ds_status == ZeroParamStatus.INFLIGHT for p in params):  # only the module hooks can wait for it
        raise RuntimeError("gathered_while: a parameter is being prefetched by DeepSpeed; use it inside its module")
    missing = [p for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    return deepspeed.zero.GatheredParameters(missing) if missing else contextlib.nullcontext()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss() -> int:
    """Resident memory of this process now, bytes (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """The high-water mark of this process's resident memory, bytes (VmHWM)."""
    return _status_kib("VmHWM") * 1024
