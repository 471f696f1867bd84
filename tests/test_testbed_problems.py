"""tsloss_harness.testbed.problems: generated GSM8K-format rows (deterministic, correct, varied)."""

import re
from fractions import Fraction

from tsloss_harness.data import read_jsonl
from tsloss_harness.testbed import problems

ANNOTATION = re.compile(r"(?:(\S+(?: [-+*x/] \S+)*) = )?\$?<<([^=<>]+)=([^<>]+)>>(\d+)")


def _exact(expr: str) -> Fraction:
    assert re.fullmatch(r"[\d+\-*/(). ]+", expr), expr
    return eval(re.sub(r"(\d+)", r"Fraction(\1)", expr), {"Fraction": Fraction})  # whitelisted above


# ------------------------------------------------------------------ generated GSM8K rows


def test_rows_are_deterministic_per_seed():
    assert problems.generate_gsm8k_rows(40, seed=3) == problems.generate_gsm8k_rows(40, seed=3)
    assert problems.generate_gsm8k_rows(40, seed=3) != problems.generate_gsm8k_rows(40, seed=4)
    assert problems.generate_gsm8k_rows(10, seed=3) == problems.generate_gsm8k_rows(40, seed=3)[:10]
    assert problems.generate_gsm8k_rows(0) == []


def test_every_annotation_and_final_answer_is_correct():
    rows = problems.generate_gsm8k_rows(600, seed=0)
    n_annotations = 0
    for row in rows:
        assert set(row) == {"question", "answer"} and row["question"].endswith("?")
        *steps, final = row["answer"].split("\n")
        assert re.fullmatch(r"#### \d+", final), row["answer"]
        last = None
        for line in steps:
            found = ANNOTATION.findall(line)
            assert found, f"step without a calculation: {line!r}"
            for shown, expr, value, after in found:
                assert _exact(expr) == int(value) == int(after), line
                if shown:  # the visible expression states the same computation
                    assert shown.replace(" ", "").replace("x", "*") == expr, line
                last = int(value)
                n_annotations += 1
        assert int(final[5:]) == last, row["answer"]
    assert n_annotations > 2 * len(rows)


def test_rows_are_varied():
    rows = problems.generate_gsm8k_rows(150, seed=0)
    questions = [r["question"] for r in rows]
    assert len(set(questions)) == len(questions)
    # Question shapes with numbers blanked: many templates x phrasings, not a handful.
    first_words = {" ".join(re.sub(r"\d+", "N", q).split()[1:4]) for q in questions}
    assert len(first_words) >= 20
    words = {w for q in questions for w in re.findall(r"[A-Za-z]+", q)}
    assert len(words) >= 250
    assert {"x", "*"} <= {m for r in rows for m in re.findall(r"\d ([x*]) \d", r["answer"])}


def test_gsm8k_dir_fixture(gsm8k_dir):
    train, test = read_jsonl(gsm8k_dir / "train.jsonl"), read_jsonl(gsm8k_dir / "test.jsonl")
    assert (len(train), len(test)) == (32, 16)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
