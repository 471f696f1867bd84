"""The testbed: a tiny causal LM pretrained on GSM8K-format text, so soft prompts can steer it.

A random-weight tiny model cannot be steered by a soft prompt (its loss does not move at any
learning rate); the same architecture after a few minutes of CPU pretraining on word problems
learns a single training row's whole answer within a few hundred prompt-tuning steps, the same
order as the paper's Table IV. Experiments about convergence therefore run on a testbed.

One call, one plain result::

    from tsloss_harness.testbed import build_testbed
    model_dir = build_testbed(arch="llama", size="default", seed=0)   # cached; ~4 min the first time

The loop below is nanoGPT-style and reads top to bottom: build a tokenizer on the corpus, build the
random-weight model with `tsloss_harness.testbed.tiny.build_tiny_model` (so the testbed starts from exactly
the random fixture of the same shape), pack the tokenised rows into one stream (eos between rows),
train with AdamW on random windows for a fixed number of steps (warm-up, cosine decay), save an
ordinary Hugging Face model directory plus a card (`testbed.json`, `README.md`).

Determinism: the result is a pure function of (arch, corpus, size preset, steps, seed) on a given
machine, so the number of steps is fixed by the preset (or `steps=`), never by the clock. `minutes`
is only a safety cap: a build it cuts short says so in its card (`stopped_early`) and is not reused
from the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tsloss_harness.errors import TslossError
from tsloss_harness.files import replace_dir
from tsloss_harness.testbed.card import CARD_NAME, build_card, card_readme, read_card

# The text every row is pretrained as: the lm-eval gsm8k template (doc_to_text + " " + target),
# the same text the tuner trains and the harness scores on.
ROW_TEMPLATE = "Question: {question}\nAnswer: {answer}"
# The modules whose code decides what a build is (corpus, tokenizer, model, training): their source
# enters the cache key, so a build made by other code is never taken from the cache (a stale build
# once did: README, Table V).
RECIPE_MODULES = ("pretrain.py", "problems.py", "problem_templates.py", "skills.py", "tiny.py")


@dataclass(frozen=True)
class TestbedSize:
    """A size preset: the model's shape and the pretraining budget."""

    __test__ = False  # not a pytest class

    steps: int  # AdamW steps (fixed: determinism)
    batch_size: int  # sequences per step
    seq_len: int  # tokens per sequence
    lr: float  # peak learning rate
    generated_rows: int  # rows generated when corpus="generated"
    skill_rows: dict = field(default_factory=dict)  # {skill: rows} of testbed.skills added to a generated corpus
    vocab_size: int = 2000  # BPE trained on the corpus (at most: generated text saturates near 1,150)
    model: dict = field(default_factory=dict)  # size overrides for tiny.build_tiny_model
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0


_SHAPE_128 = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 512,
}

SIZES: dict[str, TestbedSize] = {
    # The measurement: 2 layers x 128 hidden, 2,000-token BPE, ~950 steps of 16 x 256 tokens.
    "default": TestbedSize(steps=950, batch_size=16, seq_len=256, lr=3e-3, generated_rows=20000, model=_SHAPE_128),
    # For the test suite: same shape, a fraction of the budget (<= 60 s on 2 cores).
    "quick": TestbedSize(
        steps=150, batch_size=16, seq_len=256, lr=3e-3, generated_rows=4000, warmup_steps=15, model=_SHAPE_128
    ),
    # The held-out-signal testbed (Tables II/III): the default plus the skills of testbed.skills. Choice
    # rows are short and tie a letter to its option only once each: with as many as lookup's (6,000) the
    # build answered them at chance natively; at 60,000 (about half the stream) it answers all of them.
    "skills": TestbedSize(
        steps=1500,
        batch_size=16,
        seq_len=256,
        lr=3e-3,
        generated_rows=20000,
        skill_rows={"lookup": 6000, "choice": 60000},
        model=_SHAPE_128,
    ),
}

