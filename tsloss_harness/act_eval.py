"""ACT on the lm-eval side: the ``hf-act`` model and the calibration behind ``tsloss act-calibrate``.

    tsloss act-calibrate --model tsprompt --model_args pretrained=BASE,prompt=PROMPT \
        --tasks gsm8k_offline --limit 32 -o act.json
    lm_eval --model tsprompt --model_args pretrained=BASE,prompt=PROMPT,act=act.json ...
    lm_eval --model hf-act --model_args pretrained=BASE,act=act.json ...      # no prompt (any hf args)

Calibration, as the authors do it: every candidate (layer, head) is calibrated alone and scored on
the task's examples; the heads that beat the uncalibrated model by more than ``--min_gain`` are
kept, all of them together (a gain under 1e-6 of the score is float32 rounding, never a gain). The score is the task's own accuracy-like metric for loglikelihood and
multiple-choice tasks (``process_results``, e.g. ``acc``) and, for generation tasks, the
log-likelihood of each example's reference answer (``doc_to_target``) after its context — one scoring
pass per candidate instead of a generation. The model is built exactly as ``lm_eval`` builds it
(``--model``, ``--model_args``), so a prompt in front is calibrated with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from tsloss_harness.act import ActError, ActPatch, ActSettings, load_settings, parse_index_list

__all__ = ["ActHFLM", "calibrate", "calibrate_to_file", "load_examples", "score"]

NOISE = 1e-6  # relative: smaller differences between two scorings are float32 rounding, not a gain


class ActHFLM(HFLM):
    """lm-eval's ``hf`` model plus ``act=<file>`` (registered as ``hf-act``); every ``hf`` arg keeps working."""

    def __init__(self, pretrained: Any, act: str | None = None, **kwargs: Any):
        if act in (None, ""):
            raise ActError("hf-act: model_args needs act=<file written by tsloss act-calibrate>")
        settings = load_settings(act)  # a bad file fails before the model loads
        super().__init__(pretrained, **kwargs)
        self._act = ActPatch(settings).apply(self._model)

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "act": self._act.report()}

    def set_cache_hook(self, cache_hook) -> None:
        """``--use_cache``: responses in a table of their own, named by the base model, adapter and ACT
        settings (lm-eval keys its cache by the request alone, so ``hf`` would share them)."""
        import hashlib
        import json

        from tsloss_harness.evaluation_hooks import _use_own_table, baselines_identity

        db = getattr(cache_hook, "dbdict", None)
        if db is not None:
            key = [str(self.pretrained), str(getattr(self, "peft", None)), baselines_identity(self)]
            _use_own_table(db, f"hf_act_{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:40]}")
        super().set_cache_hook(cache_hook)


# ---------------------------------------------------------------------------------- calibration


@dataclass
class _Example:
    """One document: its loglikelihood requests, which one is the reference, and how to score it."""

    task: Any
    doc: dict
    requests: list[Instance]
    gold: int


def load_examples(tasks: list[str], include_path: list[str], limit: int | None) -> list[_Example]:
    """The documents of ``tasks`` (groups expanded) as loglikelihood requests, as lm-eval builds them."""
    from lm_eval.tasks import TaskManager

    from tsloss_harness.resources import tasks_dir

    manager = TaskManager(include_path=list(include_path) or [str(tasks_dir())])
    try:
        loaded = manager.load(tasks)["tasks"]
    except (KeyError, ValueError) as err:
        raise ActError(f"cannot load tasks {','.join(tasks)}: {err}") from None
    examples: list[_Example] = []
    for task in loaded.values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=1234)  # lm-eval's default few-shot seed
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        by_doc: dict[int, list[Instance]] = {}
        for inst in task.instances:
            by_doc.setdefault(inst.doc_id, []).append(inst)
        examples += [_as_example(task, insts) for _, insts in sorted(by_doc.items())]
    if not examples:
        raise ActError(f"tasks {','.join(tasks)} have no documents")
    return examples


def _as_example(task, instances: list[Instance]) -> _Example:
    kind, doc = task.OUTPUT_TYPE, instances[0].doc
    if kind == "generate_until":  # the reference answer after the context, as a loglikelihood request
        context = instances[0].arguments[0]
        target = f"{task.config.target_delimiter}{task.doc_to_target(doc)}"
        request = Instance(request_type="loglikelihood", doc=doc, arguments=(context, target), idx=0)
        return _Example(task, doc, [request], 0)
    if kind == "loglikelihood":
        return _Example(task, doc, instances, 0)
    if kind == "multiple_choice":
        gold = task.doc_to_target(doc)
        if isinstance(gold, str):
            gold = task.doc_to_choice(doc).index(gold)
        return _Example(task, doc, instances, int(gold[0] if isinstance(gold, list) else gold))
    raise ActError(f"task {task.config.task} is {kind}; use a generation, loglikelihood or multiple-choice task")


