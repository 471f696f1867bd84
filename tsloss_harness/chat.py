"""Chat templates: training rows rendered the way lm-eval's ``--apply_chat_template`` renders a 0-shot request.

Chat models (Gemma-2B-IT, DeepSeek-7B-Chat) are scored with ``--apply_chat_template``; a prompt tuned on
the harness's plain text and scored on chat-template text (or the reverse) is scored on text it never saw.
``tsloss tune --chat_template [--system_instruction TEXT]`` trains on what lm-eval 0.4.13 builds
(``ConfigurableTask.fewshot_context`` for 0 shots, ``HFLM.apply_chat_template``):

- context: ``tokenizer.apply_chat_template([system?, user], add_generation_prompt=True)``, the user turn
  holding the task's ``doc_to_text`` and the system turn the instruction;
- continuation: ``doc_to_target`` with no target delimiter (lm-eval drops it after a generation prompt);
- without a chat template a system instruction is plain text glued in front of the context, as lm-eval
  glues it.

Both sides encode as ``HFLM.tok_encode`` does (no second BOS when the text already starts with one),
and the soft prompt's virtual tokens sit in front of the whole rendered input in the tuner and in
``tsprompt``. The choice is recorded in ``tsloss.json`` (``chat_template``, ``system_instruction``,
``chat_template_sha256``) and ``tsprompt`` warns in one line when an evaluation's differs
(:func:`format_mismatch`).
"""

from __future__ import annotations

import dataclasses
import hashlib

from tsloss_harness.errors import TslossError

__all__ = ["ChatTemplateError", "apply_training_format", "encode", "format_mismatch", "text_prefix", "training_format"]

_SENTINEL = "\x00tsloss-user-turn\x00"  # stands for the user's content when locating what precedes it


class ChatTemplateError(TslossError, ValueError):
    """The tokenizer cannot render the requested chat format; the message is one line."""


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as lm-eval's ``HFLM.tok_encode`` gives them: the tokenizer's own special
    tokens, except when the text already starts with the BOS a chat template wrote."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix_id is not None and text.startswith(tokenizer.decode([prefix_id])):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def render_chat(tokenizer, user: str, system_instruction: str | None) -> str:
    """The 0-shot chat context lm-eval builds: [system?, user] with the generation prompt."""
    messages = [{"role": "user", "content": user}]
    if system_instruction is not None:
        messages.insert(0, {"role": "system", "content": system_instruction})
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"--chat_template: the tokenizer of {tokenizer.name_or_path} has no chat template")
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.exceptions.TemplateError as e:
        # lm-eval then drops the system turn; training without it says so instead of doing it silently
        raise ChatTemplateError(
            f"the chat template of {tokenizer.name_or_path} rejects this conversation ({e}); "
            f"lm-eval would drop the system turn: tune without --system_instruction"
        ) from None


def apply_training_format(examples, tokenizer, template: dict, chat_template: bool, system_instruction: str | None):
    """``examples`` (``data.Example``) as lm-eval presents them with these settings: the context rendered,
    the target without its delimiter under a chat template. Unchanged for plain text without instruction."""
    system_instruction = system_instruction or None  # lm-eval adds no system turn for an empty one
    if not chat_template:
        if system_instruction is None:
            return examples
        return [dataclasses.replace(ex, prompt=system_instruction + ex.prompt) for ex in examples]
    delimiter = template["target_delimiter"]
    rendered = []
    for ex in examples:
        target = ex.target.removeprefix(delimiter)
        rendered.append(
            dataclasses.replace(ex, prompt=render_chat(tokenizer, ex.prompt, system_instruction), target=target)
        )
    return rendered


def training_format(tokenizer, chat_template: bool, system_instruction: str | None) -> dict:
    """The ``tsloss.json`` provenance keys that say how the rows were rendered."""
    system_instruction = system_instruction or None
    text = _template_text(tokenizer) if chat_template else None
    return {
        "chat_template": bool(chat_template),
        "system_instruction": system_instruction,
        "chat_template_sha256": hashlib.sha256(text.encode()).hexdigest() if text else None,
    }


def text_prefix(tokenizer, chat_template: bool, system_instruction: str | None) -> str:
    """What a request's context starts with, before the task's own text, under these settings."""
    if not chat_template:
        return system_instruction or ""
    return render_chat(tokenizer, _SENTINEL, system_instruction).split(_SENTINEL, 1)[0]


def format_mismatch(provenance: dict, evaluated_with_chat: bool, context: str | None, tokenizer) -> str | None:
    """One line saying how an evaluation's rendering differs from the prompt's training, or None.

    ``evaluated_with_chat``: whether lm-eval applies a chat template; ``context``: a request's context
    (None when no request with one has been seen), checked to start as the training's did (the system
    instruction, in the chat turn or as plain text)."""
    trained_chat = bool(provenance.get("chat_template", False))
    instruction = provenance.get("system_instruction")
    trained = f"{'chat-template' if trained_chat else 'plain'} text" + (
        f" with system instruction {instruction!r}" if instruction is not None else ""
    )
    if trained_chat != evaluated_with_chat:
        scored = "applies" if evaluated_with_chat else "does not apply"
        return (
            f"the prompt was tuned on {trained} but this evaluation {scored} the chat template "
            f"(--apply_chat_template): it is scored on text it was not trained on"
        )
    if context is not None:
        try:
            expected = text_prefix(tokenizer, trained_chat, instruction)
        except ChatTemplateError:
            return None
        if not context.startswith(expected):
            return (
                f"the prompt was tuned on {trained} but this evaluation's requests begin otherwise "
                f"(--system_instruction, or a task description): it is scored on text it was not trained on"
            )
    return None


def _template_text(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) else None
