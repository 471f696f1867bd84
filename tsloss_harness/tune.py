"""Train a soft prompt with a topological regularizer: the tuning recipe, top to bottom.

    python tune.py --model DIR --dataset gsm8k --data_dir DATA --output_dir runs/x
    deepspeed --num_gpus 2 tune.py --ds_config ds_configs/z3.json ...     (same code path)
    tsloss tune ...

Every flag is a field of :class:`TuneConfig` (defaults = the paper's settings); ``--config run.yaml``
holds any of them and flags on the command line override it. ``run(config)`` is the whole recipe and
returns the summary, so sweeps can call it in-process.

How a step is computed (and why 1 rank and N ranks train the same thing):
- ``--batch_size`` is the global batch. Step ``s`` takes rows ``perm(seed, epoch)[k*B:(k+1)*B]``
  (a pure function of seed and epoch, so a resumed run sees the same order). The rows are cut into
  ``world_size * grad_accum`` micro-batches; rank ``r`` runs slots ``r, r+W, ...``; an empty slot (a
  short last batch) runs a dummy row with no target tokens, so every rank takes part in every step.
- Loss = Σ answer-token CE over the whole global batch / (answer tokens in the global batch)
  + λ_ts · regularizer(prompt). Each micro-batch returns ``W·G·ce_sum/N_global + λ·reg``; DeepSpeed
  averages gradients over the W·G micro-batches, so the CE is normalised once over the global batch
  and the regularizer counts once per step.
- Logits only at answer positions: the decoder's last hidden states at the positions that predict
  answer tokens go through the output layer (and Gemma-2's final soft-capping where configured),
  fused with the cross-entropy in row chunks; nothing of size [B, T, vocab] is built. The same loss
  and prompt gradient as the full-logits forward (tested).
- The regularizer reads the prompt matrix from the prompt encoder's output inside the forward, where
  ZeRO-3 has gathered the (otherwise partitioned) parameter, so it always sees the whole [P, d] matrix.
- Targets are the answer text plus EOS: generation then stops by itself, which training-set accuracy
  by greedy generation needs (the harness also stops GSM8K at "Question:").

Methods (``--method``), all trained by this same loop and saved as the same prompt directory:
- ``prompt``: soft prompt tuning; P virtual token embeddings in front of the input. The regularized
  matrix is the prompt, [P, d].
- ``prefix``: Prefix-Tuning (Li & Liang; PEFT ``prefix_projection=True``): P free rows [P, d_kv]
  through PEFT's two-layer MLP give the key/value prefix of every layer; ``ptuning_v2``: P-Tuning v2
  (PEFT ``prefix_projection=False``), the prefix itself is the parameter. For both the regularized
  matrix is the prefix the decoder sees, [P, L*2*d_kv] (one row per virtual token: every layer's key
  and value; d_kv = key/value heads x head_dim): the MLP's output for ``prefix``, the table for
  ``ptuning_v2``; it is what the prompt directory stores and ``prompt_topology`` measures. The prefix
  enters the decoder as its key/value cache (positions of the text start at P, as in PEFT).
- Adaptive H0/H1 weights (``--adaptive_ratio_h0/_h1 r``): each step β_H0 (β_H1) is chosen so that
  ‖∇_M λ·β·L_H0‖ = r·‖∇_M CE‖ on the regularized matrix M. Exact in the same step: M enters the
  decoder through an identity whose backward receives the CE gradient on M, takes its norm and adds
  the term's gradient (computed in the forward) scaled to r times it. With several micro-batches or
  ranks the ratio holds per micro-batch (each adds r·‖its CE gradient‖ in the term's direction), so
  against the step's summed CE gradient it is >= r, = r when the micro-batch gradients are parallel.
  The effective β (what the step's gradient equals λ·β·∇L times) is logged as ``beta_h0``/``beta_h1``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TuneConfig", "TuneError", "build_parser", "load_config", "main", "run"]

log = logging.getLogger("tsloss_harness.tune")

METHODS = ("prompt", "prefix", "ptuning_v2")  # = prompt.PROMPT_METHODS (not imported: it loads torch)

# Regularizers made of an H0 and/or an H1 term, each weighted by beta_h0 / beta_h1 (adaptive weighting).
_HALVES = {"tsloss": ("h0", "h1"), "h0": ("h0",), "h1": ("h1",), "ph_exact": ("h0", "h1")}


class TuneError(ValueError):
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
    regularizer: str = "tsloss"  # tsloss | h0 | h1 | l2 | pdloss | none
    lambda_ts: float = 1.0
    tau: float = 0.1
    alpha: float = 10.0
    beta_h0: float = 1.0
    beta_h1: float = 1.0
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
    ds_config: str | None = None  # DeepSpeed JSON (ds_configs/z2.json, z3.json, z3_offload.json); None: z2
    progress: bool = True  # tqdm bar on rank 0


# ---------------------------------------------------------------------------------------- config


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
            parser.add_argument(flag, type=_field_parser(f), default=argparse.SUPPRESS, metavar=f.name.upper())
    return parser


def _field_parser(f: dataclasses.Field):
    kind = str(f.type)
    base = int if kind.startswith("int") else float if kind.startswith("float") else str

    def parse(text: str):
        if "None" in kind and text.lower() in ("none", "null"):
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse names the type in its error message
    return parse


def load_config(argv: list[str] | None = None) -> TuneConfig:
    """TuneConfig from ``--config`` YAML overridden by explicit flags; TuneError on unknown keys."""
    args = build_parser().parse_args(argv)
    values: dict = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise TuneError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise TuneError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise TuneError(f"{path}: expected a mapping of flag names to values")
        known = {f.name for f in dataclasses.fields(TuneConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise TuneError(f"{path}: unknown key {unknown[0]!r}")
        fields = {f.name: f for f in dataclasses.fields(TuneConfig)}
        for key, value in loaded.items():  # PyYAML reads 5e-5 as a string: parse as the flag would
            if isinstance(value, str) and not str(fields[key].type).startswith("str"):
                try:
                    value = _field_parser(fields[key])(value)
                except ValueError:
                    raise TuneError(f"{path}: {key}: not a number: {value!r}") from None
            values[key] = value
    values.update({k: v for k, v in vars(args).items() if k not in ("config", "local_rank", "verbose")})
    return TuneConfig(**values)


# Flags that may change between a run and its --resume; all others must match the saved config.yaml.
_FREE_ON_RESUME = {"resume", "progress", "eval_every", "eval_max_samples", "eval_batch_size", "topology_every",
                   "save_every", "stop_at_convergence"}


def _validate(config: TuneConfig) -> None:
    from tsloss_harness.losses import REGULARIZERS

    if not config.model:
        raise TuneError("--model is required (a local model directory or a hub id)")
    if config.method not in METHODS:
        raise TuneError(f"unknown method {config.method!r} (choose {', '.join(METHODS)})")
    if config.regularizer not in REGULARIZERS:
        raise TuneError(f"unknown regularizer {config.regularizer!r} (choose {', '.join(REGULARIZERS)})")
    if not (config.init in ("normal", "vocab", "peft") or (config.init.startswith("text:") and len(config.init) > 5)):
        raise TuneError(f"unknown init {config.init!r} (choose normal, peft, vocab, text:<string>)")
    if config.method != "prompt" and config.init not in ("normal", "peft"):
        # vocabulary rows are input embeddings; a prefix is keys/values (or the MLP's [P, d_kv] input)
        raise TuneError(f"init {config.init!r} is for --method prompt; --method {config.method} takes normal or peft")
    if config.prefix_hidden_size is not None and (config.method != "prefix" or config.prefix_hidden_size < 1):
        raise TuneError(f"prefix_hidden_size must be >= 1 and is for --method prefix, got {config.prefix_hidden_size} "
                        f"with --method {config.method}")
    for half in ("h0", "h1"):
        ratio = getattr(config, f"adaptive_ratio_{half}")
        if ratio is None:
            continue
        if half not in _HALVES.get(config.regularizer, ()):
            with_half = ", ".join(name for name, halves in _HALVES.items() if half in halves)
            raise TuneError(f"adaptive_ratio_{half} needs a regularizer with an {half.upper()} term ({with_half}), "
                            f"got {config.regularizer!r}")
        if not (math.isfinite(ratio) and ratio >= 0):
            raise TuneError(f"adaptive_ratio_{half} must be a finite number >= 0, got {ratio}")
        if config.lambda_ts <= 0:
            raise TuneError(f"adaptive_ratio_{half} needs lambda_ts > 0, got {config.lambda_ts}")
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
    model = Path(config.model).expanduser()
    looks_local = config.model.startswith((".", "/", "~")) or config.model.count("/") > 1
    if not model.exists() and (looks_local or os.environ.get("HF_HUB_OFFLINE") == "1"):
        raise TuneError(f"model path not found: {config.model}")
    if config.ds_config is not None and not Path(config.ds_config).is_file():
        raise TuneError(f"DeepSpeed config not found: {config.ds_config}")
    out = Path(config.output_dir)
    if config.resume:
        if not (out / "engine_state" / "latest").is_file():
            raise TuneError(f"--resume: no engine state in {out / 'engine_state'}")
        import yaml

        saved = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
        for key, value in dataclasses.asdict(config).items():
            if key not in _FREE_ON_RESUME and key in saved and saved[key] != value:
                raise TuneError(f"--resume: {key}={value!r} differs from the run's {key}={saved[key]!r}")
    elif out.exists() and any(out.iterdir()):
        raise TuneError(f"output_dir is not empty: {out} (use --resume to continue it, or another directory)")


# ------------------------------------------------------------------------------------ distributed


def _ensure_distributed_env() -> dict[str, str | None]:
    """A plain ``python tune.py`` is one rank: give DeepSpeed the environment its launcher would.
    Returns the previous values (None: unset) of the variables it set, for ``run`` to restore."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return previous


