"""Local-file data sets for the ``*_offline`` task groups (``custom_dataset: !function offline_data.<fn>``).

The groups reuse the harness's own task configs by name (``gsm8k``, ``longbench_*``) and this
folder's ``mmlu_cf_*``, overriding only where the rows come from, so prompts, filters and metrics stay
the standard ones. Files are the data sets' own schemas, one JSON object per line:

    $TSLOSS_GSM8K_DIR/{train,test}.jsonl           question, answer   (or $TSLOSS_DATA_DIR/gsm8k/)
    $TSLOSS_DATA_DIR/mmlu_cf/<Subject>_{dev,val}.jsonl   Question, A, B, C, D, Answer
    $TSLOSS_DATA_DIR/longbench/<subset>.jsonl      input, context, answers, all_classes, ...

lm-eval calls these with the task's ``metadata`` and ``dataset_kwargs`` as keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "TSLOSS_DATA_DIR"
GSM8K_DIR_ENV = "TSLOSS_GSM8K_DIR"


class OfflineDataError(FileNotFoundError):
    """A missing environment variable or data file; the message names it."""


def gsm8k(**_task_kwargs):
    """GSM8K ``train`` (the few-shot pool) and ``test`` splits. lm-eval 0.4.13 loads the few-shot
    split when it builds the task, so it must exist even for 0-shot runs."""
    folder = _family_dir("gsm8k", override_env=GSM8K_DIR_ENV)
    return _load_json({"test": _existing(folder / "test.jsonl"), "train": _existing(folder / "train.jsonl")})


def mmlu_cf(subject: str, **_task_kwargs):
    """One MMLU-CF subject: splits ``<Subject>_dev`` (the few-shot pool, needed as GSM8K's ``train``)
    and ``<Subject>_val`` (scored)."""
    folder = _family_dir("mmlu_cf")
    return _load_json(
        {
            f"{subject}_val": _existing(folder / f"{subject}_val.jsonl"),
            f"{subject}_dev": _existing(folder / f"{subject}_dev.jsonl"),
        }
    )


def longbench(subset: str, **_task_kwargs):
    """One LongBench subset as its ``test`` split; LongBench's ``input`` is the harness's ``question``."""
    folder = _family_dir("longbench")
    dataset = _load_json({"test": _existing(folder / f"{subset}.jsonl")})
    if "question" not in dataset["test"].column_names:
        dataset = dataset.rename_column("input", "question")
    return dataset


def _family_dir(family: str, override_env: str | None = None) -> Path:
    if override_env and os.environ.get(override_env):
        return Path(os.environ[override_env])
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        names = f"{override_env} or {DATA_DIR_ENV}" if override_env else DATA_DIR_ENV
        raise OfflineDataError(f"{family}_offline: set {names} to the folder holding the local {family} files")
    return Path(root) / family


def _existing(path: Path) -> str:
    if not path.is_file():
        raise OfflineDataError(f"offline data file not found: {path} (lm-eval loads the few-shot split even 0-shot)")
    return str(path)


def _load_json(files: dict[str, str]):
    import datasets

    return datasets.load_dataset("json", data_files=files)
