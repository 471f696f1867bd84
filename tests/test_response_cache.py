"""lm-eval's response cache (``--use_cache``) with tsprompt (tsloss_harness/evaluation_hooks.py): two
different prompts scored with the same cache path get their own answers, equal to uncached runs.

In-process ``lm_eval.simple_evaluate`` (what the CLI's ``--use_cache`` calls), on generation and
loglikelihood tasks; the cached runs go first-A-then-B, so B would read A's answers if the cache were
keyed by the request alone.
"""

from __future__ import annotations

import pytest
import torch

from tsloss_harness.prompt import save_prompt
from tsloss_harness.prompt_config import make_prompt_config

pytestmark = pytest.mark.slow  # four lm-eval evaluations

TASKS = ["gsm8k_offline", "gsm8k_answer_offline"]


def _prompt(root, name, seed, model_config):
    d = model_config.hidden_size
    matrix = torch.randn(6, d, generator=torch.Generator().manual_seed(seed)) * 0.5  # large enough to move outputs
    config = make_prompt_config(
        str(root),
        num_virtual_tokens=6,
        token_dim=d,
        num_layers=model_config.num_hidden_layers,
        num_attention_heads=model_config.num_attention_heads,
    )
    return save_prompt(root / name, matrix, peft_config=config, provenance={"method": "test", "seed": seed})


def _responses(model_dir, prompt, task_manager, cache=None) -> dict:
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model="tsprompt", model_args=f"pretrained={model_dir},prompt={prompt},dtype=float32", tasks=TASKS,
        num_fewshot=0, limit=2, batch_size=1, device="cpu", use_cache=None if cache is None else str(cache),
        log_samples=True, gen_kwargs="max_gen_toks=8", task_manager=task_manager,
    )  # fmt: skip
    return {task: [row["resps"] for row in rows] for task, rows in results["samples"].items()}


def test_two_prompts_sharing_a_cache_path_keep_their_own_answers(
    tmp_path, tiny_llama_dir, tasks_dir, gsm8k_dir, monkeypatch
):
    from lm_eval.tasks import TaskManager
    from sqlitedict import SqliteDict
    from transformers import AutoConfig

    monkeypatch.setenv("TSLOSS_GSM8K_DIR", str(gsm8k_dir))
    model_config = AutoConfig.from_pretrained(tiny_llama_dir)
    a, b = (_prompt(tmp_path, name, seed, model_config) for name, seed in (("a", 1), ("b", 2)))
    tasks = TaskManager(include_path=str(tasks_dir))  # indexing every task folder is the slow part: once
    uncached = {name: _responses(tiny_llama_dir, p, tasks) for name, p in (("a", a), ("b", b))}
    assert uncached["a"] != uncached["b"]  # the two prompts answer differently (else the test shows nothing)

    cache = tmp_path / "cache" / "lm"
    cached = {name: _responses(tiny_llama_dir, p, tasks, cache) for name, p in (("a", a), ("b", b))}
    assert cached == uncached

    db = f"{cache}_rank0.db"  # lm-eval's name for rank 0's file: one table per prompt, 4 requests each
    tables = [t for t in SqliteDict.get_tablenames(db) if t.startswith("tsprompt_")]
    assert len(tables) == 2
    assert [len(SqliteDict(db, tablename=t, flag="r")) for t in tables] == [4, 4]