def _warmup_steps(config: TuneConfig, total_steps: int) -> int:
    return math.ceil(config.warmup_ratio * total_steps)


def _ds_config(config: TuneConfig, world_size: int, total_steps: int) -> dict:
    """The DeepSpeed config dict with every "auto" filled from the flags."""
    import torch

    from tsloss_harness.resources import ds_config_path

    path = Path(config.ds_config) if config.ds_config is not None else ds_config_path("z2")  # the default
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TuneError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    micro = config.micro_batch_size or config.batch_size // world_size
    if micro < 1 or config.batch_size % (micro * world_size):
        raise TuneError(
            f"batch_size={config.batch_size} is not a multiple of micro_batch_size*world_size={micro}*{world_size}"
        )
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    auto = {
        "train_batch_size": config.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.batch_size // (micro * world_size),
        "gradient_clipping": config.max_grad_norm,
        "optimizer.params.lr": config.lr,
        "optimizer.params.eps": config.adam_eps,
        "optimizer.params.weight_decay": config.weight_decay,
        "scheduler.params.total_num_steps": total_steps,
        "scheduler.params.warmup_num_steps": _warmup_steps(config, total_steps),
        "scheduler.params.warmup_max_lr": config.lr,
        "bf16.enabled": bf16,
        "fp16.enabled": False,
    }

    def fill(node: dict, prefix: str = "") -> None:
        for key, value in node.items():
            name = prefix + key
            if isinstance(value, dict):
                fill(value, name + ".")
            elif value == "auto":
                if name not in auto:
                    raise TuneError(f"{config.ds_config}: no flag fills \"auto\" at {name}")
                node[key] = auto[name]

    fill(ds)
    # Values written explicitly in the JSON must agree with the flags, or 1 and N ranks would differ.
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if ds.get(key, auto[key]) != auto[key]:
            raise TuneError(f"{config.ds_config}: {key}={ds[key]} disagrees with the flags ({auto[key]})")
    return ds


