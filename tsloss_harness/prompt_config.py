"""The PEFT config of each prompt method: how a prompt is shaped, before any weights exist.

Built the same way by the tuner (a new prompt), the lm-eval plugin (the config around a loaded
matrix) and the tests; ``expected_embedding_shape`` says which ``prompt_embeddings`` matrix a config
stores, which ``tsloss_harness.prompt`` checks on save and load.
"""

from __future__ import annotations

import os

__all__ = [
    "PROMPT_METHODS",
    "expected_embedding_shape",
    "make_method_config",
    "make_prefix_config",
    "make_prompt_config",
    "method_of",
]

# The tuner's --method values: soft prompt (Lester et al.), Prefix-Tuning (Li & Liang, MLP
# reparameterisation), P-Tuning v2 (Liu et al., deep prompts: a free key/value prefix at every layer).
PROMPT_METHODS = ("prompt", "prefix", "ptuning_v2")


def make_prompt_config(
    base_model_name_or_path: str | os.PathLike | None,
    *,
    num_virtual_tokens: int,
    token_dim: int,
    num_layers: int,
    num_attention_heads: int,
    init: str = "normal",
):
    """The ``peft.PromptTuningConfig`` (CAUSAL_LM) of a prompt, built the same way everywhere.

    ``init`` names how the tuner initialised the prompt (the paper: ``normal``, N(0, 0.02²)); it is
    provenance, recorded in tsloss.json by the caller, and never enters the PEFT config. PEFT's
    ``TEXT`` init re-runs whenever a model is built from the config outside inference mode (e.g.
    ``get_peft_model(base, load_peft_config(dir))`` to continue training; older PEFT also on
    ``from_pretrained(..., is_trainable=True)``): it loads ``tokenizer_name_or_path`` again, which
    fails wherever that path does not exist, only for the saved weights to overwrite the result.
    With ``RANDOM`` PEFT needs nothing but the adapter files.
    """
    from peft import PromptTuningConfig, PromptTuningInit

    if not isinstance(init, str) or not init:
        raise ValueError(f"init must be a non-empty string such as 'normal', got {init!r}")
    _check_positive_ints(
        num_virtual_tokens=num_virtual_tokens,
        token_dim=token_dim,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
    )
    return PromptTuningConfig(
        **_causal_lm_fields(base_model_name_or_path, num_virtual_tokens, token_dim, num_layers, num_attention_heads),
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )


def _check_positive_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _causal_lm_fields(base_model_name_or_path, num_virtual_tokens, token_dim, num_layers, num_attention_heads) -> dict:
    """The fields every prompt-learning config of a decoder-only model shares."""
    from peft import TaskType

    return dict(
        task_type=TaskType.CAUSAL_LM,
        base_model_name_or_path=None if base_model_name_or_path is None else str(base_model_name_or_path),
        num_virtual_tokens=num_virtual_tokens,
        token_dim=token_dim,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_transformer_submodules=1,  # what PEFT fills in for decoder-only models
    )


def make_prefix_config(
    base_model_name_or_path: str | os.PathLike | None,
    *,
    num_virtual_tokens: int,
    num_layers: int,
    num_key_value_heads: int,
    head_dim: int,
    projection: bool,
    encoder_hidden_size: int | None = None,
):
    """The ``peft.PrefixTuningConfig`` (CAUSAL_LM) of a prefix: ``projection=True`` is Prefix-Tuning
    (an MLP maps P free rows to the prefix), ``False`` P-Tuning v2 (the prefix is the parameter).

    ``token_dim``/``num_attention_heads`` are the key/value width and heads, written out as PEFT's
    ``_prepare_prompt_learning_config`` resolves them for grouped-query attention (idempotent there),
    so the config on disk says exactly how the stored [P, num_layers*2*token_dim] matrix is laid out.
    ``encoder_hidden_size`` (the MLP's hidden width) defaults to PEFT's choice, ``token_dim``.
    """
    from peft import PrefixTuningConfig

    _check_positive_ints(
        num_virtual_tokens=num_virtual_tokens,
        num_layers=num_layers,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        encoder_hidden_size=1 if encoder_hidden_size is None else encoder_hidden_size,
    )
    token_dim = num_key_value_heads * head_dim
    return PrefixTuningConfig(
        **_causal_lm_fields(base_model_name_or_path, num_virtual_tokens, token_dim, num_layers, num_key_value_heads),
        prefix_projection=bool(projection),
        encoder_hidden_size=token_dim if encoder_hidden_size is None else encoder_hidden_size,
    )


def make_method_config(
    method: str,
    base_model_name_or_path: str | os.PathLike | None,
    model_config,
    *,
    num_virtual_tokens: int,
    init: str = "normal",
    encoder_hidden_size: int | None = None,
):
    """The PEFT config of ``method`` (one of ``PROMPT_METHODS``) for a model with ``model_config``
    (a transformers config; its text config is read for multimodal ones)."""
    if method not in PROMPT_METHODS:
        raise ValueError(f"unknown method {method!r} (choose {', '.join(PROMPT_METHODS)})")
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    hidden, heads = int(text.hidden_size), int(text.num_attention_heads)
    if method == "prompt":
        return make_prompt_config(
            base_model_name_or_path,
            num_virtual_tokens=num_virtual_tokens,
            token_dim=hidden,
            num_layers=int(text.num_hidden_layers),
            num_attention_heads=heads,
            init=init,
        )
    if encoder_hidden_size is not None and method != "prefix":
        raise ValueError(f"encoder_hidden_size is for method 'prefix' (its MLP), not {method!r}")
    return make_prefix_config(
        base_model_name_or_path,
        num_virtual_tokens=num_virtual_tokens,
        num_layers=int(text.num_hidden_layers),
        num_key_value_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        projection=method == "prefix",
        encoder_hidden_size=encoder_hidden_size,
    )


def method_of(peft_config) -> str:
    """The ``PROMPT_METHODS`` name of a PEFT prompt-learning config (P-tuning's prompt encoder counts
    as ``prompt``: its output enters as input embeddings)."""
    from peft import PeftType

    if peft_config.peft_type == PeftType.PREFIX_TUNING:
        return "prefix" if peft_config.prefix_projection else "ptuning_v2"
    if peft_config.peft_type in (PeftType.PROMPT_TUNING, PeftType.P_TUNING):
        return "prompt"
    raise ValueError(
        f"no prompt method for peft_type {getattr(peft_config.peft_type, 'value', peft_config.peft_type)!s}"
    )


def expected_embedding_shape(peft_config) -> tuple[int, int]:
    """Shape of ``prompt_embeddings`` that ``PeftModel.from_pretrained`` accepts for ``peft_config``."""
    from peft import PeftType

    peft_type = peft_config.peft_type
    submodules = peft_config.num_transformer_submodules or 1
    if peft_type in (PeftType.PROMPT_TUNING, PeftType.P_TUNING):
        return (peft_config.num_virtual_tokens * submodules, peft_config.token_dim)
    if peft_type == PeftType.PREFIX_TUNING:
        # One row per virtual token holding every layer's key and value. With prefix_projection PEFT
        # saves the MLP's output (get_prompt_embedding_to_save), which loads into the inference-mode
        # encoder: the same shape either way.
        return (peft_config.num_virtual_tokens, peft_config.num_layers * 2 * peft_config.token_dim)
    raise ValueError(f"prompt directories do not support peft_type {getattr(peft_type, 'value', peft_type)!s} yet")
