"""The paper's five models: their architecture numbers, one table for the planner and the fixtures.

``tsloss plan`` (``plan.KNOWN_MODELS``) reads its shapes from here, and
``testbed.shaped.build_shaped_model`` builds random-weight models of exactly these shapes (with fewer
layers), so what is planned and what is run are the same numbers.

Where the values come from: each model's ``config.json`` on the Hugging Face hub (the URL beside it).
The hub cannot be reached from this project's machines, so the values were written from knowledge of
those files and cross-checked against public repositories that vendor them, found with a code search:
Lightning-AI/litgpt ``litgpt/config.py`` (open_llama_7b, Llama-2-13b-hf, gemma-2b: widths, layers,
heads, kv groups, intermediate size, vocabulary, norm eps, Gemma's scaled embeddings), model tables
that cite ``Qwen/Qwen1.5-14B/blob/main/config.json`` (5120 / 13696 / 40 layers / 40+40 heads / 152064
vocabulary / 32K positions / QKV bias), and a dense-DeepSeek config fixture (4096 / 11008 / 30 layers
/ 32+32 heads / 102400 / 4096 positions / rope 10000). The parameter counts these shapes give match
the published sizes (2.51B, 6.74B, 6.91B, 13.0B, 14.2B; tests/test_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARCHITECTURES", "Architecture", "ShapeError", "architecture"]

from tsloss_harness.errors import TslossError


class ShapeError(TslossError, ValueError):
    """An unknown model name or an impossible override; the message is one line."""


@dataclass(frozen=True)
class Architecture:
    """One model's architecture as its published config.json gives it (HF field names in comments)."""

    key: str  # the short name plan and the benchmarks use
    hub_id: str
    model_type: str  # gemma | llama | qwen2 (transformers' model class)
    num_layers: int  # num_hidden_layers
    hidden_size: int
    num_heads: int  # num_attention_heads
    num_kv_heads: int  # num_key_value_heads (1: multi-query, < heads: grouped-query)
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2: biases on q, k, v projections (the architecture has them, no flag)
    hidden_act: str
    published_dtype: str  # torch_dtype of the released weights
    source: str  # the config.json these numbers are from

    @property
    def scaled_embeddings(self) -> bool:
        """Gemma multiplies the input embeddings by sqrt(hidden_size) (GemmaModel's normalizer); a soft
        prompt enters after that scaling in PEFT's forward, so its scale differs from the token rows'."""
        return self.model_type == "gemma"

    def hf_config(
        self,
        *,
        num_layers: int | None = None,
        vocab_size: int | None = None,
        dtype: str = "float32",
        special_ids: dict | None = None,
    ):
        """The transformers config of this architecture, ``num_layers`` (default: all) and ``vocab_size``
        (default: the real one) overridden; ``special_ids``: bos/eos/pad token ids of the tokenizer used."""
        from transformers import GemmaConfig, LlamaConfig, Qwen2Config

        layers = self.num_layers if num_layers is None else num_layers
        vocab = self.vocab_size if vocab_size is None else vocab_size
        if layers < 1 or vocab < 8:
            raise ShapeError(f"{self.key}: num_layers must be >= 1 and vocab_size >= 8, got {layers} and {vocab}")
        common = dict(
            num_hidden_layers=layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=vocab,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act=self.hidden_act,
            dtype=dtype,
            **(special_ids or {}),
        )
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.model_type == "gemma":
            return GemmaConfig(**common, hidden_activation=self.hidden_act, rope_parameters=rope)
        if self.model_type == "qwen2":
            return Qwen2Config(**common, rope_parameters=rope, use_sliding_window=False)
        return LlamaConfig(**common, rope_parameters=rope, attention_bias=self.qkv_bias)


def _hub(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"


ARCHITECTURES: dict[str, Architecture] = {
    a.key: a
    for a in (
        Architecture(
            "gemma-2b-it",
            "google/gemma-2b-it",
            "gemma",
            num_layers=18,
            hidden_size=2048,
            num_heads=8,
            num_kv_heads=1,
            head_dim=256,
            intermediate_size=16384,
            vocab_size=256000,
            max_position_embeddings=8192,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            qkv_bias=False,
            hidden_act="gelu_pytorch_tanh",
            published_dtype="bfloat16",
            source=_hub("google/gemma-2b-it"),
        ),
        Architecture(
            "open-llama-7b",
            "openlm-research/open_llama_7b",
            "llama",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=32,
            head_dim=128,
            intermediate_size=11008,
            vocab_size=32000,
            max_position_embeddings=2048,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            qkv_bias=False,
            hidden_act="silu",
            published_dtype="float16",
            source=_hub("openlm-research/open_llama_7b"),
        ),
        Architecture(
            "deepseek-7b-chat",
            "deepseek-ai/deepseek-llm-7b-chat",
            "llama",
            num_layers=30,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=32,
            head_dim=128,
            intermediate_size=11008,
            vocab_size=102400,
            max_position_embeddings=4096,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            qkv_bias=False,
            hidden_act="silu",
            published_dtype="bfloat16",
            source=_hub("deepseek-ai/deepseek-llm-7b-chat"),
        ),
        Architecture(
            "llama2-13b",
            "meta-llama/Llama-2-13b-hf",
            "llama",
            num_layers=40,
            hidden_size=5120,
            num_heads=40,
            num_kv_heads=40,
            head_dim=128,
            intermediate_size=13824,
            vocab_size=32000,
            max_position_embeddings=4096,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            qkv_bias=False,
            hidden_act="silu",
            published_dtype="float16",
            source=_hub("meta-llama/Llama-2-13b-hf"),
        ),
        Architecture(
            "qwen1.5-14b",
            "Qwen/Qwen1.5-14B",
            "qwen2",
            num_layers=40,
            hidden_size=5120,
            num_heads=40,
            num_kv_heads=40,
            head_dim=128,
            intermediate_size=13696,
            vocab_size=152064,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            qkv_bias=True,
            hidden_act="silu",
            published_dtype="bfloat16",
            source=_hub("Qwen/Qwen1.5-14B"),
        ),
    )
}


def architecture(name: str) -> Architecture:
    """The architecture of a short name (``gemma-2b-it``) or hub id (``google/gemma-2b-it``)."""
    key = name.strip().lower()
    for arch in ARCHITECTURES.values():
        if key in (arch.key, arch.hub_id.lower()):
            return arch
    raise ShapeError(f"unknown model {name!r}; known: {', '.join(ARCHITECTURES)}")
