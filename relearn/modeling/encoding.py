"""Turning QA pairs into token tensors, the same way for training, scoring and generation.

Every place that turns a question into tokens (training, PPL and TOFU probabilities, MIA,
generation, the ONNX parity checks, the pyfunc, the deployable) goes through `prompt_ids` and
`encode_pair` with one `PromptFormat`, so a model is always asked in the format it was trained in.

Two formats:
- plain:  [bos] template.format(question) [" " prefill]   then   " " answer [eos]
- chat:   the tokenizer's chat template for ([system,] user: question) with the generation prompt
          [+ prefill]   then   answer [end-of-turn]
  The end-of-turn token is the first token the template writes after an assistant message
  (`<|im_end|>` for SmolLM2/ChatML, `<|eot_id|>` for Llama 3, `</s>` for Llama 2); generation
  stops at it as well as at eos.

Labels are -100 on the prompt positions (and on padding), so every loss and every perplexity is
over the answer tokens and the end-of-turn (or eos) token only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from relearn.errors import UserError

IGNORE = -100
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
_PROBE = "\x00relearn-answer\x00"  # a string no template writes, to find where the answer goes


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt (params: model.prompt_format, prompt_template, system_prompt).

    mode: 'auto' uses the tokenizer's chat template when it has one, 'plain' otherwise.
    prefill: text the answer is forced to start with (the jailbreak probes' answer prefixes).
    """
    template: str = DEFAULT_TEMPLATE
    mode: str = "auto"
    system: str | None = None
    prefill: str = ""

    def uses_chat(self, tokenizer) -> bool:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.mode == "chat" and not has_template:
            raise UserError("model.prompt_format is 'chat' but the tokenizer has no chat template "
                             "(use 'auto' or 'plain')")
        return self.mode == "chat" or (self.mode == "auto" and has_template)

    def with_prefill(self, text: str) -> "PromptFormat":
        return replace(self, prefill=(self.prefill + " " + text).strip())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptFormat":
        return cls(**{k: d[k] for k in ("template", "mode", "system", "prefill") if k in d})


def as_format(template: "str | PromptFormat") -> PromptFormat:
    """A bare template string is the plain format (how callers and tests predating chat formats ask)."""
    return template if isinstance(template, PromptFormat) else PromptFormat(template=template, mode="plain")


def _messages(fmt: PromptFormat, question: str) -> list[dict]:
    system = [{"role": "system", "content": fmt.system}] if fmt.system else []
    return system + [{"role": "user", "content": question}]


def prompt_text(tokenizer, question: str, template: "str | PromptFormat") -> str:
    """The prompt as text (without the plain format's bos, which is added as an id)."""
    fmt = as_format(template)
    if fmt.uses_chat(tokenizer):
        text = tokenizer.apply_chat_template(_messages(fmt, question), tokenize=False, add_generation_prompt=True)
        return text + fmt.prefill
    text = fmt.template.format(question=question)
    return text + (" " + fmt.prefill if fmt.prefill else "")


def prompt_ids(tokenizer, question: str, template: "str | PromptFormat") -> list[int]:
    fmt = as_format(template)
    ids = tokenizer(prompt_text(tokenizer, question, fmt), add_special_tokens=False)["input_ids"]
    if fmt.uses_chat(tokenizer):
        return ids  # the chat template writes its own bos where the model wants one
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


ROLES = ("system", "user", "assistant")


def messages_ids(tokenizer, messages: list[dict], template: "str | PromptFormat") -> list[int]:
    """A conversation (OpenAI-style `{"role", "content"}` messages ending with a user turn) as
    prompt ids. One user message gives exactly `prompt_ids` of its content. In the chat format the
    whole conversation goes through the chat template (the format's system message is added when the
    conversation has none); the plain format has no turns, so only the last user message is asked.
    """
    fmt = as_format(template)
    if not messages or messages[-1].get("role") != "user":
        raise UserError("the last message must be the user's")
    if not fmt.uses_chat(tokenizer) or len(messages) == 1:
        return prompt_ids(tokenizer, messages[-1]["content"], fmt)
    system = [{"role": "system", "content": fmt.system}] if fmt.system and messages[0]["role"] != "system" else []
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(system + turns, tokenize=False, add_generation_prompt=True) + fmt.prefill
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_id(tokenizer) -> int:
    """The token a chat template closes an assistant turn with (eos when it writes none)."""
    cached = getattr(tokenizer, "_relearn_end_of_turn", None)
    if cached is not None:
        return cached
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}], tokenize=False)
    tail = text[text.index(_PROBE) + len(_PROBE):] if _PROBE in text else ""
    ids = tokenizer(tail.strip(), add_special_tokens=False)["input_ids"] if tail.strip() else []
    eot = ids[0] if ids else tokenizer.eos_token_id
    tokenizer._relearn_end_of_turn = eot
    return eot


def stop_ids(tokenizer, template: "str | PromptFormat") -> list[int]:
    """Token ids that end an answer: eos, and the end-of-turn token in the chat format."""
    ids = [tokenizer.eos_token_id]
    if as_format(template).uses_chat(tokenizer):
        eot = end_of_turn_id(tokenizer)
        if eot not in ids:
            ids.insert(0, eot)
    return ids


def answer_ids(tokenizer, answer: str, template: "str | PromptFormat") -> list[int]:
    """The answer's tokens and the token that ends it (what the loss covers)."""
    fmt = as_format(template)
    if fmt.uses_chat(tokenizer):
        text = (" " if fmt.prefill else "") + answer.strip()
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]
    return tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_pair(tokenizer, question: str, answer: str, template: "str | PromptFormat",
                max_length: int) -> dict[str, list[int]]:
    prompt = prompt_ids(tokenizer, question, template)
    target = answer_ids(tokenizer, answer, template)
    input_ids = (prompt + target)[:max_length]
    labels = ([IGNORE] * len(prompt) + target)[:max_length]
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
    """Encoded (question, answer) pairs; encoding happens once, up front. A pair may carry a third
    element, a prefill: the answer's given opening (a primed pair), put after the answer marker with
    the prompt, outside the labels."""

    def __init__(self, tokenizer, pairs: list[tuple[str, ...]], template: "str | PromptFormat", max_length: int):
        fmt = as_format(template)
        self.examples = [encode_pair(tokenizer, pair[0], pair[1], fmt.with_prefill(pair[2]) if pair[2:] else fmt,
                                     max_length) for pair in pairs]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]
