"""Helpers shared by several test modules: the stock lm_eval CLI in a subprocess, the tuner's CLI
errors, a two-rank DeepSpeed launch (and the command line of a TuneConfig), H0 deaths derived with
scipy. Fixtures live in conftest.py."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tsloss_harness.cli import main as tsloss
from tsloss_harness.data import MMLU_CF_SUBJECTS  # noqa: F401  (re-exported to the tests)
from tsloss_harness.tune import TuneConfig

REPO = Path(__file__).resolve().parent.parent
LM_EVAL = Path(sys.executable).with_name("lm_eval")  # the stock CLI of this interpreter's environment
LOGLIKELIHOOD_ATOL = 1e-4


ROLLING_TASK = """\
task: tsprompt_test_rolling
custom_dataset: !function offline_data.gsm8k
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{question}}"
metric_list:
  - metric: word_perplexity
metadata:
  version: 1.0
"""


def lm_eval_args(model: str, model_args: str, tasks: str, tasks_dir: Path, out: Path, batch_size: int, limit: int):
    return [
        str(LM_EVAL),
        "--model", model,
        "--model_args", f"{model_args},dtype=float32",
        "--device", "cpu",
        "--tasks", tasks,
        "--include_path", str(tasks_dir),
        "--limit", str(limit),
        "--batch_size", str(batch_size),
        "--gen_kwargs", "max_gen_toks=12",
        "--output_path", str(out),
        "--log_samples",
    ]  # fmt: skip


def start_lm_eval(args, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def finish_lm_eval(proc: subprocess.Popen, log: Path) -> str:
    rc = proc.wait(timeout=600)
    text = log.read_text()
    assert rc == 0, f"{proc.args[:3]} failed (rc={rc}):\n{text[-4000:]}"
    return text


def read_lm_eval_output(out: Path) -> dict:
    (results_file,) = out.glob("*/results_*.json")
    samples = {}
    for path in out.glob("*/samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = {row["doc_id"]: row for row in map(json.loads, path.read_text().splitlines())}
    return {"results": json.loads(results_file.read_text()), "samples": samples}


def compare_samples(reference: dict, other: dict, task: str) -> int:
    ref, got = reference["samples"][task], other["samples"][task]
    assert ref.keys() == got.keys() and ref, task
    for doc_id, row in ref.items():
        want, have = row["resps"], got[doc_id]["resps"]
        assert len(want) == len(have)
        for w, h in zip(want, have):
            if isinstance(w[0], str):  # generate_until
                assert h[0] == w[0], f"{task} doc {doc_id}: generation differs"
            elif isinstance(w[0], list):  # loglikelihood: [logprob, is_greedy]
                assert float(h[0][0]) == pytest.approx(float(w[0][0]), abs=LOGLIKELIHOOD_ATOL), f"{task} doc {doc_id}"
                assert h[0][1] == w[0][1], f"{task} doc {doc_id}: is_greedy differs"
            else:  # loglikelihood_rolling: a float
                assert float(h[0]) == pytest.approx(float(w[0]), abs=LOGLIKELIHOOD_ATOL), f"{task} doc {doc_id}"
    return len(ref)


def tune_fails(argv, capsys, code=2) -> str:
    assert tsloss(["tune", *argv]) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if code == 2:  # bad input: one line, before any library speaks
        assert err.startswith("tsloss tune: ") and "\n" not in err
    return err.splitlines()[-1]


def tune_argv(config: TuneConfig) -> list[str]:
    """The ``tsloss tune`` flags that give ``config``, every field included: a boolean as ``--flag`` or
    ``--no-flag`` (argparse's BooleanOptionalAction), None as ``none``."""
    argv = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, bool):
            argv.append(f"--{field.name}" if value else f"--no-{field.name}")
        else:
            argv.append(f"--{field.name}={'none' if value is None else value}")
    return argv


def two_ranks(config: TuneConfig) -> dict:
    """``config`` run by ``deepspeed --num_gpus 2 tune.py`` (two CPU ranks); its summary."""
    deepspeed = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run(
        [
            str(deepspeed),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            str(REPO / "tune.py"),
            *tune_argv(config),
        ],
        capture_output=True,
        text=True,
        env=fresh_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads((Path(config.output_dir) / "summary.json").read_text())


def fresh_env() -> dict:
    """This process's environment without the rank variables an in-process run() has set (a child
    that inherited them would try to join this process's process group)."""
    rank_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in rank_vars}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def h0_deaths_by_scipy(points) -> np.ndarray:
    """The finite H0 deaths of the Rips filtration of the rows of ``points``, derived without the package:
    the edge lengths of a minimum spanning tree (scipy) over the distinct rows, sorted. A row that
    coincides with another merges at distance 0, a zero-length bar that ripser leaves out of its
    diagram, so the H0 diagram has len(result) + 1 bars (one infinite)."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import pdist, squareform

    distinct = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    return np.sort(minimum_spanning_tree(squareform(pdist(distinct))).data)
