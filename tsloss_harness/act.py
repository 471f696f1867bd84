"""ACT, attention calibration (Yu et al., ICML 2024, arXiv 2406.15765): the mechanism and its settings file.

Training-free. On chosen (layer, head) pairs, keys that collect attention like the first token does
("attention sinks") but are not the first token get their attention scaled by ``beta``; the freed mass
goes back to the row's other keys in proportion to their attention, so every row still sums to one.
The heads are chosen once, by ``tsloss act-calibrate`` (``tsloss_harness.act_eval``), and stored in a
JSON file that ``act=<file>`` reads (``--model tsprompt`` and ``--model hf-act``).

The rule, for a chosen head, query row i and key j (A = that head's softmax attention):

* ``allowed(i, j)``: the attention mask lets row i see key j. A row is *valid* when it may see its own
  position (padding rows may not) and only valid rows count below.
* sink score ``s_i(j) = sum_{i' <= i} A(i', j) / #{i' <= i : allowed(i', j)}``, the mean attention
  key j has received from the rows up to i. The authors average each column over the whole map; we
  average over the rows up to i, so row i never depends on later tokens: a full forward, a forward
  continuing from a key/value cache (the rows already cached count through their carried sums) and
  token-by-token generation all compute the same thing. For the last row the two coincide.
* key j is a sink for row i when ``s_i(j) > threshold``, row i may see it and it is not row i's first
  visible key. With a soft prompt in front (``tsprompt``'s cached prompt, or PEFT's virtual tokens),
  the first visible key is the first virtual token and the prompt's own rows count in the sums like
  any other rows; with left padding it is the first real token.
* ``A'(i, j) = beta * A(i, j)`` on sinks; every other visible key gets ``A(i, j) * (1 + (1 - beta) *
  S_i / R_i)`` with ``S_i``/``R_i`` the row's attention on sinks / on the rest (the first key
  included, as in the authors' code). A row with ``R_i = 0`` stays as it is.

Implementation: a transformers attention function registered as ``"tsloss_act"`` (with the eager
mask format), so it runs in every forward, in ``generate`` and from any key/value cache. Layers without
a chosen head take PyTorch SDPA; chosen layers compute eager attention in float32 softmax. The
per-column sums of the rows seen so far ride on the cache object (``carry_stats`` / ``attach_stats``
move them to a new cache, as ``tsprompt`` does for its prompt). Beam search (cache reordering) and
sliding-window caches are not supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tsloss_harness.errors import TslossError

__all__ = [
    "ATTENTION_NAME",
    "ActError",
    "ActPatch",
    "ActSettings",
    "attach_stats",
    "calibrate_attention",
    "carry_stats",
    "load_settings",
    "pop_model_arg",
]

ATTENTION_NAME = "tsloss_act"
DEFAULT_BETA = 0.4  # the authors' scripts (BETA=0.4)
DEFAULT_THRESHOLD = 0.1  # the authors' scripts (THRES=0.1)
FILE_KIND = "tsloss-act"
_HEADS_ATTR = "_tsloss_act_heads"  # on attention modules: LongTensor of chosen heads, or None
_CACHE_ATTR = "_tsloss_act_cache"  # on attention modules, during their forward: the cache passed in
_STATS_ATTR = "_tsloss_act_stats"  # on cache objects: {layer_idx: (column sums, column counts)}


class ActError(TslossError):
    """A bad ACT settings file or setting; the message is one line."""


# ------------------------------------------------------------------------------------ the rule


def calibrate_attention(
    weights: torch.Tensor,
    allowed: torch.Tensor,
    heads: torch.Tensor,
    beta: float,
    threshold: float,
    past: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Apply the ACT rule to ``heads`` of one layer's attention.

    weights: [b, H, q, k] softmax attention of the q newest rows over all k keys (the first k - q keys
    are cached); allowed: [b, 1, q, k] bool; past: (column sums [b, h, k - q], row counts [b, 1, k - q])
    of the rows before these, or None (zeros). Returns the weights with the chosen heads calibrated
    and the sums and counts over all k keys, to carry to the next forward.
    """
    b, _, q, k = weights.shape
    allowed = allowed.expand(b, 1, q, k)
    own = torch.arange(q, device=weights.device) + (k - q)
    valid = allowed[:, 0, torch.arange(q, device=weights.device), own]  # [b, q]: rows that count
    row_weight = valid[:, None, :, None].float()
    chosen = weights[:, heads].float()
    sums = torch.cumsum(chosen * row_weight, dim=2)
    counts = torch.cumsum(allowed.float() * row_weight, dim=2)
    if past is not None and k > q:
        past_sums, past_counts = past
        sums = sums + torch.nn.functional.pad(past_sums.float(), (0, q))[:, :, None, :]
        counts = counts + torch.nn.functional.pad(past_counts.float(), (0, q))[:, :, None, :]
    score = sums / counts.clamp_min(1.0)
    first = allowed.float().argmax(dim=-1, keepdim=True)  # the row's first visible key
    not_first = torch.arange(k, device=weights.device) != first
    sink = (score > threshold) & allowed & not_first
    sink_mass = (chosen * sink).sum(-1, keepdim=True)
    rest_mass = (chosen * ~sink).sum(-1, keepdim=True)
    change = valid[:, None, :, None] & (rest_mass > 0)
    gain = torch.where(change, (1.0 - beta) * sink_mass / rest_mass.clamp_min(1e-30), torch.zeros_like(rest_mass))
    factor = torch.where(sink & change, torch.full_like(chosen, beta), 1.0 + gain)
    out = weights.clone()
    out[:, heads] = (chosen * factor).to(weights.dtype)
    return out, (sums[:, :, -1], counts[:, :, -1])


