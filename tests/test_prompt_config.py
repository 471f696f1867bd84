"""The PEFT config of each prompt method: its type, init and validation of what it is given."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tsloss_harness.prompt_config import make_method_config, make_prompt_config


def test_make_prompt_config_is_causal_lm_prompt_tuning_with_random_init():
    from peft import PeftType, PromptTuningInit, TaskType

    prompt_config = make_prompt_config("m", num_virtual_tokens=6, token_dim=64, num_layers=2, num_attention_heads=4)
    assert prompt_config.peft_type == PeftType.PROMPT_TUNING
    assert prompt_config.task_type == TaskType.CAUSAL_LM
    assert prompt_config.prompt_tuning_init == PromptTuningInit.RANDOM
    assert prompt_config.num_transformer_submodules == 1
    text = make_prompt_config(
        "m", num_virtual_tokens=2, token_dim=8, num_layers=1, num_attention_heads=1, init="text:Solve"
    )
    assert text.prompt_tuning_init == PromptTuningInit.RANDOM and text.tokenizer_name_or_path is None


@pytest.mark.parametrize(
    "kwargs",
    [{"num_virtual_tokens": 0}, {"token_dim": 2.5}, {"num_layers": True}, {"init": ""}],
)
def test_make_prompt_config_rejects_bad_values(kwargs):
    args = {"num_virtual_tokens": 2, "token_dim": 8, "num_layers": 1, "num_attention_heads": 1, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_prompt_config("m", **args)


def test_make_method_config_rejects_unknown_methods_and_misplaced_options():
    model_config = SimpleNamespace(hidden_size=64, num_attention_heads=4, num_hidden_layers=2)
    with pytest.raises(ValueError, match="unknown method 'lora'"):
        make_method_config("lora", None, model_config, num_virtual_tokens=3)
    with pytest.raises(ValueError, match="encoder_hidden_size is for method 'prefix'"):
        make_method_config("ptuning_v2", None, model_config, num_virtual_tokens=3, encoder_hidden_size=8)
