"""Memory: ZeRO-3 gathering for one call, and the process's resident memory as the kernel counts it.

``gathered_params``: the tuner's fused cross-entropy uses the output layer's weight outside
``lm_head.forward``. Registering it as an external parameter of the whole loss module (what ZeRO-3
offers for that, and what DeepSpeed 0.19 does by itself when a partitioned parameter is read inside
the engine's forward) keeps it gathered for the entire forward: on an untied model the output layer and
the input embedding, each vocabulary x hidden, were whole on every rank at once while the embedding
ran (one Qwen1.5-14B layer in fp32: 2 x 3.1 GB per rank in the first step of the two-rank ZeRO-3 run
that was killed at 11.7 GB). Gathering it only around the cross-entropy holds one of them at a time.

``status`` / ``PeakSampler``: resident memory from /proc/self/status (Linux), sampled in a thread:
what the benchmarks measure (and compare with ``tsloss plan``).
"""

from __future__ import annotations

import contextlib

__all__ = ["PeakSampler", "gathered_params", "status"]


@contextlib.contextmanager
def gathered_params(module, names=("weight", "bias")):
    """Context yielding ``module``'s parameters ``names`` (None where absent), whole inside it under
    ZeRO-3 and partitioned again on exit; without ZeRO-3, the parameters as they are.

    They are read past DeepSpeed's discovery of external parameters: inside the engine's forward,
    reading a partitioned parameter as ``module.weight`` gathers it and registers it with the running
    module, which then gathers it for the whole of every later forward. Parameters DeepSpeed already
    holds gathered are left to it: partitioning them here would pull them from under their module."""
    params = [dict.__getitem__(module._parameters, n) if n in module._parameters else None for n in names]
    partitioned = [p for p in params if p is not None and hasattr(p, "ds_id")]
    if not partitioned:
        yield params
        return
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if any(p.ds_status == ZeroParamStatus.INFLIGHT for p in partitioned):  # only the module hooks can wait for it
        raise RuntimeError("gathered_params: a parameter is being prefetched by DeepSpeed; use it inside its module")
    missing = [p for p in partitioned if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    with deepspeed.zero.GatheredParameters(missing) if missing else contextlib.nullcontext():
        yield params


def status() -> dict[str, int]:
    """This process's resident memory now, bytes (Linux /proc/self/status): ``VmRSS`` (all resident
    pages, mapped files included: an fp32 checkpoint loaded by mmap lives there), ``RssAnon`` (the
    allocated part) and ``VmHWM`` (the kernel's high-water mark of VmRSS)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class PeakSampler:
    """Peak resident memory of this process per phase, sampled by a daemon thread every ``interval``
    seconds: ``peaks[phase]`` and ``anon_peaks[phase]`` (bytes), the phase set by ``phase = "..."``.
    ``on_sample`` (optional) is called from the thread about once a second, e.g. to save the peaks
    where a run killed for memory still leaves them."""

    def __init__(self, phase: str = "run", interval: float = 0.005, on_sample=None):
        import threading

        self.phase, self.interval, self.on_sample = phase, interval, on_sample
        self.baseline = status()
        self.peaks: dict[str, int] = {}
        self.anon_peaks: dict[str, int] = {}
        threading.Thread(target=self._run, daemon=True).start()

    def peak(self) -> int:
        """The largest VmRSS seen in any phase so far."""
        return max(self.peaks.values(), default=self.baseline["VmRSS"])

    def _run(self) -> None:
        import time

        last = time.monotonic()
        while True:
            now, phase = status(), self.phase
            self.peaks[phase] = max(self.peaks.get(phase, 0), now["VmRSS"])
            self.anon_peaks[phase] = max(self.anon_peaks.get(phase, 0), now["RssAnon"])
            if self.on_sample is not None and time.monotonic() - last > 1.0:
                self.on_sample()
                last = time.monotonic()
            time.sleep(self.interval)