def _act_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers attention function ``"tsloss_act"``: SDPA, or eager attention plus the ACT rule on
    the layers that have chosen heads."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    heads = getattr(module, _HEADS_ATTR, None)
    if heads is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    keys = repeat_kv(key, module.num_key_value_groups)
    values = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, keys.transpose(2, 3)) * scaling
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    q_len, k_len = query.shape[2], keys.shape[2]
    if attention_mask is None:  # no padding: plain causal
        positions = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
        allowed = (torch.arange(k_len, device=query.device)[None, :] <= positions)[None, None]
    else:
        attention_mask = attention_mask[:, :, :, :k_len]
        scores = scores + attention_mask
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    cache = getattr(module, _CACHE_ATTR, None)
    settings: ActSettings = module._tsloss_act_settings
    weights, stats = calibrate_attention(
        weights, allowed, heads.to(query.device), settings.beta, settings.threshold,
        _past_stats(cache, module.layer_idx, k_len - q_len),
    )  # fmt: skip
    if cache is not None:
        _stats_of(cache)[module.layer_idx] = stats
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, values).transpose(1, 2).contiguous(), weights


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, _act_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


# ------------------------------------------------------------------------- statistics on caches


def _stats_of(cache: Any) -> dict:
    stats = getattr(cache, _STATS_ATTR, None)
    if stats is None:
        stats = {}
        setattr(cache, _STATS_ATTR, stats)
    return stats


def _past_stats(cache: Any, layer: int, past_len: int):
    """The carried sums for ``past_len`` cached keys; None (zeros) when the cache holds keys no ACT row
    has seen (a PEFT prefix: keys without query rows)."""
    if past_len == 0 or cache is None:
        return None
    stats = getattr(cache, _STATS_ATTR, {}).get(layer)
    if stats is None:
        return None
    if stats[0].shape[-1] != past_len:
        raise ActError(
            f"ACT: layer {layer} has {past_len} cached keys but statistics for {stats[0].shape[-1]} "
            "(sliding-window or reordered caches are not supported)"
        )
    return stats


def carry_stats(cache: Any) -> dict | None:
    """The ACT statistics a cache holds (None without ACT): what ``attach_stats`` puts on a new cache."""
    stats = getattr(cache, _STATS_ATTR, None)
    return None if stats is None else {layer: (s.detach(), n.detach()) for layer, (s, n) in stats.items()}


def attach_stats(cache: Any, stats: dict | None, batch_size: int) -> Any:
    """Give ``cache`` (built from the keys and values of a batch-1 cache) that cache's statistics,
    expanded to ``batch_size`` rows. Returns ``cache``."""
    if stats:
        setattr(cache, _STATS_ATTR, {
            layer: (s.expand(batch_size, -1, -1), n.expand(batch_size, -1, -1)) for layer, (s, n) in stats.items()
        })  # fmt: skip
    return cache


