"""The DeepSpeed config a run trains with: the shipped ``z2.json`` by default, or the user's own file,
completed from the tuner's flags the way the HF Trainer completes its ds_config files.

Researchers arrive with their cluster's files, often written for the HF Trainer (which supplies the
optimizer and scheduler itself, so the files may have no ``optimizer`` block). The rules:

- ``"auto"`` anywhere is filled from the flags: batch sizes, ``gradient_clipping`` (``--max_grad_norm``),
  the optimizer's ``lr``/``eps``/``weight_decay`` (``betas``: (0.9, 0.999)), a scheduler's
  ``warmup_min_lr`` (0), ``warmup_max_lr`` (``--lr``), ``warmup_num_steps`` (``--warmup_ratio``, at least 1)
  and ``total_num_steps``, ``bf16.enabled`` (on where the hardware has it), ``fp16.enabled``/``amp.enabled``
  (off), and ZeRO's model-size buckets from the model's hidden size h (``reduce_bucket_size`` h²,
  ``stage3_prefetch_bucket_size`` 0.9·h², ``stage3_param_persistence_threshold`` 10·h), as the HF Trainer
  fills them. An ``"auto"`` nothing here can fill fails naming its key.
- No ``optimizer`` block: torch's AdamW from the flags (what the HF Trainer does). The trainable prompt
  is tiny, so DeepSpeed's fused or CPU Adam would gain nothing; with an offloaded optimizer,
  ``zero_force_ds_cpu_optimizer`` defaults to false so DeepSpeed accepts it.
- An ``optimizer`` block must be AdamW (``AdamW``, or ``Adam`` in DeepSpeed's default AdamW mode); its
  parameters the file leaves out are taken from the flags like ``"auto"`` ones.
- A value the flags also set (batch sizes, ``gradient_clipping``, ``lr``, ``eps``, ``weight_decay``, a
  scheduler's ``warmup_max_lr``, ``warmup_num_steps``, ``total_num_steps``) must be ``"auto"`` or agree
  with the flag, as the HF Trainer requires: ``config.yaml`` then tells the truth about the run; left
  out, it is the flag's. Every other value in the file is used as written (ZeRO settings, offload,
  betas, a scheduler's type, ...); precision left out is DeepSpeed's default, fp32.
- No ``scheduler`` block: the tuner's own linear warm-up/decay (the HF Trainer's).
- ``fp16`` or ``amp`` enabled fails: dynamic loss scaling skips optimizer steps on overflow, which the
  step-indexed metrics, schedule and checkpoints do not allow. bf16 or fp32 train.
- The ``tensorboard`` / ``wandb`` / ``csv_monitor`` blocks are read by :mod:`tsloss_harness.monitor`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tsloss_harness.errors import TslossError

__all__ = ["DsConfigError", "ds_config_file", "fill_ds_config", "read_ds_config"]

# Keys the flags set: a value written in the file must equal the flag's (or be "auto").
FLAG_OF = {
    "train_batch_size": "--batch_size",
    "train_micro_batch_size_per_gpu": "--micro_batch_size",
    "gradient_accumulation_steps": "--batch_size / --micro_batch_size",
    "gradient_clipping": "--max_grad_norm",
    "optimizer.params.lr": "--lr",
    "optimizer.params.eps": "--adam_eps",
    "optimizer.params.weight_decay": "--weight_decay",
    "scheduler.params.warmup_max_lr": "--lr",
    "scheduler.params.warmup_num_steps": "--warmup_ratio",
    "scheduler.params.total_num_steps": "--max_steps / --epochs",
}
ADAM_BETAS = [0.9, 0.999]  # torch's and the HF Trainer's defaults (adam_beta1, adam_beta2)
_HIDDEN_SIZE_KEYS = (
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
)


class DsConfigError(TslossError, ValueError):
    """A DeepSpeed config the tuner cannot use; the message names the file and key."""


def ds_config_file(name: str | None) -> Path:
    """The DeepSpeed JSON a ``--ds_config`` names: a path, or a shipped config (z2, z3, z3_offload)."""
    from tsloss_harness.resources import ds_config_path

    if name is None:
        return ds_config_path("z2")  # the default
    if Path(name).is_file():
        return Path(name)
    if "/" not in name and not Path(name).exists():
        try:
            return ds_config_path(name)
        except TslossError:
            pass
    raise DsConfigError(f"DeepSpeed config not found: {name}")


def read_ds_config(name: str | None) -> tuple[dict, Path]:
    """The JSON a ``--ds_config`` names (a path, a shipped name, None: z2) and the path read."""
    path = ds_config_file(name)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DsConfigError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    except OSError as e:
        raise DsConfigError(f"{path}: cannot read the DeepSpeed config ({e.strerror})") from None
    if not isinstance(ds, dict):
        raise DsConfigError(f"{path}: expected a JSON object")
    return ds, path


def fill_ds_config(config, world_size: int, total_steps: int) -> dict:
    """The DeepSpeed config dict of ``config`` (a ``TuneConfig``) with every "auto" filled from the flags,
    an AdamW optimizer supplied when the file names none, and every conflict refused (see the module)."""
    ds, path = read_ds_config(config.ds_config)
    micro = config.micro_batch_size or config.batch_size // world_size
    if micro < 1 or config.batch_size % (micro * world_size):
        raise DsConfigError(
            f"batch_size={config.batch_size} is not a multiple of micro_batch_size*world_size={micro}*{world_size}"
        )
    _check_precision(ds, path)
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        ds.setdefault(key, "auto")  # left out: the flags', as the tuner's batch layout and config.yaml need
    _check_or_supply_optimizer(ds, path)
    flags = _flag_values(config, world_size, micro, total_steps)
    _check_agreement(ds, path, flags)
    _fill_auto(ds, path, {**flags, **_derived_values(ds, config)})
    return ds


def _flag_values(config, world_size: int, micro: int, total_steps: int) -> dict:
    warmup = math.ceil(config.warmup_ratio * total_steps)
    return {
        "train_batch_size": config.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.batch_size // (micro * world_size),
        "gradient_clipping": config.max_grad_norm,
        "optimizer.params.lr": config.lr,
        "optimizer.params.eps": config.adam_eps,
        "optimizer.params.weight_decay": config.weight_decay,
        "scheduler.params.warmup_max_lr": config.lr,
        # deepspeed >= 0.19.6 rejects 0 warm-up steps (the HF Trainer fills at least 1 too)
        "scheduler.params.warmup_num_steps": max(1, warmup),
        "scheduler.params.total_num_steps": total_steps,
    }


def _derived_values(ds: dict, config) -> dict:
    """Values for "auto" that no flag names: defaults, the hardware, the model's size."""
    import torch

    values = {
        "optimizer.params.betas": ADAM_BETAS,
        "scheduler.params.warmup_min_lr": 0,
        "bf16.enabled": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "fp16.enabled": False,
        "amp.enabled": False,
        "zero_optimization.stage3_gather_16bit_weights_on_model_save": False,  # the tuner saves the prompt itself
    }
    if any(_get(ds, key) == "auto" for key in _HIDDEN_SIZE_KEYS):
        h = _hidden_size(config.model)
        values.update(dict(zip(_HIDDEN_SIZE_KEYS, (h * h, int(0.9 * h * h), 10 * h), strict=True)))
    return values


