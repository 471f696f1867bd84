"""lm-eval model ``tsprompt``: a Hugging Face causal LM with a soft prompt in front of every input.

    lm_eval --model tsprompt --model_args pretrained=BASE,prompt=PROMPT \
        --tasks gsm8k_offline --include_path tasks/

``TSPromptLM`` is lm-eval's ``HFLM`` (batching, caching, chat templates and every ``hf`` model arg
keep working) plus ``prompt=``: a prompt directory, any PEFT prompt-tuning adapter directory, or a
bare ``.safetensors`` / ``.pt`` tensor of shape [P, d] or [1, P, d]
(``tsloss_harness.prompt.load_prompt``). The model is wrapped in a PEFT prompt-tuning ``PeftModel``
holding that matrix, exactly as ``--model hf --model_args peft=<adapter>`` would load it, and the
virtual tokens sit where PEFT prompt tuning puts them: in front of the input embeddings, attention
mask extended, for ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until``. A prompt
directory (or PEFT adapter) of Prefix-Tuning / P-Tuning v2 (``PREFIX_TUNING``, the tuner's
``--method prefix`` / ``ptuning_v2``) is wrapped as PEFT's prefix-tuning ``PeftModel`` instead: its
matrix [P, L*2*d_kv] is the key/value prefix of every layer.

What differs from ``hf,peft=`` is only how that is computed. The virtual tokens attend to nothing
but each other, so their keys and values are the same for every input: they are computed once and
every forward pass and every ``generate`` continues from that cache, running the model on the text
alone (no P extra positions in each layer, the LM head and HFLM's log-softmax). A prefix already is
such a cache: it is PEFT's own ``get_prompt`` output, built once. Loglikelihoods equal
``hf,peft=``'s to float tolerance and generations are the same tokens. Two deliberate differences:
generation takes positions from the attention mask, so left padding never shifts them and outputs do
not depend on ``--batch_size`` (PEFT's prompt-tuning ``generate`` drops position ids; the two agree
on every unpadded sequence), and ``max_length`` is the model's window minus the P virtual tokens.

The results JSON gains ``config.tsprompt``: the prompt's ``prompt_topology`` metrics and its
tsloss.json provenance, which the ``lm_eval`` CLI also prints as a table after the scores.

lm-eval 0.4.13 discovers no plugins; ``tsloss_harness/_lm_eval_hook.py`` registers this class at
interpreter start-up without importing lm-eval or torch.
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import stop_sequences_criteria

from tsloss_harness import baselines
from tsloss_harness.evaluation_hooks import PromptAwareHooks  # lm-eval's cache and chat format, per prompt
from tsloss_harness.prompt import ADAPTER_CONFIG_NAME, PromptLoadError, load_peft_config, load_prompt, load_provenance

__all__ = ["TSPromptLM", "format_topology_table", "prompt_report"]

# Provenance fields shown in the printed table (all of tsloss.json goes into the results JSON).
_TABLE_PROVENANCE_KEYS = ("base_model", "method", "regularizer", "dataset", "seed", "step", "git_commit")


@register_model("tsprompt")
class TSPromptLM(PromptAwareHooks, HFLM):
    """``HFLM`` with a soft prompt injected as PEFT prompt tuning does. Model args: all of ``hf``'s,
    plus ``prompt`` (required) and ``topology`` (default True: compute the topology report); ``act=`` and
    ``dpc=`` add the ACT / DPC baselines (``tsloss_harness.baselines``)."""

    def __init__(self, pretrained: Any, prompt: str | Path | None = None, topology: bool = True, **kwargs: Any):
        if prompt is None or str(prompt) == "":
            raise ValueError("tsprompt: model_args needs prompt=<prompt dir | PEFT adapter dir | .safetensors | .pt>")
        if kwargs.get("peft") or kwargs.get("delta"):
            raise ValueError("tsprompt: give the soft prompt as prompt=, not together with peft= or delta=")
        self.prompt_path = str(prompt)
        # Read (and validate) the prompt before the model is loaded: a bad file fails in a second.
        self.prompt_embeddings = load_prompt(prompt)
        self.num_virtual_tokens = int(self.prompt_embeddings.shape[0])
        # A prefix adapter's config says how its matrix is laid out; every other prompt is input embeddings.
        self._prefix_config = None
        if Path(prompt).is_dir() and (Path(prompt) / ADAPTER_CONFIG_NAME).is_file():
            adapter_config = load_peft_config(prompt)
            if adapter_config.peft_type == "PREFIX_TUNING":
                self._prefix_config = adapter_config
        self._topology_enabled = _as_bool(topology)
        self._report: dict | None = None
        self._prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, batch 1
        self._act, self._dpc = baselines.from_model_args(kwargs, self._prefix_config, self.prompt_path)
        self._prompt_act_stats = None  # ACT's statistics of the prompt's own rows
        super().__init__(pretrained, **kwargs)
        if not _is_prompt_wrapped(self._model):  # `pretrained` was a model instance: no _create_model
            self._model = self._attach_prompt(self._model)
            self._model.eval()
        if self._act is not None:  # calibrated attention in every forward, the prompt's own cache included
            self._act.apply(self._model)
            self._prompt_kv = None

    # HFLM calls this for string `pretrained`; the prompt joins where HFLM attaches `peft=` adapters,
    # so device placement, eval() and tie_weights() that follow treat both paths alike.
    def _create_model(self, pretrained: str, *args: Any, **kwargs: Any) -> None:
        super()._create_model(pretrained, *args, **kwargs)
        self._model = self._attach_prompt(self._model)

    def _attach_prompt(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import get_peft_model, set_peft_model_state_dict

        from tsloss_harness.prompt import EMBEDDINGS_KEY
        from tsloss_harness.prompt_config import make_prompt_config

        if self.backend != "causal":
            raise ValueError(f"tsprompt: soft prompts need a decoder-only model, got a {self.backend} model")
        if self._prefix_config is not None:
            return self._attach_prefix(model)
        width = model.get_input_embeddings().weight.shape[1]
        p, d = self.prompt_embeddings.shape
        if d != width:
            raise PromptLoadError(
                f"{self.prompt_path}: prompt width {d} does not match the model's hidden size {width}"
            )
        # As HFLM does before attaching a peft= adapter: grow the embedding for tokens a tokenizer added.
        config = model.config
        vocab_size = getattr(getattr(config, "text_config", config), "vocab_size", None)
        if vocab_size is not None and vocab_size != len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        text_config = getattr(config, "text_config", config)
        peft_config = make_prompt_config(
            getattr(config, "_name_or_path", None) or None,
            num_virtual_tokens=p,
            token_dim=d,
            num_layers=int(text_config.num_hidden_layers),
            num_attention_heads=int(text_config.num_attention_heads),
        )
        peft_config.inference_mode = True
        wrapped = get_peft_model(model, peft_config)
        # The same state-dict path PeftModel.from_pretrained takes, so dtype/device handling match.
        set_peft_model_state_dict(wrapped, {EMBEDDINGS_KEY: self.prompt_embeddings})
        return wrapped

    def _attach_prefix(self, model: torch.nn.Module) -> torch.nn.Module:
        """PEFT's prefix-tuning ``PeftModel`` in inference mode, as ``PeftModel.from_pretrained`` builds it
        (for ``prefix_projection`` adapters too: PEFT stores the MLP's output, the prefix itself)."""
        import copy

        from peft import get_peft_model, set_peft_model_state_dict

        from tsloss_harness.prompt import EMBEDDINGS_KEY
        from tsloss_harness.prompt_config import make_method_config

        config = model.config
        vocab_size = getattr(getattr(config, "text_config", config), "vocab_size", None)
        if vocab_size is not None and vocab_size != len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        fits = make_method_config("ptuning_v2", None, config, num_virtual_tokens=self.num_virtual_tokens)
        p, d = self.prompt_embeddings.shape
        width = fits.num_layers * 2 * fits.token_dim
        adapter = self._prefix_config
        if d != width or (adapter.num_layers, adapter.token_dim) != (fits.num_layers, fits.token_dim):
            raise PromptLoadError(
                f"{self.prompt_path}: prefix width {d} ({adapter.num_layers} layers x 2 x {adapter.token_dim}) does not "
                f"match the model's key/value width {width} ({fits.num_layers} layers x 2 x {fits.token_dim})"
            )
        peft_config = copy.deepcopy(adapter)
        peft_config.inference_mode = True
        wrapped = get_peft_model(model, peft_config)
        set_peft_model_state_dict(wrapped, {EMBEDDINGS_KEY: self.prompt_embeddings})
        return wrapped

    def _autocast(self):
        """HFLM's mixed precision (``mixed_precision_dtype``), off when it is None."""
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:  # noqa: ARG002 (seq2seq args)
        """Logits of the text positions only: [batch, len(inps), vocab].

        The virtual tokens come from a key/value cache computed once (they attend only to each other,
        so their keys and values never depend on the input), so each call runs the model on the text
        alone -- numerically what PEFT's forward computes for these positions, without the P extra
        positions in every layer, in the LM head and in HFLM's log-softmax. HFLM's continuation
        slicing needs no change: the logits simply have no virtual-token rows.
        """
        with torch.no_grad(), self._autocast():
            base = self._model.get_base_model()
            return base(input_ids=inps, past_key_values=self._prompt_cache(base, inps.shape[0]), use_cache=True).logits

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any):
        """``HFLM._model_generate`` continuing from the prompt's key/value cache.

        ``generate`` gets P placeholder ids in front of the context for the P cached virtual tokens
        (it skips what the cache already holds) and the attention mask extended by P ones, as PEFT
        extends it; the placeholders are cut from the output, so HFLM sees its context plus the
        continuation. Positions come from the attention mask, so left padding does not shift them.
        """
        generation_kwargs["temperature"] = generation_kwargs.get("temperature", 0.0)
        do_sample = generation_kwargs.get("do_sample")
        if (temperature := generation_kwargs.get("temperature")) == 0.0 and do_sample is None:
            generation_kwargs["do_sample"] = do_sample = False
        if do_sample is False and temperature == 0.0:
            generation_kwargs.pop("temperature", None)

        p = self.num_virtual_tokens
        batch_size = context.shape[0]
        attention_mask = generation_kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(context)
        placeholders = context.new_full((batch_size, p), self.tokenizer.pad_token_id)
        input_ids = torch.cat([placeholders, context], dim=1)
        attention_mask = torch.cat([attention_mask.new_ones(batch_size, p), attention_mask], dim=1)
        stopping_criteria = stop_sequences_criteria(self.tokenizer, stop, input_ids.shape[1], batch_size)
        base = self._model.get_base_model()
        with torch.no_grad(), self._autocast():
            output = base.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=self._prompt_cache(base, batch_size),
                max_length=max_length + p,
                stopping_criteria=stopping_criteria,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                **generation_kwargs,
            )
        if self._dpc is not None:  # per instance: trigger, corruption, generation again
            output = self._dpc.revise(
                self, base, input_ids, attention_mask, output, max_length + p, stop, generation_kwargs
            )
        return output[:, p:]

    def _loglikelihood_tokens(self, *args: Any, **kwargs: Any):
        if self._dpc is not None:  # DPC is defined on a generated rationale
            from tsloss_harness.dpc import DpcError

            raise DpcError("tsprompt: dpc= applies to generate_until tasks only; run loglikelihood tasks without dpc=")
        return super()._loglikelihood_tokens(*args, **kwargs)

    def _prompt_cache(self, base: torch.nn.Module, batch_size: int):
        from transformers import DynamicCache

        if self._prompt_kv is None and self._prefix_config is not None:
            with torch.no_grad():
                cache = self._model.get_prompt(1)  # PEFT's own layout of the prefix, model dtype and device
            self._prompt_kv = [tuple(layer[:2]) for layer in cache]
        if self._prompt_kv is None:
            embedding = base.get_input_embeddings().weight
            prompt = self.prompt_embeddings.to(device=embedding.device, dtype=embedding.dtype)[None]
            cache = base(inputs_embeds=prompt, use_cache=True).past_key_values
            self._prompt_kv = [tuple(layer[:2]) for layer in cache]
            self._prompt_act_stats = baselines.prompt_stats(self._act, cache)
        cache = DynamicCache(
            ddp_cache_data=[
                (k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in self._prompt_kv
            ],
            config=base.config,
        )
        return baselines.with_prompt_stats(cache, self._prompt_act_stats, batch_size)

    @property
    def max_length(self) -> int:
        # The window holds the P virtual tokens too; text gets the rest.
        return super().max_length - self.num_virtual_tokens

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info.update(baselines.model_info(self._act, self._dpc))
        if self._topology_enabled:
            info["tsprompt"] = self.prompt_report()
            _print_at_cli_exit(info["tsprompt"])
        return info

    def prompt_report(self) -> dict:
        """The prompt's path, shape, ``prompt_topology`` metrics and tsloss.json provenance (JSON-safe)."""
        if self._report is None:
            self._report = prompt_report(self.prompt_path, self.prompt_embeddings)
        return self._report


def prompt_report(path: str | Path, embeddings: torch.Tensor | None = None) -> dict:
    """Topology metrics of the prompt at ``path`` (or of ``embeddings`` loaded from it) plus its provenance."""
    from tsloss_harness.topology import METRIC_KEYS, prompt_topology

    if embeddings is None:
        embeddings = load_prompt(path)
    metrics = prompt_topology(embeddings.detach().float().cpu())
    return {
        "prompt": str(path),
        "num_virtual_tokens": int(embeddings.shape[0]),
        "token_dim": int(embeddings.shape[1]),
        "topology": {key: metrics[key] for key in METRIC_KEYS},
        "provenance": load_provenance(path) if Path(path).is_dir() else None,
    }


def format_topology_table(report: dict) -> str:
    """A markdown table of a ``prompt_report`` (``results["config"]["tsprompt"]``), lm-eval style."""
    rows = [(key, _fmt(value)) for key, value in report["topology"].items()]
    provenance = report.get("provenance") or {}
    rows += [(f"provenance.{key}", _fmt(provenance[key])) for key in _TABLE_PROVENANCE_KEYS if key in provenance]
    header = ("Prompt topology", "Value")
    w0 = max(len(r[0]) for r in [header, *rows])
    w1 = max(len(r[1]) for r in [header, *rows])
    lines = [
        f"tsprompt: {report['prompt']} (P={report['num_virtual_tokens']}, d={report['token_dim']})",
        f"|{header[0]:<{w0}}|{header[1]:>{w1}}|",
        f"|{'-' * w0}|{'-' * (w1 - 1)}:|",
        *(f"|{name:<{w0}}|{value:>{w1}}|" for name, value in rows),
    ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_at_cli_exit(report: dict) -> None:
    """Under the ``lm_eval`` CLI, print the table after its score tables.

    The CLI prints the scores as its last act, after ``simple_evaluate`` has returned and offers no
    hook; an exit handler is the one point that is reliably after them. Library callers
    (``simple_evaluate`` in a notebook) get nothing printed: the report is in ``results["config"]``.
    """
    if not _running_lm_eval_cli():
        return
    table = format_topology_table(report)
    atexit.register(lambda: print(f"\n{table}", flush=True))


def _running_lm_eval_cli() -> bool:
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", "") or ""
    return spec_name in ("lm_eval", "lm_eval.__main__") or Path(sys.argv[0]).name in ("lm_eval", "lm-eval")


def _is_prompt_wrapped(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)
