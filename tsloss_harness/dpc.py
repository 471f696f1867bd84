"""DPC, dynamic prompt corruption (Fan et al., ICLR 2025, arXiv 2503.13208), for ``tsprompt`` generation.

Per instance, on an already tuned soft prompt (``--model tsprompt --model_args ...,dpc=true``):

1. generate as usual (greedy, from the cached prompt);
2. **dynamic trigger**: one forward and backward pass over [prompt; context; rationale] (the rationale
   is the generated continuation up to the task's stop sequence) gives the saliency of every layer,
   ``I_l = |sum_h A_{h,l} * dL/dA_{h,l}|`` with L the cross-entropy of the rationale tokens (the
   model's own output as the target). The flow from prompt token j to rationale token t is ``I_l`` at
   (the row that predicts t, column j), averaged over the chosen layers (default: the deeper half).
   A rationale token is *affected* when its total flow from the prompt exceeds
   ``beta = beta_scale * (mean flow into the former half of the rationale)``; DPC fires when the
   affected fraction of the latter half exceeds ``ratio``;
3. **dynamic corruption**: the prompt token with the most flow into the latter half is masked (set to
   zero) and the smallest ``gamma`` percent of the remaining prompt values (by magnitude) are set to
   zero; the instance is generated again from the corrupted prompt, and that is its answer.

Settings (model args): ``dpc_ratio`` (0.5), ``dpc_beta_scale`` (1.0), ``dpc_gamma`` (10, the paper's
Γ), ``dpc_layers`` (``deep`` = the second half of the layers, ``all``, or ``a-b``). ``dpc_ratio=1``
never fires. The paper defines DPC for generation: ``loglikelihood`` requests fail with one line, as
do prefix prompts and ``act=`` together with ``dpc``. Every choice the paper leaves open is listed in
the README's deviations.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from tsloss_harness.errors import TslossError

__all__ = [
    "DpcError",
    "DpcSettings",
    "DynamicPromptCorruption",
    "Trigger",
    "corrupt_prompt",
    "decide",
    "pop_model_args",
    "prompt_saliency",
]


class DpcError(TslossError):
    """DPC cannot apply (a loglikelihood request, a prefix prompt, a bad setting); one line."""


@dataclass(frozen=True)
class DpcSettings:
    ratio: float = 0.5  # R: fire when more than this fraction of the latter half is affected
    beta_scale: float = 1.0  # beta = beta_scale x mean prompt flow into the former half
    gamma: float = 10.0  # Γ: percent of the remaining prompt values set to zero (the paper's default)
    layers: str = "deep"  # whose saliency counts: "deep" (second half), "all", or "a-b"

    def __post_init__(self):
        if not (0.0 <= self.ratio <= 1.0):
            raise DpcError(f"dpc_ratio must be in [0, 1], got {self.ratio}")
        if not (self.beta_scale > 0):
            raise DpcError(f"dpc_beta_scale must be positive, got {self.beta_scale}")
        if not (0.0 <= self.gamma < 100.0):
            raise DpcError(f"dpc_gamma must be a percentage in [0, 100), got {self.gamma}")

    def layer_indices(self, num_layers: int) -> list[int]:
        text = str(self.layers).strip()
        if text == "deep":
            return list(range(num_layers // 2, num_layers))
        from tsloss_harness.act import ActError, parse_index_list

        try:
            return parse_index_list(text, num_layers, "dpc_layers")
        except ActError as err:
            raise DpcError(str(err).replace("ACT: ", "")) from None


_ARG_NAMES = {"dpc_ratio": "ratio", "dpc_beta_scale": "beta_scale", "dpc_gamma": "gamma", "dpc_layers": "layers"}


def pop_model_args(kwargs: dict) -> DpcSettings | None:
    """Remove ``dpc`` and ``dpc_*`` from lm-eval model args; the settings when ``dpc`` is on, else None."""
    enabled = kwargs.pop("dpc", False)
    given = [arg for arg in _ARG_NAMES if arg in kwargs]
    values = {_ARG_NAMES[arg]: kwargs.pop(arg) for arg in given}
    if str(enabled).strip().lower() in ("", "0", "false", "no", "off", "none"):
        if given:
            raise DpcError(f"{', '.join(given)}: set dpc=true to use dynamic prompt corruption")
        return None
    try:
        numbers = {k: float(v) for k, v in values.items() if k != "layers"}
    except (TypeError, ValueError):
        raise DpcError("dpc_ratio, dpc_beta_scale and dpc_gamma must be numbers") from None
    return DpcSettings(**{**values, **numbers})


# ------------------------------------------------------------------------------ trigger and corruption


@contextlib.contextmanager
def _eager_attention(model):
    """Attention weights with gradients need transformers' eager attention; restore the previous one."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


def prompt_saliency(
    base, prompt: torch.Tensor, context_ids: torch.Tensor, rationale_ids: torch.Tensor, layers: list[int]
) -> torch.Tensor:
    """[r, P]: saliency flow from each prompt token to each rationale token, averaged over ``layers``.

    One forward and backward pass over [prompt; context; rationale] (batch 1, no padding); row t is the
    position that predicts rationale token t.
    """
    embedding = base.get_input_embeddings()
    p, c, r = prompt.shape[0], context_ids.shape[0], rationale_ids.shape[0]
    with torch.enable_grad(), _eager_attention(base):
        text = embedding(torch.cat([context_ids, rationale_ids]).to(embedding.weight.device))
        inputs = torch.cat([prompt.to(text.dtype).to(text.device), text])[None].detach().requires_grad_(True)
        out = base(inputs_embeds=inputs, output_attentions=True, use_cache=False)
        rows = torch.arange(p + c - 1, p + c + r - 1, device=inputs.device)
        loss = torch.nn.functional.cross_entropy(
            out.logits[0, rows].float(), rationale_ids.to(inputs.device), reduction="sum"
        )
        attentions = [out.attentions[layer] for layer in layers]
        grads = torch.autograd.grad(loss, attentions)
    flows = [(a * g).sum(dim=1)[0].abs()[rows, :p] for a, g in zip(attentions, grads, strict=True)]
    return torch.stack(flows).float().mean(dim=0).detach()


