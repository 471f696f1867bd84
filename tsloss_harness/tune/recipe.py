"""The tuning recipe, top to bottom: setup (data → model → prompt → objective → engine), a train step,
the end of a step (log, topology, accuracy, checkpoint), save.

How a step is computed (and why 1 rank and N ranks train the same thing):
- ``--batch_size`` is the global batch. Step ``s`` takes rows ``perm(seed, epoch)[k*B:(k+1)*B]``
  (a pure function of seed and epoch, so a resumed run sees the same order). The rows are cut into
  ``world_size * grad_accum`` micro-batches; rank ``r`` runs slots ``r, r+W, ...``; an empty slot (a
  short last batch) runs a dummy row with no target tokens, so every rank takes part in every step.
- Loss = Σ answer-token CE over the whole global batch / (answer tokens in the global batch)
  + λ_ts · regularizer(prompt). Each micro-batch returns ``W·G·ce_sum/N_global + λ·reg``; DeepSpeed
  averages gradients over the W·G micro-batches, so the CE is normalised once over the global batch
  and the regularizer counts once per step.
- Targets are the answer text plus EOS: generation then stops by itself, which training-set accuracy
  by greedy generation needs (the harness also stops GSM8K at "Question:").
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tsloss_harness.ds_config import fill_ds_config
from tsloss_harness.errors import first_line
from tsloss_harness.files import write_text_atomic
from tsloss_harness.monitor import MetricsMonitor
from tsloss_harness.tune import batches, distributed, objective
from tsloss_harness.tune.accuracy import train_accuracy
from tsloss_harness.tune.config import TuneConfig, TuneError, adaptive_ratios, validate, warmup_steps


@dataclass
class RunState:
    """What a checkpoint carries besides the engine: where the run is."""

    step: int = 0
    converged_step: int | None = None  # first step at 100% training accuracy (Table IV's measure)
    wall_time_s: float = 0.0
    samples: int = 0


def run(config: TuneConfig) -> dict:
    """Train a prompt as ``config`` says; return the summary (also written to ``summary.json``).
    In-process callers keep their process state (``distributed.run_context``)."""
    validate(config)
    with distributed.run_context():
        recipe = TuneRecipe(config)
        recipe.setup()
        try:
            recipe.train()
        finally:
            recipe.close()
        return recipe.save()


class TuneRecipe:
    def __init__(self, config: TuneConfig):
        self.config = config
        self.out = Path(config.output_dir)
        self.state = RunState()
        self.last: dict = {}  # the latest value of every metric logged
        self.last_record: dict = {}  # the last step's record

    # ------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        self._setup_data()
        self._setup_distributed()
        self._setup_model()
        self._setup_engine()
        if self.config.resume:
            self._load_checkpoint()
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            disable=not (self.is_main and self.config.progress),
            desc="tune",
        )
        self.metrics_file = open(self.out / "metrics.jsonl", "a") if self.is_main else None
        self.monitor = MetricsMonitor(self.monitor_blocks) if self.is_main and self.monitor_blocks else None
        self.started = time.perf_counter() - self.state.wall_time_s

    def _setup_data(self) -> None:
        from transformers import AutoTokenizer

        from tsloss_harness.chat import apply_training_format
        from tsloss_harness.data import load_examples, template_for

        config = self.config
        self.examples = load_examples(config.dataset, config.data_dir, config.split, config.num_samples)
        self.template = template_for(config.dataset)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        except Exception as e:
            raise TuneError(f"cannot load the tokenizer of {config.model}: {first_line(e)}") from e
        self.examples = apply_training_format(
            self.examples, self.tokenizer, self.template, config.chat_template, config.system_instruction
        )  # as lm-eval renders them (chat.py)
        self.rows = batches.tokenize(self.examples, self.tokenizer, config.max_length)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.steps_per_epoch = math.ceil(len(self.rows) / config.batch_size)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch

    def _setup_distributed(self) -> None:
        import deepspeed

        from tsloss_harness.monitor import split_monitor_blocks

        deepspeed.init_distributed()
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.is_main = self.rank == 0
        self.ds_config = fill_ds_config(self.config, self.world_size, self.total_steps)
        self.ds_config, self.monitor_blocks = split_monitor_blocks(self.ds_config, self.config)  # dashboards (rank 0)
        self.zero_stage = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        self.micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.accum = self.ds_config["gradient_accumulation_steps"]

    def _setup_model(self) -> None:
        """The frozen base model, PEFT's prompt encoder on it (seeded), the initial prompt, config.yaml."""
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM
        from transformers.integrations import HfDeepSpeedConfig

        from tsloss_harness.prompt_config import make_method_config

        config = self.config
        # ZeRO-3: keep HfDeepSpeedConfig alive so from_pretrained builds the model partitioned (zero.Init).
        self.hf_ds_config = HfDeepSpeedConfig(self.ds_config) if self.zero_stage == 3 else None
        dtype = torch.bfloat16 if self.ds_config.get("bf16", {}).get("enabled") else torch.float32
        try:
            base = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
        except Exception as e:
            raise TuneError(f"cannot load model {config.model}: {first_line(e)}") from e
        base.requires_grad_(False)
        method_config = make_method_config(
            config.method,
            config.model,
            base.config,
            init=config.init,
            num_virtual_tokens=config.num_virtual_tokens,
            encoder_hidden_size=config.prefix_hidden_size,
        )
        with torch.random.fork_rng(devices=[]):  # the prompt encoder's own init (prefix MLP, init=peft): from the seed
            torch.manual_seed(config.seed)
            self.peft_model = get_peft_model(base, method_config)
        self.peft_config = self.peft_model.peft_config[self.peft_model.active_adapter]  # as PEFT resolved it
        generator = torch.Generator().manual_seed(config.seed)
        init = objective.initial_prompt(config, self.peft_model, self.tokenizer, generator)
        encoder = self.peft_model.prompt_encoder[self.peft_model.active_adapter]
        if init is not None:
            table = encoder.embedding.weight
            with objective.gathered(table, modifier_rank=0), torch.no_grad():
                table.copy_(init.to(table.dtype))
        encoder.requires_grad_(True)
        if self.is_main:  # the model loaded: from here on the run directory exists
            import yaml

            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    def _setup_engine(self) -> None:
        """The objective (``objective.PromptTuningLoss``) under a DeepSpeed engine, with the HF Trainer's
        linear warm-up/decay (DeepSpeed's WarmupDecayLR applies each rate one step late and floors
        warm-up at 2 steps); a "scheduler" section in the JSON still wins."""
        import deepspeed
        from transformers import get_linear_schedule_with_warmup

        from tsloss_harness.regularizers import get_regularizer

        config = self.config
        self.module = objective.PromptTuningLoss(
            self.peft_model,
            get_regularizer(config.regularizer),
            self.regularizer_params(),
            config.lambda_ts,
            adaptive_ratios(config),
        )
        warmup = warmup_steps(config, self.total_steps)
        self.engine, *_ = deepspeed.initialize(
            model=self.module,
            model_parameters=[p for p in self.module.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=None
            if "scheduler" in self.ds_config
            else (lambda optimizer: get_linear_schedule_with_warmup(optimizer, warmup, self.total_steps)),
        )
        self.engine.train()

    def regularizer_params(self) -> dict:
        c = self.config
        return dict(tau=c.tau, alpha=c.alpha, beta_h0=c.beta_h0, beta_h1=c.beta_h1)

    def _load_checkpoint(self) -> None:
        """Continue from the last engine state; drop metrics logged after it (and a line torn by a kill)."""
        _, client_state = self.engine.load_checkpoint(str(self.out / "engine_state"), load_module_strict=False)
        known = {f.name for f in dataclasses.fields(RunState)}
        self.state = RunState(**{k: v for k, v in client_state.items() if k in known})
        if self.is_main:
            path = self.out / "metrics.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            kept = [line for line in lines if (_step_of(line) or math.inf) <= self.state.step]
            path.write_text("".join(line + "\n" for line in kept))

    # -------------------------------------------------------------------------------- train loop

    def train(self) -> None:
        for step in range(self.state.step + 1, self.total_steps + 1):
            record = self.train_step(step)
            if self.end_of_step(step, record):
                break

    def train_step(self, step: int) -> dict:
        """One optimizer step over the global batch of ``step``; returns its metrics record."""
        config, engine = self.config, self.engine
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]  # the rate this step's update uses
        epoch, k = divmod(step - 1, self.steps_per_epoch)
        order = batches.epoch_order(len(self.rows), config.seed, epoch)
        batch_rows = [self.rows[i] for i in order[k * config.batch_size : (k + 1) * config.batch_size]]
        n_answer = sum(len(ids) - n_ctx for ids, n_ctx in batch_rows)
        torch.manual_seed(config.seed * 1_000_003 + step * 1009 + self.rank)  # dropout, if any: a function of the step
        self.module.adaptive_scales.zero_()
        totals = self._accumulate(batch_rows, self.world_size * self.accum / n_answer)
        totals = distributed.sum_over_ranks(totals, engine.device)
        ce, reg = totals[0].item() / n_answer, totals[1].item()
        betas, reg = self._adaptive_betas(reg)
        if not math.isfinite(ce) or not math.isfinite(reg):
            saved = sorted((self.out / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
            where = f"last good checkpoint: {saved[-1]}" if saved else "no checkpoint was saved"
            raise TuneError(f"non-finite loss at step {step} (ce={ce}, reg={reg}); stopped, {where}")
        self.state.samples += len(batch_rows)
        return {
            "step": step,
            "epoch": epoch + (k + 1) / self.steps_per_epoch,
            "lr": lr,
            "loss": ce + config.lambda_ts * reg,
            "ce": ce,
            "reg": reg,
            "samples_per_s": len(batch_rows) / (time.perf_counter() - t0),
            **betas,
        }

    def _accumulate(self, batch_rows: list, ce_scale: float) -> torch.Tensor:
        """Forward/backward of this rank's micro-batches, then the optimizer step; returns this rank's
        (CE sum, regularizer share) in float64, CE NaN when a loss was not finite on some rank."""
        totals = torch.zeros(2, dtype=torch.float64)
        world, micro = self.world_size, self.micro
        for g in range(self.accum):
            slot = batch_rows[(g * world + self.rank) * micro : (g * world + self.rank + 1) * micro]
            if not slot:  # short last batch: this rank still takes part, with no target tokens
                slot = [(batch_rows[0][0], len(batch_rows[0][0]))]
            input_ids, attention, labels = (t.to(self.engine.device) for t in batches.collate(slot, self.pad_id))
            loss, ce_sum, reg = self.engine(input_ids, attention, labels, ce_scale)
            totals += torch.stack([ce_sum.double().cpu(), reg.double().cpu() / (self.accum * world)])
            if not distributed.finite_on_all_ranks(loss):
                totals[0] = float("nan")
                break
            self.engine.backward(loss)
            self.engine.step()
        return totals

    def _adaptive_betas(self, reg: float) -> tuple[dict, float]:
        """The effective β of each adaptive term (the step's gradient holds λ·β·∇L of it) and the
        regularizer value with those terms added back; ({}, reg) without adaptive weights."""
        if not self.module.adaptive_halves:
            return {}, reg
        from tsloss_harness.regularizers import REGULARIZERS

        scales = distributed.sum_over_ranks(self.module.adaptive_scales.clone(), self.engine.device)
        betas = {}
        for i, half in enumerate(self.module.adaptive_halves):
            betas[f"beta_{half}"] = scales[i].item() / (self.world_size * self.config.lambda_ts)
            reg += betas[f"beta_{half}"] * self.module.adaptive_values[i].item()
        for half in REGULARIZERS[self.config.regularizer].halves:
            betas.setdefault(f"beta_{half}", getattr(self.config, f"beta_{half}"))
        return betas, reg

    def end_of_step(self, step: int, record: dict) -> bool:
        """Topology, accuracy, checkpoint, log; returns whether to stop (``--stop_at_convergence``)."""
        config = self.config
        final = step == self.total_steps
        if config.topology_every and (step % config.topology_every == 0 or final):
            record.update(self._topology())
        if config.eval_every and (step % config.eval_every == 0 or final):
            record["accuracy"] = train_accuracy(
                self.engine, self.tokenizer, self.examples, self.template, config, self.world_size, self.zero_stage
            )
            if record["accuracy"] == 1.0 and self.state.converged_step is None:
                self.state.converged_step = step
        self.state.step, self.state.wall_time_s = step, time.perf_counter() - self.started
        stop = config.stop_at_convergence and self.state.converged_step is not None
        if (config.save_every and step % config.save_every == 0) or final or stop:
            self.checkpoint(step, record)
        if self.is_main:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
            if self.monitor:
                self.monitor.write(record)
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
            self.bar.update(1)
        self.last.update(record)
        self.last_record = record
        return stop

    def _topology(self) -> dict:
        """The prompt's topology metrics (rank 0; empty elsewhere). A collective under ZeRO-3."""
        matrix = objective.full_prompt(self.engine)
        return _topology_metrics(matrix) if self.is_main else {}

    def checkpoint(self, step: int, record: dict) -> None:
        """``checkpoints/step-N``: a prompt directory, plus the engine state to resume from."""
        self.engine.save_checkpoint(
            str(self.out / "engine_state"),
            tag=f"step-{step}",
            client_state=dataclasses.asdict(self.state),
            exclude_frozen_parameters=True,
        )
        self._save_prompt(self.out / "checkpoints" / f"step-{step}", step, record)

    # --------------------------------------------------------------------------------------- save

    def close(self) -> None:
        self.bar.close()
        if self.metrics_file:
            self.metrics_file.close()
        if self.monitor:
            self.monitor.close()

    def save(self) -> dict:
        """``prompt/`` and ``summary.json``; returns the summary."""
        state = self.state
        self._save_prompt(self.out / "prompt", state.step, self.last_record)
        summary = {
            "converged_step": state.converged_step,
            "steps": state.step,
            "total_steps": self.total_steps,
            "epochs": state.step / self.steps_per_epoch,
            "world_size": self.world_size,
            "wall_time_s": state.wall_time_s,
            "samples_per_s": state.samples / state.wall_time_s if state.wall_time_s else None,
            "final": self.last,
            "prompt_dir": str(self.out / "prompt"),
            "config": dataclasses.asdict(self.config),
        }
        if self.is_main:
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        self.engine.destroy()
        self.hf_ds_config = None
        return summary

    def _save_prompt(self, directory: Path, step: int, record: dict) -> None:
        """The prompt directory of the current matrix (a collective under ZeRO-3; rank 0 writes), with
        its topology: as measured at this step, or measured now."""
        from tsloss_harness.prompt import save_prompt
        from tsloss_harness.topology import METRIC_KEYS

        matrix = objective.full_prompt(self.engine)
        if self.is_main:
            topology = {key: record[key] for key in METRIC_KEYS if key in record} or _topology_metrics(matrix)
            save_prompt(
                directory,
                matrix,
                peft_config=self.peft_config,
                provenance=dict(self.provenance(), step=step, topology=topology),
            )

    def provenance(self) -> dict:
        from tsloss_harness.chat import training_format

        config = self.config
        return {
            "base_model": config.model,
            "method": config.method,
            "regularizer": config.regularizer,
            "regularizer_params": {
                "lambda_ts": config.lambda_ts,
                **self.regularizer_params(),
                **{f"adaptive_ratio_{h}": r for h, r in adaptive_ratios(config).items()},
            },
            "init": config.init,
            "seed": config.seed,
            "dataset": config.dataset,
            "num_samples": len(self.rows),
            **training_format(self.tokenizer, config.chat_template, config.system_instruction),
        }


def _topology_metrics(matrix) -> dict:
    from tsloss_harness.topology import METRIC_KEYS, prompt_topology

    metrics = prompt_topology(matrix)
    return {key: metrics[key] for key in METRIC_KEYS}


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
