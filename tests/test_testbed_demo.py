"""`tsloss demo` end to end on the quick testbed: tune -> lm_eval (tsprompt and hf) -> HTML report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tsloss_harness.cli import main as tsloss
from tsloss_harness.data import read_jsonl
from tsloss_harness.testbed import skills
from tsloss_harness.topology import METRIC_KEYS

# lm-eval's gsm8k filters (lm_eval/tasks/gsm8k/gsm8k.yaml): "#### <number>", else the last number.
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _number(text: str) -> str:
    # gsm8k's exact_match ignores ",", "$" and a final "."
    return re.sub(r"[,$]", "", text).removesuffix(".")


def _exact_match(generations: list[str], rows: list[dict], pattern: re.Pattern) -> float:
    right = 0
    for generation, row in zip(generations, rows, strict=True):
        found = ["".join(groups) for groups in pattern.findall(generation)]  # the groups of each match
        if found:  # strict takes the first match, flexible the last
            right += _number(found[0] if pattern is STRICT else found[-1]) == row["answer"].rsplit("#### ", 1)[1]
    return right / len(rows)


def _logged_generations(run: Path) -> list[str]:
    (samples,) = run.rglob("samples_gsm8k_2*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return [r["resps"][0][0] for r in sorted(rows, key=lambda r: r["doc_id"]) if r["filter"] == "strict-match"]


def _answer_scores(model_dir: Path, prompt_dir: Path, rows: list[dict]) -> dict[str, tuple[float, float]]:
    """(mean answer NLL, share of rows whose whole answer is the greedy continuation) with the prompt
    ("tsprompt", through PEFT's forward) and without ("hf"). Context "Question: ...\\nAnswer:",
    continuation " " + answer, split as lm-eval splits it: the answer is what encoding the whole adds."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def base():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def score(model, row) -> tuple[float, bool]:
        context = f"Question: {row['question']}\nAnswer:"
        whole = tokenizer.encode(context + " " + row["answer"])
        n_answer = len(whole) - len(tokenizer.encode(context))
        answer = torch.tensor(whole[-n_answer:])
        with torch.no_grad():  # counted from the end: PEFT puts the virtual tokens first
            logits = model(torch.tensor([whole[:-1]])).logits[0, -n_answer:]
        return -logits.log_softmax(-1).gather(1, answer[:, None]).sum().item(), bool(
            (logits.argmax(-1) == answer).all()
        )

    models = {"hf": base(), "tsprompt": PeftModel.from_pretrained(base(), str(prompt_dir)).eval()}
    result = {}
    for name, model in models.items():
        nll, greedy = zip(*(score(model, row) for row in rows), strict=True)
        result[name] = (sum(nll) / len(rows), sum(greedy) / len(rows))
    return result


def _demo_env(tmp_path: Path) -> dict:
    # An empty cache: the demo must not need anything but the testbed it is given.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TSLOSS_CACHE": str(tmp_path / "cache")}


@pytest.mark.slow
def test_demo_end_to_end(quick_testbed_dir, tmp_path):
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "tsloss_harness.cli",
        "demo",
        "--model",
        str(quick_testbed_dir),
        "--steps",
        "60",
        "--num_samples",
        "2",
        "--output_dir",
        str(out),
    ]
    proc = subprocess.run(cmd, env=_demo_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    summary = json.loads((out / "demo.json").read_text())
    # The scored rows are the tuned rows: lookup rows of the skills generator, the testbed's seed.
    rows = read_jsonl(out / "data" / "test.jsonl")
    assert rows == read_jsonl(out / "data" / "train.jsonl") == skills.train_rows("lookup", 2, 0)

    tune = summary["tune"]
    assert tune["steps"] == 60 and (out / "tune" / "prompt" / "tsloss.json").is_file()
    assert tune["ce_final"] < tune["ce_first"]
    assert sorted(p.name for p in (out / "tune" / "checkpoints").iterdir()) == [
        "step-15",
        "step-30",
        "step-45",
        "step-60",
    ]

    with_prompt, without = summary["lm_eval"]["tsprompt"], summary["lm_eval"]["hf"]
    # Each score, derived without lm-eval's metrics: exact match from the logged generations, the answer's
    # log-likelihood and greediness by a forward pass here (through PEFT for the prompt).
    expected = _answer_scores(quick_testbed_dir, out / "tune" / "prompt", rows)
    for name, r in (("tsprompt", with_prompt), ("hf", without)):
        generations = _logged_generations(out / "lm_eval" / name)
        assert r["n"] == 2 and len(generations) == 2
        assert r["exact_match_strict"] == _exact_match(generations, rows, STRICT), name
        assert r["exact_match_flexible"] == _exact_match(generations, rows, FLEXIBLE), name
        nll, greedy = expected[name]
        assert r["answer_nll"] == pytest.approx(nll, rel=1e-4), name
        assert r["greedy_answer"] == greedy, name
    # The prompt's effect as lm-eval measures it, the demo's visible change: without the prompt the
    # testbed answers neither row; with it, the tuned answers are likelier and at least one is exact.
    assert with_prompt["answer_nll"] < 0.97 * without["answer_nll"], (with_prompt, without)
    assert without["exact_match_strict"] == 0 and with_prompt["exact_match_strict"] >= 0.5, (with_prompt, without)
    data = json.loads(Path(with_prompt["results_json"]).read_text())
    report = data["config"]["tsprompt"]  # what tsprompt adds to the results: the prompt's topology + provenance
    assert set(report["topology"]) == set(METRIC_KEYS) and report["num_virtual_tokens"] == 20
    assert report["provenance"]["regularizer"] == "tsloss" and report["provenance"]["step"] == 60
    assert data["configs"]["gsm8k"]["num_fewshot"] == 0 and data["configs"]["gsm8k_answer_offline"]["num_fewshot"] == 0
    assert "tsprompt" not in json.loads(Path(without["results_json"]).read_text())["config"]
    # Same rows, other greedy generations: the prompt steers the model.
    gen = {}
    for name in ("tsprompt", "hf"):
        samples = next((out / "lm_eval" / name).rglob("samples_gsm8k_2*.jsonl")).read_text().splitlines()
        gen[name] = [r["resps"][0][0] for r in map(json.loads, samples) if r["filter"] == "strict-match"]
    assert len(gen["tsprompt"]) == len(gen["hf"]) == 2 and gen["tsprompt"] != gen["hf"]
    assert with_prompt["first_generation"] == gen["tsprompt"][0]

    html = (out / "report.html").read_text()
    assert summary["report"] == str((out / "report.html").resolve())
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") >= 5
    for figure in ("training", "topology", "diagrams", "heatmaps"):
        assert f'<figure id="{figure}">' in html

    # The printed summary names the scores and where everything is.
    assert (
        "lm-eval with prompt" in proc.stdout
        and "lm-eval without prompt" in proc.stdout
        and str(out / "report.html") in proc.stdout
    )
    assert set(summary["timings_s"]) == {"model", "data", "tune", "lm_eval", "report", "total"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--testbed", "huge"], "unknown testbed size 'huge'"),
        (["--model", "/nonexistent/model"], "model directory not found: /nonexistent/model"),
        (["--include_path", "/nonexistent/tasks"], "no lm-eval task gsm8k_offline under /nonexistent/tasks"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_bad_requests_fail_in_one_line_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TSLOSS_CACHE", str(tmp_path / "cache"))
    assert tsloss(["demo", *argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tsloss demo: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_too_many_rows_for_the_testbed_hold_out(quick_testbed_dir, tmp_path, capsys):
    # quick: 4,000 generated rows, 80 held out; more would mix in rows the testbed was trained on.
    argv = ["--model", str(quick_testbed_dir), "--rows", "arithmetic", "--num_samples", "81"]
    assert tsloss(["demo", *argv, "--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "tsloss demo: --num_samples 81: the testbed holds out only 80 rows\n"


def test_refuses_a_non_empty_output_dir(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert tsloss(["demo", "--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"tsloss demo: output directory is not empty: {tmp_path / 'out'}\n"
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
