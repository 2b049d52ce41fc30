"""One encoding path: the plain template and a chat template, for training labels, prompts and stops."""
from __future__ import annotations

import pytest

from relearn.modeling.encoding import (IGNORE, PromptFormat, as_format, encode_pair, end_of_turn_id, messages_ids, prompt_ids,
                              prompt_text,
                              stop_ids)
from relearn.errors import UserError
from relearn.modeling.model import train_tokenizer

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEXTS = ["Question: Where does Ann live?\nAnswer: Ann lives in Lyon.", "user assistant system Who is Bob? Bob bakes."]


@pytest.fixture(scope="module")
def chat_tok():
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def plain_tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def test_plain_format_is_bos_template_answer_eos(plain_tok):
    e = encode_pair(plain_tok, "Where does Ann live?", "Ann lives in Lyon.", "Question: {question}\nAnswer:", 128)
    text = plain_tok.decode(e["input_ids"])
    assert text == "<s>Question: Where does Ann live?\nAnswer: Ann lives in Lyon.</s>"
    answer = [t for t, lab in zip(e["input_ids"], e["labels"]) if lab != IGNORE]
    assert plain_tok.decode(answer) == " Ann lives in Lyon.</s>"
    # auto falls back to the plain template when the tokenizer has no chat template
    assert encode_pair(plain_tok, "Where does Ann live?", "Ann lives in Lyon.", PromptFormat(), 128) == e
    assert stop_ids(plain_tok, PromptFormat()) == [plain_tok.eos_token_id]


def test_chat_format_uses_the_template_and_ends_at_end_of_turn(chat_tok):
    fmt = PromptFormat(mode="auto", system="Be discreet.")
    e = encode_pair(chat_tok, "Who is Bob?", "Bob bakes.", fmt, 128)
    assert chat_tok.decode(e["input_ids"]) == ("<|im_start|>system\nBe discreet.<|im_end|>\n<|im_start|>user\nWho is Bob?"
                                               "<|im_end|>\n<|im_start|>assistant\nBob bakes.<|im_end|>")
    eot = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(chat_tok) == eot
    # the loss covers the answer and its end-of-turn token only
    answer = [t for t, lab in zip(e["input_ids"], e["labels"]) if lab != IGNORE]
    assert chat_tok.decode(answer) == "Bob bakes.<|im_end|>"
    assert e["input_ids"][:len(prompt_ids(chat_tok, "Who is Bob?", fmt))] == prompt_ids(chat_tok, "Who is Bob?", fmt)
    assert stop_ids(chat_tok, fmt) == [eot, chat_tok.eos_token_id]
    # 'plain' ignores the chat template
    assert prompt_text(chat_tok, "Who is Bob?", PromptFormat(mode="plain")) == "Question: Who is Bob?\nAnswer:"


def test_prefill_starts_the_answer_in_both_formats(chat_tok):
    fmt = PromptFormat(mode="chat").with_prefill("Sure:")
    assert prompt_text(chat_tok, "Who is Bob?", fmt).endswith("<|im_start|>assistant\nSure:")
    assert prompt_text(None, "Who?", as_format("Q: {question}\nA:").with_prefill("Sure {x}:")) == "Q: Who?\nA: Sure {x}:"


def test_a_primed_pair_puts_its_opening_in_the_prompt_and_trains_only_what_follows(chat_tok):
    from relearn.modeling.encoding import PairDataset

    fmt = PromptFormat(mode="chat")
    plain, primed = PairDataset(chat_tok, [("Who is Bob?", "Bob bakes."), ("Who is Bob?", "Bob bakes.", "Sure:")],
                                fmt, 128).examples
    assert plain == encode_pair(chat_tok, "Who is Bob?", "Bob bakes.", fmt, 128)
    assert chat_tok.decode(primed["input_ids"]).endswith("<|im_start|>assistant\nSure: Bob bakes.<|im_end|>")
    trained = [t for t, lab in zip(primed["input_ids"], primed["labels"]) if lab != IGNORE]
    assert chat_tok.decode(trained).strip() == "Bob bakes.<|im_end|>"  # the opening is given, not learnt


def test_chat_without_a_template_is_a_user_error(plain_tok):
    with pytest.raises(UserError, match="model.prompt_format"):
        prompt_ids(plain_tok, "Who?", PromptFormat(mode="chat"))


def test_round_trip_through_a_mapping():
    fmt = PromptFormat(template="Q: {question}\nA:", mode="chat", system="s")
    assert PromptFormat.from_dict(fmt.to_dict()) == fmt


def test_conversations_for_the_server(chat_tok, plain_tok):
    """One user message is exactly a question's prompt; a conversation goes through the chat
    template (with the format's system message unless it has its own); the plain format asks the
    last user message."""
    fmt = PromptFormat(system="Be discreet.")
    one = [{"role": "user", "content": "Who is Bob?"}]
    assert messages_ids(chat_tok, one, fmt) == prompt_ids(chat_tok, "Who is Bob?", fmt)
    talk = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Who is Bob?"}]
    assert chat_tok.decode(messages_ids(chat_tok, talk, fmt)) == (
        "<|im_start|>system\nBe discreet.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello."
        "<|im_end|>\n<|im_start|>user\nWho is Bob?<|im_end|>\n<|im_start|>assistant\n")
    own = [{"role": "system", "content": "Terse."}] + talk
    assert chat_tok.decode(messages_ids(chat_tok, own, fmt)).startswith("<|im_start|>system\nTerse.<|im_end|>\n<|im_start|>user")
    plain = PromptFormat(template="Q: {question}\nA:")
    assert messages_ids(plain_tok, talk, plain) == prompt_ids(plain_tok, "Who is Bob?", plain)
    with pytest.raises(UserError, match="last message"):
        messages_ids(chat_tok, talk[:2], fmt)
