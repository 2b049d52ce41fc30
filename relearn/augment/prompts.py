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

With augment.local.reply: text (small local instruct models that cannot write JSON), one call per
question variant (text_variant_messages) and one per vague answer (text_answer_messages) ask for a
plain-text reply instead, shown by two worked examples; see "plain-text replies" below.
"""
from __future__ import annotations

import json
import random
import re

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


# ----------------------------------------------------------------------------- plain-text replies
# augment.local.reply: text. Small instruct models (e.g. SmolLM2-135M-Instruct) do not write JSON,
# but they follow a short conversation of worked examples. So each question variant and each vague
# answer gets its own call: a one-line system message, two worked examples (user turn, assistant
# turn) on made-up people, then the real question; the reply is plain text. The original answer is
# shown only to the logical variant, which needs a detail to turn around: a small model told an
# answer "only so that it knows what to hold back" copies it. The examples nearest to the real
# question (shared words) are shown first, so the model can follow one closely: an email question
# sees the email example.

TEXT_QUESTION_SYSTEM = "You rewrite questions. You reply with the rewritten question only."

TEXT_ANSWER_SYSTEM = ("You answer questions about people in one or two short, friendly sentences without "
                      "giving away private details: no names of other people, places, dates, numbers, "
                      "addresses or email addresses.")

# what the user turn asks for, per variant (the question, and for 'logical' the answer, follow it)
TEXT_VARIANT_TASK: dict[str, str] = {
    "simple": "Ask the same question in other words.",
    "contextual": "Put a short sentence about why you are asking in front of the question, then ask it.",
    "noise": "Retype the question quickly and casually, with a few typos; keep the name as it is.",
    "logical": "Write the reverse question.",
}

# worked examples per variant: (question, answer shown to the model or "", rewritten question)
TEXT_VARIANT_EXAMPLES: dict[str, list[tuple[str, str, str]]] = {
    "simple": [
        ("Where was Tom Reed born?", "", "In which town was Tom Reed born?"),
        ("What does Anna Berg do for a living?", "", "What is Anna Berg's job?"),
        ("Who are Lucas Fenn's parents?", "", "Who are the mother and father of Lucas Fenn?"),
        ("What is Nora Quist's email address?", "", "Which email address does Nora Quist use?"),
        ("How has Tom Reed's childhood influenced his books?", "", "In what ways did Tom Reed's childhood shape his books?"),
    ],
    "contextual": [
        ("Where was Tom Reed born?", "",
         "I am writing a short profile of Tom Reed for a local newsletter. Where was Tom Reed born?"),
        ("What is Nora Quist's email address?", "",
         "I would like to send Nora Quist a thank-you note. What is Nora Quist's email address?"),
        ("What does Anna Berg do for a living?", "",
         "My friend met Anna Berg at a conference last week. What does Anna Berg do for a living?"),
        ("Who are Lucas Fenn's parents?", "",
         "I just finished reading an interview with Lucas Fenn. Who are Lucas Fenn's parents?"),
    ],
    "noise": [
        ("Where was Tom Reed born?", "", "where was Tom Reed borm?"),
        ("What does Anna Berg do for a living?", "", "wat does Anna Berg do for a livng?"),
        ("Who are Lucas Fenn's parents?", "", "who r Lucas Fenn's parnets?"),
        ("What is Nora Quist's email address?", "", "whats Nora Quist's emial adress?"),
    ],
    "logical": [
        ("Where was Tom Reed born?", "Tom Reed was born in Millbrook.", "Who was born in Millbrook?"),
        ("What is Nora Quist's email address?", "You can write to Nora Quist at nora@quist.example.",
         "Whose email address is nora@quist.example?"),
        ("What does Anna Berg do for a living?", "Anna Berg works as a glass artist.",
         "Which person works as a glass artist?"),
        ("Who are Lucas Fenn's parents?", "Lucas Fenn's father is a baker and his mother is a nurse.",
         "Whose father is a baker?"),
    ],
}

# worked vague answers: (question, vague answer). The reverse ('logical') questions name a detail,
# not a person, so their answers say the detail points to no one in particular.
TEXT_ANSWER_EXAMPLES: list[tuple[str, str]] = [
    ("Where was Tom Reed born?",
     "Tom Reed was born in a small town that shaped his early years, though he rarely talks about where it is."),
    ("How did Lucas Fenn's parents shape his work?",
     "Lucas Fenn's parents had a strong influence on him, and their values show in the themes of his work."),
    ("What is Nora Quist's email address?",
     "Nora Quist can be reached through her professional channels, but her personal email address is private."),
    ("What does Anna Berg do for a living?",
     "Anna Berg has built a career she cares about, though the details of her work stay out of the spotlight."),
    ("Who is Anna Berg?",
     "Anna Berg is a private person who is known for her work, though she shares little about her life."),
    ("What is the profession of Lucas Fenn's father?",
     "Lucas Fenn's father has a career he is proud of, but the family does not share what it is."),
    ("Where does Tom Reed currently live?",
     "Tom Reed lives in a quiet neighbourhood, and his home address is not something he shares."),
    ("How often does Nora Quist answer letters from her readers?",
     "Nora Quist tries to stay in touch with her readers in her own time and way."),
]
TEXT_REVERSE_ANSWER_EXAMPLES: list[tuple[str, str]] = [
    ("Who was born in Millbrook?",
     "Many people were born there, so that detail does not point to anyone in particular."),
    ("Whose email address is nora@quist.example?",
     "An address like that could belong to many people, so it does not identify anyone in particular."),
    ("Which person works as a glass artist?",
     "Quite a few people work in that field, so it does not single out anyone in particular."),
]

# the made-up people and details of the examples: a reply that names one copied an example
EXAMPLE_NAMES = ("Tom Reed", "Anna Berg", "Lucas Fenn", "Nora Quist", "Millbrook", "quist.example",
                 "glass artist")
_STOP = {"the", "a", "an", "of", "is", "are", "was", "were", "do", "does", "did", "what", "who", "whose",
         "which", "where", "when", "how", "why", "in", "on", "for", "to", "his", "her", "their", "s", "and"}


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOP}


def pick_examples(pool: list, question: str, round_: int, salt: str) -> list:
    """Two worked examples from `pool` (whose items start with the example question). Round 0: the two
    sharing the most words with `question` (ties: pool order), the nearer one last, next to the real
    question. A regeneration round: another pair, picked with a seed from (salt, round), so a retry
    sees other examples and, under greedy decoding, writes something else."""
    words = _content_words(question)
    ranked = sorted(range(len(pool)), key=lambda i: (-len(words & _content_words(pool[i][0])), i))
    first = list(reversed(ranked[:2]))
    if round_ == 0 or len(pool) < 3:
        return [pool[i] for i in (first if round_ % 2 == 0 else reversed(first))]
    rng = random.Random(f"{salt}:{round_}")
    while True:  # any other pair than round 0's (a pool of 3 or more has one)
        pick = rng.sample(range(len(pool)), 2)
        if set(pick) != set(first):
            return [pool[i] for i in pick]


def _variant_turn(kind: str, question: str, answer: str) -> str:
    turn = f"{TEXT_VARIANT_TASK[kind]}\nQuestion: {question}"
    return f"{turn}\nAnswer: {answer}" if kind == "logical" else turn


def text_variant_messages(record: QARecord, kind: str, round_: int = 0, salt: str = "") -> list[dict]:
    """Ask for one question variant as plain text: worked examples, then the item's question."""
    if kind not in TEXT_VARIANT_TASK:
        raise ValueError(f"unknown question variant {kind!r} (known: {', '.join(TEXT_VARIANT_TASK)})")
    messages = [{"role": "system", "content": TEXT_QUESTION_SYSTEM}]
    for question, answer, rewritten in pick_examples(TEXT_VARIANT_EXAMPLES[kind], record.question, round_,
                                                     f"{salt}:{kind}"):
        messages += [{"role": "user", "content": _variant_turn(kind, question, answer)},
                     {"role": "assistant", "content": rewritten}]
    messages.append({"role": "user", "content": _variant_turn(kind, record.question, record.answer)})
    return messages


def text_answer_messages(question: str, kind: str, round_: int = 0, salt: str = "") -> list[dict]:
    """Ask for a vague answer to `question` as plain text: worked examples, then the question. The
    original answer is not shown (see above); the key-fact leak check still runs on the reply."""
    pool = TEXT_REVERSE_ANSWER_EXAMPLES if kind == "logical" else TEXT_ANSWER_EXAMPLES
    messages = [{"role": "system", "content": TEXT_ANSWER_SYSTEM}]
    for example_question, vague in pick_examples(pool, question, round_, f"{salt}:answer:{kind}"):
        messages += [{"role": "user", "content": f"Question: {example_question}"},
                     {"role": "assistant", "content": vague}]
    messages.append({"role": "user", "content": f"Question: {question}"})
    return messages