# ------------------------------------------------------------------------------------------ model


def _linear_cross_entropy():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Σ CE(hidden @ weightᵀ + bias [soft-capped], targets), chunked over rows.

        The gradient w.r.t. ``hidden`` is computed in the forward, chunk by chunk, so no [N, vocab]
        tensor outlives a chunk: the same result as ``F.cross_entropy(lm_head(hidden))`` (fp32 logits,
        as HF upcasts them) at a fraction of the memory traffic. ``weight`` is frozen (no gradient).
        """

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, softcap):
            budget = 2**26 if hidden.is_cuda else 2**22  # logits elements per chunk (CPU: cache-sized)
            chunk = max(1, budget // weight.shape[0])
            acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 logits (fp64 stays fp64)
            total = torch.zeros((), dtype=acc, device=hidden.device)
            grad = torch.empty_like(hidden)
            for start in range(0, hidden.shape[0], chunk):
                h, t = hidden[start : start + chunk], targets[start : start + chunk]
                z = h @ weight.T
                if bias is not None:
                    z = z + bias
                z = z.to(acc)
                if softcap:
                    capped = torch.tanh(z / softcap)
                    z = capped * softcap
                lse = torch.logsumexp(z, dim=-1)
                total += (lse - z.gather(1, t[:, None])[:, 0]).sum()
                z.sub_(lse[:, None]).exp_()  # softmax
                z[torch.arange(len(t), device=z.device), t] -= 1.0  # d CE / d logits
                if softcap:
                    z.mul_(1.0 - capped * capped)
                grad[start : start + chunk] = z.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_output):
            (grad,) = ctx.saved_tensors
            return grad * grad_output.to(grad.dtype), None, None, None, None

    return LinearCrossEntropy


def _adaptive_gradient():
    import torch

    class AdaptiveGradient(torch.autograd.Function):
        """Identity on the regularized matrix M on its way into the decoder. Its backward receives the
        CE gradient on M (M's other use, the fixed-weight regularizer, is a separate branch), and adds
        each adaptive term's gradient (computed in the forward) scaled to ``ratio * ||CE gradient||``;
        the scales used, ``ratio * ||g_CE|| / ||g_term||``, are added to ``scales_out`` (CPU, float64).
        The CE gradient arrives scaled as the engine scales the loss (1/grad_accum), so the added
        gradient is too: the ratio holds in whatever units."""

        @staticmethod
        def forward(ctx, matrix, term_grads, ratios, scales_out):
            ctx.save_for_backward(term_grads)
            ctx.ratios, ctx.scales_out = ratios, scales_out
            return matrix.clone()

        @staticmethod
        def backward(ctx, grad):
            (term_grads,) = ctx.saved_tensors
            ce_norm = torch.linalg.vector_norm(grad.float())
            total = grad.float()
            for i, ratio in enumerate(ctx.ratios):
                norm = torch.linalg.vector_norm(term_grads[i])
                if norm > 0:  # a term with no gradient (e.g. fewer than 2 rows) adds nothing
                    scale = ratio * ce_norm / norm
                    total = total + scale * term_grads[i]
                    ctx.scales_out[i] += scale.item()
            return total.to(grad.dtype), None, None, None

    return AdaptiveGradient


def _prefix_cache(matrix, batch_size: int, peft_config, model_config):
    """The decoder's key/value cache holding the prefix ``matrix`` [P, L*2*d_kv], as PEFT's
    ``get_prompt`` lays it out: row = (layer, key|value, head, head_dim); differentiable."""
    from transformers import DynamicCache

    p, layers, heads = matrix.shape[0], peft_config.num_layers, peft_config.num_attention_heads
    kv = matrix.view(p, layers * 2, heads, peft_config.token_dim // heads).permute(1, 2, 0, 3)  # [2L, H, P, hd]
    data = [
        (kv[2 * i][None].expand(batch_size, -1, -1, -1), kv[2 * i + 1][None].expand(batch_size, -1, -1, -1))
        for i in range(layers)
    ]
    return DynamicCache(ddp_cache_data=data, config=model_config)


def _loss_module(peft_model, regularizer, reg_kwargs: dict, lambda_ts: float, adaptive: dict | None = None):
    """The forward of one micro-batch: prompt + decoder + output layer at answer positions + CE + reg.

    An ``nn.Module`` so DeepSpeed's engine runs it and ZeRO-3's hooks gather each submodule's
    parameters as it is called. Returns (loss to backpropagate, CE sum, regularizer value); with
    ``adaptive`` ({"h0": ratio, "h1": ratio}, a subset) the adaptive terms reach the gradient only
    (see ``_adaptive_gradient``), the value returned is the fixed-weight rest, and each forward leaves
    the unweighted adaptive term values in ``adaptive_values`` and adds the backward's scales to
    ``adaptive_scales`` (zeroed by the caller each step).
    """
    import torch
    from torch import nn

    base = peft_model.get_base_model()
    decoder = getattr(base, base.base_model_prefix)
    lm_head = base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    linear_cross_entropy = _linear_cross_entropy()
    adaptive_gradient = _adaptive_gradient()
    adapter = peft_model.active_adapter
    peft_config = peft_model.peft_config[adapter]
    num_virtual = peft_config.num_virtual_tokens
    deep = peft_config.peft_type == "PREFIX_TUNING"  # prefix / ptuning_v2: a key/value prefix at every layer
    adaptive = dict(adaptive or {})
    halves = tuple(adaptive)
    ratios = tuple(float(adaptive[h]) for h in halves)
    # the adaptive terms leave the fixed-weight call; each is computed alone with weight 1
    fixed_kwargs = {**reg_kwargs, **{f"beta_{h}": 0.0 for h in halves}}
    term_kwargs = [{**reg_kwargs, "beta_h0": float(h == "h0"), "beta_h1": float(h == "h1")} for h in halves]

    class _PromptTuningLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.peft_model = peft_model
            self.adaptive_halves = halves
            self.adaptive_values = torch.zeros(len(halves), dtype=torch.float64)
            self.adaptive_scales = torch.zeros(len(halves), dtype=torch.float64)

        def prompt_matrix(self):
            """The regularized matrix: the prompt [P, d], or the prefix [P, L*2*d_kv] (for ``prefix`` the
            MLP's output); the prompt encoder's output, whole here even under ZeRO-3."""
            encoder = self.peft_model.prompt_encoder[adapter]
            tokens = self.peft_model.prompt_tokens[adapter][:num_virtual].to(encoder.embedding.weight.device)
            return encoder(tokens)

        def forward(self, input_ids, attention_mask, labels, ce_scale):
            matrix = self.prompt_matrix()
            reg = regularizer(matrix, **fixed_kwargs) if lambda_ts else matrix.sum() * 0.0
            if halves:
                with torch.enable_grad():  # d term / d M now, at this M: the backward only rescales them
                    leaf = matrix.detach().requires_grad_(True)
                    values, grads = [], []
                    for kwargs in term_kwargs:
                        value = regularizer(leaf, **kwargs)
                        grads.append(torch.autograd.grad(value, leaf)[0].float())
                        values.append(value.detach().double().cpu())
                self.adaptive_values = torch.stack(values)
                matrix = adaptive_gradient.apply(matrix, torch.stack(grads), ratios, self.adaptive_scales)
            embeds = self.peft_model.word_embeddings(input_ids)
            batch = input_ids.shape[0]
            mask = torch.cat([attention_mask.new_ones(batch, num_virtual), attention_mask], dim=1)
            if deep:
                cache = _prefix_cache(matrix.to(embeds.dtype), batch, peft_config, base.config)
                hidden = decoder(inputs_embeds=embeds, attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state
                # hidden[:, j-1] predicts input token j (token 0, never an answer token, has no predictor)
                predicting, targets = hidden[:, :-1], labels[:, 1:]
            else:
                embeds = torch.cat([matrix.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
                hidden = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
                # hidden[:, P-1+j] predicts input token j
                predicting, targets = hidden[:, num_virtual - 1 : num_virtual - 1 + input_ids.shape[1]], labels
            # keep only the rows whose target is an answer token
            answer = targets != -100
            ce_sum = linear_cross_entropy.apply(
                predicting[answer], lm_head.weight, lm_head.bias, targets[answer], softcap or 0.0
            )
            loss = ce_scale * ce_sum + lambda_ts * reg.float()
            return loss, ce_sum.detach(), reg.detach().float()

    module = _PromptTuningLoss()
    if hasattr(lm_head.weight, "ds_id"):  # ZeRO-3: the output layer's weight is used outside lm_head.forward
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        for param in (lm_head.weight, lm_head.bias):
            if param is not None:
                register_external_parameter(module, param)
    return module


def _initial_prompt(config: TuneConfig, peft_model, tokenizer, generator):
    """The initial trainable table (the prompt encoder's embedding: [P, d] prompt, [P, d_kv] prefix MLP
    input, [P, L*2*d_kv] P-Tuning v2 prefix): N(0, 0.02²) | random vocabulary rows | embeddings of a
    tokenised string; None for ``peft`` (keep PEFT's own, seeded, initialisation)."""
    import torch

    if config.init == "peft":
        return None
    table = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
    shape = getattr(table, "ds_shape", table.shape)
    if config.init == "normal":
        return torch.randn(*shape, generator=generator) * 0.02
    embedding = peft_model.word_embeddings
    p = config.num_virtual_tokens
    if config.init == "vocab":
        ids = torch.randint(0, len(tokenizer), (p,), generator=generator)
    else:
        text_ids = tokenizer(config.init[len("text:") :], add_special_tokens=False)["input_ids"]
        if not text_ids:
            raise TuneError(f"init {config.init!r} tokenises to nothing")
        ids = torch.tensor((text_ids * math.ceil(p / len(text_ids)))[:p])  # repeated/truncated to P, as PEFT does
    with _gathered(embedding.weight):
        return embedding.weight.detach()[ids.to(embedding.weight.device)].float().cpu().clone()


def _gathered(param, modifier_rank=None):
    """Whole ``param`` inside the block under ZeRO-3 (a collective: every rank must enter)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank)
    return contextlib.nullcontext()


def _full_prompt(engine):
    """The whole fp32 regularized matrix on CPU, on every rank (a collective under ZeRO-3): the prompt
    table, or for ``prefix`` the MLP applied to the whole fp32 parameters (what PEFT saves)."""
    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    peft_model = engine.module.peft_model
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]

    def full(param):
        value = safe_get_full_fp32_param(param)
        if value is None:
            with _gathered(param):
                value = param.detach().float().clone()
        return value.detach().float().cpu().reshape(getattr(param, "ds_shape", param.shape)).clone()

    matrix = full(encoder.embedding.weight)
    if getattr(encoder, "prefix_projection", False):
        first, last = encoder.transform[0], encoder.transform[2]
        hidden = torch.tanh(torch.nn.functional.linear(matrix, full(first.weight), full(first.bias)))
        matrix = torch.nn.functional.linear(hidden, full(last.weight), full(last.bias))
    return matrix


# ------------------------------------------------------------------------------------------- data


def _tokenize(examples, tokenizer, max_length: int | None):
    """(input_ids, n_context) per example: the harness's context/continuation split, plus EOS."""
    rows = []
    for ex in examples:
        context, target = ex.prompt, ex.target
        spaces = len(context) - len(context.rstrip())  # lm-eval moves trailing spaces to the continuation
        if spaces:
            context, target = context[:-spaces], context[-spaces:] + target
        whole = tokenizer(context + target)["input_ids"]
        n_context = len(tokenizer(context)["input_ids"])
        if tokenizer.eos_token_id is not None and whole[-1] != tokenizer.eos_token_id:
            whole = whole + [tokenizer.eos_token_id]
        if n_context >= len(whole):
            raise TuneError(f"the answer of {ex.prompt[:40]!r}... tokenises to nothing")
        if max_length is not None and len(whole) > max_length:
            cut = len(whole) - max_length
            if cut >= n_context:
                raise TuneError(f"max_length={max_length} leaves no context for a row with a {len(whole) - n_context}-token answer")
            whole, n_context = whole[cut:], n_context - cut
        rows.append((whole, n_context))
    return rows


def _collate(rows, pad_id: int):
    """Right-padded input_ids, attention_mask and labels (-100 except at answer tokens)."""
    import torch

    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (ids, n_context) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_context : len(ids)] = torch.tensor(ids[n_context:])
    return input_ids, attention, labels


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


# ------------------------------------------------------------------------------------------- eval


def _train_accuracy(engine, tokenizer, examples, template, config, world_size, zero_stage) -> float:
    """Share of the first ``eval_max_samples`` training rows whose greedy generation has the right answer.

    Every rank generates every row (ZeRO-3 needs all ranks in every forward), batched with left padding,
    through the base model's ``generate``: a soft prompt goes in front of the input embeddings, as PEFT
    places it; a prefix (``prefix``/``ptuning_v2``) is passed as the key/value cache, P placeholder ids
    standing for it (skipped by the cache), as tsprompt does. Not ``PeftModel.generate``: its prompt
    injection depends on the transformers version (with 5.24 it no longer applies the prompt)."""
    import torch

    from tsloss_harness.data import answer_correct

    peft_model = engine.module.peft_model
    peft_config = peft_model.peft_config[peft_model.active_adapter]
    deep = peft_config.peft_type == "PREFIX_TUNING"
    p = peft_config.num_virtual_tokens
    rows = examples[: config.eval_max_samples]
    contexts = [tokenizer(ex.prompt.rstrip())["input_ids"] for ex in rows]
    max_new = max(len(tokenizer(ex.target)["input_ids"]) for ex in rows) + 4
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    correct = 0
    engine.eval()
    with torch.no_grad():
        for start in range(0, len(rows), config.eval_batch_size):
            batch = contexts[start : start + config.eval_batch_size]
            length = max(map(len, batch))
            ids = torch.tensor([[pad] * (length - len(c)) + c for c in batch], device=engine.device)
            mask = torch.tensor([[0] * (length - len(c)) + [1] * len(c) for c in batch], device=engine.device)
            kwargs = dict(max_new_tokens=max_new, do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                          synced_gpus=zero_stage == 3 and world_size > 1)
            if deep:
                matrix = engine.module.prompt_matrix()  # whole under ZeRO-3 (the encoder's hooks gather it)
                base = peft_model.get_base_model()
                cache = _prefix_cache(matrix.to(base.dtype), len(batch), peft_config, base.config)
                out = base.generate(input_ids=torch.cat([ids.new_full((len(batch), p), pad), ids], dim=1),
                                    attention_mask=torch.cat([mask.new_ones(len(batch), p), mask], dim=1),
                                    past_key_values=cache, **kwargs)[:, p:]
            else:  # the prompt rows in front of the (left-padded) embeddings, as PEFT places them
                prompt = engine.module.prompt_matrix()
                embeds = peft_model.word_embeddings(ids)
                embeds = torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(len(batch), -1, -1), embeds], dim=1)
                out = peft_model.get_base_model().generate(
                    inputs_embeds=embeds, attention_mask=torch.cat([mask.new_ones(len(batch), p), mask], dim=1), **kwargs
                )  # decoder-only generate from embeddings returns the new tokens only
                out = torch.cat([ids, out], dim=1)
            for ex, seq in zip(rows[start:], out[:, length:]):
                correct += answer_correct(tokenizer.decode(seq, skip_special_tokens=True), ex, template)
    engine.train()
    return correct / len(rows)


