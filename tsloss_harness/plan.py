"""``tsloss plan``: which ``ds_configs/`` file fits a frozen model plus a trainable soft prompt on
given GPUs, with the per-GPU memory estimate behind the choice.

    tsloss plan --model llama2-13b --gpus 8 --gpu-mem 24
    tsloss plan --model path/to/hf_model_dir --gpus 2 --gpu-mem 80 --seq-len 1024 --batch-size 16
    tsloss plan --model 7b --gpus 1 --gpu-mem 24 --json

The estimate, per GPU, for one micro-batch of B = batch_size / gpus rows of T = num_virtual_tokens +
seq_len tokens (s = bytes per element of --dtype; L layers, hidden h, heads a of size hd, kv heads k,
intermediate f, vocab V, N = B·answer_tokens answer positions):

- weights, by ZeRO stage (read from each JSON file): stage <= 2: all N_params·s on every GPU;
  stage 3: N_params·s / gpus, plus the parameters gathered at once (at most N_params): the largest
  module, usually the embedding or output layer V·h, as it is gathered; one decoder layer, which
  DeepSpeed keeps gathered from its forward to its backward at the turn of the step (its prefetcher
  marks what it will reuse); the prefetch bucket stage3_prefetch_bucket_size (5e7 by default) — on
  one GPU without offload neither of the last two (the partition is the parameter: nothing is gathered apart);
  stage 3 with offload_param to the CPU: only the gathered ones (the rest lives in host RAM). On CPU
  ranks (gloo) a gather holds its output twice while in flight (``estimate(gather_copies=2)``): one
  more largest module.
- activations kept for backward. The prompt is trainable at the INPUT, so the gradient must travel
  back through every layer and each layer keeps what its input-gradient needs, although no weight
  gets a gradient (PyTorch then saves no linear-layer inputs). Per token and layer (HF Llama / Gemma /
  Qwen2, sdpa attention):  s·(2·a·hd + 2·k'·hd + 3·f) + 2·(4·h + 4) + 4·a
  = attention q, k, v, output (k' = k, or a when padding makes HF repeat the kv heads) + the MLP's
  gate, activation and up outputs + each RMSNorm's fp32 input and 1/rms + attention's fp32 logsumexp;
  padded micro-batches (B > 1) add the sdpa mask, B·T²·s per layer. Plus the final norm (4·h + 4 per
  token) and RoPE's cos/sin (2·T·hd·s).
- logits at answer positions only (the tuner never builds [B, T, V]): the fp32 log-softmax kept for
  backward, 4·N·V. Backward's transients: 8·B·T·h (fp32 gradients of the residual stream and of a
  norm input) plus the larger of N·V·(8 + s) (logits, their fp32 copy, gradients) and one layer's
  backward working set (taken as 2x that layer's saved activations, mask excluded).
- the trainable values T of ``--method`` (``trainable_values``): prompt P·h; ptuning_v2 P·L·2·d_kv;
  prefix P·d_kv plus PEFT's MLP d_kv -> e -> L·2·d_kv (at full depth by far the largest: 2.1 B values
  on Qwen1.5-14B). Per GPU: the module's s·T (stage 3: its partition too, s·T/gpus), the fp32 master,
  Adam moments and fp32 gradient partitioned over the GPUs (16·T/gpus; on the host when the optimizer
  is offloaded) and the s·T gradient before it is reduced.
- a fixed reserve (--reserve-gib, default 1.5) for the CUDA context, NCCL buffers and allocator slack.

tests/test_plan.py checks the activation terms against memory measured on CPU runs of the tiny models
(bytes saved for backward, exactly, and the peak of a forward+backward, within 15%);
tests/test_shapes.py the trainable values against PEFT's modules; benchmarks/bench_real_shapes.py the
whole estimate against the peak memory of two-rank CPU runs of the five real shapes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tsloss_harness.errors import TslossError
from tsloss_harness.prompt_config import PROMPT_METHODS
from tsloss_harness.shapes import ARCHITECTURES

__all__ = [
    "KNOWN_MODELS",
    "ModelShape",
    "activation_bytes",
    "estimate",
    "load_ds_config",
    "resolve_model",
]

GIB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
PREFETCH_BUCKET_DEFAULT = 50_000_000  # DeepSpeed's stage3_prefetch_bucket_size default (elements)


class PlanError(TslossError, ValueError):
    """A model, config or option the planner cannot use; the message is one line."""


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers the estimate needs (a decoder-only HF model's config.json)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    num_params_override: int | None = None  # a bare "7b": the count is given, the shape is a guess

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention (with Qwen2's q/k/v biases), MLP, two RMSNorms."""
        h, hd = self.hidden_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attention = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h

    @property
    def num_params(self) -> int:
        if self.num_params_override is not None:
            return self.num_params_override
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.layer_params + embeddings + self.hidden_size  # + final norm

    @property
    def largest_module(self) -> int:
        """Elements of the largest single module ZeRO-3 gathers at once (embedding or one linear)."""
        q = self.num_heads * self.head_dim
        return max(self.vocab_size * self.hidden_size, self.hidden_size * self.intermediate_size, q * self.hidden_size)


