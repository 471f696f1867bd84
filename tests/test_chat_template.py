"""Chat templates (tsloss_harness/chat.py, the tuner's --chat_template / --system_instruction, and
tsprompt's check): on a tiny model given a chat template, the tuner's training CE on a row equals the
negative loglikelihood tsprompt gives the same row through the stock lm_eval CLI with
``--apply_chat_template --system_instruction``; scored without the template, tsprompt warns once.

The row's continuation in the test task ends in ``</s>`` (the EOS the tuner appends to every target), so
both sides score the same tokens. The tuner logs step s's CE with the prompt after step s-1, so step 2's
CE is compared with the prompt saved at step 1.
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import REPO, finish_lm_eval, lm_eval_args, read_lm_eval_output, start_lm_eval

from tsloss_harness.chat import format_mismatch
from tsloss_harness.data import write_jsonl
from tsloss_harness.prompt import load_provenance
from tsloss_harness.testbed import problems
from tsloss_harness.tune import TuneConfig, run

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SYSTEM = "Answer with the worked solution."
TASK = "tsprompt_test_chat_answer"
TASK_YAML = f"""\
task: {TASK}
custom_dataset: !function offline_data.gsm8k
output_type: loglikelihood
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}</s>"
process_results: !function gsm8k_answer.process_results
metric_list:
  - metric: answer_nll
    aggregation: mean
    higher_is_better: false
metadata:
  version: 1.0
"""
pytestmark = pytest.mark.slow  # lm_eval subprocesses

WARNING = "the prompt was tuned on"  # tsprompt's format warning


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory, tiny_llama_dir):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    model = root / "llama-chat"
    shutil.copytree(tiny_llama_dir, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model)
    row = problems.generate_gsm8k_rows(1, seed=5)
    write_jsonl(row, root / "data" / "train.jsonl")  # the tuner trains on it, lm-eval scores it
    write_jsonl(row, root / "data" / "test.jsonl")
    tasks = root / "tasks"
    tasks.mkdir()
    for name in ("offline_data.py", "gsm8k_answer.py"):
        shutil.copy(REPO / "tasks" / "offline" / name, tasks / name)
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML)
    out = root / "tune"
    run(
        TuneConfig(
            model=str(model),
            data_dir=str(root / "data"),
            num_samples=1,
            batch_size=1,
            max_steps=2,
            lr=0.05,
            warmup_ratio=0.0,
            save_every=1,
            eval_every=0,
            topology_every=0,
            progress=False,
            output_dir=str(out),
            chat_template=True,
            system_instruction=SYSTEM,
        )
    )
    return {"model": model, "tokenizer": tokenizer, "row": row[0], "tasks": tasks, "data": root / "data", "tune": out}


@pytest.fixture(scope="module")
def scored(chat_setup, env, tmp_path_factory):
    """tsprompt on the step-1 prompt, with the chat template and system instruction, and without."""
    root = tmp_path_factory.mktemp("chat_runs")
    model_args = f"pretrained={chat_setup['model']},prompt={chat_setup['tune'] / 'checkpoints' / 'step-1'}"
    run_env = {**env, "TSLOSS_GSM8K_DIR": str(chat_setup["data"])}
    extra = {"chat": ["--apply_chat_template", "--system_instruction", SYSTEM], "plain": []}
    procs = {}
    for name, flags in extra.items():
        args = lm_eval_args("tsprompt", model_args, TASK, chat_setup["tasks"], root / name, 1, limit=1) + flags
        procs[name] = (start_lm_eval(args, run_env, root / f"{name}.log"), root / f"{name}.log", root / name)
    try:
        return {
            name: {"log": finish_lm_eval(proc, log), **read_lm_eval_output(out)}
            for name, (proc, log, out) in procs.items()
        }
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()


def test_training_ce_equals_tsprompt_nll_with_the_chat_template(chat_setup, scored):
    tokenizer, row = chat_setup["tokenizer"], chat_setup["row"]
    # The continuation lm-eval scores, counted with the tokenizer directly: the context lm-eval builds
    # (system + user turns, generation prompt; HFLM moves its trailing newline into the continuation).
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Question: {row['question']}\nAnswer:"},
    ]
    context = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).rstrip()
    whole = tokenizer(context + "\n" + row["answer"] + "</s>", add_special_tokens=False)["input_ids"]
    n_tokens = len(whole) - len(tokenizer(context, add_special_tokens=False)["input_ids"])
    assert whole[-1] == tokenizer.eos_token_id and whole[0] == tokenizer.bos_token_id  # one BOS, from the template

    (sample,) = scored["chat"]["samples"][TASK].values()
    nll = -float(sample["resps"][0][0][0])
    lines = [json.loads(line) for line in (chat_setup["tune"] / "metrics.jsonl").read_text().splitlines()]
    assert nll == pytest.approx(lines[1]["ce"] * n_tokens, rel=1e-5)  # step 2's CE: the step-1 prompt
    assert abs(nll - lines[0]["ce"] * n_tokens) > 1e-3 * nll  # guards the above: the step-1 update moved the CE
    assert WARNING not in scored["chat"]["log"]


def test_provenance_and_the_one_line_warning(chat_setup, scored):
    provenance = load_provenance(chat_setup["tune"] / "prompt")
    assert provenance["chat_template"] is True and provenance["system_instruction"] == SYSTEM
    assert len(provenance["chat_template_sha256"]) == 64
    warnings = [line for line in scored["plain"]["log"].splitlines() if WARNING in line]
    assert len(warnings) == 1 and warnings[0].startswith("tsprompt: ")
    assert "tuned on chat-template text with system instruction" in warnings[0]
    assert "does not apply the chat template (--apply_chat_template)" in warnings[0]


def test_format_mismatch_reads_the_system_turn(chat_setup):
    tokenizer = chat_setup["tokenizer"]
    trained = {"chat_template": True, "system_instruction": SYSTEM}
    same = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Q"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    other = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True
    )
    assert format_mismatch(trained, True, same, tokenizer) is None
    assert "begin otherwise" in format_mismatch(trained, True, other, tokenizer)
    assert "applies the chat template" in format_mismatch({}, True, None, tokenizer)  # a plain-text prompt
    assert format_mismatch({"system_instruction": "Be brief. "}, False, "Be brief. Question: q", tokenizer) is None
    assert "begin otherwise" in format_mismatch({"system_instruction": "Be brief. "}, False, "Question: q", tokenizer)