# ----------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ActSettings:
    """The calibrated heads and the rule's two constants; ``calibration`` records how they were chosen."""

    heads: tuple[tuple[int, int], ...]
    beta: float = DEFAULT_BETA
    threshold: float = DEFAULT_THRESHOLD
    calibration: dict = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self):
        where = f"{self.source}: " if self.source else "ACT: "
        if not (0.0 <= self.beta <= 1.0):
            raise ActError(f"{where}beta must be in [0, 1], got {self.beta}")
        if not (0.0 < self.threshold <= 1.0):
            raise ActError(f"{where}threshold must be in (0, 1], got {self.threshold}")
        if any(len(pair) != 2 or min(pair) < 0 for pair in self.heads):
            raise ActError(f"{where}heads must be [layer, head] pairs of non-negative integers")

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, head in sorted(set(self.heads)):
            out.setdefault(layer, []).append(head)
        return out

    def to_json(self) -> dict:
        return {
            "kind": FILE_KIND,
            "version": 1,
            "heads": [list(p) for p in self.heads],
            "beta": self.beta,
            "threshold": self.threshold,
            "calibration": self.calibration,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def load_settings(path: str | Path) -> ActSettings:
    """Read an ``act-calibrate`` file; every problem is one ``ActError`` line naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ActError(f"{path}: cannot read the ACT file ({err.strerror or err.__class__.__name__})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ActError(f"{path}: not an ACT file (invalid JSON)") from None
    if not isinstance(data, dict) or data.get("kind") != FILE_KIND or not isinstance(data.get("heads"), list):
        raise ActError(f"{path}: not an ACT file (written by tsloss act-calibrate: kind {FILE_KIND!r} and heads)")
    try:
        heads = tuple((int(layer), int(head)) for layer, head in data["heads"])
        beta, threshold = float(data.get("beta", DEFAULT_BETA)), float(data.get("threshold", DEFAULT_THRESHOLD))
    except (TypeError, ValueError):
        raise ActError(f"{path}: heads must be [layer, head] pairs and beta/threshold numbers") from None
    calibration = data.get("calibration") if isinstance(data.get("calibration"), dict) else {}
    return ActSettings(heads, beta, threshold, calibration, source=str(path))


def pop_model_arg(kwargs: dict) -> ActSettings | None:
    """Remove ``act=<file>`` from lm-eval model args and read it (None when absent or empty)."""
    value = kwargs.pop("act", None)
    if value in (None, "", False):
        return None
    return load_settings(value)


# ------------------------------------------------------------------------------------ patching


def _attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    found = {}
    for module in model.modules():
        if type(module).__name__.endswith("Attention") and hasattr(module, "layer_idx") and hasattr(module, "q_proj"):
            found[int(module.layer_idx)] = module
    return found


def _remember_cache(module, args, kwargs):  # forward pre-hook: the attention function needs the cache
    setattr(module, _CACHE_ATTR, kwargs.get("past_key_values"))


def _forget_cache(module, args, output):
    setattr(module, _CACHE_ATTR, None)


class ActPatch:
    """ACT applied to one model: ``ActPatch(settings).apply(model)``; ``set_heads`` re-chooses the heads
    (the calibration search). The model's attention implementation becomes ``"tsloss_act"``."""

    def __init__(self, settings: ActSettings):
        self.settings = settings
        self._modules: dict[int, torch.nn.Module] = {}

    def apply(self, model: torch.nn.Module) -> ActPatch:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._modules = _attention_modules(base)
        if not self._modules:
            raise ActError(f"ACT: found no attention modules in {type(base).__name__} (llama, gemma, qwen2 supported)")
        _register_attention()
        base.set_attn_implementation(ATTENTION_NAME)
        for module in self._modules.values():
            module._tsloss_act_settings = self.settings
            module.register_forward_pre_hook(_remember_cache, with_kwargs=True)
            module.register_forward_hook(_forget_cache)
        self.set_heads(self.settings.heads)
        return self

    @property
    def num_heads(self) -> int:
        module = next(iter(self._modules.values()))
        return int(module.config.num_attention_heads)

    @property
    def num_layers(self) -> int:
        return len(self._modules)

    def set_heads(self, heads) -> None:
        heads = tuple((int(layer), int(head)) for layer, head in heads)
        for layer, head in heads:
            if layer not in self._modules or not (0 <= head < self.num_heads):
                raise ActError(
                    f"{self.settings.source or 'ACT'}: head ({layer}, {head}) does not exist in a model "
                    f"of {self.num_layers} layers x {self.num_heads} heads"
                )
        self.settings = ActSettings(
            heads, self.settings.beta, self.settings.threshold, self.settings.calibration, self.settings.source
        )
        by_layer = self.settings.by_layer()
        for layer, module in self._modules.items():
            module._tsloss_act_settings = self.settings
            chosen = by_layer.get(layer)
            setattr(module, _HEADS_ATTR, None if not chosen else torch.tensor(chosen, dtype=torch.long))

    def report(self) -> dict:
        """What the results JSON records (``config.act``)."""
        return {
            "file": self.settings.source,
            "heads": [list(p) for p in self.settings.heads],
            "beta": self.settings.beta,
            "threshold": self.settings.threshold,
            "calibration": self.settings.calibration,
        }


def parse_index_list(text: str | None, upper: int, what: str) -> list[int]:
    """``"2-5,7"`` -> [2, 3, 4, 5, 7]; None -> all of range(upper)."""
    if text is None or str(text).strip() in ("", "all"):
        return list(range(upper))
    out: list[int] = []
    for part in str(text).replace(";", ",").split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ActError(f"ACT: {what} {text!r}: expected numbers and ranges like 2-5,7") from None
        if not (0 <= first <= last < upper):
            raise ActError(f"ACT: {what} {text!r} outside 0..{upper - 1}")
        out += range(first, last + 1)
    return sorted(set(out))
