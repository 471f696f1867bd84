"""Testbed tasks with held-out signal: abilities the testbed holds that the eval formats do not elicit.

The testbed is pretrained on two in-context skills, each written in its own *native* format, beside
the GSM8K-format arithmetic rows:

- **lookup** (generation, GSM8K format): three people each hold a number of things; which number does
  one of them hold? Native: ``Notes: ... / Ask: ... / Reply: ...``. Scored as GSM8K rows
  (``Question: ...\\nAnswer:``, exact match on ``#### N``), a format whose pretraining rows are arithmetic.
- **choice** (multiple choice, MMLU-CF format): which of four things is a fruit (an animal, a tool, ...)?
  Native: ``Quiz: ... / A. .. / D. .. / Solution: B. pears``. Scored as MMLU-CF rows
  (``...\\nA. ..\\nD. ..\\nAnswer:``, letters by log-likelihood), a format pretraining never shows.

Lookup is solved by copying from the context (an induction-style circuit a 2-layer model learns), so a
held-out row (new names, things and numbers) is as solvable as a training row. Choice needs what kind
each thing is (learned from the quiz rows) and which letter stands before the right thing: the native
solution names the thing after its letter, so the copy that ties a letter to its option is trained on
every row (builds whose solutions ended at the letter answered at chance even natively). A held-out
choice row is a new draw of four kinds, their things and the answer's letter. What the eval formats
lack is the cue: without a prompt the GSM8K format elicits no lookup answer and the MMLU-CF format about
half of the choice answers (``testbed_choice_native_offline`` asks them as pretraining did); a soft
prompt tuned on training rows supplies it. The held-out set is fixed; each seed has its own training
rows, none of them a held-out row; pretraining draws from yet another stream (``pretrain-<seed>``) and
in the native formats only.
"""

from __future__ import annotations

import random

from tsloss_harness.testbed.problem_templates import ITEMS, NAMES

SKILLS = ("lookup", "choice")
# MMLU-CF subject name the choice rows are served under (``$TSLOSS_DATA_DIR/mmlu_cf/Testbed_{dev,val}.jsonl``).
CHOICE_SUBJECT = "Testbed"
_LETTERS = "ABCD"
HELDOUT_ROWS = 100  # the held-out set every run is scored on (lm-eval runs once per cell: kept small)


def _people_and_things(rng: random.Random, k: int) -> tuple[list[str], list[str], list[int]]:
    names = [n for n, _, _ in rng.sample(NAMES, k)]
    things = [plural for plural, _ in rng.sample(ITEMS, k)]
    counts = rng.sample(range(2, 40), k)
    return names, things, counts


def lookup_row(rng: random.Random) -> dict:
    """A GSM8K-schema row: ``question``, ``answer`` (worked line + ``#### N``)."""
    names, things, counts = _people_and_things(rng, 3)
    facts = ", ".join(f"{n} has {c} {t}" for n, c, t in zip(names[:2], counts[:2], things[:2]))
    facts += f" and {names[2]} has {counts[2]} {things[2]}."
    k = rng.randrange(3)
    return {
        "question": f"{facts} How many {things[k]} does {names[k]} have?",
        "answer": f"{names[k]} has {counts[k]} {things[k]}.\n#### {counts[k]}",
    }


# The choice skill's world: what kind each thing is (each thing one token of the skills testbed's BPE).
KINDS = {
    "fruit": ("apples", "oranges", "bananas", "grapes", "pears", "plums", "lemons", "cherries"),
    "animal": ("dogs", "cats", "horses", "rabbits", "goats", "ducks", "sheep", "foxes"),
    "tool": ("hammers", "saws", "drills", "wrenches", "shovels", "rakes", "axes", "ladders"),
    "toy": ("marbles", "balloons", "kites", "dolls", "puzzles", "robots", "blocks", "trucks"),
    "vegetable": ("carrots", "potatoes", "onions", "beans", "peas", "beets", "leeks", "radishes"),
}


def choice_row(rng: random.Random) -> dict:
    """An MMLU-CF-schema row: ``Question``, ``A``..``D``, ``Answer`` (a letter). Four kinds, a thing of
    each; the question asks for one kind."""
    kinds = rng.sample(sorted(KINDS), 4)
    options = [rng.choice(KINDS[kind]) for kind in kinds]
    k = rng.randrange(4)
    article = "an" if kinds[k][0] in "aeiou" else "a"
    return {
        "Question": f"Which of these is {article} {kinds[k]}?",
        **dict(zip(_LETTERS, options)),
        "Answer": _LETTERS[k],
    }


def native_text(skill: str, row: dict) -> str:
    """The row as pretraining shows it (never the eval format)."""
    if skill == "lookup":
        facts, ask = row["question"].rsplit(". ", 1)
        return f"Notes: {facts}.\nAsk: {ask}\nReply: {row['answer']}"
    return f"{native_choice_prompt(row)} {row['Answer']}. {row[row['Answer']]}"