@dataclass
class Trigger:
    """The dynamic trigger's decision for one instance."""

    flows: torch.Tensor  # [r, P]
    threshold: float  # beta
    affected: float  # fraction of the latter half above beta
    fired: bool
    token: int  # the prompt token with the most flow into the latter half


def decide(flows: torch.Tensor, settings: DpcSettings) -> Trigger:
    """Apply the trigger rule to the [r, P] flows (r >= 2)."""
    per_token = flows.sum(dim=1)
    half = flows.shape[0] // 2
    threshold = settings.beta_scale * float(per_token[:half].mean())
    affected = float((per_token[half:] > threshold).float().mean())
    token = int(flows[half:].sum(dim=0).argmax())
    return Trigger(flows, threshold, affected, affected > settings.ratio, token)


def corrupt_prompt(prompt: torch.Tensor, token: int, gamma: float) -> torch.Tensor:
    """Row ``token`` set to zero, then the floor(gamma% x remaining values) smallest by magnitude."""
    out = prompt.detach().clone()
    out[token] = 0
    others = torch.ones(out.shape[0], dtype=torch.bool)
    others[token] = False
    rest = out[others].reshape(-1)
    count = int(gamma / 100.0 * rest.numel())
    if count:
        order = torch.sort(rest.abs(), stable=True).indices
        rest[order[:count]] = 0
        out[others] = rest.reshape(-1, out.shape[1])
    return out


# ------------------------------------------------------------------------------------ per instance


@dataclass
class DynamicPromptCorruption:
    """DPC for one ``tsprompt`` model: ``revise`` is called on every generated batch."""

    settings: DpcSettings
    instances: int = 0
    fired: int = 0
    too_short: int = 0
    fired_tokens: dict = field(default_factory=dict)

    def revise(
        self, lm, base, input_ids, attention_mask, output, max_length: int, stop: list[str], generation_kwargs: dict
    ) -> torch.Tensor:
        """``output`` of ``generate`` (P placeholders + context + continuation per row), with every row
        where DPC fires generated again from its corrupted prompt."""
        p, width = lm.num_virtual_tokens, input_ids.shape[1]
        layers = self.settings.layer_indices(int(base.config.num_hidden_layers))
        rows = list(output)
        for i in range(output.shape[0]):
            self.instances += 1
            context = input_ids[i, p:][attention_mask[i, p:].bool()]
            rationale = _rationale(lm.tokenizer, output[i, width:], stop)
            if rationale.shape[0] < 2:
                self.too_short += 1
                continue
            trigger = decide(prompt_saliency(base, lm.prompt_embeddings, context, rationale, layers), self.settings)
            if not trigger.fired:
                continue
            self.fired += 1
            self.fired_tokens[trigger.token] = self.fired_tokens.get(trigger.token, 0) + 1
            corrupted = corrupt_prompt(lm.prompt_embeddings, trigger.token, self.settings.gamma)
            rows[i] = _generate_row(
                lm,
                base,
                corrupted,
                input_ids[i : i + 1],
                attention_mask[i : i + 1],
                max_length,
                stop,
                generation_kwargs,
            )[0]
        longest = max(row.shape[0] for row in rows)
        pad = lm.tokenizer.pad_token_id
        return torch.stack([torch.nn.functional.pad(row, (0, longest - row.shape[0]), value=pad) for row in rows])

    def report(self) -> dict:
        """What the results JSON records (``config.dpc``)."""
        return {
            **self.settings.__dict__,
            "instances": self.instances,
            "fired": self.fired,
            "too_short": self.too_short,
            "fired_tokens": {str(k): v for k, v in sorted(self.fired_tokens.items())},
        }


def _rationale(tokenizer, generated: torch.Tensor, stop: list[str]) -> torch.Tensor:
    """The generated tokens HFLM keeps: up to padding / end of sequence, then before the first stop string."""
    ends = {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}
    tokens = generated.tolist()
    cut = next((k for k, tok in enumerate(tokens) if tok in ends), len(tokens))
    tokens = tokens[:cut]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    stops = [text.find(s) for s in stop if s and s in text]
    if stops:
        limit = min(stops)
        while tokens and len(tokenizer.decode(tokens, skip_special_tokens=True)) > limit:
            tokens = tokens[:-1]
    return generated.new_tensor(tokens)


def _generate_row(lm, base, prompt, input_ids, attention_mask, max_length, stop, generation_kwargs):
    """``generate`` for one row from ``prompt``'s own key/value cache (as ``tsprompt`` does for its prompt)."""
    from lm_eval.models.utils_hf import stop_sequences_criteria

    embedding = base.get_input_embeddings().weight
    with torch.no_grad(), lm._autocast():
        cache = base(
            inputs_embeds=prompt.to(device=embedding.device, dtype=embedding.dtype)[None], use_cache=True
        ).past_key_values
        return base.generate(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, max_length=max_length,
            stopping_criteria=stop_sequences_criteria(lm.tokenizer, stop, input_ids.shape[1], 1),
            pad_token_id=lm.tokenizer.pad_token_id, use_cache=True, **generation_kwargs,
        )  # fmt: skip
