"""Training dashboards: every record the tuner writes to ``metrics.jsonl`` also goes to the monitors the
DeepSpeed config names (its ``tensorboard``, ``wandb``, ``csv_monitor`` and ``comet`` blocks), on rank 0,
through DeepSpeed's own ``MonitorMaster``.

Each numeric field of a record becomes one scalar of the same name (``loss``, ``ce``, ``reg``, ``lr``,
``samples_per_s``, ``accuracy``, ``beta_h0``, the topology metrics, ...) at the record's optimizer
``step``. ``--tensorboard DIR`` turns TensorBoard on without editing the JSON (events under
``DIR/<run name>``, the run name being the output directory's). A block that gives no ``job_name`` gets
the run name too, so runs sharing a log folder stay apart.

The blocks are taken out of the config the engine gets: DeepSpeed's engine would otherwise log its own
``Train/Samples/*`` scalars, whose ``train_loss`` is the scaled micro-batch loss rather than the CE, and
start W&B a second time. W&B is optional (``pip install wandb``; ``WANDB_MODE=offline`` keeps it off
the network); a monitor whose package is missing fails before the model loads, in one line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tsloss_harness.errors import TslossError

__all__ = ["MONITOR_BLOCKS", "MetricsMonitor", "MonitorError", "split_monitor_blocks"]

# DeepSpeed's monitor blocks and the package each needs.
MONITOR_BLOCKS = {"tensorboard": "tensorboard", "wandb": "wandb", "csv_monitor": None, "comet": "comet_ml"}


class MonitorError(TslossError, ValueError):
    """A monitor the run cannot start (its package is missing); the message is one line."""


def split_monitor_blocks(ds_config: dict, config) -> tuple[dict, dict]:
    """(the config for the engine, without monitor blocks; the enabled monitor blocks with
    ``--tensorboard`` applied and job names defaulted). Fails in one line on a missing package."""
    engine_config = {key: value for key, value in ds_config.items() if key not in MONITOR_BLOCKS}
    blocks = {key: dict(ds_config[key]) for key in MONITOR_BLOCKS if isinstance(ds_config.get(key), dict)}
    run_name = Path(config.output_dir).resolve().name
    if getattr(config, "tensorboard", None):
        blocks["tensorboard"] = {
            **blocks.get("tensorboard", {}),
            "enabled": True,
            "output_path": str(config.tensorboard),
            "job_name": run_name,
        }
    enabled = {key: block for key, block in blocks.items() if block.get("enabled") is True}
    for key, block in enabled.items():
        if key in ("tensorboard", "csv_monitor"):
            block.setdefault("job_name", run_name)
        package = MONITOR_BLOCKS[key]
        if package and importlib.util.find_spec(package) is None:
            extra = ' (or pip install -e ".[tensorboard]")' if key == "tensorboard" else ""
            raise MonitorError(f"{key}.enabled: the {key} monitor needs `pip install {package}`{extra}")
    return engine_config, enabled


class MetricsMonitor:
    """DeepSpeed's ``MonitorMaster`` over the enabled blocks; ``write(record)`` forwards one metrics
    record. Create it on rank 0 only, after ``deepspeed.init_distributed()``."""

    def __init__(self, blocks: dict):
        from deepspeed.monitor.config import get_monitor_config
        from deepspeed.monitor.monitor import MonitorMaster

        self.master = MonitorMaster(get_monitor_config(blocks))

    def write(self, record: dict) -> None:
        step = int(record["step"])
        events = [(key, float(value), step) for key, value in record.items() if key != "step" and _is_number(value)]
        self.master.write_events(events)

    def close(self) -> None:
        tb = self.master.tb_monitor
        if tb is not None and tb.summary_writer is not None:
            tb.summary_writer.close()
        if self.master.wandb_monitor is not None:
            import wandb

            wandb.finish()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
