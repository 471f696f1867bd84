"""``tsloss sweep --config sweep.yaml``: a grid of tuner runs over any TuneConfig axis x settings x
seeds, each cell its own process on Ray, then lm-eval on each tuned prompt, the ratios against a
baseline and the board.

    tsloss sweep --config configs/sweep_convergence.yaml                # a local Ray instance, this machine
    tsloss sweep --config sweep.yaml --address auto                     # join a running Ray cluster

The config (YAML)::

    output_dir: runs/sweep
    model: testbed              # or a model dir / hub id ("testbed": the CPU testbed, built once, cached)
    data_dir: generated         # GSM8K-format rows per seed and num_samples; or a folder; or null (the hub)
    tune: {eval_every: 2}       # TuneConfig values for every cell
    axes:                       # TuneConfig field -> values: every combination is a cell
      regularizer: [none, tsloss]
      lambda_ts: [0.5, 1.0]
    settings:                   # optional, the "setting" axis: named num_samples with their own values
      single: 1
      multi: {num_samples: 10, tune: {num_virtual_tokens: 200}, axes: {regularizer: [none]}}
    seeds: 5                    # or a list
    baseline: {regularizer: none}   # ratios of iterations (and score differences) against this axis value
    resources: {num_cpus: 1, num_gpus: 0}   # per cell (ranks, threads too); settings may override
    retries: 2                  # further attempts of a cell whose process died
    eval:                       # lm-eval on each cell's prompt (--model tsprompt), results in the cell
      tasks: [gsm8k_offline]
      num_fewshot: 0
      limit: 100
      batch_size: 8
      model_args: {dtype: float32}
      env: {TSLOSS_GSM8K_DIR: /data/gsm8k}
      no_prompt: true           # also each model without a prompt (--model hf), the no-prompt baseline
      variants:                 # further scorings, each in <cell>/eval-<name>/ and its own board rows
        dpc: {cells: {regularizer: none}, tasks: [gsm8k_offline], model_args: {dpc: true}}
        act: {cells: no_prompt, act: {limit: 32}}   # ACT's heads chosen first (tsloss act-calibrate)

Cell directories show their axis values (``<output_dir>/setting=single/regularizer=tsloss/
lambda_ts=0.5/seed=3``; see sweep.grid for what they hold). A cell whose ``tune/summary.json`` holds
the same resolved config is reused; an interrupted one resumes from its last checkpoint (when the
config saves them, ``save_every``) or starts again; a finished cell whose config has changed is
reported as failed and left as it is (``--rerun-changed`` deletes and redoes it). At the end the sweep
writes ``board.md`` (per cell group: iterations to convergence and lm-eval scores, mean ± 95% CI over
seeds; the paper's tables when the grid varies only what they show; the lm-eval scores against the
baseline, paired by seed; each variant against the plain scoring of the same cells, ``eval=plain``),
``ratios.json``, ``differences.json``, ``groups.json`` and ``report.html`` (the paper's Figs. 4-6 over
the grid, ``report.paper``), prints the
ratios, the score differences and the failures, and exits non-zero if any cell failed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tsloss_harness.sweep.config import SweepConfig, SweepError, load_sweep_config, parse_sweep_config
from tsloss_harness.sweep.engine import SweepInterrupted

__all__ = ["SweepConfig", "SweepError", "SweepInterrupted", "load_sweep_config", "parse_sweep_config", "run_sweep"]


def run_sweep(
    config: SweepConfig,
    *,
    address: str | None = None,
    rerun_changed: bool = False,
    progress: bool = True,
    parallel: int | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every cell on Ray, score them, write the board; return counts, failures, ratios.
    Raises SweepInterrupted on Ctrl-C (after stopping the running cells)."""
    from tsloss_harness.sweep import engine, grid

    cells = grid.expand(config)
    eval_config = config.eval_config()
    _check_variants_select(eval_config, cells)
    grid.prepare(cells)
    states = {c.name: grid.tune_state(c) for c in cells}
    no_prompt = (
        _no_prompt_cells(config, cells) if eval_config and (eval_config.no_prompt or _scores_bare(eval_config)) else []
    )
    evals = {c.name: _evals_for(config, c, eval_config, bare=False) for c in cells}
    evals |= {c.name: _evals_for(config, c, eval_config, bare=True) for c in no_prompt}
    _prepare_variants(config, evals)
    changed = {name: diff for name, (state, diff) in states.items() if state == "changed"}
    if rerun_changed:
        for c in cells:
            if c.name in changed:
                for folder in [c.run_dir, *(c.dir / grid.eval_dir_name(e) for e in evals[c.name])]:
                    shutil.rmtree(folder, ignore_errors=True)
        changed = {}
    todo = [
        c
        for c in cells
        if c.name not in changed
        and (states[c.name][0] != "done" or not all(grid.eval_done(c, e) for e in evals[c.name]))
    ]
    specs = [_cell_spec(c, c.config, evals[c.name]) for c in todo]
    specs += [
        _cell_spec(c, None, evals[c.name]) for c in no_prompt if not all(grid.eval_done(c, e) for e in evals[c.name])
    ]

    records: dict[str, dict] = {}
    if specs:
        stop = engine.connect(address)
        try:
            records = engine.run_cells(
                specs, config.retries, config.output_path(), progress=progress, parallel=parallel
            )
        finally:
            stop()
    return _report(config, cells, no_prompt, evals, records, changed, len(todo))


