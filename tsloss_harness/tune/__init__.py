"""Train a soft prompt with a topological regularizer: the tuner.

    python tune.py --model DIR --dataset gsm8k --data_dir DATA --output_dir runs/x
    deepspeed --num_gpus 2 tune.py --ds_config ds_configs/z3.json ...     (same code path)
    tsloss tune ...

Every flag is a field of :class:`TuneConfig` (defaults = the paper's settings); ``--config run.yaml``
holds any of them and flags on the command line override it. ``run(config)`` is the whole recipe and
returns the summary, so sweeps can call it in-process.

The package reads in the order a run does: ``config`` (the settings and their checks), ``batches``
(rows and steps), ``objective`` (what a micro-batch computes), ``recipe`` (setup → train step →
end of step → save), with ``distributed`` (process state, cross-rank reductions) and ``accuracy``
(training-set accuracy by greedy generation) beside it.

Methods (``--method``), all trained by the same loop and saved as the same prompt directory:
- ``prompt``: soft prompt tuning; P virtual token embeddings in front of the input. The regularized
  matrix is the prompt, [P, d].
- ``prefix``: Prefix-Tuning (Li & Liang; PEFT ``prefix_projection=True``): P free rows [P, d_kv]
  through PEFT's two-layer MLP give the key/value prefix of every layer; ``ptuning_v2``: P-Tuning v2
  (PEFT ``prefix_projection=False``), the prefix itself is the parameter. For both the regularized
  matrix is the prefix the decoder sees, [P, L*2*d_kv] (one row per virtual token: every layer's key
  and value; d_kv = key/value heads x head_dim): the MLP's output for ``prefix``, the table for
  ``ptuning_v2``; it is what the prompt directory stores and ``prompt_topology`` measures. The prefix
  enters the decoder as its key/value cache (positions of the text start at P, as in PEFT).
"""

from __future__ import annotations

from tsloss_harness.tune.config import TuneConfig, TuneError, build_parser, load_config

__all__ = ["TuneConfig", "TuneError", "build_parser", "load_config", "run"]


def run(config: TuneConfig) -> dict:
    """Train a prompt as ``config`` says; return the summary (``recipe.run``)."""
    from tsloss_harness.tune.recipe import run as run_recipe

    return run_recipe(config)
