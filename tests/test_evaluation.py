"""lm-eval model ``tsprompt`` and the ``tasks/`` folder, through the stock ``lm_eval`` CLI.

Every lm_eval subprocess costs ~20 s of imports, so the comparisons share three runs, started
together: the reference ``hf,peft=<prompt dir>`` at batch size 1, ``tsprompt`` on the same prompt
directory at batch size 1, and ``tsprompt`` on the same matrix saved as a bare ``[1, P, d]`` ``.pt``
at batch size 4. Each covers generation (gsm8k), multiple choice (mmlu_cf) and rolling
loglikelihood, all on generated local files through the offline task groups.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

import pytest
import torch
from helpers import (
    MMLU_CF_SUBJECTS,
    REPO,
    compare_samples,
    finish_lm_eval,
    h0_deaths_by_scipy,
    lm_eval_args,
    read_lm_eval_output,
    start_lm_eval,
)

from tsloss_harness.prompt import save_prompt, save_raw_prompt
from tsloss_harness.prompt_config import make_prompt_config

P = 6  # virtual tokens

COMPARED_TASKS = "gsm8k_offline,mmlu_cf_offline,tsprompt_test_rolling"


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_config(tiny_llama_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_llama_dir)


def _prompt_matrix(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    # Scale well above the tiny model's token embeddings (std 0.02) so the prompt changes outputs.
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, tiny_llama_dir, model_config) -> dict:
    root = tmp_path_factory.mktemp("prompts")
    d = model_config.hidden_size
    matrix = _prompt_matrix(P, d)
    matrix[-1] = matrix[0]  # a repeated row: the topology report must see P - 1 components
    config = make_prompt_config(
        str(tiny_llama_dir),
        num_virtual_tokens=P,
        token_dim=d,
        num_layers=model_config.num_hidden_layers,
        num_attention_heads=model_config.num_attention_heads,
    )
    prompt_dir = save_prompt(root / "prompt", matrix, peft_config=config, provenance={"method": "test", "seed": 7})
    raw = save_raw_prompt(root / "prompt_1pd.pt", matrix[None])  # [1, P, d] as the paper's authors saved
    narrow = save_raw_prompt(root / "narrow.safetensors", _prompt_matrix(P, d // 2))
    no_prompt = root / "no_prompt.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(3)}, str(no_prompt))
    return {"dir": prompt_dir, "raw": raw, "narrow": narrow, "no_prompt": no_prompt, "matrix": matrix}


@pytest.fixture(scope="module")
def started(tmp_path_factory, tiny_llama_dir, prompts, tasks_dir, env):
    """Every lm_eval subprocess of this module, started together (most of each is single-threaded
    imports): three comparison runs and one on a prompt of the wrong width."""
    root = tmp_path_factory.mktemp("runs")
    base = f"pretrained={tiny_llama_dir}"
    specs = {
        "hf_peft_bs1": ("hf", f"{base},peft={prompts['dir']}", COMPARED_TASKS, 1),
        # tsprompt also runs a LongBench subset and the 5-shot MMLU-CF group (offline); the tasks'
        # own n-shot everywhere: gsm8k 5, mmlu_cf 0, mmlu_cf_5shot 5.
        "tsprompt_bs1": (
            "tsprompt",
            f"{base},prompt={prompts['dir']}",
            COMPARED_TASKS + ",longbench_2wikimqa_offline,mmlu_cf_5shot_offline",
            1,
        ),
        "tsprompt_raw_bs4": ("tsprompt", f"{base},prompt={prompts['raw']}", COMPARED_TASKS, 4),
        "narrow": ("tsprompt", f"{base},prompt={prompts['narrow']}", "gsm8k_offline", 1),
    }
    procs = {}
    for name, (model, model_args, tasks, bs) in specs.items():
        args = lm_eval_args(model, model_args, tasks, tasks_dir, root / name, bs, limit=3)
        log = root / f"{name}.log"
        procs[name] = (start_lm_eval(args, env, log), log, root / name)
    yield procs
    for proc, _, _ in procs.values():  # a test that failed early leaves no lm_eval running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def runs(started) -> dict[str, dict]:
    return {
        name: {"stdout": finish_lm_eval(proc, log), **read_lm_eval_output(out)}
        for name, (proc, log, out) in started.items()
        if name in ("hf_peft_bs1", "tsprompt_bs1", "tsprompt_raw_bs4")
    }


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_registered_at_startup_without_heavy_imports(env):
    code = (
        "import sys; assert 'torch' not in sys.modules and 'lm_eval' not in sys.modules, sorted(sys.modules)\n"
        "from lm_eval.api.registry import get_model\n"
        "assert 'torch' not in sys.modules  # registration is lazy\n"
        "print(get_model('tsprompt').__name__, get_model('hf').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TSPromptLM", "HFLM"]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["tsprompt_bs1", "tsprompt_raw_bs4"])
def test_equals_hf_peft(runs, run):
    reference = runs["hf_peft_bs1"]
    assert compare_samples(reference, runs[run], "gsm8k") == 3
    assert compare_samples(reference, runs[run], "tsprompt_test_rolling") == 3
    mmlu_tasks = [t for t in reference["samples"] if t.startswith("mmlu_cf_")]
    assert len(mmlu_tasks) == len(MMLU_CF_SUBJECTS)
    for task in mmlu_tasks:
        compare_samples(reference, runs[run], task)
    for task, metrics in reference["results"]["results"].items():
        for key, value in metrics.items():
            if isinstance(value, float) and "stderr" not in key:
                assert runs[run]["results"]["results"][task][key] == pytest.approx(value, abs=1e-6), (task, key)


def test_prompt_changes_outputs(tiny_llama_dir, prompts):
    """Guards the comparison above: the test prompt moves the tiny model's logits, so a model that
    dropped the prompt could not equal hf,peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        plain = model(ids).logits
        prompted = PeftModel.from_pretrained(model, prompts["dir"]).eval()(ids).logits[:, P:]
    assert (prompted - plain).abs().max() > 0.05