def _check_variants_select(eval_config, cells: list) -> None:
    """Refuse a variant that selects no cell (a typo in ``cells``) before anything is built or run."""
    for name, variant in (eval_config.variants if eval_config else {}).items():
        if variant.cells != "no_prompt" and not any(variant.selects(c.key) for c in cells):
            raise SweepError(f"eval.variants.{name}: cells {variant.cells} selects no cell of the grid")


def _prepare_variants(config: SweepConfig, evals: dict[str, list[dict]]) -> None:
    """Write the rows ACT's variants calibrate on (``data_dir: skills``)."""
    from tsloss_harness.sweep import grid

    acts = [e["act"] for found in evals.values() for e in found if e.get("act") is not None]
    if acts and config.data_dir == "skills":
        grid.write_skills_calibration(config.output_path(), max(a["limit"] for a in acts))


def _scores_bare(eval_config) -> bool:
    return any(v.cells == "no_prompt" for v in eval_config.variants.values())


def _evals_for(config: SweepConfig, cell, eval_config, bare: bool) -> list[dict]:
    """The scorings of one cell, each an eval spec (a variant's names it, ``variant``): its dataset's
    tasks when ``eval.tasks`` maps datasets to tasks (a no-prompt cell: all of them); with
    ``data_dir: skills``, the offline tasks read the held-out rows and ACT calibrates on other rows."""
    if eval_config is None:
        return []
    base = eval_config.spec()
    plain = [] if bare and not eval_config.no_prompt else [base]
    variants = [
        {
            **base,
            "variant": name,
            "tasks": v.tasks or base["tasks"],
            "model_args": {**base["model_args"], **v.model_args},
        }
        | {"act": None if v.act is None else {"limit": 32, **v.act}}
        for name, v in eval_config.variants.items()
        if v.selects(None if bare else cell.key)
    ]
    return [_resolve_eval(config, cell, spec) for spec in plain + variants]


def _resolve_eval(config: SweepConfig, cell, spec: dict) -> dict:
    spec = dict(spec)
    if isinstance(spec["tasks"], dict):
        dataset = cell.config.get("dataset")
        if dataset is None:
            spec["tasks"] = list(dict.fromkeys(t for names in spec["tasks"].values() for t in names))
        elif dataset in spec["tasks"]:
            spec["tasks"] = spec["tasks"][dataset]
        else:
            raise SweepError(
                f"cell {cell.name}: eval tasks ({spec.get('variant', 'plain')}) name none for dataset {dataset!r}"
            )
    if config.data_dir == "skills":
        from tsloss_harness.sweep.grid import skills_calibration_dir, skills_heldout_dir

        out = config.output_path()
        heldout = skills_heldout_dir(out)
        spec["env"] = {"TSLOSS_GSM8K_DIR": str(heldout / "gsm8k"), "TSLOSS_DATA_DIR": str(heldout), **spec["env"]}
        if spec.get("act") is not None:
            rows = skills_calibration_dir(out)
            env = {"TSLOSS_GSM8K_DIR": str(rows / "gsm8k"), "TSLOSS_DATA_DIR": str(rows), **spec["act"].get("env", {})}
            spec["act"] = {**spec["act"], "env": env}
    return spec


