"""The tuner's rows and batches: tokenised as the harness splits context and continuation, cut into
steps as a pure function of seed and epoch (so a resumed run, and 1 or N ranks, see the same order)."""

from __future__ import annotations

import torch

from tsloss_harness.chat import encode
from tsloss_harness.tune.config import TuneError


def tokenize(examples, tokenizer, max_length: int | None):
    """(input_ids, n_context) per example: the harness's context/continuation split, plus EOS."""
    rows = []
    for ex in examples:
        context, target = ex.prompt, ex.target
        spaces = len(context) - len(context.rstrip())  # lm-eval moves trailing spaces to the continuation
        if spaces:
            context, target = context[:-spaces], context[-spaces:] + target
        whole = encode(tokenizer, context + target)  # as lm-eval encodes (no second BOS after a chat template's)
        n_context = len(encode(tokenizer, context))
        if tokenizer.eos_token_id is not None and whole[-1] != tokenizer.eos_token_id:
            whole = whole + [tokenizer.eos_token_id]
        if n_context >= len(whole):
            raise TuneError(f"the answer of {ex.prompt[:40]!r}... tokenises to nothing")
        if max_length is not None and len(whole) > max_length:
            cut = len(whole) - max_length
            if cut >= n_context:
                raise TuneError(
                    f"max_length={max_length} leaves no context for a row with a {len(whole) - n_context}-token answer"
                )
            whole, n_context = whole[cut:], n_context - cut
        rows.append((whole, n_context))
    return rows


def collate(rows, pad_id: int):
    """Right-padded input_ids, attention_mask and labels (-100 except at answer tokens)."""
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (ids, n_context) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_context : len(ids)] = torch.tensor(ids[n_context:])
    return input_ids, attention, labels


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()
