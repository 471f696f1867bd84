"""Shared, session-scoped fixtures: tiny local models, generated GSM8K-format data, and the offline
data, tasks and environment of the lm_eval subprocesses (helpers that are not fixtures: helpers.py).

Everything is built once per test session under pytest's temporary directory (a few seconds);
no test ever reaches the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")  # W&B (monitor.py) never reaches the network in tests

from helpers import MMLU_CF_SUBJECTS, REPO, ROLLING_TASK  # noqa: E402

from tsloss_harness.data import write_jsonl
from tsloss_harness.testbed import problems, tiny  # noqa: E402  (after the offline switches)


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
    (tests/test_testbed_pretrain.py, tests/test_testbed_demo.py)."""
    from tsloss_harness.testbed import pretrain as testbed

    return testbed.build_testbed(tmp_path_factory.mktemp("quick") / "llama", size="quick", cache=False, progress=False)


@pytest.fixture(scope="session")
def gsm8k_rows() -> list[dict]:
    return problems.generate_gsm8k_rows(16, seed=0)


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory) -> Path:
    """A folder with generated ``train.jsonl`` (32 rows) and ``test.jsonl`` (16 rows), disjoint seeds."""
    root = tmp_path_factory.mktemp("gsm8k")
    write_jsonl(problems.generate_gsm8k_rows(32, seed=1), root / "train.jsonl")
    write_jsonl(problems.generate_gsm8k_rows(16, seed=2), root / "test.jsonl")
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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """TSLOSS_DATA_DIR with MMLU-CF (every subject) and one LongBench subset, in their own schemas."""
    root = tmp_path_factory.mktemp("data")
    rows = problems.generate_gsm8k_rows(14 * 6, seed=3)
    for i, subject in enumerate(MMLU_CF_SUBJECTS):
        mc = []
        for j, row in enumerate(rows[i * 6 : (i + 1) * 6]):
            number = row["answer"].rsplit("#### ", 1)[1]
            choices = [number, str(int(number) + 1), str(int(number) + 2), str(int(number) + 3)]
            letter = "ABCD"[(i + j) % 4]  # the answer letter varies across subjects and rows
            choices.insert("ABCD".index(letter), choices.pop(0))
            mc.append({"Question": row["question"], **dict(zip("ABCD", choices)), "Answer": letter})
        write_jsonl(mc[:5], root / "mmlu_cf" / f"{subject}_dev.jsonl")
        write_jsonl(mc[5:], root / "mmlu_cf" / f"{subject}_val.jsonl")
    longbench = [
        {
            "input": row["question"],
            "context": row["answer"],
            "answers": [row["answer"].rsplit("#### ", 1)[1]],
            "length": 40,
            "dataset": "2wikimqa",
            "language": "en",
            "all_classes": None,
            "_id": f"id{i}",
        }
        for i, row in enumerate(rows[:2])
    ]
    write_jsonl(longbench, root / "longbench" / "2wikimqa.jsonl")
    return root


@pytest.fixture(scope="session")
def tasks_dir(tmp_path_factory) -> Path:
    """This repo's tasks/ plus a rolling-loglikelihood task over the local GSM8K questions."""
    root = tmp_path_factory.mktemp("tasks") / "tasks"
    shutil.copytree(REPO / "tasks", root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "offline" / "tsprompt_test_rolling.yaml").write_text(ROLLING_TASK)
    return root


@pytest.fixture(scope="session")
def env(gsm8k_dir, data_dir) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "TSLOSS_GSM8K_DIR": str(gsm8k_dir),
        "TSLOSS_DATA_DIR": str(data_dir),
    }


@pytest.fixture(scope="session")
def short_dir(tmp_path_factory) -> Path:
    """Four GSM8K-format rows with short answers: greedy generation for accuracy stays cheap."""
    root = tmp_path_factory.mktemp("short")
    rows = [
        {"question": f"What is {a} plus {b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"}
        for a, b in [(2, 3), (4, 1), (7, 2), (6, 6)]
    ]
    write_jsonl(rows, root / "train.jsonl")
    return root