# Tuner settings for single-sample prompt tuning on a testbed (everything else: the tuner's paper
# defaults — init N(0, 0.02²), AdamW, weight decay 0.01, linear schedule with 10% warm-up, TSLoss
# with λ_ts = 1). The paper's lr 5e-5 is for billion-parameter models; a testbed's prompt needs ~0.01.
TUNE_DEFAULTS = {"lr": 0.01, "batch_size": 1, "max_steps": 600, "eval_every": 10}


class TestbedError(TslossError, ValueError):
    """A bad testbed request (unknown arch or size, unreadable corpus, occupied output dir)."""

    __test__ = False


def default_cache_root() -> Path:
    """`$TSLOSS_CACHE/testbeds`, else `~/.cache/tsloss_harness/testbeds`."""
    root = os.environ.get("TSLOSS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tsloss_harness") / "testbeds"


# ----------------------------------------------------------------------------- corpus


def _resolve_corpus_path(corpus: str | os.PathLike) -> Path:
    path = Path(corpus).expanduser()
    if path.is_dir():  # a GSM8K folder (e.g. the real one): pretrain on its training split
        path = path / "train.jsonl"
    if not path.is_file():
        raise TestbedError(f"corpus file not found: {path}")
    return path


def read_corpus_rows(path: Path) -> list[dict]:
    """GSM8K-format rows from a JSONL file; a bad line names the file and line."""
    from tsloss_harness.data import DataError, read_jsonl

    try:
        raw = read_jsonl(path)
    except DataError as e:
        raise TestbedError(str(e)) from None
    rows = []
    for number, row in enumerate(raw, 1):
        missing = [k for k in ("question", "answer") if k not in row]
        if missing:
            raise TestbedError(f"{path}: row {number} has no {missing[0]!r} field")
        rows.append({"question": str(row["question"]), "answer": str(row["answer"])})
    if not rows:
        raise TestbedError(f"{path}: no rows")
    return rows


def _corpus_info(corpus: str | os.PathLike, size: TestbedSize, seed: int) -> dict:
    """A JSON-safe description of the corpus; its `id` enters the cache key (cheap: no generation)."""
    if str(corpus) == "generated":
        from tsloss_harness import __version__

        # The generator's output is defined by (n, seed, package version).
        ident = f"generated:n={size.generated_rows}:seed={seed}:v={__version__}"
        if size.skill_rows:
            ident += ":skills=" + ",".join(f"{skill}={n}" for skill, n in size.skill_rows.items())
        info = {"kind": "generated", "rows": size.generated_rows, "seed": seed, "id": ident}
        return info | ({"skill_rows": size.skill_rows} if size.skill_rows else {})
    path = _resolve_corpus_path(corpus)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"kind": "file", "path": str(path.resolve()), "sha256": digest, "id": f"sha256:{digest}"}


def _corpus_rows(info: dict) -> list[dict]:
    if info["kind"] == "generated":
        from tsloss_harness.testbed.problems import generate_gsm8k_rows

        rows = generate_gsm8k_rows(info["rows"], seed=info["seed"])
        return rows + _skill_texts(info.get("skill_rows", {}), info["seed"], len(rows))
    rows = read_corpus_rows(Path(info["path"]))
    info["rows"] = len(rows)
    return rows


def _skill_texts(skill_rows: dict, seed: int, offset: int) -> list[dict]:
    """``skill_rows[skill]`` rows of each skill in its native format, as ``{"text"}`` rows, shuffled (the
    first rows are validation)."""
    import random

    from tsloss_harness.testbed.skills import generate_skill_rows, native_text

    rows = [
        {"text": native_text(skill, row)}
        for skill, n in skill_rows.items()
        for row in generate_skill_rows(skill, n, seed=f"pretrain-{seed}")
    ]
    random.Random(seed + offset).shuffle(rows)
    return rows


def _row_texts(rows: list[dict]) -> list[str]:
    return [r["text"] if "text" in r else ROW_TEMPLATE.format(question=r["question"], answer=r["answer"]) for r in rows]


def _pack(texts: list[str], tokenizer):
    """One stream of token ids: each row as the tokenizer encodes it (bos if it adds one), eos after."""
    import torch

    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    flat = [t for row in ids for t in (*row, eos)]
    return torch.tensor(flat, dtype=torch.long)


