"""Shared, session-scoped fixtures: tiny local models and generated GSM8K-format data.

Everything is built once per test session under pytest's temporary directory (a few seconds);
no test ever reaches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tsloss_harness import tiny  # noqa: E402  (after the offline switches)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer_dir) -> dict[str, Path]:
    """arch -> model directory, for every arch in ``tiny.ARCHS`` (shared tokenizer, seed 0)."""
    root = tmp_path_factory.mktemp("models")
    return {arch: tiny.build_tiny_model(arch, root / arch, tokenizer_dir=tiny_tokenizer_dir) for arch in tiny.ARCHS}


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def quick_testbed_dir(tmp_path_factory) -> Path:
    """The "quick" testbed (llama, generated corpus, seed 0), built once per session outside any cache
    (tests/test_testbed.py, tests/test_demo.py)."""
    from tsloss_harness import testbed

    return testbed.build_testbed(tmp_path_factory.mktemp("quick") / "llama", size="quick", cache=False, progress=False)


@pytest.fixture(scope="session")
def gsm8k_rows() -> list[dict]:
    return tiny.generate_gsm8k_rows(16, seed=0)


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory) -> Path:
    """A folder with generated ``train.jsonl`` (32 rows) and ``test.jsonl`` (16 rows), disjoint seeds."""
    root = tmp_path_factory.mktemp("gsm8k")
    tiny.write_jsonl(tiny.generate_gsm8k_rows(32, seed=1), root / "train.jsonl")
    tiny.write_jsonl(tiny.generate_gsm8k_rows(16, seed=2), root / "test.jsonl")
    return root


@pytest.fixture(scope="session")
def real_gsm8k_dir() -> Path:
    """The real GSM8K folder named by ``TSLOSS_GSM8K_DIR``; skips when unset or missing."""
    value = os.environ.get("TSLOSS_GSM8K_DIR")
    if not value:
        pytest.skip("TSLOSS_GSM8K_DIR is not set")
    path = Path(value)
    if not (path / "train.jsonl").is_file() and not (path / "test.jsonl").is_file():
        pytest.skip(f"TSLOSS_GSM8K_DIR={value} holds no train.jsonl or test.jsonl")
    return path