# The paper's five models: one table of shapes (tsloss_harness/shapes.py, each with its config.json
# named) for the planner and the shape-faithful fixtures (testbed/shaped.py).
KNOWN_MODELS: dict[str, ModelShape] = {
    key: ModelShape(a.hub_id, a.num_layers, a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim,
                    a.intermediate_size, a.vocab_size, a.tie_word_embeddings, qkv_bias=a.qkv_bias)
    for key, a in ARCHITECTURES.items()
}  # fmt: skip
_ALIASES = {shape.name.lower(): key for key, shape in KNOWN_MODELS.items()}

_PARAM_COUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([mbt])$", re.IGNORECASE)


def _llama_shaped(name: str, num_params: int) -> ModelShape:
    """A LLaMA-shaped guess for a bare parameter count: head dim 128, layers = hidden/128,
    intermediate ≈ 8/3·hidden, vocab 32000, untied; hidden is the multiple of 128 whose model is
    closest to the count. Weights use the count itself; activations follow the guessed shape."""

    def shape(hidden: int) -> ModelShape:
        f = int(math.ceil(8 * hidden / 3 / 256) * 256)
        return ModelShape(name, hidden // 128, hidden, hidden // 128, hidden // 128, 128, f, 32000, False)

    best = min((shape(128 * m) for m in range(1, 129)), key=lambda s: abs(s.num_params - num_params))
    return ModelShape(**{**asdict(best), "num_params_override": num_params})


def _shape_from_config(name: str, config) -> ModelShape:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        heads = config.num_attention_heads
        return ModelShape(
            name=name,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
        )
    except AttributeError as e:
        raise PlanError(f"{name}: config.json lacks a field the planner needs ({e})") from None


def resolve_model(model: str) -> ModelShape:
    """A known model name or hub id, a local HF model directory, a cached hub id (config.json only,
    never weights, never the network) or a parameter count like ``7b`` / ``350m``."""
    key = model.strip().lower()
    if key in KNOWN_MODELS or key in _ALIASES:
        return KNOWN_MODELS[_ALIASES.get(key, key)]
    count = _PARAM_COUNT.match(key)
    if count:
        scale = {"m": 1e6, "b": 1e9, "t": 1e12}[count.group(2).lower()]
        return _llama_shaped(model, int(float(count.group(1)) * scale))
    path = Path(model).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise PlanError(f"{model}: no config.json in that directory")
    from transformers import AutoConfig

    try:  # local_files_only: a hub id works when cached, and fails at once otherwise
        config = AutoConfig.from_pretrained(str(path) if path.exists() else model, local_files_only=True)
    except (OSError, ValueError) as e:
        known = ", ".join(KNOWN_MODELS)
        raise PlanError(
            f"{model}: not a local model directory, a cached hub model ({type(e).__name__}) or a parameter "
            f"count like 7b; known models: {known}"
        ) from None
    return _shape_from_config(model, config)


def load_ds_config(path: Path) -> dict:
    """ZeRO stage and offload targets of a DeepSpeed JSON: {"stage", "offload_param", "offload_optimizer",
    "prefetch_bucket"}."""
    try:
        zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    except (OSError, json.JSONDecodeError) as e:
        raise PlanError(f"{path}: cannot read the DeepSpeed config ({e})") from None

    def device(key: str) -> str | None:
        value = (zero.get(key) or {}).get("device", "none")
        return None if value in (None, "none") else value

    prefetch = zero.get("stage3_prefetch_bucket_size", PREFETCH_BUCKET_DEFAULT)
    return {
        "stage": int(zero.get("stage", 0)),
        "offload_param": device("offload_param"),
        "offload_optimizer": device("offload_optimizer"),
        "prefetch_bucket": int(float(prefetch)) if prefetch != "auto" else PREFETCH_BUCKET_DEFAULT,
    }


def activation_bytes(
    shape: ModelShape,
    *,
    micro_batch: int,
    seq_len: int,
    num_virtual_tokens: int,
    answer_tokens: int,
    dtype_bytes: int,
    padded: bool | None = None,
) -> dict[str, int]:
    """Activation memory of one forward+backward of the tuner's loss (module doc for the formula).

    Returns bytes: ``saved`` (decoder tensors kept for backward), ``logits_saved``, ``transient`` and
    ``peak`` = their sum. ``padded`` defaults to ``micro_batch > 1`` (rows of unequal length)."""
    s, b = dtype_bytes, micro_batch
    t = num_virtual_tokens + seq_len
    h, a, hd, f = shape.hidden_size, shape.num_heads, shape.head_dim, shape.intermediate_size
    padded = micro_batch > 1 if padded is None else padded
    kv = a if padded and shape.num_kv_heads != a else shape.num_kv_heads
    per_token_layer = s * (2 * a * hd + 2 * kv * hd + 3 * f) + 2 * (4 * h + 4) + 4 * a
    per_layer = b * t * per_token_layer + (b * t * t * s if padded else 0)
    saved = shape.num_layers * per_layer + b * t * (4 * h + 4) + 2 * t * hd * s
    n_answer = b * min(answer_tokens, seq_len)
    logits_saved = 4 * n_answer * shape.vocab_size
    # backward's own tensors: the fp32 gradient of the residual stream and of a norm's input, plus
    # either the logits' (fp32 copy, gradients) or one layer's backward working set, whichever is larger
    transient = 8 * b * t * h + max(n_answer * shape.vocab_size * (8 + s), 2 * b * t * per_token_layer)
    return {"saved": saved, "logits_saved": logits_saved, "transient": transient,
            "peak": saved + logits_saved + transient}  # fmt: skip


ADAM_STATE_BYTES = 16  # per trainable value, partitioned over ranks: fp32 master 4 + Adam m, v 8 + fp32 gradient 4


def trainable_values(
    shape: ModelShape, method: str, num_virtual_tokens: int, prefix_hidden_size: int | None = None
) -> int:
    """Values the tuner trains: ``prompt`` P·h; ``ptuning_v2`` the prefix P·L·2·d_kv; ``prefix`` P·d_kv
    plus PEFT's MLP d_kv -> e -> L·2·d_kv with biases (e = ``prefix_hidden_size``, default d_kv): at
    full depth the MLP's output layer dominates (Qwen1.5-14B: 5120 x 409,600 = 2.1 B values)."""
    if method not in PROMPT_METHODS:
        raise PlanError(f"unknown method {method!r} (choose {', '.join(PROMPT_METHODS)})")
    p, d_kv = num_virtual_tokens, shape.num_kv_heads * shape.head_dim
    if method == "prompt":
        return p * shape.hidden_size
    width = shape.num_layers * 2 * d_kv
    if method == "ptuning_v2":
        return p * width
    e = prefix_hidden_size or d_kv
    return p * d_kv + d_kv * e + e + e * width + width


def trainable_bytes(values: int, ds_config: dict, gpus: int, dtype_bytes: int) -> int:
    """Per-GPU bytes of the trainable values: the module's own copy (stage 3: its partition, plus the
    whole of it gathered from its forward to its backward), the optimizer state partitioned over the
    ranks (ADAM_STATE_BYTES; on the host when the optimizer is offloaded), the gradient before it is
    reduced (16-bit)."""
    s = dtype_bytes
    module = s * values + (math.ceil(values / gpus) * s if ds_config["stage"] == 3 else 0)
    state = 0 if ds_config["offload_optimizer"] else math.ceil(values / gpus) * ADAM_STATE_BYTES
    return module + state + s * values


@dataclass
class Estimate:
    """Per-GPU bytes of one ds_configs/ file (``total`` <= the GPU's memory: it fits)."""

    config: str
    stage: int
    offload: bool
    weights: int
    activations: int
    prompt: int
    reserve: int
    total: int
    host: int  # host RAM for offloaded parameters, all ranks of the node together
    fits: bool
    max_micro_batch: int  # largest micro-batch that would fit (0: none)


def estimate(
    shape: ModelShape,
    ds_config: dict,
    *,
    name: str = "",
    gpus: int,
    gpu_mem_gib: float,
    micro_batch: int,
    seq_len: int,
    num_virtual_tokens: int,
    answer_tokens: int,
    dtype_bytes: int,
    reserve_gib: float = 1.5,
    method: str = "prompt",
    prefix_hidden_size: int | None = None,
    gather_copies: int = 1,
) -> Estimate:
    """Per-GPU memory of ``shape`` under one DeepSpeed config (``load_ds_config``'s dict).

    ``gather_copies``: buffers a ZeRO-3 gather holds while in flight (1 with NCCL; 2 on CPU ranks,
    where gloo's all_gather_into_tensor stages the whole output once more, measured)."""
    s, n = dtype_bytes, shape.num_params
    offload = ds_config["stage"] == 3 and ds_config["offload_param"] is not None
    # Gathered at once (at most the whole model): the largest module, the decoder layer DeepSpeed keeps
    # gathered from its forward to its backward at the turn of the step, the prefetch bucket; plus the
    # in-flight copies of the largest module while it is being gathered.
    # One rank holds every partition whole and DeepSpeed's "gather" is then a view of it: no layer is kept
    # apart at the turn and the prefetch bucket stays empty (measured on one-rank CPU runs of the real
    # shapes; the largest module's terms are spent there all the same).
    retained = 0 if gpus == 1 and not offload else shape.layer_params + ds_config["prefetch_bucket"]
    whole_at_once = min(n, shape.largest_module + retained)
    gathered = (whole_at_once + (gather_copies - 1) * shape.largest_module) * s
    if ds_config["stage"] < 3:
        weights = n * s
    elif offload:
        weights = gathered
    else:
        weights = math.ceil(n / gpus) * s + gathered
    prompt = trainable_bytes(trainable_values(shape, method, num_virtual_tokens, prefix_hidden_size), ds_config,
                             gpus, s)  # fmt: skip
    reserve = int(reserve_gib * GIB)
    budget = int(gpu_mem_gib * GIB)

    def acts(b: int) -> int:
        return activation_bytes(
            shape, micro_batch=b, seq_len=seq_len, num_virtual_tokens=num_virtual_tokens,
            answer_tokens=answer_tokens, dtype_bytes=s,
        )["peak"]  # fmt: skip

    fixed = weights + prompt + reserve
    total = fixed + acts(micro_batch)
    max_micro = 0
    while max_micro < 4096 and fixed + acts(max_micro + 1) <= budget:
        max_micro += 1
    return Estimate(
        config=name, stage=ds_config["stage"], offload=offload, weights=weights, activations=acts(micro_batch),
        prompt=prompt, reserve=reserve, total=total, host=n * s if offload else 0, fits=total <= budget,
        max_micro_batch=max_micro,
    )  # fmt: skip