# ----------------------------------------------------------------------------- cache


def _cache_key(arch: str, corpus_id: str, size_name: str, size: TestbedSize, seed: int) -> str:
    from tsloss_harness import __version__

    spec = {
        "arch": arch,
        "corpus": corpus_id,
        "size": size_name,
        # a field added at its no-op default leaves existing builds' keys (and caches) as they were
        "hyper": {k: v for k, v in asdict(size).items() if not (k == "skill_rows" and not v)},
        "seed": seed,
        "package": __version__,
        "recipe": _recipe_digest(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _recipe_digest() -> str:
    """sha256 over the source of ``RECIPE_MODULES``: any edit there (a comment too) is a new build."""
    from importlib.resources import files

    package = files("tsloss_harness.testbed")
    digest = hashlib.sha256()
    for name in RECIPE_MODULES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes())
    return digest.hexdigest()


def _is_complete(model_dir: Path, key: str) -> bool:
    card = read_card(model_dir)
    return bool(card) and card.get("key") == key and not card.get("stopped_early")


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place atomically (a concurrent winner is kept)."""
    try:
        replace_dir(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_to(src: Path, out_dir: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    _publish(tmp, out_dir)
    return out_dir


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and read_card(out_dir) is None:
        raise TestbedError(f"output directory exists and is not a testbed: {out_dir}")


# ----------------------------------------------------------------------------- build


def build_testbed(
    out_dir: str | os.PathLike | None = None,
    *,
    arch: str = "llama",
    corpus: str | os.PathLike = "generated",
    size: str = "default",
    steps: int | None = None,
    seed: int = 0,
    minutes: float | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Path:
    """Pretrain (or fetch from the cache) a tiny causal LM; return its model directory.

    out_dir: where the Hugging Face model dir goes; None returns the cache entry itself.
    corpus: "generated" (the project's GSM8K-format generator) or a GSM8K-format JSONL file
      (or a folder holding `train.jsonl`, e.g. the real GSM8K).
    size: a key of `SIZES`; `steps` overrides its step count.
    minutes: a wall-clock cap, checked after each step; a build it cuts short is marked
      `stopped_early` in its card and never reused from the cache.
    cache: look up / store the build under `default_cache_root()`; False trains into out_dir.
    """
    from tsloss_harness.testbed.tiny import ARCHS

    if arch not in ARCHS:
        raise TestbedError(f"unknown arch {arch!r} (choose from {', '.join(ARCHS)})")
    if size not in SIZES:
        raise TestbedError(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
    preset = SIZES[size] if steps is None else replace(SIZES[size], steps=int(steps))
    if preset.steps < 1:
        raise TestbedError(f"steps must be >= 1, got {preset.steps}")
    if not cache and out_dir is None:
        raise TestbedError("cache=False needs an output directory")

    corpus_info = _corpus_info(corpus, preset, seed)
    key = _cache_key(arch, corpus_info["id"], size, preset, seed)
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if out is not None:
        if _is_complete(out, key):
            return out
        _check_out_dir(out)
        out.parent.mkdir(parents=True, exist_ok=True)

    if cache:
        root = default_cache_root()
        entry = root / f"{arch}-{size}-seed{seed}-{key[:12]}"
        if not _is_complete(entry, key):
            root.mkdir(parents=True, exist_ok=True)
            _train(
                entry,
                corpus_info,
                arch=arch,
                size_name=size,
                size=preset,
                seed=seed,
                key=key,
                minutes=minutes,
                progress=progress,
            )
        return entry if out is None else _copy_to(entry, out)
    _train(
        out, corpus_info, arch=arch, size_name=size, size=preset, seed=seed, key=key, minutes=minutes, progress=progress
    )
    return out


def _lr_at(step: int, size: TestbedSize) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < size.warmup_steps:
        return size.lr * (step + 1) / size.warmup_steps
    span = max(1, size.steps - 1 - size.warmup_steps)
    progress = min(1.0, (step - size.warmup_steps) / span)
    floor = size.lr * size.min_lr_ratio
    return floor + 0.5 * (size.lr - floor) * (1.0 + math.cos(math.pi * progress))


def _train(final_dir: Path, corpus_info, *, arch, size_name, size: TestbedSize, seed, key, minutes, progress) -> None:
    """Build the testbed into a temporary sibling of ``final_dir``, then publish it there."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tsloss_harness.testbed.tiny import build_tiny_model, build_tokenizer

    # transformers' own load/save bars would bury ours; restored on the way out.
    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    t0, cpu0 = time.perf_counter(), time.process_time()
    deadline = None if minutes is None else t0 + 60.0 * minutes
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", dir=final_dir.parent))
    try:
        # Tokenizer trained on the corpus itself; the random-weight model of the preset's shape
        # (exactly what tiny.build_tiny_model gives for this seed: the "random fixture" peer).
        texts = _row_texts(_corpus_rows(corpus_info))
        tok_dir = build_tokenizer(tmp / "_tokenizer", vocab_size=size.vocab_size, seed=seed, texts=texts)
        init_dir = build_tiny_model(arch, tmp / "_init", seed=seed, tokenizer_dir=tok_dir, **size.model)
        tokenizer = AutoTokenizer.from_pretrained(init_dir)
        model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)

        # Hold out a slice of rows for an honest final loss; train on the rest as one packed stream.
        n_val = max(1, len(texts) // 50)
        train_ids, val_ids = _pack(texts[n_val:], tokenizer), _pack(texts[:n_val], tokenizer)
        if len(train_ids) <= size.seq_len + 1:
            raise TestbedError(f"corpus too small: {len(train_ids)} tokens for windows of {size.seq_len + 1}")
        losses, stopped_early = _pretrain(
            model, train_ids, size, seed, deadline, bar_label=f"testbed {arch}/{size_name}" if progress else None
        )
        val_loss = _held_out_loss(model, val_ids, size, seed)

        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tmp / "_tokenizer")
        shutil.rmtree(tmp / "_init")
        card = build_card(
            model,
            key=key,
            arch=arch,
            size_name=size_name,
            size=size,
            corpus_info=corpus_info,
            seed=seed,
            losses=losses,
            stopped_early=stopped_early,
            corpus_tokens=len(train_ids),
            val_loss=val_loss,
            wall_s=time.perf_counter() - t0,
            cpu_s=time.process_time() - cpu0,
        )
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(card_readme(card))
        _publish(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()


def _windows(ids, size: TestbedSize, generator):
    """A batch of random next-token windows (x, y) of the packed stream ``ids``."""
    import torch

    T = size.seq_len
    ix = torch.randint(len(ids) - T - 1, (size.batch_size,), generator=generator)
    return torch.stack([ids[i : i + T] for i in ix]), torch.stack([ids[i + 1 : i + T + 1] for i in ix])


def _lm_loss(model, x, y):
    import torch.nn.functional as F

    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def _pretrain(model, train_ids, size: TestbedSize, seed: int, deadline: float | None, bar_label: str | None):
    """nanoGPT-style: AdamW (no decay on norms and biases, the 1-d tensors), warm-up then cosine decay,
    gradient clipping, a fixed number of steps. Returns (losses, stopped early by ``deadline``)."""
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": size.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=size.lr, betas=(0.9, 0.95), eps=1e-8)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(size.steps), desc=bar_label, unit="step", disable=bar_label is None, leave=False)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, size)
        loss = _lm_loss(model, *_windows(train_ids, size, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, size.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if deadline is not None and time.perf_counter() > deadline and step + 1 < size.steps:
            bar.close()
            return losses, True  # checked after a step, so a capped build still has one
    bar.close()
    return losses, False


def _held_out_loss(model, val_ids, size: TestbedSize, seed: int) -> float | None:
    """Mean loss on 4 fixed windows of the held-out rows (own generator: training's stream is untouched)."""
    import torch

    if len(val_ids) <= size.seq_len + 1:
        return None
    model.eval()
    val_gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        return sum(_lm_loss(model, *_windows(val_ids, size, val_gen)).item() for _ in range(4)) / 4
