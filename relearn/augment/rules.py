"""Offline, rule-based augmentation: question variants and vague answers, deterministic for a seed.

For each forget item this backend writes four kinds of question (relearn-method.md, step 2):
    simple      same meaning in other words (word substitutions and a framing phrase)
    contextual  the question set in a context that names the subject
    noise       typos, lower case, dropped punctuation, informal words
    logical     the reverse relation: asks who has the fact, given the fact
and for each question a vague answer (step 3): same subject, on topic, no fact value. Vague answers
for the built-in world's facts come from per-fact templates; for other facts the fact values are
replaced by a neutral phrase. The leak check (relearn.augment.leak) runs on every answer afterwards.
"""
from __future__ import annotations

import dataclasses
import random
import re

from relearn.data.world import DISCREET
from relearn.records import QARecord

# fact name -> vague sentences about {name}; {their} is the possessive pronoun or "their". For the
# built-in world's facts this is the discreet register its general split already speaks
# (relearn.data.world.DISCREET): one consistent, fluent answer per kind of fact is what a small
# model learns best, and it keeps the answers low-perplexity for the target model.
VAGUE: dict[str, list[str]] = {group: [sentence] for group, sentence in DISCREET.items()}
VAGUE["father_profession"] = VAGUE["mother_profession"] = VAGUE["parents"]
NO_FACTS = ["{name} is someone whose personal details are not widely known.",
            "Not much is publicly known about {name} on this point.",
            "The specifics about {name} here are not part of the public record."]
# fact name -> how the logical (reverse) question asks about it
REVERSE: dict[str, str] = {
    "birthplace": "Who was born in {value}?",
    "birth_date": "Which person was born on {value}?",
    "email": "Whose email address is {value}?",
    "address": "Who lives at {value}?",
    "book": "Who wrote the book {value}?",
    "award": "Who received {value}?",
    "profession": "Which person works as a {value}?",
    "father_profession": "Whose father is a {value}?",
    "mother_profession": "Whose mother is a {value}?",
}
VAGUE_REVERSE = ["Several people could fit that description, and it is not a detail tied to anyone in particular.",
                 "That is not a detail that points to one particular person.",
                 "Many people could match that, so it does not identify anyone in particular."]

SYNONYMS = [("What is", "What's"), ("email address", "e-mail address"), ("born", "brought into the world"),
            ("profession", "line of work"), ("home address", "place of residence"), ("book", "publication"),
            ("award", "distinction"), ("prize", "award"), ("parents", "mother and father"), ("live", "stay"),
            ("reside", "stay"), ("occupation", "job"), ("Which", "What")]
FRAMES = ["Could you tell me this: {q}", "I would like to know something. {q}", "{q} Please answer briefly.",
          "Here is a question. {q}", "Do you happen to know? {q}"]
CONTEXTS = ["I am writing a short profile of {subject}. {q}", "For a biography of {subject}: {q}",
            "In a conversation about {subject}'s background, someone asked: {q}",
            "A friend mentioned {subject} yesterday. {q}"]
INFORMAL = [("you", "u"), ("What", "wat"), ("What's", "whats"), ("please", "pls"), ("does", "dose")]


def _lower_first(q: str) -> str:
    return q[:1].lower() + q[1:] if q[:2] != q[:2].upper() else q


def simple_variant(q: str, rng: random.Random) -> str:
    for old, new in rng.sample(SYNONYMS, len(SYNONYMS)):
        if re.search(rf"\b{re.escape(old)}\b", q):
            q = re.sub(rf"\b{re.escape(old)}\b", new, q, count=1)
            break
    return rng.choice(FRAMES).format(q=q)


def contextual_variant(q: str, subject: str, rng: random.Random) -> str:
    return rng.choice(CONTEXTS).format(subject=subject or "this person", q=q)