@pytest.mark.slow
def test_topology_report_and_offline_tasks(runs, prompts):
    run = runs["tsprompt_bs1"]
    report = run["results"]["config"]["tsprompt"]
    assert report["prompt"] == str(prompts["dir"])
    assert (report["num_virtual_tokens"], report["token_dim"]) == (P, 64)
    deaths = h0_deaths_by_scipy(prompts["matrix"].numpy())
    assert report["topology"]["h0_count"] == P - 1 == len(deaths) + 1  # the repeated row is no component
    assert report["topology"]["h0_mean_lifetime"] == pytest.approx(deaths.mean(), rel=1e-5)
    assert report["topology"]["h0_max_lifetime"] == pytest.approx(deaths.max(), rel=1e-5)
    assert report["provenance"]["seed"] == 7 and report["provenance"]["method"] == "test"
    # the bare .pt has no provenance, but the same topology
    raw_report = runs["tsprompt_raw_bs4"]["results"]["config"]["tsprompt"]
    assert raw_report["provenance"] is None
    assert raw_report["topology"] == pytest.approx(report["topology"])
    # the table comes after the score tables
    lines = run["stdout"].splitlines()
    table_title = max(i for i, line in enumerate(lines) if line.startswith(f"tsprompt: {prompts['dir']} (P={P}"))
    score_header = max(i for i, line in enumerate(lines) if re.match(r"^\|\s*(Tasks|Groups)\s*\|", line))
    assert table_title > score_header
    stdout = run["stdout"]
    assert "provenance.seed" in stdout
    assert "Prompt topology" not in runs["hf_peft_bs1"]["stdout"]
    # offline LongBench ran with the harness's own scoring
    longbench = run["results"]["results"]["longbench_2wikimqa"]
    assert {"score,none", "qa_f1_score,none"} <= longbench.keys()
    assert run["results"]["n-samples"]["longbench_2wikimqa"]["effective"] == 2
    # both MMLU-CF variants in one run: 0-shot and 5-shot tasks have their own names
    assert run["results"]["n-shot"]["mmlu_cf_law"] == 0 and run["results"]["n-shot"]["mmlu_cf_5shot_law"] == 5
    # The group's accuracy, recomputed from the logged samples: a doc is right when the choice with the
    # highest loglikelihood is the letter in the row's "Answer" field; one scored row per subject (the
    # data_dir fixture), so weighting by size is the plain mean.
    docs = [row for task, rows in run["samples"].items() if task.startswith("mmlu_cf_5shot_") for row in rows.values()]
    assert len(docs) == len(MMLU_CF_SUBJECTS)
    right = [
        max(range(4), key=lambda i: float(row["resps"][i][0][0])) == "ABCD".index(row["doc"]["Answer"].strip())
        for row in docs
    ]
    assert run["results"]["groups"]["mmlu_cf_5shot_offline"]["acc,none"] == pytest.approx(sum(right) / len(docs))
    fewshot_prompt = run["samples"]["mmlu_cf_5shot_law"][0]["arguments"]["gen_args_0"]["arg_0"]
    assert fewshot_prompt.count("\nAnswer:") == 6


