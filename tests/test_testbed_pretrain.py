"""The testbed: deterministic, cached, loadable; and a soft prompt can steer it while a random model stays put."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tsloss_harness.cli import main as tsloss
from tsloss_harness.data import write_jsonl
from tsloss_harness.testbed import pretrain as testbed
from tsloss_harness.testbed import problems, tiny


@pytest.fixture()
def cache_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TSLOSS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "testbeds"


def _few_steps(out_dir, corpus, **kw) -> Path:
    """A handful of steps on the small generated file corpus: fast, still exercises the whole build."""
    return testbed.build_testbed(out_dir, corpus=corpus, size="quick", steps=3, progress=False, **kw)


@pytest.mark.slow
def test_build_is_deterministic_and_loads(tmp_path, gsm8k_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = _few_steps(tmp_path / "a", gsm8k_dir / "train.jsonl", cache=False)
    b = _few_steps(tmp_path / "b", gsm8k_dir / "train.jsonl", cache=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    # Trained: the weights moved away from the random fixture of the same shape and seed.
    init = tiny.build_tiny_model("llama", tmp_path / "init", seed=0, tokenizer_dir=a, **testbed.SIZES["quick"].model)
    w0 = load_file(init / "model.safetensors")
    assert not torch.equal(w0["model.embed_tokens.weight"], wa["model.embed_tokens.weight"])

    card = json.loads((a / "testbed.json").read_text())
    assert card["steps"] == 3 and card["tokens_seen"] == 3 * 16 * 256 and not card["stopped_early"]
    assert card["corpus"]["kind"] == "file" and card["corpus"]["rows"] == 32
    assert (a / "README.md").read_text().startswith("# tsloss-harness testbed")

    model = AutoModelForCausalLM.from_pretrained(a)
    tok = AutoTokenizer.from_pretrained(a)
    ids = tok("Question: Tom has 3 apples.\nAnswer:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


@pytest.mark.slow
def test_seed_changes_weights(tmp_path, gsm8k_dir):
    a = _few_steps(tmp_path / "a", gsm8k_dir / "train.jsonl", cache=False, seed=0)
    b = _few_steps(tmp_path / "b", gsm8k_dir / "train.jsonl", cache=False, seed=1)
    assert not torch.equal(
        load_file(a / "model.safetensors")["lm_head.weight"], load_file(b / "model.safetensors")["lm_head.weight"]
    )


@pytest.mark.slow
def test_cache_second_call_returns_at_once(tmp_path, gsm8k_dir, cache_root, monkeypatch):
    corpus = gsm8k_dir / "train.jsonl"
    entry = _few_steps(None, corpus)
    assert entry.parent == cache_root and (entry / "testbed.json").is_file()
    stamp = (entry / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a cached testbed was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(testbed, "_train", no_training)  # a lookup and a copy, nothing else
        again = _few_steps(None, corpus)
        copy = _few_steps(tmp_path / "out", corpus)
    assert again == entry and (entry / "model.safetensors").stat().st_mtime_ns == stamp
    assert (copy / "model.safetensors").read_bytes() == (entry / "model.safetensors").read_bytes()
    # Another step count is another testbed.
    other = testbed.build_testbed(None, corpus=corpus, size="quick", steps=2, progress=False)
    assert other != entry and json.loads((other / "testbed.json").read_text())["steps"] == 2


def test_cache_key_covers_the_code_that_builds(tmp_path, monkeypatch):
    """A build made by other code is never a cache hit: the modules the build runs enter the key."""
    import inspect
    import shutil

    from tsloss_harness.testbed import problem_templates, skills

    build_code = [testbed._train, problems.generate_gsm8k_rows, skills.generate_skill_rows, skills.native_text]
    build_code += [tiny.build_tiny_model, tiny.build_tokenizer]
    modules = {inspect.getmodule(code) for code in build_code} | {problem_templates}  # the generators' words
    for module in modules:
        assert Path(inspect.getfile(module)).name in testbed.RECIPE_MODULES, module

    def key():
        return testbed._cache_key("llama", "generated", "default", testbed.SIZES["default"], 0)

    source = tmp_path / "testbed"
    shutil.copytree(Path(testbed.__file__).parent, source)
    before = key()
    monkeypatch.setattr("importlib.resources.files", lambda package: source)
    assert key() == before  # the same source: the same key
    (source / "skills.py").write_text((source / "skills.py").read_text() + "# an edit\n")
    assert key() != before


@pytest.mark.slow
def test_minutes_cap_stops_early_and_is_not_reused(tmp_path, gsm8k_dir, cache_root):
    corpus = gsm8k_dir / "train.jsonl"
    capped = _few_steps(None, corpus, minutes=0.0)  # the cap is checked after each step: one step runs
    card = json.loads((capped / "testbed.json").read_text())
    assert card["stopped_early"] and card["steps"] == 1 and card["steps_planned"] == 3
    full = _few_steps(None, corpus)  # same parameters, no cap: trained again, completely
    assert full == capped
    assert json.loads((full / "testbed.json").read_text())["steps"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "gpt2"], "unknown arch 'gpt2'"),
        (["--size", "huge"], "unknown size 'huge'"),
        (["--corpus", "/nonexistent/rows.jsonl"], "corpus file not found: /nonexistent/rows.jsonl"),
    ],
)
def test_cli_rejects_bad_requests(argv, message, tmp_path, capsys, cache_root):
    assert tsloss(["testbed", *argv, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tsloss testbed: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bad_corpus_line_is_named(tmp_path, capsys, cache_root):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "no answer"}\n')
    assert tsloss(["testbed", "--corpus", str(bad), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert capsys.readouterr().err == f"tsloss testbed: {bad}: row 2 has no 'answer' field\n"
    bad.write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": \n')
    assert tsloss(["testbed", "--corpus", str(bad), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert capsys.readouterr().err.startswith(f"tsloss testbed: {bad}:2: malformed JSON")


def test_refuses_foreign_output_dir(tmp_path, gsm8k_dir, cache_root):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(testbed.TestbedError, match="not a testbed"):
        _few_steps(out, gsm8k_dir / "train.jsonl")
    assert (out / "notes.txt").read_text() == "keep me"


def test_lr_schedule_warms_up_then_decays():
    size = testbed.SIZES["default"]
    lrs = [testbed._lr_at(s, size) for s in range(size.steps)]
    peak = lrs.index(max(lrs))
    assert peak == size.warmup_steps - 1 and max(lrs) == pytest.approx(size.lr)
    assert all(x >= y for x, y in zip(lrs[peak:], lrs[peak + 1 :]))
    assert lrs[-1] == pytest.approx(size.lr * size.min_lr_ratio)


def _answer_ce_curve(model_dir: Path, data_dir: Path, out_dir: Path, steps: int) -> list[float]:
    """Answer cross-entropy per step of a short single-row tuner run with the testbed's tuning defaults."""
    from tsloss_harness.tune import TuneConfig, run

    config = TuneConfig(
        model=str(model_dir),
        dataset="gsm8k",
        data_dir=str(data_dir),
        num_samples=1,
        output_dir=str(out_dir),
        **{**testbed.TUNE_DEFAULTS, "max_steps": steps, "eval_every": 0},
        topology_every=0,
        progress=False,
    )
    run(config)
    return [json.loads(line)["ce"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_soft_prompt_steers_quick_testbed_not_random_fixture(quick_testbed_dir, tmp_path):
    # The random fixture is the testbed's starting point: same arch, shape, tokenizer and seed.
    random_dir = tiny.build_tiny_model(
        "llama", tmp_path / "random", seed=0, tokenizer_dir=quick_testbed_dir, **testbed.SIZES["quick"].model
    )
    row_dir = tmp_path / "data"
    write_jsonl(problems.generate_gsm8k_rows(1, seed=10_000), row_dir / "train.jsonl")  # not in the corpus
    steered = _answer_ce_curve(quick_testbed_dir, row_dir, tmp_path / "tb", steps=60)
    unsteered = _answer_ce_curve(random_dir, row_dir, tmp_path / "rnd", steps=60)
    # Measured (llama, seed 0): testbed 1.15 -> 0.69 nats (-40%); random fixture 7.08 -> 6.77 (-4%).
    assert steered[-1] < 0.75 * steered[0], steered[::10]
    assert unsteered[-1] > 0.92 * unsteered[0], unsteered[::10]
    assert steered[-1] < 0.2 * unsteered[-1]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gemma", "qwen2"])
def test_other_archs_build_and_load(arch, tmp_path, gsm8k_dir):
    from transformers import AutoModelForCausalLM

    out = testbed.build_testbed(
        tmp_path / arch, arch=arch, corpus=gsm8k_dir / "train.jsonl", size="quick", steps=2, cache=False, progress=False
    )
    card = json.loads((out / "testbed.json").read_text())
    assert card["arch"] == arch and card["steps"] == 2
    assert type(AutoModelForCausalLM.from_pretrained(out)).__name__ == card["model_class"]
