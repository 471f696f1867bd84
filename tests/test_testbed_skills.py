"""The held-out-signal skills: rows that are right, splits that are disjoint, native formats that never
show the eval formats, and files the tuner and the offline tasks read."""

from __future__ import annotations

import re

import pytest

from tsloss_harness.data import extract_answer, load_examples, template_for
from tsloss_harness.testbed import skills


def test_rows_are_deterministic_and_streams_differ():
    for skill in skills.SKILLS:
        assert skills.generate_skill_rows(skill, 20, seed=3) == skills.generate_skill_rows(skill, 20, seed=3)
        assert skills.train_rows(skill, 20, 0) != skills.train_rows(skill, 20, 1)


def test_lookup_answers_are_the_asked_persons_count():
    for row in skills.generate_skill_rows("lookup", 200, seed=0):
        holdings = {(n, t): c for n, c, t in re.findall(r"(\w+) has (\d+) ([a-z ]+?)(?:,| and|\.)", row["question"])}
        asked = re.search(r"How many ([a-z ]+) does (\w+) have\?$", row["question"])
        assert len(holdings) == 3 and asked
        expected = holdings[(asked.group(2), asked.group(1))]
        assert extract_answer(row["answer"], "number") == expected


def test_choice_answer_is_the_only_option_of_the_asked_kind():
    kind_of = {thing: kind for kind, things in skills.KINDS.items() for thing in things}
    assert len(kind_of) == sum(len(things) for things in skills.KINDS.values())  # no thing of two kinds
    for row in skills.generate_skill_rows("choice", 200, seed=0):
        asked = re.fullmatch(r"Which of these is an? ([a-z]+)\?", row["Question"]).group(1)
        assert [letter for letter in "ABCD" if kind_of[row[letter]] == asked] == [row["Answer"]]


def test_native_choice_solution_names_the_letter_then_its_thing():
    row = skills.generate_skill_rows("choice", 1, seed=0)[0]
    assert skills.native_text("choice", row).endswith(f"\nSolution: {row['Answer']}. {row[row['Answer']]}")


@pytest.mark.parametrize("skill", skills.SKILLS)
def test_training_rows_never_hold_a_heldout_question(skill):
    held = {skills.row_key(r) for r in skills.heldout_rows(skill)}
    assert len(held) > 0.95 * skills.HELDOUT_ROWS
    for seed in range(5):
        train = skills.train_rows(skill, 256, seed)
        assert len(train) == 256 and not held & {skills.row_key(r) for r in train}


def test_native_formats_never_show_the_eval_formats():
    """Pretraining must not show the cue the eval format gives: no 'Question:'/'Answer:' lines."""
    for skill in skills.SKILLS:
        for row in skills.generate_skill_rows(skill, 50, seed="pretrain-0"):
            text = skills.native_text(skill, row)
            assert "Question:" not in text and "Answer:" not in text


def test_pretraining_corpus_of_the_skills_testbed_holds_both_native_formats():
    from tsloss_harness.testbed.pretrain import SIZES, _corpus_info, _corpus_rows, _row_texts

    texts = _row_texts(_corpus_rows(_corpus_info("generated", SIZES["skills"], 0)))
    assert sum(t.startswith("Notes: ") for t in texts) == SIZES["skills"].skill_rows["lookup"]
    assert sum(t.startswith("Quiz: ") for t in texts) == SIZES["skills"].skill_rows["choice"]
    default = _row_texts(_corpus_rows(_corpus_info("generated", SIZES["default"], 0)))
    assert not any(t.startswith(("Notes: ", "Quiz: ")) for t in default)


def test_written_files_are_what_the_tuner_reads(tmp_path):
    folders = skills.write_skill_data(tmp_path, 12, seed=2, n_heldout=30)
    lookup = load_examples("gsm8k", folders["lookup"], split="train")
    choice = load_examples(skills.DATASETS["choice"], folders["choice"], split="train")
    assert len(lookup) == len(choice) == 12
    assert choice[0].target == " " + skills.train_rows("choice", 12, 2)[0]["Answer"]
    assert lookup[0].prompt.startswith("Question: ") and lookup[0].prompt.endswith("\nAnswer:")
    heldout = load_examples(skills.DATASETS["choice"], folders["choice"], split="test")
    assert len(heldout) == 30 and template_for("mmlu_cf")["answer_type"] == "letter"


def test_the_heldout_root_is_what_the_offline_tasks_load(tmp_path, monkeypatch):
    import importlib.util

    from tsloss_harness.resources import tasks_dir

    spec = importlib.util.spec_from_file_location("offline_data", tasks_dir() / "offline" / "offline_data.py")
    offline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline)
    skills.write_skill_data(tmp_path, None, n_heldout=30)
    monkeypatch.setenv("TSLOSS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TSLOSS_GSM8K_DIR", raising=False)
    lookup, choice = offline.gsm8k(), offline.mmlu_cf(subject=skills.CHOICE_SUBJECT)
    # lm-eval 0.4.13 builds each task with its few-shot split, even 0-shot: the root holds one
    assert (len(lookup["test"]), len(lookup["train"])) == (30, skills.FEWSHOT_ROWS)
    assert len(choice[f"{skills.CHOICE_SUBJECT}_dev"]) == skills.FEWSHOT_ROWS
    assert not set(lookup["train"]["question"]) & set(lookup["test"]["question"])
    (tmp_path / "gsm8k" / "train.jsonl").unlink()
    with pytest.raises(offline.OfflineDataError, match="train.jsonl"):
        offline.gsm8k()


@pytest.mark.slow  # lm-eval indexes every task folder
def test_the_native_choice_task_asks_the_rows_as_pretraining_did(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager, get_task_dict

    from tsloss_harness.resources import tasks_dir

    skills.write_skill_data(tmp_path, None, n_heldout=5)
    monkeypatch.setenv("TSLOSS_DATA_DIR", str(tmp_path))
    manager = TaskManager(include_path=str(tasks_dir()))
    tasks = get_task_dict(["testbed_choice_native_offline", "testbed_choice_offline"], manager)
    native, mmlu = tasks["testbed_choice_native_offline"], tasks["testbed_choice_offline"]
    rows = skills.heldout_rows("choice", 5)
    assert [native.doc_to_text(doc) for doc in native.test_docs()] == [skills.native_choice_prompt(r) for r in rows]
    assert skills.native_text("choice", rows[0]).startswith(native.doc_to_text(native.test_docs()[0]) + " ")
    assert mmlu.doc_to_text(mmlu.test_docs()[0]).endswith("\nAnswer:")
    assert [native.doc_to_target(d) for d in native.test_docs()] == [mmlu.doc_to_target(d) for d in mmlu.test_docs()]