@pytest.mark.slow
def test_bad_prompts_fail_with_one_clear_line(started, prompts, tiny_llama_dir):
    proc, log, _ = started["narrow"]
    assert proc.wait(timeout=600) != 0
    assert log.read_text().strip().splitlines()[-1] == (
        f"tsloss_harness.prompt.PromptLoadError: {prompts['narrow']}: prompt width 32 does not match "
        "the model's hidden size 64"
    )
    # A file without a prompt fails before the model is loaded (same error type, in-process here).
    from tsloss_harness.evaluation import TSPromptLM
    from tsloss_harness.prompt import PromptLoadError

    with pytest.raises(PromptLoadError) as err:
        TSPromptLM(pretrained=str(tiny_llama_dir), prompt=str(prompts["no_prompt"]), device="cpu")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{prompts['no_prompt']}: ") and "prompt_embeddings" in message
    with pytest.raises(ValueError, match="prompt="):
        TSPromptLM(pretrained=str(tiny_llama_dir), device="cpu")


@pytest.mark.slow
def test_prompt_cache_equals_peft_forward_on_every_arch(tiny_model_dirs, tmp_path):
    """TSPromptLM scores text against a precomputed key/value cache of the prompt; on each tiny
    architecture that equals PEFT's forward (virtual tokens as input embeddings) on the text rows."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoConfig

    from tsloss_harness.evaluation import TSPromptLM

    for arch, model_dir in tiny_model_dirs.items():
        width = AutoConfig.from_pretrained(model_dir).hidden_size
        prompt = save_raw_prompt(tmp_path / f"{arch}.safetensors", _prompt_matrix(5, width, seed=1))
        lm = TSPromptLM(pretrained=str(model_dir), prompt=str(prompt), device="cpu", dtype="float32")
        inps = torch.randint(4, 500, (3, 17), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            peft_logits = lm.model(inps).logits
            plain_logits = lm.model.get_base_model()(inps).logits
        ours = lm._model_call(inps)
        assert ours.shape == (3, 17, peft_logits.shape[-1]), arch
        torch.testing.assert_close(ours, peft_logits[:, 5:], atol=1e-5, rtol=1e-5, msg=arch)
        assert (ours - plain_logits).abs().max() > 0.05, arch  # the prompt matters
        assert lm.max_length == HFLM.max_length.fget(lm) - 5  # the window holds the virtual tokens


@pytest.mark.slow
def test_real_gsm8k_rows(real_gsm8k_dir, tiny_llama_dir, prompts, tasks_dir, env, tmp_path):
    args = lm_eval_args(
        "tsprompt", f"pretrained={tiny_llama_dir},prompt={prompts['dir']}", "gsm8k_offline", tasks_dir,
        tmp_path / "real", 2, limit=2,
    )  # fmt: skip
    proc = start_lm_eval(args, {**env, "TSLOSS_GSM8K_DIR": str(real_gsm8k_dir)}, tmp_path / "real.log")
    finish_lm_eval(proc, tmp_path / "real.log")
    run = read_lm_eval_output(tmp_path / "real")
    first_real_question = json.loads((real_gsm8k_dir / "test.jsonl").open().readline())["question"]
    assert [row["doc"]["question"] for row in run["samples"]["gsm8k"].values()][0] == first_real_question
    assert "exact_match,strict-match" in run["results"]["results"]["gsm8k"]


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["build_wheel", "build_editable"])
def test_wheels_carry_the_startup_hook(hook, tmp_path):
    """Both install modes get tsloss_harness_lm_eval.pth at the wheel root, listed in RECORD."""
    code = (
        f"import sys; sys.path.insert(0, 'buildtools'); import tsloss_build_backend as b; print(b.{hook}(sys.argv[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = tmp_path / out.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        pth = zf.read("tsloss_harness_lm_eval.pth").decode()
        (record,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        assert any(
            line.startswith("tsloss_harness_lm_eval.pth,sha256=") for line in zf.read(record).decode().splitlines()
        )
        entry_points = zf.read(record.replace("RECORD", "entry_points.txt")).decode()
    assert pth.strip() == "import tsloss_harness._lm_eval_hook; tsloss_harness._lm_eval_hook.install()"
    models = entry_points.split("[lm_eval.models]\n", 1)[1].split("\n\n")[0].splitlines()  # setuptools sorts them
    assert (
        "tsprompt = tsloss_harness.evaluation:TSPromptLM" in models
        and "hf-act = tsloss_harness.act_eval:ActHFLM" in models
    )