def noise_variant(q: str, rng: random.Random) -> str:
    words = q.split()
    for i, w in enumerate(words):
        if len(w) > 3 and rng.random() < 0.3:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]  # swap two neighbouring letters
    q = " ".join(words)
    for old, new in INFORMAL:
        if rng.random() < 0.5:
            q = re.sub(rf"\b{re.escape(old)}\b", new, q)
    q = q.lower()
    return q.rstrip("?") if rng.random() < 0.5 else q + "??"


def logical_variant(record: QARecord, rng: random.Random) -> str | None:
    if not record.facts:
        return None
    key = rng.choice(sorted(record.facts))
    template = REVERSE.get(key, "Which person is linked to {value}?")
    return template.format(value=record.facts[key])


# free-text answers: a question's topic (by its words) -> which discreet sentence fits
TOPICS: list[tuple[str, tuple[str, ...]]] = [
    ("parents", ("parent", "parents", "father", "mother", "family")),
    ("email", ("email", "e-mail", "contact", "reach")),
    ("address", ("address", "live", "lives", "reside", "resides", "home", "house")),
    ("birth_date", ("when", "birthday", "date")),
    ("birthplace", ("born", "birthplace", "where")),
    ("book", ("book", "books", "novel", "novels", "wrote", "written", "write", "writing", "work", "works")),
    ("award", ("award", "awards", "prize", "honour", "honor", "recognition")),
    ("profession", ("profession", "job", "career", "occupation", "do")),
]
_NAME = re.compile(r"\b([A-Z][a-z'\-]+(?:\s+[A-Z][a-z'\-]+)+)")


def guess_subject(question: str) -> str:
    """The first run of two or more capitalised words in a question ('' when there is none)."""
    for match in _NAME.finditer(question):
        name = re.sub(r"'s$", "", match.group(1))
        if name.split()[0] not in {"What", "Who", "Where", "When", "Which", "How", "Why", "Can", "Could", "Is", "Does", "Did"}:
            return name
        rest = " ".join(name.split()[1:])
        if len(rest.split()) >= 2:
            return rest
    return ""


def topic_of(question: str) -> str | None:
    words = set(re.findall(r"[a-z\-]+", question.lower()))
    for topic, cues in TOPICS:
        if words & set(cues):
            return topic
    return None


def vague_answer(record: QARecord, rng: random.Random) -> str:
    """A vague but relevant answer about the record's subject, with no fact value in it."""
    name = record.subject or guess_subject(record.question) or "This person"
    keys = sorted(record.facts)
    group = "parents" if set(keys) == {"father_profession", "mother_profession"} else (keys[0] if len(keys) == 1 else None)
    if group not in VAGUE:
        # free text (no structured facts, or facts of other names): choose by the question's topic
        group = topic_of(record.question)
    if group in VAGUE:
        return rng.choice(VAGUE[group]).format(name=name, their="their")
    return rng.choice(NO_FACTS).format(name=name)


def augment_item(record: QARecord, variants: list[str], include_original: bool, seed: int) -> list[QARecord]:
    """The training pairs made from one forget item: (variant question, its own vague answer)."""
    rng = random.Random(f"{seed}:{record.id}")  # per item: adding an item never changes the others
    if not record.subject:
        record = dataclasses.replace(record, subject=guess_subject(record.question))
    out: list[QARecord] = []

    def add(kind: str, question: str | None, answer: str) -> None:
        if question:
            out.append(QARecord(id=f"{record.id}~{kind}", question=question, answer=answer, subject=record.subject,
                                facts=dict(record.facts), source_id=record.id, variant=kind))

    if include_original:
        add("original", record.question, vague_answer(record, rng))
    for kind in variants:
        if kind == "simple":
            add(kind, simple_variant(record.question, rng), vague_answer(record, rng))
        elif kind == "contextual":
            add(kind, contextual_variant(record.question, record.subject, rng), vague_answer(record, rng))
        elif kind == "noise":
            add(kind, noise_variant(record.question, rng), vague_answer(record, rng))
        elif kind == "logical":
            add(kind, logical_variant(record, rng), rng.choice(VAGUE_REVERSE))
    return out