def _cell_spec(cell, config: dict | None, evals: list[dict]) -> dict:
    """What the Ray task gets: plain values only."""
    from tsloss_harness.processes import format_model_args

    r = cell.resources
    model = cell.model
    for spec in evals:
        try:
            format_model_args({"pretrained": model, "prompt": cell.dir / "tune" / "prompt", **spec["model_args"]})
        except ValueError as e:
            raise SweepError(f"cell {cell.name}: {e}") from None
    return {
        "name": cell.name,
        "key": cell.key,
        "dir": str(cell.dir),
        "config": config,
        "model": model,
        "evals": evals,
        "num_cpus": r.num_cpus,
        "num_gpus": r.num_gpus,
        "ranks": r.ranks,
        "threads": r.threads,
        "fork": r.fork,
        "attempt": 1,
    }


def _no_prompt_cells(config: SweepConfig, cells: list) -> list:
    """One no-prompt scoring per model: ``<output_dir>/no-prompt/model=<name>``."""
    from tsloss_harness.sweep.grid import Cell, _path_names

    models = list(dict.fromkeys(c.model for c in cells))
    names = _path_names("model", models)
    root = config.output_path() / "no-prompt"
    resources = config.resources_for(None)
    return [Cell({"model": m}, root / f"model={names[repr(m)]}", {"model": m}, resources, {"model": m}) for m in models]


def _report(
    config: SweepConfig, cells: list, no_prompt: list, evals: dict, records: dict, changed: dict, ran: int
) -> dict:
    from tsloss_harness.sweep import results
    from tsloss_harness.sweep.grid import eval_dir_name

    out = config.output_path()
    kept = [c for c in cells if c.name not in changed]
    finished = [results.read_cell(c.key, c.run_dir, c.dir / "eval" if evals[c.name] else None) for c in kept]
    bases = [
        results.read_cell(c.key, c.run_dir, c.dir / "eval")
        for c in no_prompt
        if any("variant" not in e for e in evals[c.name])  # scored plain (eval.no_prompt), not only by variants
    ]
    ratios = results.convergence_ratios(finished, config.baseline)
    # each variant's scores as cells of their own, told apart by an "eval" key (the plain ones: "plain")
    variants = [
        results.read_cell(c.key | {"eval": e["variant"]}, c.run_dir, c.dir / eval_dir_name(e))
        for c in kept
        for e in evals[c.name]
        if "variant" in e
    ]
    bases += [
        results.read_cell(c.key | {"eval": e["variant"]}, c.run_dir, c.dir / eval_dir_name(e))
        for c in no_prompt
        for e in evals[c.name]
        if "variant" in e
    ]
    baseline = config.baseline
    if variants:
        finished = [results.CellResult(c, key=c["key"] | {"eval": "plain"}) for c in finished]
        baseline = {**baseline, "eval": "plain"}
    varying = {k for k in (cells[0].key if cells else {}) if k != "seed" and len({repr(c.key[k]) for c in cells}) > 1}
    plain_bases = [b for b in bases if "eval" not in b["key"]]
    differences = results.score_differences(finished + variants, baseline) + results.over_no_prompt(
        finished + variants, plain_bases
    )
    board_text, groups = results.render_board(finished + variants, bases, varying, differences)
    board = out / config.leaderboard
    board.parent.mkdir(parents=True, exist_ok=True)
    board.write_text(board_text)
    (out / "ratios.json").write_text(json.dumps(ratios, indent=2) + "\n")
    (out / "groups.json").write_text(json.dumps(groups, indent=2) + "\n")
    (out / "differences.json").write_text(json.dumps(differences, indent=2) + "\n")
    report = _write_figures(out / "report.html", kept)
    failed = [(name, r["error"]) for name, r in records.items() if r.get("state") == "failed"]
    failed += [
        (name, f"finished with another config ({diff}); --rerun-changed deletes and redoes it")
        for name, diff in changed.items()
    ]
    return {
        "cells": len(cells),
        "ran": ran,
        "reused": len(cells) - ran - len(changed),
        "failed": failed,
        "ratios": ratios,
        "differences": differences,
        "leaderboard": str(board),
        "board": board_text,
        "report": str(report),
        "records": records,
    }


def _write_figures(path: Path, cells: list) -> Path:
    """``report.html``: the paper's Figs. 4-6 over the finished cells (``report.paper``)."""
    from tsloss_harness.report import load_run, write_report
    from tsloss_harness.report.paper import paper_figures

    keyed = [(c.key, load_run(c.run_dir)) for c in cells if (c.run_dir / "summary.json").is_file()]
    return write_report(paper_figures(keyed, f"tsloss sweep: {path.parent.name}"), path)


# ------------------------------------------------------------------------------------------- CLI
