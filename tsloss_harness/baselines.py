"""The two inference-time baselines of Table III as ``tsprompt`` model args: ``act=<file>`` (ACT,
``tsloss_harness.act``) and ``dpc=true`` (DPC, ``tsloss_harness.dpc``).

``tsloss_harness.evaluation.TSPromptLM`` calls these hooks; they keep its own code to a few lines.
The results JSON records each method beside the prompt's provenance (``config.act``, ``config.dpc``),
which is how ``tsloss leaderboard`` tells their columns apart.
"""

from __future__ import annotations

from typing import Any

__all__ = ["from_model_args", "model_info", "prompt_stats", "with_prompt_stats"]


def from_model_args(kwargs: dict, prefix_config: Any, prompt_path: str) -> tuple[Any, Any]:
    """Remove ``act`` and ``dpc*`` from lm-eval model args: (ActPatch | None, DynamicPromptCorruption | None).

    Fails in one line for ACT and DPC together, and for DPC on a prefix (it corrupts input embeddings).
    """
    if not any(key == "act" or key.startswith("dpc") for key in kwargs):
        return None, None
    from tsloss_harness.act import ActPatch, pop_model_arg
    from tsloss_harness.dpc import DpcError, DynamicPromptCorruption, pop_model_args

    act, dpc = pop_model_arg(kwargs), pop_model_args(kwargs)
    if act is not None and dpc is not None:
        raise DpcError("tsprompt: act= and dpc= together are not supported; give one of them")
    if dpc is not None and prefix_config is not None:
        raise DpcError(f"tsprompt: dpc= needs a prompt-tuning soft prompt; {prompt_path} is a prefix (PREFIX_TUNING)")
    return (ActPatch(act) if act else None), (DynamicPromptCorruption(dpc) if dpc else None)


def model_info(act: Any, dpc: Any) -> dict:
    """``config.act`` / ``config.dpc`` of the results JSON (nothing when neither is on)."""
    info = {}
    if act is not None:
        info["act"] = act.report()
    if dpc is not None:
        info["dpc"] = dpc.report()
    return info


def prompt_stats(act: Any, cache: Any) -> Any:
    """ACT's carried statistics of the prompt's own cache (None without ACT)."""
    if act is None:
        return None
    from tsloss_harness.act import carry_stats

    return carry_stats(cache)


def with_prompt_stats(cache: Any, stats: Any, batch_size: int) -> Any:
    """``cache`` (the prompt's keys and values, ``batch_size`` rows) given the prompt's ACT statistics."""
    if stats is None:
        return cache
    from tsloss_harness.act import attach_stats

    return attach_stats(cache, stats, batch_size)
