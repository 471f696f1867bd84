"""The tuner's settings: ``TuneConfig`` (every flag), the command line and YAML that fill it, and the
checks a config passes before anything is loaded (the DeepSpeed config its flags complete:
:mod:`tsloss_harness.ds_config`)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tsloss_harness.configfile import check_keys, field_parser, read_mapping
from tsloss_harness.ds_config import DsConfigError, ds_config_file
from tsloss_harness.errors import TslossError
from tsloss_harness.prompt_config import PROMPT_METHODS
from tsloss_harness.regularizers import DEFAULTS, REGULARIZERS, UnknownRegularizer, spec, with_half


class TuneError(TslossError, ValueError):
    """A bad configuration or a failed run; the message is one line."""


@dataclass
class TuneConfig:
    # what to train
    model: str = ""  # local HF model directory or hub id
    dataset: str = "gsm8k"  # gsm8k | mmlu_cf[:<Subject>] | longbench:<subset>
    data_dir: str | None = None  # local files in the data set's own schema; None: the hub
    split: str = "train"
    num_samples: int | None = None  # first N training rows (paper: 1 single-sample, 10 multi-sample); None: all
    output_dir: str = "runs/tune"
    # the prompt
    method: str = "prompt"  # prompt | prefix (Prefix-Tuning, MLP) | ptuning_v2 (P-Tuning v2, deep prompts)
    num_virtual_tokens: int = 20
    # normal: N(0, 0.02²) (paper) of the trainable table (prompt [P, d]; prefix [P, d_kv] into the MLP;
    # ptuning_v2 the prefix [P, L*2*d_kv]) | peft: PEFT's own init (N(0, 1) tables, torch's Linear init),
    # seeded | vocab, text:<string>: vocabulary / string embeddings (method prompt only)
    init: str = "normal"
    prefix_hidden_size: int | None = None  # prefix: hidden width of the MLP; None: PEFT's default (d_kv)
    # the regularizer: loss = ce + lambda_ts * regularizer(prompt)
    regularizer: str = "tsloss"  # a name in regularizers.REGULARIZERS: tsloss | h0 | h1 | l2 | pdloss | none | ph_exact
    lambda_ts: float = 1.0
    tau: float = DEFAULTS["tau"]
    alpha: float = DEFAULTS["alpha"]
    beta_h0: float = DEFAULTS["beta_h0"]
    beta_h1: float = DEFAULTS["beta_h1"]
    # adaptive weights: beta_h0 (beta_h1) set each step so that the term's gradient norm on the
    # regularized matrix is this fraction of the CE gradient norm; None: the fixed beta above
    adaptive_ratio_h0: float | None = None
    adaptive_ratio_h1: float | None = None
    # optimisation (paper: AdamW lr 5e-5, wd 0.01, eps 1e-8, batch 8, 300 epochs, linear, 10% warm-up)
    batch_size: int = 8  # global batch, whatever the number of ranks
    micro_batch_size: int | None = None  # per rank; None: batch_size / world_size (no accumulation)
    epochs: int = 300
    max_steps: int | None = None  # overrides epochs
    lr: float = 5e-5
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # the HF Trainer's default; 0 disables clipping
    max_length: int | None = None  # tokens per row (prompt tokens excluded); longer contexts lose their start
    seed: int = 0
    # tracking
    eval_every: int = 10  # training-set accuracy by greedy generation every N steps and at the end (0: never)
    eval_max_samples: int = 100  # accuracy on the first N training rows
    eval_batch_size: int = 8
    topology_every: int = 20  # prompt_topology metrics every N steps and at the end (0: never)
    save_every: int = 0  # checkpoints/step-N + engine state every N steps (0: only at the end)
    stop_at_convergence: bool = False  # stop at the first step with 100% training accuracy
    resume: bool = False  # continue from the last engine state in output_dir
    ds_config: str | None = None  # DeepSpeed JSON: a path, or a shipped name (z2, z3, z3_offload); None: z2
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: str | None = None  # also write the metrics as TensorBoard events under DIR/<run name> (monitor.py)
    # render rows through the tokenizer's chat template as lm-eval's --apply_chat_template does (chat.py)
    chat_template: bool = False
    system_instruction: str | None = None  # lm-eval's --system_instruction, in training too


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsloss tune", description="Train a soft prompt with a topological regularizer (TSLoss)."
    )
    parser.add_argument("--config", help="YAML file with any of the flags below (flags override it)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    for f in dataclasses.fields(TuneConfig):
        flag = f"--{f.name}"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:  # SUPPRESS: only flags actually given override the YAML (so "--num_samples none" can too)
            parser.add_argument(flag, type=field_parser(f), default=argparse.SUPPRESS, metavar=f.name.upper())
    return parser


def load_config(argv: list[str] | None = None) -> TuneConfig:
    """TuneConfig from ``--config`` YAML overridden by explicit flags; TuneError on unknown keys."""
    args = build_parser().parse_args(argv)
    values: dict = {}
    if args.config:
        values = check_keys(TuneConfig, read_mapping(args.config, TuneError), args.config, TuneError)
    values.update({k: v for k, v in vars(args).items() if k not in ("config", "local_rank", "verbose")})
    return TuneConfig(**values)


# Flags that may change between a run and its --resume; all others must match the saved config.yaml.
FREE_ON_RESUME = {
    "resume",
    "progress",
    "eval_every",
    "eval_max_samples",
    "eval_batch_size",
    "topology_every",
    "save_every",
    "stop_at_convergence",
    "tensorboard",
}


def validate(config: TuneConfig) -> None:
    """Every check that needs no model: a bad config fails here in one line, before anything loads."""
    if not config.model:
        raise TuneError("--model is required (a local model directory or a hub id)")
    _check_choices(config)
    _check_adaptive(config)
    _check_numbers(config)
    _check_paths(config)


def _check_choices(config: TuneConfig) -> None:
    if config.method not in PROMPT_METHODS:
        raise TuneError(f"unknown method {config.method!r} (choose {', '.join(PROMPT_METHODS)})")
    try:
        spec(config.regularizer)
    except UnknownRegularizer as e:
        raise TuneError(str(e)) from None
    if not (config.init in ("normal", "vocab", "peft") or (config.init.startswith("text:") and len(config.init) > 5)):
        raise TuneError(f"unknown init {config.init!r} (choose normal, peft, vocab, text:<string>)")
    if config.method != "prompt" and config.init not in ("normal", "peft"):
        # vocabulary rows are input embeddings; a prefix is keys/values (or the MLP's [P, d_kv] input)
        raise TuneError(f"init {config.init!r} is for --method prompt; --method {config.method} takes normal or peft")
    if config.prefix_hidden_size is not None and (config.method != "prefix" or config.prefix_hidden_size < 1):
        raise TuneError(
            f"prefix_hidden_size must be >= 1 and is for --method prefix, got {config.prefix_hidden_size} "
            f"with --method {config.method}"
        )


def adaptive_ratios(config: TuneConfig) -> dict[str, float]:
    """{"h0": r, "h1": r}: the halves whose β is set adaptively (a subset; empty: fixed β)."""
    return {
        h: getattr(config, f"adaptive_ratio_{h}")
        for h in ("h0", "h1")
        if getattr(config, f"adaptive_ratio_{h}") is not None
    }


def _check_adaptive(config: TuneConfig) -> None:
    for half, ratio in adaptive_ratios(config).items():
        if half not in REGULARIZERS[config.regularizer].halves:
            raise TuneError(
                f"adaptive_ratio_{half} needs a regularizer with an {half.upper()} term "
                f"({', '.join(with_half(half))}), got {config.regularizer!r}"
            )
        if not (math.isfinite(ratio) and ratio >= 0):
            raise TuneError(f"adaptive_ratio_{half} must be a finite number >= 0, got {ratio}")
        if config.lambda_ts <= 0:
            raise TuneError(f"adaptive_ratio_{half} needs lambda_ts > 0, got {config.lambda_ts}")


def _check_numbers(config: TuneConfig) -> None:
    for name in ("num_virtual_tokens", "batch_size", "epochs", "eval_batch_size", "eval_max_samples"):
        if getattr(config, name) < 1:
            raise TuneError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("max_steps", "micro_batch_size", "max_length", "num_samples"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise TuneError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("eval_every", "topology_every", "save_every"):
        if getattr(config, name) < 0:
            raise TuneError(f"{name} must be >= 0, got {getattr(config, name)}")
    if not 0 <= config.warmup_ratio <= 1:
        raise TuneError(f"warmup_ratio must be in [0, 1], got {config.warmup_ratio}")
    if config.lr <= 0:
        raise TuneError(f"lr must be > 0, got {config.lr}")


def _check_paths(config: TuneConfig) -> None:
    model = Path(config.model).expanduser()
    looks_local = config.model.startswith((".", "/", "~")) or config.model.count("/") > 1
    if not model.exists() and (looks_local or os.environ.get("HF_HUB_OFFLINE") == "1"):
        raise TuneError(f"model path not found: {config.model}")
    try:
        ds_config_file(config.ds_config)
    except DsConfigError as e:
        raise TuneError(str(e)) from None
    out = Path(config.output_dir)
    if not config.resume:
        if out.exists() and any(out.iterdir()):
            raise TuneError(f"output_dir is not empty: {out} (use --resume to continue it, or another directory)")
        return
    if not (out / "engine_state" / "latest").is_file():
        raise TuneError(f"--resume: no engine state in {out / 'engine_state'}")
    saved = read_mapping(out / "config.yaml", TuneError) if (out / "config.yaml").is_file() else {}
    for key, value in dataclasses.asdict(config).items():
        if key not in FREE_ON_RESUME and key in saved and saved[key] != value:
            raise TuneError(f"--resume: {key}={value!r} differs from the run's {key}={saved[key]!r}")


def warmup_steps(config: TuneConfig, total_steps: int) -> int:
    return math.ceil(config.warmup_ratio * total_steps)
