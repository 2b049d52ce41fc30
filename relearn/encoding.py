"""Turning QA pairs into token tensors, the same way for training, scoring and generation.

A pair becomes  [bos] prompt_tokens  answer_tokens [eos]  where the prompt is
`template.format(question=...)` and the answer is tokenized with a leading space. Labels are -100
on the bos and prompt positions (and on padding), so every loss and every perplexity is over
answer tokens only.
"""
from __future__ import annotations

import torch

IGNORE = -100


def prompt_ids(tokenizer, question: str, template: str) -> list[int]:
    ids = tokenizer(template.format(question=question), add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def encode_pair(tokenizer, question: str, answer: str, template: str, max_length: int) -> dict[str, list[int]]:
    prompt = prompt_ids(tokenizer, question, template)
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded pairs into (B, T) tensors."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PairDataset(torch.utils.data.Dataset):
    """Encoded (question, answer) pairs; encoding happens once, up front."""

    def __init__(self, tokenizer, pairs: list[tuple[str, str]], template: str, max_length: int):
        self.examples = [encode_pair(tokenizer, q, a, template, max_length) for q, a in pairs]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]