def native_choice_prompt(row: dict) -> str:
    """A choice row as pretraining asks it, up to the letter: what ``testbed_choice_native_offline`` scores
    (the skill the testbed holds, beside ``testbed_choice_offline``'s MMLU-CF format)."""
    options = "\n".join(f"{letter}. {row[letter]}" for letter in _LETTERS)
    return f"Quiz: {row['Question']}\n{options}\nSolution:"


def generate_skill_rows(skill: str, n: int, seed: int | str = 0) -> list[dict]:
    """``n`` rows of one skill from the stream named ``seed``; same seed, same rows."""
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r} (choose from {', '.join(SKILLS)})")
    rng = random.Random(f"{skill}:{seed}")
    make = lookup_row if skill == "lookup" else choice_row
    return [make(rng) for _ in range(n)]


def row_key(row: dict) -> tuple:
    """What makes two rows the same question: a lookup row's question; a choice row's question and options
    (five kinds: the question alone repeats)."""
    if "question" in row:
        return (row["question"],)
    return (row["Question"], *(row[letter] for letter in _LETTERS))


def heldout_rows(skill: str, n: int = HELDOUT_ROWS) -> list[dict]:
    """The held-out rows: one fixed set, the same for every seed, so every run is scored on the same
    questions (and the no-prompt model once)."""
    return generate_skill_rows(skill, n, seed="heldout")


def train_rows(skill: str, n: int, seed: int | str) -> list[dict]:
    """A seed's training rows: its own stream, minus any row of the held-out set."""
    held = {row_key(r) for r in heldout_rows(skill)}
    rows = [r for r in generate_skill_rows(skill, n + 64, seed=f"train-{seed}") if row_key(r) not in held]
    if len(rows) < n:
        rows += [r for r in generate_skill_rows(skill, 4 * n, seed=f"train-{seed}-more") if row_key(r) not in held]
    return rows[:n]


# Where each skill's rows go: (folder under a data root, training file, held-out file). The folders are
# what the tuner reads (``--dataset gsm8k`` / ``mmlu_cf:Testbed``) and what the offline tasks read
# (``TSLOSS_GSM8K_DIR`` = <root>/gsm8k; ``TSLOSS_DATA_DIR`` = <root> for ``testbed_choice_offline``).
LAYOUT = {
    "lookup": ("gsm8k", "train.jsonl", "test.jsonl"),
    "choice": ("mmlu_cf", f"{CHOICE_SUBJECT}_dev.jsonl", f"{CHOICE_SUBJECT}_val.jsonl"),
}
DATASETS = {"lookup": "gsm8k", "choice": f"mmlu_cf:{CHOICE_SUBJECT}"}
FEWSHOT_ROWS = 8  # the held-out root's few-shot pool
EVAL_TASKS = {"lookup": "gsm8k_offline", "choice": "testbed_choice_offline"}


def write_skill_data(root, n_train: int | None, seed: int = 0, n_heldout: int = HELDOUT_ROWS) -> dict[str, str]:
    """Both skills under ``root`` (the layout above): a seed's ``n_train`` training rows and the
    held-out rows. With ``n_train`` None (the held-out root the evals read) the training file holds a
    few-shot pool of ``FEWSHOT_ROWS`` training-stream rows instead: lm-eval loads it even 0-shot.
    Returns {skill: its folder}."""
    if n_train is None:
        return _write_eval_root(root, lambda skill: heldout_rows(skill, n_heldout))
    from pathlib import Path

    from tsloss_harness.data import write_jsonl

    for skill, (folder, train_file, heldout_file) in LAYOUT.items():
        write_jsonl(train_rows(skill, n_train, seed), Path(root) / folder / train_file)
        write_jsonl(heldout_rows(skill, n_heldout), Path(root) / folder / heldout_file)
    return {skill: str(Path(root) / folder) for skill, (folder, _, _) in LAYOUT.items()}


def write_calibration_data(root, n: int) -> None:
    """``n`` rows per skill for choosing ACT's heads (``tsloss act-calibrate``): drawn as training rows
    (their own stream, never a held-out question) and written where the offline tasks read the scored
    split, so the calibration runs the eval tasks themselves."""
    _write_eval_root(root, lambda skill: train_rows(skill, n, seed="calibration"))


def _write_eval_root(root, scored_rows) -> dict[str, str]:
    """A data root the offline tasks read: ``scored_rows(skill)`` as the scored split, beside the few-shot
    pool lm-eval loads even 0-shot."""
    from pathlib import Path

    from tsloss_harness.data import write_jsonl

    for skill, (folder, train_file, heldout_file) in LAYOUT.items():
        write_jsonl(train_rows(skill, FEWSHOT_ROWS, "fewshot"), Path(root) / folder / train_file)
        write_jsonl(scored_rows(skill), Path(root) / folder / heldout_file)
    return {skill: str(Path(root) / folder) for skill, (folder, _, _) in LAYOUT.items()}
