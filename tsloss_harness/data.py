"""Training data for the tuner: GSM8K, MMLU-CF and LongBench rows rendered with the harness's templates.

A data set is a name (``gsm8k``, ``mmlu_cf`` or ``mmlu_cf:<Subject>``, ``longbench:<subset>``) plus an
optional local folder holding the data set's own files:

- gsm8k: ``train.jsonl`` / ``test.jsonl`` with ``{"question", "answer"}`` (answer ends in ``#### N``);
- mmlu_cf: ``<Subject>_dev.jsonl`` / ``<Subject>_val.jsonl`` (all subjects when none is named) with
  ``Question, A, B, C, D, Answer`` — the ``train`` split is ``dev`` (MMLU-CF has no train split);
- longbench: ``<subset>.jsonl`` with ``context, input, answers`` (LongBench ships a test split only).

Without a folder the rows come from the hub through ``datasets``. Every row is validated before a
model is loaded; problems raise :class:`DataError` with a one-line message naming the file, line,
row or field.

The prompt text is the lm-evaluation-harness task's ``doc_to_text`` (jinja, rendered as the harness
renders it) followed by the target after a single space (the harness's ``target_delimiter``), so a
prompt trained here is scored on exactly the text it was trained on. LongBench templates are read
from the installed harness's own task YAML.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tsloss_harness.errors import TslossError, first_line

__all__ = [
    "MMLU_CF_SUBJECTS",
    "TEMPLATES",
    "DataError",
    "Example",
    "answer_correct",
    "extract_answer",
    "load_examples",
    "load_rows",
    "parse_dataset",
    "qa_f1",
    "read_jsonl",
    "render",
    "template_for",
]


class DataError(TslossError, ValueError):
    """Bad input data or paths; the message is one line naming the offending thing."""


# Templates as data, copied from the harness tasks that score the prompts:
# lm_eval/tasks/gsm8k/gsm8k.yaml and lm_eval/tasks/mmlu/default/_default_template_yaml (MMLU-CF keeps
# its letter answers and its own column names). `until`: generation stops (the harness's stop strings).
TEMPLATES: dict[str, dict] = {
    "gsm8k": {
        "fields": ["question", "answer"],
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "until": ["Question:", "</s>", "<|im_end|>"],
        "answer_type": "number",
        "hub": {"path": "openai/gsm8k", "name": "main"},
    },
    "mmlu_cf": {
        "fields": ["Question", "A", "B", "C", "D", "Answer"],
        "doc_to_text": "{{Question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:",
        "doc_to_target": "{{Answer}}",
        "target_delimiter": " ",
        "until": ["\n"],
        "answer_type": "letter",
        "hub": {"path": "microsoft/MMLU-CF"},
    },
    "longbench": {
        # doc_to_text comes from lm_eval/tasks/longbench/<subset>.yaml; `input` is renamed `question`
        # as the harness's LongBench mirror does.
        "fields": ["context", "input", "answers"],
        "doc_to_target": "{{answers[0]}}",
        "target_delimiter": " ",
        "until": [],
        "answer_type": "f1",
        "hub": {"path": "Xnhyacinth/LongBench"},
    },
}

# microsoft/MMLU-CF: 14 subjects; split names use the subject with spaces as underscores.
MMLU_CF_SUBJECTS = (
    "Biology", "Business", "Chemistry", "Computer_Science", "Economics", "Engineering", "Health",
    "History", "Law", "Math", "Other", "Philosophy", "Physics", "Psychology",
)  # fmt: skip

LONGBENCH_F1_THRESHOLD = 0.5  # a LongBench generation counts as correct when its QA-F1 reaches this


@dataclass(frozen=True)
class Example:
    """One training row rendered: the prompt text, the target text (leading delimiter included) and
    the raw row (for answer checking)."""

    prompt: str
    target: str
    row: dict


def parse_dataset(name: str) -> tuple[str, str | None]:
    """``"longbench:qasper"`` -> ``("longbench", "qasper")``; ``"gsm8k"`` -> ``("gsm8k", None)``."""
    family, _, subset = name.partition(":")
    if family not in TEMPLATES:
        raise DataError(f"unknown dataset {name!r} (choose gsm8k, mmlu_cf[:<Subject>], longbench:<subset>)")
    if family == "longbench" and not subset:
        raise DataError("dataset 'longbench' needs a subset, e.g. longbench:qasper")
    return family, subset or None


def template_for(name: str) -> dict:
    """The resolved template of a data set name (LongBench's doc_to_text read from the harness)."""
    family, subset = parse_dataset(name)
    template = dict(TEMPLATES[family])
    if family == "longbench":
        template["doc_to_text"] = _longbench_doc_to_text(subset)
    return template


def _longbench_doc_to_text(subset: str) -> str:
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "longbench" / f"{subset}.yaml"
    if not path.is_file():
        raise DataError(f"unknown LongBench subset {subset!r} (no {path})")

    class _Loader(yaml.SafeLoader):  # the harness YAML uses `!function`; we only need doc_to_text
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(path.read_text(), Loader=_Loader)["doc_to_text"]


_JINJA = None


def render(template: str, row: dict) -> str:
    """Render a harness jinja template exactly as lm-eval does (StrictUndefined, trailing newlines kept)."""
    global _JINJA
    if _JINJA is None:
        from jinja2 import BaseLoader, Environment, StrictUndefined

        _JINJA = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    return _JINJA.from_string(template).render(**row)


def write_jsonl(rows, path: str | Path) -> Path:
    """Write ``rows`` (dicts) as JSONL, creating the parent folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a malformed line raises DataError naming the file and line."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _local_files(family: str, subset: str | None, split: str, data_dir: Path) -> list[Path]:
    if family == "gsm8k":
        names = [f"{split}.jsonl"]
    elif family == "longbench":
        names = [f"{subset}.jsonl"]
    else:  # mmlu_cf: <Subject>_<dev|val>.jsonl
        mmlu_split = {"train": "dev", "test": "val"}.get(split, split)
        if subset:
            names = [f"{subset}_{mmlu_split}.jsonl"]
        else:
            names = sorted(p.name for p in data_dir.glob(f"*_{mmlu_split}.jsonl"))
            if not names:
                raise DataError(f"no *_{mmlu_split}.jsonl files in {data_dir}")
    paths = [data_dir / n for n in names]
    for p in paths:
        if not p.is_file():
            raise DataError(f"data file not found: {p}")
    return paths


def _hub_rows(family: str, subset: str | None, split: str) -> list[dict]:
    import datasets

    hub = TEMPLATES[family]["hub"]
    try:
        if family == "gsm8k":
            ds = datasets.load_dataset(hub["path"], hub["name"], split=split)
        elif family == "longbench":
            ds = datasets.load_dataset(hub["path"], subset, split="test")
        else:
            mmlu_split = {"train": "dev", "test": "val"}.get(split, split)
            if subset:
                ds = datasets.load_dataset(hub["path"], split=f"{subset}_{mmlu_split}")
            else:
                all_splits = datasets.load_dataset(hub["path"])
                ds = datasets.concatenate_datasets(
                    [all_splits[s] for s in sorted(all_splits) if s.endswith(f"_{mmlu_split}")]
                )
    except Exception as e:  # network, unknown config, ...: one line, no traceback
        raise DataError(f"could not load {hub['path']} from the hub: {first_line(e)}") from e
    return [dict(r) for r in ds]


def load_rows(dataset: str, data_dir: str | Path | None = None, split: str = "train") -> list[dict]:
    """Validated raw rows of a data set (local files in its own schema, or the hub)."""
    family, subset = parse_dataset(dataset)
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"data_dir not found: {data_dir}")
        files = _local_files(family, subset, split, data_dir)
        rows, origins = [], []
        for p in files:
            file_rows = read_jsonl(p)
            rows += file_rows
            origins += [f"{p} row {i + 1}" for i in range(len(file_rows))]
        where = f"{', '.join(map(str, files))}"
    else:
        rows = _hub_rows(family, subset, split)
        origins = [f"{dataset} ({split}) row {i + 1}" for i in range(len(rows))]
        where = f"{dataset} ({split}) from the hub"
    if not rows:
        raise DataError(f"empty data set: {where} has no rows")
    for row, origin in zip(rows, origins):
        if family == "longbench" and "input" not in row and "question" in row:
            row["input"] = row["question"]
        for field in TEMPLATES[family]["fields"]:
            if field not in row or row[field] is None:
                raise DataError(f"{origin}: missing field {field!r}")
        if family == "longbench":
            if not isinstance(row["answers"], list) or not row["answers"]:
                raise DataError(f"{origin}: field 'answers' must be a non-empty list")
            row.setdefault("question", row["input"])
        if family == "mmlu_cf" and str(row["Answer"]).strip() not in ("A", "B", "C", "D"):
            raise DataError(f"{origin}: field 'Answer' must be one of A, B, C, D, got {row['Answer']!r}")
    return rows


def load_examples(
    dataset: str, data_dir: str | Path | None = None, split: str = "train", num_samples: int | None = None
) -> list[Example]:
    """The first ``num_samples`` rows (all when None) rendered as (prompt, target) pairs."""
    rows = load_rows(dataset, data_dir, split)
    if num_samples is not None:
        if num_samples < 1:
            raise DataError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples > len(rows):
            raise DataError(f"num_samples={num_samples} but {dataset} ({split}) has only {len(rows)} rows")
        rows = rows[:num_samples]
    template = template_for(dataset)
    return [
        Example(
            prompt=render(template["doc_to_text"], row),
            target=template["target_delimiter"] + render(template["doc_to_target"], row),
            row=row,
        )
        for row in rows
    ]


# ---- answer checking (training-set accuracy by greedy generation) ----

_NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


def _clean_number(s: str) -> str:
    s = s.replace(",", "").replace("$", "").rstrip(".")
    try:  # "18.0" == "18"
        value = float(s)
        return str(int(value)) if value.is_integer() else str(value)
    except ValueError:
        return s


def extract_answer(text: str, answer_type: str) -> str | None:
    """The final answer in a generation: GSM8K number after ``####`` (else the last number);
    MMLU-CF the first letter A-D."""
    if answer_type == "number":
        after = text.split("####", 1)[1] if "####" in text else None
        if after is not None:
            m = _NUMBER.search(after)
            if m:
                return _clean_number(m.group())
        numbers = _NUMBER.findall(text)
        return _clean_number(numbers[-1]) if numbers else None
    if answer_type == "letter":
        m = re.search(r"\b([ABCD])\b", text)
        return m.group(1) if m else None
    return text.strip()


def _normalize(s: str) -> str:  # LongBench's normalize_answer (lm_eval/tasks/longbench/metrics.py)
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def qa_f1(prediction: str, ground_truth: str) -> float:
    """LongBench's token-level QA F1."""
    pred, gold = _normalize(prediction).split(), _normalize(ground_truth).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def answer_correct(generation: str, example: Example, template: dict) -> bool:
    """Exact match of the final answer (GSM8K, MMLU-CF) or QA-F1 >= threshold (LongBench)."""
    for stop in template["until"]:
        generation = generation.split(stop, 1)[0]
    kind = template["answer_type"]
    if kind == "f1":
        return max(qa_f1(generation, a) for a in example.row["answers"]) >= LONGBENCH_F1_THRESHOLD
    gold = extract_answer(example.target, kind)
    return gold is not None and extract_answer(generation, kind) == gold