def score(lm, examples: list[_Example], objective: str) -> float:
    """Mean over documents: the reference's log-likelihood, or the task metric ``objective`` (higher is
    better; a lower-is-better metric is negated)."""
    flat = [request for ex in examples for request in ex.requests]
    results = iter(lm.loglikelihood(flat, disable_tqdm=True))
    total = 0.0
    for ex in examples:
        answers = [next(results) for _ in ex.requests]
        if objective == "loglikelihood":
            total += float(answers[ex.gold][0])
        else:
            metrics = ex.task.process_results(ex.doc, answers)
            if objective not in metrics:
                raise ActError(
                    f"task {ex.task.config.task} has no metric {objective!r} "
                    f"(it has {', '.join(sorted(metrics))}); use --objective loglikelihood"
                )
            sign = 1.0 if ex.task.higher_is_better().get(objective, True) else -1.0
            total += sign * float(metrics[objective])
    return total / len(examples)


def _objective(examples: list[_Example], requested: str) -> str:
    kinds = {ex.task.OUTPUT_TYPE for ex in examples}
    if requested == "auto":
        return "acc" if kinds == {"multiple_choice"} else "loglikelihood"
    if requested != "loglikelihood" and "generate_until" in kinds:
        raise ActError(
            f"--objective {requested} needs loglikelihood or multiple-choice tasks; "
            "generation tasks are scored by --objective loglikelihood"
        )
    return requested


def calibrate(
    lm,
    patch: ActPatch,
    examples: list[_Example],
    candidates: list[tuple[int, int]],
    objective: str,
    min_gain: float,
    log=print,
) -> tuple[float, list[tuple[int, int, float]], list[tuple[int, int]]]:
    """(baseline score, [(layer, head, score)], chosen heads): each candidate calibrated alone."""

    def run(heads) -> float:
        patch.set_heads(heads)
        if hasattr(lm, "_prompt_kv"):  # tsprompt: the prompt's cache depends on the heads
            lm._prompt_kv = None
        return score(lm, examples, objective)

    baseline = run([])
    log(f"act-calibrate: no heads: {objective} {baseline:.6g}")
    scores = []
    for layer, head in candidates:
        value = run([(layer, head)])
        scores.append((layer, head, value))
        log(f"act-calibrate: layer {layer} head {head}: {objective} {value:.6g} ({value - baseline:+.3g})")
    floor = baseline + max(min_gain, NOISE * abs(baseline))  # float32 scoring noise is no gain
    chosen = [(layer, head) for layer, head, value in scores if value > floor]
    patch.set_heads(chosen)
    return baseline, scores, chosen


def _build_lm(model: str, model_args: str, batch_size: int, device: str | None):
    from lm_eval.api.registry import get_model

    from tsloss_harness.evaluation import TSPromptLM  # noqa: F401 (registers tsprompt)

    if model not in ("hf", "tsprompt"):
        raise ActError(f"--model must be hf or tsprompt, got {model!r}")
    keys = {part.split("=", 1)[0].strip() for part in model_args.split(",") if "=" in part}
    if "act" in keys or any(k.startswith("dpc") for k in keys):
        raise ActError("--model_args must not hold act= or dpc= (calibration applies ACT itself)")
    if device is None:  # hf's own default is "cuda", which fails without a GPU; the lm_eval CLI falls back to CPU
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return get_model(model).create_from_arg_string(model_args, {"batch_size": batch_size, "device": device})


def calibrate_to_file(
    *,
    model: str,
    model_args: str,
    tasks: list[str],
    include_path: list[str],
    limit: int | None,
    layers: str | None,
    heads: str | None,
    beta: float,
    threshold: float,
    objective: str,
    min_gain: float,
    batch_size: int,
    device: str | None,
    output: str,
    log=print,
) -> ActSettings:
    """The whole ``tsloss act-calibrate``: load the examples, build the model, score every candidate head,
    write the chosen heads (and every candidate's score) to ``output``."""
    settings = ActSettings((), beta, threshold)
    examples = load_examples(tasks, include_path, limit)
    objective = _objective(examples, objective)
    lm = _build_lm(model, model_args, batch_size, device)
    patch = ActPatch(settings).apply(lm.model)
    if hasattr(lm, "_act"):
        lm._act = patch  # tsprompt carries the prompt's statistics when it has a patch
    candidates = [
        (layer, head)
        for layer in parse_index_list(layers, patch.num_layers, "--layers")
        for head in parse_index_list(heads, patch.num_heads, "--heads")
    ]
    baseline, scores, chosen = calibrate(lm, patch, examples, candidates, objective, min_gain, log=log)
    calibration = {
        "model": model, "model_args": model_args, "tasks": ",".join(tasks), "limit": limit,
        "num_examples": len(examples), "objective": objective, "min_gain": min_gain, "baseline": baseline,
        "scores": [[layer, head, value] for layer, head, value in scores],
    }  # fmt: skip
    result = ActSettings(tuple(chosen), beta, threshold, calibration, source=str(output))
    result.save(output)
    return result
