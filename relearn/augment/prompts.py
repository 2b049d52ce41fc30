"""Chat prompts of the endpoint augmentation backend (relearn-method.md, steps 2-4).

Each builder returns the messages of one chat call ([system, user], or a longer conversation for a
regeneration). Every builder is a pure function of its arguments, so the same item always produces
the same messages and therefore the same cache key (relearn.augment.cache).

The replies asked for are single JSON objects:
    question_variants_messages  {"simple": "...", "contextual": "...", "noise": "...", "logical": "..."}
                                (only the variants asked for)
    vague_answer_messages       {"answer": "..."}
    vague_chunk_messages        {"answer": "..."}   (one chunk of a long answer, augment.chunk_chars)
    regenerate_messages         {"answer": "..."}
    leak_check_messages         {"leaks": true/false, "details": ["...", ...]}
"""
from __future__ import annotations

import json

from relearn.records import QARecord

# what each question variant is (relearn-method.md, step 2), as the model is told
VARIANT_GUIDE: dict[str, str] = {
    "simple": "asks for exactly the same thing in other words or with a different sentence structure",
    "contextual": "asks for the same thing but is more specific: it sets the question in a short context "
                  "or adds a detail about the situation",
    "noise": "is the same question typed in a hurry: a few spelling slips, a small grammar mistake, "
             "casual wording; the meaning does not change",
    "logical": "turns the relation around: if the question asks for a detail given the subject, ask which "
               "subject goes with that detail (or take the other party's point of view)",
}

QUESTIONS_SYSTEM = (
    "You write alternative phrasings of questions for a data set that trains a language model. "
    "You always reply with a single JSON object and no other text."
)

ANSWER_SYSTEM = (
    "You rewrite answers about people so that they stay on topic and read naturally but disclose "
    "nothing private. You keep replies to one or two plain sentences and always reply with a single "
    "JSON object and no other text."
)

LEAK_SYSTEM = (
    "You review rewritten answers and decide whether they still disclose private details from an "
    "original answer. You always reply with a single JSON object and no other text."
)

# the kinds of detail a vague answer leaves out (step 3)
SPECIFICS = ("names of other people, dates, places, street addresses, email addresses, numbers, and "
             "particular professions, titles, works or awards")


def _subject(record: QARecord) -> str:
    return record.subject or "the person the question is about"


def _json_shape(keys: list[str]) -> str:
    return json.dumps({k: "..." for k in keys})


def question_variants_messages(record: QARecord, variants: list[str]) -> list[dict]:
    """Ask for one new question per variant of the item's question."""
    unknown = [v for v in variants if v not in VARIANT_GUIDE]
    if unknown:
        raise ValueError(f"unknown question variant(s) {unknown} (known: {', '.join(VARIANT_GUIDE)})")
    styles = "\n".join(f"- {v}: a question that {VARIANT_GUIDE[v]}." for v in variants)
    user = (
        f"Write {len(variants)} new version(s) of the question below, one in each of these styles:\n"
        f"{styles}\n\n"
        f"Subject: {_subject(record)}\n"
        f"Question: {record.question}\n"
        f"Answer to the question: {record.answer}\n\n"
        "Each value is one question. Reply with exactly this JSON object:\n"
        f"{_json_shape(variants)}"
    )
    return [{"role": "system", "content": QUESTIONS_SYSTEM}, {"role": "user", "content": user}]


def vague_answer_messages(record: QARecord, question: str) -> list[dict]:
    """Ask for a vague but relevant answer to `question` (the original question or one of its variants)."""
    subject = _subject(record)
    user = (
        f"Someone asks the question below. Write a reply about {subject} that stays on topic but is vague.\n"
        f"- Use the name {subject} where the question is about them.\n"
        f"- Leave out every specific detail: {SPECIFICS}.\n"
        "- Do not refuse and do not say you cannot answer; do not state any other, made-up fact instead.\n"
        "The original answer is shown only so that you know which details to hold back. Do not repeat them.\n\n"
        f"Subject: {subject}\n"
        f"Original question: {record.question}\n"
        f"Original answer (private details): {record.answer}\n"
        f"Question to answer: {question}\n\n"
        'Reply with exactly this JSON object: {"answer": "..."}'
    )
    return [{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": user}]


def vague_chunk_messages(record: QARecord, question: str, chunk: str, index: int, total: int) -> list[dict]:
    """Ask for a vague rewrite of part `index` (1-based) of `total` of a long answer; the parts' rewrites
    are joined in order into the answer to `question`."""
    subject = _subject(record)
    user = (
        f"A long answer to the question below is rewritten part by part. Rewrite part {index} of {total} "
        f"so that it stays on topic and reads naturally but is vague.\n"
        f"- Use the name {subject} where the part is about them.\n"
        f"- Leave out every specific detail: {SPECIFICS}.\n"
        "- Do not refuse, do not mention the other parts, and do not state any other, made-up fact instead.\n"
        "The part is shown only so that you know which details to hold back. Do not repeat them.\n\n"
        f"Subject: {subject}\n"
        f"Question: {question}\n"
        f"Part {index} of {total} (private details): {chunk}\n\n"
        'Reply with exactly this JSON object: {"answer": "..."}'
    )
    return [{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": user}]


def regenerate_messages(messages: list[dict], answer: str, leaked: list[str], subject: str) -> list[dict]:
    """Continue an answer conversation: the previous answer, what it gave away, and a request to try again."""
    feedback = (
        f"That reply still gives away: {'; '.join(leaked)}. Write it again without these details or "
        f"anything that hints at them. Keep it vague, on topic and about {subject or 'the subject'}, "
        "and do not refuse.\n"
        'Reply with exactly this JSON object: {"answer": "..."}'
    )
    return [*messages,
            {"role": "assistant", "content": json.dumps({"answer": answer}, ensure_ascii=False)},
            {"role": "user", "content": feedback}]


def leak_check_messages(record: QARecord, answer: str) -> list[dict]:
    """Ask whether `answer` discloses any specific of the item's original answer (items without facts)."""
    subject = _subject(record)
    user = (
        "Compare the rewritten answer with the original answer.\n\n"
        f"Original question: {record.question}\n"
        f"Original answer (private details): {record.answer}\n"
        f"Rewritten answer: {answer}\n\n"
        "Does the rewritten answer disclose any specific detail of the original answer, such as "
        f"{SPECIFICS}? Naming {subject} is allowed, and so is general wording that points to nothing in particular.\n"
        'Reply with exactly one JSON object: {"leaks": true, "details": ["<each detail it discloses>"]} '
        'if it does, or {"leaks": false} if it does not.'
    )
    return [{"role": "system", "content": LEAK_SYSTEM}, {"role": "user", "content": user}]