# -------------------------------------------------------------------------------------------- run


def run(config: TuneConfig) -> dict:
    """Train a prompt as ``config`` says; return the summary (also written to ``summary.json``).

    In-process callers keep their environment: the rank variables a one-process run sets for DeepSpeed
    are removed when it returns (a child process that inherited them, e.g. lm_eval started after a
    run, would try to rendezvous on this process's port), and ``torch.nn.functional.linear`` is
    torch's again after a ZeRO-3 run."""
    import torch.nn.functional as F

    previous_env: dict[str, str | None] = {}
    linear = F.linear
    try:
        return _run(config, previous_env)
    finally:
        # ZeRO-3's zero.Init swaps F.linear for its own ("persists unless manually reset"), which keeps
        # every linear input for backward: later in-process work must get torch's back.
        F.linear = linear
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(config: TuneConfig, previous_env: dict) -> dict:
    _validate(config)
    from tsloss_harness.data import load_examples, template_for

    examples = load_examples(config.dataset, config.data_dir, config.split, config.num_samples)
    template = template_for(config.dataset)

    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    from tsloss_harness.losses import get_regularizer
    from tsloss_harness.prompt import make_method_config, save_prompt
    from tsloss_harness.topology import METRIC_KEYS, prompt_topology

    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model)
    except Exception as e:
        raise TuneError(f"cannot load the tokenizer of {config.model}: {_first_line(e)}") from None
    rows = _tokenize(examples, tokenizer, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    previous_env.update(_ensure_distributed_env())
    deepspeed.init_distributed()
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    is_main = rank == 0

    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    ds_config = _ds_config(config, world_size, total_steps)
    zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    micro, accum = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]

    out = Path(config.output_dir)
    engine_dir = out / "engine_state"
    # ZeRO-3: keep HfDeepSpeedConfig alive so from_pretrained builds the model partitioned (zero.Init).
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero_stage == 3 else None
    dtype = torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") else torch.float32
    try:
        base = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    except Exception as e:
        raise TuneError(f"cannot load model {config.model}: {_first_line(e)}") from None
    base.requires_grad_(False)
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):  # the prompt encoder's own init (prefix MLP, init=peft): from the seed
        torch.manual_seed(config.seed)
        peft_model = get_peft_model(
            base,
            make_method_config(config.method, config.model, base.config, num_virtual_tokens=config.num_virtual_tokens,
                               init=config.init, encoder_hidden_size=config.prefix_hidden_size),
        )
    peft_config = peft_model.peft_config[peft_model.active_adapter]  # as PEFT resolved it
    generator = torch.Generator().manual_seed(config.seed)
    init = _initial_prompt(config, peft_model, tokenizer, generator)
    prompt_encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    if init is not None:
        table = prompt_encoder.embedding.weight
        with _gathered(table, modifier_rank=0), torch.no_grad():
            table.copy_(init.to(table.dtype))
    prompt_encoder.requires_grad_(True)

    if is_main:  # the model loaded: from here on the run directory exists
        import yaml

        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    reg_kwargs = dict(tau=config.tau, alpha=config.alpha, beta_h0=config.beta_h0, beta_h1=config.beta_h1)
    adaptive = {h: getattr(config, f"adaptive_ratio_{h}") for h in ("h0", "h1") if getattr(config, f"adaptive_ratio_{h}") is not None}
    module = _loss_module(peft_model, get_regularizer(config.regularizer), reg_kwargs, config.lambda_ts, adaptive)
    # The linear warm-up/decay schedule of the HF Trainer (which the paper's authors used): DeepSpeed's
    # WarmupDecayLR applies each rate one step late and floors warm-up at 2 steps. A "scheduler"
    # section in the JSON still wins.
    from transformers import get_linear_schedule_with_warmup

    def schedule(optimizer):
        return get_linear_schedule_with_warmup(optimizer, _warmup_steps(config, total_steps), total_steps)

    engine, *_ = deepspeed.initialize(
        model=module,
        model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=None if "scheduler" in ds_config else schedule,
    )
    engine.train()

    state = {"step": 0, "converged_step": None, "wall_time_s": 0.0, "samples": 0}
    if config.resume:
        _, client_state = engine.load_checkpoint(str(engine_dir), load_module_strict=False)
        state.update({k: client_state[k] for k in state if k in client_state})
        if is_main:  # drop metrics logged after the checkpoint we resume from (and a line torn by the kill)
            lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
            kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= state["step"]]
            (out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))

    provenance = {
        "base_model": config.model,
        "method": config.method,
        "regularizer": config.regularizer,
        "regularizer_params": {"lambda_ts": config.lambda_ts, **reg_kwargs,
                               **{f"adaptive_ratio_{h}": ratio for h, ratio in adaptive.items()}},
        "init": config.init,
        "seed": config.seed,
        "dataset": config.dataset,
        "num_samples": len(rows),
    }

    def checkpoint(step: int, prompt_dir: Path, topology: dict | None) -> None:
        engine.save_checkpoint(
            str(engine_dir), tag=f"step-{step}", client_state=dict(state, step=step), exclude_frozen_parameters=True
        )
        matrix = _full_prompt(engine)  # collective
        if is_main:
            save_prompt(prompt_dir, matrix, peft_config=peft_config, provenance=dict(provenance, step=step, topology=topology))

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["step"], disable=not (is_main and config.progress), desc="tune")
    metrics_file = open(out / "metrics.jsonl", "a") if is_main else None
    last: dict = {}
    started = time.perf_counter() - state["wall_time_s"]
    caller_rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        for step in range(state["step"] + 1, total_steps + 1):
            t0 = time.perf_counter()
            lr = engine.get_lr()[0]  # the rate this step's update uses
            epoch, k = divmod(step - 1, steps_per_epoch)
            order = _epoch_order(len(rows), config.seed, epoch)
            batch_rows = [rows[i] for i in order[k * config.batch_size : (k + 1) * config.batch_size]]
            n_answer = sum(len(ids) - n_ctx for ids, n_ctx in batch_rows)
            ce_scale = world_size * accum / n_answer
            torch.manual_seed(config.seed * 1_000_003 + step * 1009 + rank)  # dropout, if any: a function of the step
            totals = torch.zeros(2, dtype=torch.float64)
            module.adaptive_scales.zero_()
            for g in range(accum):
                slot = batch_rows[(g * world_size + rank) * micro : (g * world_size + rank + 1) * micro]
                if not slot:  # short last batch: this rank still takes part, with no target tokens
                    slot = [(batch_rows[0][0], len(batch_rows[0][0]))]
                input_ids, attention, labels = (t.to(engine.device) for t in _collate(slot, pad_id))
                loss, ce_sum, reg = engine(input_ids, attention, labels, ce_scale)
                totals += torch.stack([ce_sum.double().cpu(), reg.double().cpu() / (accum * world_size)])
                finite = torch.isfinite(loss.detach()).all().float().reshape(1)
                if world_size > 1:  # every rank stops at the same micro-batch, before any collective backward
                    torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
                if not finite.item():
                    totals[0] = float("nan")
                    break
                engine.backward(loss)
                engine.step()
            if world_size > 1:
                totals = totals.to(engine.device)
                torch.distributed.all_reduce(totals)
                totals = totals.cpu()
            ce, reg_value = totals[0].item() / n_answer, totals[1].item()
            betas = {}
            if adaptive:  # effective β: the step's gradient holds λ·β·∇L of each adaptive term
                scales = module.adaptive_scales.clone()
                if world_size > 1:
                    scales = scales.to(engine.device)
                    torch.distributed.all_reduce(scales)
                    scales = scales.cpu()
                for i, half in enumerate(module.adaptive_halves):
                    betas[f"beta_{half}"] = scales[i].item() / (world_size * config.lambda_ts)
                    reg_value += betas[f"beta_{half}"] * module.adaptive_values[i].item()
                for half in _HALVES[config.regularizer]:
                    betas.setdefault(f"beta_{half}", getattr(config, f"beta_{half}"))
            if not math.isfinite(ce) or not math.isfinite(reg_value):
                saved = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
                where = f"last good checkpoint: {saved[-1]}" if saved else "no checkpoint was saved"
                raise TuneError(f"non-finite loss at step {step} (ce={ce}, reg={reg_value}); stopped, {where}")
            state["samples"] += len(batch_rows)
            record = {
                "step": step,
                "epoch": epoch + (k + 1) / steps_per_epoch,
                "lr": lr,
                "loss": ce + config.lambda_ts * reg_value,
                "ce": ce,
                "reg": reg_value,
                "samples_per_s": len(batch_rows) / (time.perf_counter() - t0),
                **betas,
            }
            final = step == total_steps
            if config.topology_every and (step % config.topology_every == 0 or final):
                matrix = _full_prompt(engine)
                if is_main:
                    metrics = prompt_topology(matrix)
                    record.update({key: metrics[key] for key in METRIC_KEYS})
            if config.eval_every and (step % config.eval_every == 0 or final):
                record["accuracy"] = _train_accuracy(engine, tokenizer, examples, template, config, world_size, zero_stage)
                if record["accuracy"] == 1.0 and state["converged_step"] is None:
                    state["converged_step"] = step
            state["step"], state["wall_time_s"] = step, time.perf_counter() - started
            converged_stop = config.stop_at_convergence and state["converged_step"] is not None
            if (config.save_every and step % config.save_every == 0) or final or converged_stop:
                checkpoint(step, out / "checkpoints" / f"step-{step}", None)
            if is_main:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                bar.update(1)
            last.update(record)
            if converged_stop:
                break
    finally:
        torch.set_rng_state(caller_rng[0])  # the per-step seeding must not leak into the caller
        if caller_rng[1] is not None:
            torch.cuda.set_rng_state_all(caller_rng[1])
        bar.close()
        if metrics_file:
            metrics_file.close()

    topology = {key: last[key] for key in METRIC_KEYS if key in last} or None
    matrix = _full_prompt(engine)
    summary = {
        "converged_step": state["converged_step"],
        "steps": state["step"],
        "total_steps": total_steps,
        "epochs": state["step"] / steps_per_epoch,
        "world_size": world_size,
        "wall_time_s": state["wall_time_s"],
        "samples_per_s": state["samples"] / state["wall_time_s"] if state["wall_time_s"] else None,
        "final": last,
        "prompt_dir": str(out / "prompt"),
        "config": dataclasses.asdict(config),
    }
    if is_main:
        save_prompt(out / "prompt", matrix, peft_config=peft_config, provenance=dict(provenance, step=state["step"], topology=topology))
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    engine.destroy()
    del hf_ds_config
    return summary


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    from tsloss_harness.data import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(argv)
    except TuneError as e:
        print(f"tsloss tune: {e}", file=sys.stderr)
        return 2
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # quiet by default: the libraries' INFO chatter and weight-loading bars off
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        for name in ("DeepSpeed", "deepspeed", "torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        summary = run(config)
    except (DataError, TuneError) as e:
        print(f"tsloss tune: {e}", file=sys.stderr)
        return 2 if not Path(config.output_dir, "metrics.jsonl").exists() else 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {config.output_dir} (converged_step={summary['converged_step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
