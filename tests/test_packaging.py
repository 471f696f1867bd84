"""A wheel that works: built from the checkout, installed (not editable) into a fresh environment,
where ``tsloss demo`` and ``lm_eval --model tsprompt`` run from the installed package data alone."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO, fresh_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh venv holding only the built wheel; the dependencies come from this
    environment's site-packages through a path file (its editable install is not processed there)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "_outer_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((root / "dist").glob("tsloss_harness-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv / "bin"


def _env() -> dict:
    env = fresh_env()
    env.pop("PYTHONPATH", None)  # nothing of the checkout on the path: the installed package alone
    return env


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "python"), "-c", "import tsloss_harness; print(tsloss_harness.__file__)"],
        cwd=tmp_path,
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent) and not Path(where).is_relative_to(REPO)
    tasks = subprocess.run(
        [str(installed / "tsloss"), "tasks-path"], cwd=tmp_path, env=_env(), check=True, capture_output=True, text=True
    ).stdout.strip()
    assert Path(tasks) == Path(where).parent / "tasks" and (Path(tasks) / "offline" / "gsm8k_offline.yaml").is_file()


def test_demo_and_lm_eval_run_from_the_wheel(installed, tmp_path):
    env = _env()
    demo = subprocess.run(
        [str(installed / "tsloss"), "demo", "--steps", "2", "--output_dir", str(tmp_path / "demo"), "--no_report"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["tune"]["prompt_dir"] and set(summary["lm_eval"]) == {"tsprompt", "hf"}
    tasks = subprocess.run(
        [str(installed / "tsloss"), "tasks-path"], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    model = summary["model"]["path"]
    env["TSLOSS_GSM8K_DIR"] = summary["data"]["dir"]
    out = tmp_path / "lm_eval"
    result = subprocess.run(
        [
            str(installed / "python"),
            "-m",
            "lm_eval",
            "--model",
            "tsprompt",
            "--model_args",
            f"pretrained={model},prompt={summary['tune']['prompt_dir']}",
            "--tasks",
            "gsm8k_offline",
            "--include_path",
            tasks,
            "--num_fewshot",
            "0",
            "--limit",
            "1",
            "--output_path",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert "gsm8k_offline" in results["results"]
    assert results["config"]["tsprompt"]["provenance"]["method"] == "prompt"
