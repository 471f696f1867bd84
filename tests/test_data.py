"""Data loading, validation, templates (the harness's own) and answer checking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tsloss_harness import data
from tsloss_harness.data import DataError, read_jsonl, write_jsonl

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _harness_yaml(relative: str) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((LM_EVAL_TASKS / relative).read_text(), Loader=Loader)


def test_gsm8k_template_is_the_harness_template():
    task = _harness_yaml("gsm8k/gsm8k.yaml")
    assert data.TEMPLATES["gsm8k"]["doc_to_text"] == task["doc_to_text"]
    assert data.TEMPLATES["gsm8k"]["doc_to_target"] == task["doc_to_target"]
    assert data.TEMPLATES["gsm8k"]["until"] == task["generation_kwargs"]["until"]


def test_mmlu_cf_template_follows_the_mmlu_default_layout():
    mmlu = _harness_yaml("mmlu/default/_default_template_yaml")["doc_to_text"]
    row = {"Question": " Which? ", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "C"}
    ours = data.render(data.TEMPLATES["mmlu_cf"]["doc_to_text"], row)
    theirs = data.render(mmlu, {"question": row["Question"], "choices": ["a", "b", "c", "d"]})
    assert ours == theirs == "Which?\nA. a\nB. b\nC. c\nD. d\nAnswer:"


def test_gsm8k_examples_render_prompt_and_target(gsm8k_dir):
    examples = data.load_examples("gsm8k", gsm8k_dir, num_samples=3)
    assert len(examples) == 3
    row = examples[0].row
    assert examples[0].prompt == f"Question: {row['question']}\nAnswer:"
    assert examples[0].target == " " + row["answer"]


def test_test_split_and_all_rows(gsm8k_dir):
    assert len(data.load_rows("gsm8k", gsm8k_dir, split="test")) == 16
    assert len(data.load_examples("gsm8k", gsm8k_dir)) == 32


def test_mmlu_cf_local_files_and_subject(tmp_path):
    row = {"Question": "Q?", "A": "1", "B": "2", "C": "3", "D": "4", "Answer": "B"}
    _write(tmp_path / "Math_dev.jsonl", [json.dumps(row)] * 2)
    _write(tmp_path / "Law_dev.jsonl", [json.dumps(row)])
    _write(tmp_path / "Law_val.jsonl", [json.dumps(row)] * 5)
    assert len(data.load_rows("mmlu_cf", tmp_path)) == 3  # train = every subject's dev split
    assert len(data.load_rows("mmlu_cf:Law", tmp_path)) == 1
    assert len(data.load_rows("mmlu_cf:Law", tmp_path, split="test")) == 5
    (ex,) = data.load_examples("mmlu_cf:Law", tmp_path)
    assert ex.target == " B"


def test_longbench_uses_the_harness_task_template(tmp_path):
    row = {"context": "The sky is blue.", "input": "What colour is the sky?", "answers": ["blue"]}
    _write(tmp_path / "qasper.jsonl", [json.dumps(row)])
    (ex,) = data.load_examples("longbench:qasper", tmp_path)
    expected = data.render(_harness_yaml("longbench/qasper.yaml")["doc_to_text"], {**row, "question": row["input"]})
    assert ex.prompt == expected and "The sky is blue." in ex.prompt
    assert ex.target == " blue"


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"question": "q", "answer": "#### 1"}', '{"question": "q", "answer"'], r"train\.jsonl:2: malformed JSON"),
        (['{"question": "q", "answer": "#### 1"}', "[1, 2]"], r"train\.jsonl:2: expected a JSON object"),
        (['{"question": "q"}'], r"train\.jsonl row 1: missing field 'answer'"),
        ([], r"empty data set"),
    ],
)
def test_bad_gsm8k_files(tmp_path, lines, match):
    _write(tmp_path / "train.jsonl", lines)
    with pytest.raises(DataError, match=match) as info:
        data.load_examples("gsm8k", tmp_path)
    assert "\n" not in str(info.value)


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'squad'"):
        data.load_rows("squad", tmp_path)
    with pytest.raises(DataError, match="needs a subset"):
        data.load_rows("longbench", tmp_path)
    with pytest.raises(DataError, match="unknown LongBench subset 'nope'"):
        data.template_for("longbench:nope")
    with pytest.raises(DataError, match="data_dir not found"):
        data.load_rows("gsm8k", tmp_path / "missing")
    with pytest.raises(DataError, match=r"data file not found: .*train\.jsonl"):
        data.load_rows("gsm8k", tmp_path)


def test_bad_field_values(tmp_path):
    _write(
        tmp_path / "X_dev.jsonl", [json.dumps({"Question": "Q", "A": "1", "B": "2", "C": "3", "D": "4", "Answer": "E"})]
    )
    with pytest.raises(DataError, match="X_dev.jsonl row 1: field 'Answer' must be one of A, B, C, D"):
        data.load_rows("mmlu_cf", tmp_path)
    _write(tmp_path / "trec.jsonl", [json.dumps({"context": "c", "input": "i", "answers": []})])
    with pytest.raises(DataError, match="field 'answers' must be a non-empty list"):
        data.load_rows("longbench:trec", tmp_path)


def test_num_samples_bounds(gsm8k_dir):
    with pytest.raises(DataError, match="has only 32 rows"):
        data.load_examples("gsm8k", gsm8k_dir, num_samples=33)
    with pytest.raises(DataError, match="must be >= 1"):
        data.load_examples("gsm8k", gsm8k_dir, num_samples=0)


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("so 3+4 = 7\n#### 1,234.", "number", "1234"),
        ("The answer is $18.00.", "number", "18"),
        ("first 3 then -5", "number", "-5"),
        ("no digits", "number", None),
        (" C. because", "letter", "C"),
        ("none", "letter", None),
    ],
)
def test_extract_answer(text, kind, expected):
    assert data.extract_answer(text, kind) == expected


def test_answer_correct_per_task():
    gsm = data.Example("Question: q\nAnswer:", " 2+2=<<2+2=4>>4\n#### 4", {})
    template = data.TEMPLATES["gsm8k"]
    assert data.answer_correct(" 2+2=4\n#### 4", gsm, template)
    assert data.answer_correct(" it is 4", gsm, template)  # last number when there is no ####
    assert data.answer_correct(" 4\nQuestion: 5", gsm, template)  # cut at the stop string "Question:"
    assert not data.answer_correct(" #### 5", gsm, template)
    mmlu = data.Example("Q\nA. a\nB. b\nC. c\nD. d\nAnswer:", " B", {})
    assert data.answer_correct(" B", mmlu, data.TEMPLATES["mmlu_cf"])
    assert not data.answer_correct(" A", mmlu, data.TEMPLATES["mmlu_cf"])
    lb = data.Example("...", " blue sky", {"answers": ["the blue sky"]})
    assert data.answer_correct("Blue sky.", lb, data.TEMPLATES["longbench"])
    assert not data.answer_correct("green grass", lb, data.TEMPLATES["longbench"])


def test_qa_f1():
    assert data.qa_f1("the cat sat", "a cat sat") == 1.0
    assert data.qa_f1("cat", "dog") == 0.0
    assert data.qa_f1("cat dog", "cat") == pytest.approx(2 / 3)


def test_jsonl_round_trip(tmp_path, gsm8k_rows):
    path = write_jsonl(gsm8k_rows, tmp_path / "sub" / "rows.jsonl")
    assert read_jsonl(path) == gsm8k_rows
    assert len(path.read_text().splitlines()) == len(gsm8k_rows)
