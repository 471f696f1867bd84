"""What one micro-batch computes: the prompt (or prefix) in front of the frozen decoder, the output
layer at the answer positions only, fused with the cross-entropy, plus λ_ts times the regularizer of
the prompt matrix — and the adaptive H0/H1 weights, applied on the gradient.

- Logits only at answer positions: the decoder's last hidden states at the positions that predict
  answer tokens go through the output layer (and Gemma-2's final soft-capping where configured),
  fused with the cross-entropy in row chunks; nothing of size [B, T, vocab] is built. The same loss
  and prompt gradient as the full-logits forward (tested).
- The regularizer reads the prompt matrix from the prompt encoder's output inside the forward, where
  ZeRO-3 has gathered the (otherwise partitioned) parameter, so it always sees the whole [P, d] matrix.
- Adaptive H0/H1 weights (``--adaptive_ratio_h0/_h1 r``): each step β_H0 (β_H1) is chosen so that
  ‖∇_M λ·β·L_H0‖ = r·‖∇_M CE‖ on the regularized matrix M. Exact in the same step: M enters the
  decoder through an identity whose backward receives the CE gradient on M, takes its norm and adds
  the term's gradient (computed in the forward) scaled to r times it. With several micro-batches or
  ranks the ratio holds per micro-batch.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from tsloss_harness.memory import gathered_params
from tsloss_harness.tune.config import TuneError


class LinearCrossEntropy(torch.autograd.Function):
    """Σ CE(hidden @ weightᵀ + bias [soft-capped], targets), chunked over rows.

    The gradient w.r.t. ``hidden`` is computed in the forward, chunk by chunk, so no [N, vocab]
    tensor outlives a chunk: the same result as ``F.cross_entropy(lm_head(hidden))`` (fp32 logits,
    as HF upcasts them) at a fraction of the memory traffic. ``weight`` is frozen (no gradient).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap):
        budget = 2**26 if hidden.is_cuda else 2**22  # logits elements per chunk (CPU: cache-sized)
        # but >= 64 rows: each chunk streams the whole [vocab, hidden] weight twice, and at 256k-token
        # vocabularies 16-row chunks made the step memory-bound (3-4x slower on CPU, measured)
        chunk = max(64, budget // weight.shape[0])
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


def prefix_cache(matrix, batch_size: int, peft_config, model_config):
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


class PromptTuningLoss(nn.Module):
    """The forward of one micro-batch: prompt + decoder + output layer at answer positions + CE + reg.

    An ``nn.Module`` so DeepSpeed's engine runs it and ZeRO-3's hooks gather each submodule's
    parameters as it is called. ``forward`` returns (loss to backpropagate, CE sum, regularizer
    value). With ``adaptive`` ({"h0": ratio, "h1": ratio}, a subset) the adaptive terms reach the
    gradient only (``AdaptiveGradient``): the value returned is the fixed-weight rest, each forward
    leaves the unweighted adaptive term values in ``adaptive_values`` and the backward adds its scales
    to ``adaptive_scales`` (zeroed by the caller each step).
    """

    def __init__(self, peft_model, regularizer, reg_kwargs: dict, lambda_ts: float, adaptive: dict | None = None):
        super().__init__()
        self.peft_model = peft_model
        self.regularizer, self.lambda_ts = regularizer, lambda_ts
        self.adapter = peft_model.active_adapter
        self.peft_config = peft_model.peft_config[self.adapter]
        base = peft_model.get_base_model()
        self.softcap = getattr(base.config, "final_logit_softcapping", None) or 0.0
        adaptive = dict(adaptive or {})
        self.adaptive_halves = tuple(adaptive)
        self.ratios = tuple(float(adaptive[h]) for h in self.adaptive_halves)
        # the adaptive terms leave the fixed-weight call; each is computed alone with weight 1
        self.fixed_kwargs = {**reg_kwargs, **{f"beta_{h}": 0.0 for h in self.adaptive_halves}}
        self.term_kwargs = [
            {**reg_kwargs, "beta_h0": float(h == "h0"), "beta_h1": float(h == "h1")} for h in self.adaptive_halves
        ]
        self.adaptive_values = torch.zeros(len(adaptive), dtype=torch.float64)
        self.adaptive_scales = torch.zeros(len(adaptive), dtype=torch.float64)

    @property
    def deep(self) -> bool:
        """prefix / ptuning_v2: a key/value prefix at every layer (else a prompt in front of the input)."""
        return self.peft_config.peft_type == "PREFIX_TUNING"

    def prompt_matrix(self):
        """The regularized matrix: the prompt [P, d], or the prefix [P, L*2*d_kv] (for ``prefix`` the
        MLP's output); the prompt encoder's output, whole here even under ZeRO-3."""
        encoder = self.peft_model.prompt_encoder[self.adapter]
        p = self.peft_config.num_virtual_tokens
        tokens = self.peft_model.prompt_tokens[self.adapter][:p].to(encoder.embedding.weight.device)
        return encoder(tokens)

    def forward(self, input_ids, attention_mask, labels, ce_scale):
        matrix = self.prompt_matrix()
        reg = self.regularizer(matrix, **self.fixed_kwargs) if self.lambda_ts else matrix.sum() * 0.0
        if self.adaptive_halves:
            matrix = self._with_adaptive_gradient(matrix)
        predicting, targets = self._decode(matrix, input_ids, attention_mask, labels)
        answer = targets != -100  # keep only the rows whose target is an answer token
        lm_head = self.peft_model.get_base_model().get_output_embeddings()
        with gathered_params(lm_head) as (weight, bias):  # ZeRO-3: whole for the CE only (memory.py)
            ce_sum = LinearCrossEntropy.apply(predicting[answer], weight, bias, targets[answer], self.softcap)
        loss = ce_scale * ce_sum + self.lambda_ts * reg.float()
        return loss, ce_sum.detach(), reg.detach().float()

    def _with_adaptive_gradient(self, matrix):
        with torch.enable_grad():  # d term / d M now, at this M: the backward only rescales them
            leaf = matrix.detach().requires_grad_(True)
            values, grads = [], []
            for kwargs in self.term_kwargs:
                value = self.regularizer(leaf, **kwargs)
                grads.append(torch.autograd.grad(value, leaf)[0].float())
                values.append(value.detach().double().cpu())
        self.adaptive_values = torch.stack(values)
        return AdaptiveGradient.apply(matrix, torch.stack(grads), self.ratios, self.adaptive_scales)

    def _decode(self, matrix, input_ids, attention_mask, labels):
        """(hidden states that predict each target, targets): the decoder run with the prompt in front."""
        base = self.peft_model.get_base_model()
        decoder = getattr(base, base.base_model_prefix)
        embeds = self.peft_model.word_embeddings(input_ids)
        batch, p = input_ids.shape[0], self.peft_config.num_virtual_tokens
        mask = torch.cat([attention_mask.new_ones(batch, p), attention_mask], dim=1)
        if self.deep:
            cache = prefix_cache(matrix.to(embeds.dtype), batch, self.peft_config, base.config)
            hidden = decoder(
                inputs_embeds=embeds, attention_mask=mask, past_key_values=cache, use_cache=True
            ).last_hidden_state
            # hidden[:, j-1] predicts input token j (token 0, never an answer token, has no predictor)
            return hidden[:, :-1], labels[:, 1:]
        embeds = torch.cat([matrix.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        # hidden[:, P-1+j] predicts input token j
        return hidden[:, p - 1 : p - 1 + input_ids.shape[1]], labels


def initial_prompt(config, peft_model, tokenizer, generator):
    """The initial trainable table (the prompt encoder's embedding: [P, d] prompt, [P, d_kv] prefix MLP
    input, [P, L*2*d_kv] P-Tuning v2 prefix): N(0, 0.02²) | random vocabulary rows | embeddings of a
    tokenised string; None for ``peft`` (keep PEFT's own, seeded, initialisation)."""
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
    with gathered(embedding.weight):
        return embedding.weight.detach()[ids.to(embedding.weight.device)].float().cpu().clone()


def gathered(param, modifier_rank=None):
    """Whole ``param`` inside the block under ZeRO-3 (a collective: every rank must enter)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank)
    return contextlib.nullcontext()


def full_prompt(engine):
    """The whole fp32 regularized matrix on CPU, on every rank (a collective under ZeRO-3): the prompt
    table, or for ``prefix`` the MLP applied to the whole fp32 parameters (what PEFT saves)."""
    from deepspeed.utils import safe_get_full_fp32_param

    peft_model = engine.module.peft_model
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]

    def full(param):
        value = safe_get_full_fp32_param(param)
        if value is None:
            with gathered(param):
                value = param.detach().float().clone()
        return value.detach().float().cpu().reshape(getattr(param, "ds_shape", param.shape)).clone()

    matrix = full(encoder.embedding.weight)
    if getattr(encoder, "prefix_projection", False):
        first, last = encoder.transform[0], encoder.transform[2]
        hidden = torch.tanh(torch.nn.functional.linear(matrix, full(first.weight), full(first.bias)))
        matrix = torch.nn.functional.linear(hidden, full(last.weight), full(last.bias))
    return matrix
