"""What ``tsprompt`` adds to lm-eval's own features, so that they account for the soft prompt.

- **Response cache.** ``lm_eval --use_cache PATH`` keys cached responses by the request alone (an
  upstream limitation): two prompts scored with the same path would share answers. ``CachingLM`` hands
  the model its SQLite dict through ``set_cache_hook``; ``tsprompt`` points that dict at a table of its
  own, named by the prompt's identity (a SHA-256 of the prompt matrix, its prefix layout and the base
  model), so every lookup and every write of the run stays with this prompt. The file keeps one table per
  prompt beside lm-eval's own. A cache object without those attributes fails in one line rather than
  risk sharing.
- **Chat format.** lm-eval tells a model nothing else of ``--apply_chat_template`` or
  ``--system_instruction``, but its ``evaluate`` reads ``lm.tokenizer_name`` exactly when it applies a
  chat template (before any request, cached requests included), and builds each chat context through
  ``lm.apply_chat_template``. With that and the first request's context, ``tsprompt`` compares the
  evaluation's rendering with the prompt's training (``tsloss.json``; :func:`chat.format_mismatch`)
  and warns once, in one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from tsloss_harness.errors import TslossError

log = logging.getLogger("tsloss_harness.tsprompt")

__all__ = ["PromptAwareHooks", "ResponseCacheError", "prompt_identity"]


class ResponseCacheError(TslossError, ValueError):
    """lm-eval's response cache cannot be kept apart per prompt; the message is one line."""


class PromptAwareHooks:
    """Mixin in front of ``HFLM`` in ``TSPromptLM``'s bases. Reads ``prompt_path``, ``prompt_embeddings``,
    ``_prefix_config``, ``pretrained`` and ``tokenizer`` of the model it is mixed into."""

    _evaluated_with_chat = False
    _format_checked = False

    # ------------------------------------------------------------------------------ response cache

    def set_cache_hook(self, cache_hook) -> None:
        db = getattr(cache_hook, "dbdict", None)
        if db is not None:
            _use_own_table(db, f"tsprompt_{prompt_identity(self)[:40]}")
        super().set_cache_hook(cache_hook)

    # ---------------------------------------------------------------------------------- chat format

    @property
    def tokenizer_name(self) -> str:
        self._evaluated_with_chat = True  # lm-eval's evaluate() reads it only when applying a chat template
        return super().tokenizer_name

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        self._evaluated_with_chat = True
        return super().apply_chat_template(chat_history, add_generation_prompt)

    def loglikelihood(self, requests, *args, **kwargs):
        self._check_training_format(requests)
        return super().loglikelihood(requests, *args, **kwargs)

    def loglikelihood_rolling(self, requests, *args, **kwargs):
        self._check_training_format(requests)
        return super().loglikelihood_rolling(requests, *args, **kwargs)

    def generate_until(self, requests, *args, **kwargs):
        self._check_training_format(requests)
        return super().generate_until(requests, *args, **kwargs)

    def get_model_info(self) -> dict:
        self._check_training_format([])  # every request came from the cache: the chat flag alone
        return super().get_model_info()

    def _check_training_format(self, requests) -> None:
        """Once, at the first request (or at the end, when the cache answered everything)."""
        if self._format_checked:
            return
        self._format_checked = True
        provenance = _training_provenance(self.prompt_path)
        if provenance is None:  # a bare tensor or a foreign adapter: nothing recorded to compare with
            return
        from tsloss_harness.chat import format_mismatch

        problem = format_mismatch(provenance, self._evaluated_with_chat, _first_context(requests), self.tokenizer)
        if problem:
            log.warning("tsprompt: %s: %s", self.prompt_path, problem)


def prompt_identity(lm) -> str:
    """SHA-256 (hex) of what makes this prompt's responses its own: the matrix, its layout, the base model."""
    matrix = lm.prompt_embeddings.detach().float().cpu().contiguous()
    digest = hashlib.sha256()
    parts = [list(matrix.shape), _layout(lm), _base_model(lm)]
    parts += baselines_identity(lm)  # ACT / DPC change the responses too (nothing without them)
    digest.update(json.dumps(parts).encode())
    digest.update(matrix.numpy().tobytes())
    return digest.hexdigest()


def baselines_identity(lm) -> list:
    """The ACT / DPC settings that change a model's responses ([] when neither is on)."""
    act, dpc = getattr(lm, "_act", None), getattr(lm, "_dpc", None)
    out = []
    if act is not None:
        out.append({"act": [[list(p) for p in act.settings.heads], act.settings.beta, act.settings.threshold]})
    if dpc is not None:
        out.append({"dpc": dict(dpc.settings.__dict__)})
    return out


def _layout(lm) -> dict | None:
    prefix = getattr(lm, "_prefix_config", None)
    if prefix is None:
        return None
    return {
        "peft_type": str(prefix.peft_type),
        "num_layers": prefix.num_layers,
        "token_dim": prefix.token_dim,
        "num_attention_heads": prefix.num_attention_heads,
    }


def _base_model(lm) -> str | None:
    pretrained = getattr(lm, "pretrained", None)
    return pretrained if isinstance(pretrained, str) else None


def _use_own_table(db, table: str) -> None:
    """Point lm-eval's SqliteDict ``db`` (shared with its ``CachingLM``) at ``table`` of the same file."""
    if not (hasattr(db, "tablename") and hasattr(db, "filename")):
        raise ResponseCacheError(
            "tsprompt: --use_cache cannot be keyed by the prompt with this sqlitedict version; run without --use_cache"
        )
    from sqlitedict import SqliteDict

    SqliteDict(db.filename, tablename=table, autocommit=True).close()  # creates the table
    db.tablename = table


def _first_context(requests) -> str | None:
    for request in requests:
        args = getattr(request, "args", None) or ()
        if args and isinstance(args[0], str) and request.request_type != "loglikelihood_rolling":
            return args[0]
    return None


def _training_provenance(path: str) -> dict | None:
    from tsloss_harness.prompt import PromptLoadError, load_provenance

    if not Path(path).is_dir():
        return None
    try:
        return load_provenance(path)
    except PromptLoadError:  # an unreadable tsloss.json: nothing to compare with
        return None
