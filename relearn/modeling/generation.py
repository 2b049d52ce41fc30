"""Batched generation and answer log-likelihoods, for any causal LM with `generate`
(a transformers model, a PeftModel, or an ONNX Runtime model from optimum).

Prompts are left-padded so that every row's answer starts at the same position.
"""
from __future__ import annotations

import torch

from relearn.modeling.encoding import IGNORE, PromptFormat, collate, encode_pair, prompt_ids, stop_ids
from relearn.training.progress import Progress


def _device(model) -> torch.device:
    return getattr(model, "device", torch.device("cpu"))


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def generate_token_ids(model, tokenizer, questions: list[str], template: str | PromptFormat, max_new_tokens: int,
                       batch_size: int = 32, do_sample: bool = False, temperature: float = 0.7,
                       top_p: float = 0.9, top_k: int = 5, seed: int = 0, desc: str = "generate") -> list[list[int]]:
    """New tokens for each question, cut at the first stop token (eos, or the chat format's
    end-of-turn), padding stripped. Under a multi-process launch each process generates its shard
    of the questions and every process gets all the answers (relearn.training.devices.shard_map); with
    weights sharded over the processes (FSDP) every process generates every answer, the processes
    kept stepping together until the last one is done (transformers' synced_gpus)."""
    from relearn.training.devices import shard_map, weight_sharded

    def run(part: list[str], synced: bool = False) -> list[list[int]]:
        return _generate_token_ids(model, tokenizer, part, template, max_new_tokens, batch_size, do_sample, temperature,
                                   top_p, top_k, seed, desc, synced)

    return run(questions, synced=True) if weight_sharded(model) else shard_map(run, questions)


def _generate_token_ids(model, tokenizer, questions, template, max_new_tokens, batch_size, do_sample, temperature,
                        top_p, top_k, seed, desc, synced: bool = False) -> list[list[int]]:
    if hasattr(model, "eval"):
        model.eval()
    torch.manual_seed(seed)
    pad_id, stops = tokenizer.pad_token_id, stop_ids(tokenizer, template)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else dict(do_sample=False)
    out: list[list[int]] = []
    progress = Progress(desc, len(questions), unit="question")
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        ids, mask = _left_pad([prompt_ids(tokenizer, q, template) for q in chunk], pad_id)
        device = _device(model)
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=stops,
                                   **sampling, **({"synced_gpus": True} if synced else {}))
        for row in generated[:, ids.shape[1]:].tolist():
            end = next((i for i, t in enumerate(row) if t in stops), len(row))
            row = row[:end]
            out.append([t for t in row if t != pad_id])
        progress.update(len(chunk))
    return out


def generate_answers(model, tokenizer, questions: list[str], template: str | PromptFormat, max_new_tokens: int,
                     batch_size: int = 32, **kw) -> list[str]:
    ids = generate_token_ids(model, tokenizer, questions, template, max_new_tokens, batch_size, **kw)
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]


@torch.no_grad()
def answer_token_logprobs(model, tokenizer, questions: list[str], answers: list[str], template: str | PromptFormat,
                          max_length: int = 512, batch_size: int = 32) -> list[list[float]]:
    """log p(token) of every answer token given the question and the answer so far, per pair
    (sharded over the processes of a multi-process launch, as generation is; every pair on every
    process when the weights are sharded)."""
    from relearn.training.devices import shard_map, weight_sharded

    def run(part: list[tuple[str, str]]) -> list[list[float]]:
        return _answer_token_logprobs(model, tokenizer, [q for q, _ in part], [a for _, a in part], template,
                                      max_length, batch_size)

    pairs = list(zip(questions, answers))
    return run(pairs) if weight_sharded(model) else shard_map(run, pairs)


def _answer_token_logprobs(model, tokenizer, questions, answers, template, max_length, batch_size) -> list[list[float]]:
    if hasattr(model, "eval"):
        model.eval()
    results: list[list[float]] = []
    for start in range(0, len(questions), batch_size):
        examples = [encode_pair(tokenizer, q, a, template, max_length)
                    for q, a in zip(questions[start:start + batch_size], answers[start:start + batch_size])]
        batch = {k: v.to(_device(model)) for k, v in collate(examples, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]                              # (B, T-1)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)             # (B, T-1, V)
        tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        mask = labels != IGNORE
        results += [row[m].tolist() for row, m in zip(tok, mask)]
    return results


def answer_nll(model, tokenizer, questions: list[str], answers: list[str], template: str | PromptFormat,
               max_length: int = 512, batch_size: int = 32) -> list[tuple[float, int]]:
    """(sum of negative log-likelihood, number of tokens) of each answer given its question."""
    rows = answer_token_logprobs(model, tokenizer, questions, answers, template, max_length, batch_size)
    return [(-sum(row), len(row)) for row in rows]
