"""Training-set accuracy by greedy generation: Table IV's "100% training accuracy"."""

from __future__ import annotations

import torch

from tsloss_harness.chat import encode
from tsloss_harness.data import answer_correct
from tsloss_harness.tune.objective import prefix_cache


def train_accuracy(engine, tokenizer, examples, template, config, world_size, zero_stage) -> float:
    """Share of the first ``eval_max_samples`` training rows whose greedy generation has the right answer.

    Every rank generates every row (ZeRO-3 needs all ranks in every forward), batched with left padding,
    through the base model's ``generate``: a soft prompt goes in front of the input embeddings, as PEFT
    places it; a prefix (``prefix``/``ptuning_v2``) is passed as the key/value cache, P placeholder ids
    standing for it (skipped by the cache), as tsprompt does. Not ``PeftModel.generate``: its prompt
    injection depends on the transformers version (with 5.24 it no longer applies the prompt)."""
    peft_model = engine.module.peft_model
    peft_config = peft_model.peft_config[peft_model.active_adapter]
    deep = peft_config.peft_type == "PREFIX_TUNING"
    p = peft_config.num_virtual_tokens
    rows = examples[: config.eval_max_samples]
    contexts = [encode(tokenizer, ex.prompt.rstrip()) for ex in rows]
    max_new = max(len(tokenizer(ex.target)["input_ids"]) for ex in rows) + 4
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    correct = 0
    engine.eval()
    with torch.no_grad():
        for start in range(0, len(rows), config.eval_batch_size):
            batch = contexts[start : start + config.eval_batch_size]
            length = max(map(len, batch))
            ids = torch.tensor([[pad] * (length - len(c)) + c for c in batch], device=engine.device)
            mask = torch.tensor([[0] * (length - len(c)) + [1] * len(c) for c in batch], device=engine.device)
            kwargs = dict(
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                synced_gpus=zero_stage == 3 and world_size > 1,
            )
            if deep:
                matrix = engine.module.prompt_matrix()  # whole under ZeRO-3 (the encoder's hooks gather it)
                base = peft_model.get_base_model()
                cache = prefix_cache(matrix.to(base.dtype), len(batch), peft_config, base.config)
                out = base.generate(
                    input_ids=torch.cat([ids.new_full((len(batch), p), pad), ids], dim=1),
                    attention_mask=torch.cat([mask.new_ones(len(batch), p), mask], dim=1),
                    past_key_values=cache,
                    **kwargs,
                )[:, p:]
            else:  # the prompt rows in front of the (left-padded) embeddings, as PEFT places them
                prompt = engine.module.prompt_matrix()
                embeds = peft_model.word_embeddings(ids)
                embeds = torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(len(batch), -1, -1), embeds], dim=1)
                out = peft_model.get_base_model().generate(
                    inputs_embeds=embeds,
                    attention_mask=torch.cat([mask.new_ones(len(batch), p), mask], dim=1),
                    **kwargs,
                )  # decoder-only generate from embeddings returns the new tokens only
                out = torch.cat([ids, out], dim=1)
            for ex, seq in zip(rows[start:], out[:, length:]):
                correct += answer_correct(tokenizer.decode(seq, skip_special_tokens=True), ex, template)
    engine.train()
    return correct / len(rows)