def _hidden_size(model: str) -> int:
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError, *_config_validation_errors()) as e:  # not found, unreadable, bad or unknown
        raise DsConfigError(
            f"cannot read the config of {model} for the ZeRO bucket sizes: {str(e).splitlines()[0]}"
        ) from None
    text_config = getattr(model_config, "text_config", None) or model_config
    return int(text_config.hidden_size)


def _config_validation_errors() -> tuple[type[Exception], ...]:
    """What a config.json with bad values raises: transformers >= 5 checks the fields with huggingface_hub's
    strict dataclasses (older versions raise ValueError, or nothing)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub (transformers 4): no such validation
        return ()
    return (StrictDataclassError,)


def _check_precision(ds: dict, path: Path) -> None:
    for block in ("fp16", "amp"):
        if _get(ds, f"{block}.enabled") is True:
            raise DsConfigError(
                f"{path}: {block}.enabled=true: the tuner trains in fp32 or bf16 (fp16 loss scaling skips optimizer steps "
                f'on overflow); set it to false or "auto", or use bf16'
            )


def _check_or_supply_optimizer(ds: dict, path: Path) -> None:
    optimizer = ds.get("optimizer")
    if optimizer is None:
        params = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto", "torch_adam": True}
        ds["optimizer"] = {"type": "AdamW", "params": params}
        if _offloads_optimizer(ds):
            ds.setdefault("zero_force_ds_cpu_optimizer", False)  # accept torch's AdamW with ZeRO-Offload
        return
    kind = str(optimizer.get("type", "")).lower() if isinstance(optimizer, dict) else ""
    params = optimizer.get("params", {}) if isinstance(optimizer, dict) else None
    if kind not in ("adamw", "adam") or not isinstance(params, dict):
        got = optimizer.get("type") if isinstance(optimizer, dict) else optimizer
        raise DsConfigError(
            f"{path}: optimizer.type={got!r}: the tuner trains with AdamW (set type AdamW, "
            f"or remove the optimizer block to take AdamW from the flags)"
        )
    if params.get("adam_w_mode") is False:
        raise DsConfigError(
            f"{path}: optimizer.params.adam_w_mode=false: the tuner trains with AdamW (decoupled weight decay)"
        )
    optimizer["params"] = params
    for name in ("lr", "betas", "eps", "weight_decay"):
        params.setdefault(name, "auto")  # left out: from the flags, never DeepSpeed's own defaults (lr 1e-3)


def _offloads_optimizer(ds: dict) -> bool:
    return str(_get(ds, "zero_optimization.offload_optimizer.device") or "none").lower() not in ("none", "auto")


def _check_agreement(ds: dict, path: Path, flags: dict) -> None:
    for key, flag in FLAG_OF.items():
        value = _get(ds, key)
        if value is None or value == "auto":
            continue
        expected = flags[key]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isclose(value, expected)):
            raise DsConfigError(
                f'{path}: {key}={value!r} disagrees with {flag} ({expected!r}); set it to "auto" or change the flag'
            )


def _fill_auto(ds: dict, path: Path, values: dict) -> None:
    def fill(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = prefix + key
            if isinstance(value, dict):
                fill(value, name + ".")
            elif value == "auto":
                if name not in values:
                    raise DsConfigError(f'{path}: no flag fills "auto" at {name}')
                node[key] = values[name]

    fill(ds, "")


def _get(ds: dict, dotted: str):
    node = ds
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
