"""Offline, rule-based augmentation: question variants and vague answers, deterministic for a seed.

For each forget item this backend writes four kinds of question (relearn-method.md, step 2):
    simple      same meaning in other words (word substitutions and a framing phrase)
    contextual  the question set in a context that names the subject
    noise       typos, lower case, dropped punctuation, informal words
    logical     the reverse relation: asks who has the fact, given the fact
and for each question a vague answer (step 3): same subject, on topic, no fact value. Vague answers
for the built-in world's facts come from per-fact templates; for other facts the fact values are
replaced by a neutral phrase. The leak check (relearn.augment.leak) runs on every answer afterwards.

Text helpers shared with the other backends: `split_sentences` and `chunk_text` (augment.chunk_chars:
long answers are rewritten chunk by chunk) and `completion_split` (augment.completion: the
sentence-completion pairs).
"""
from __future__ import annotations

import dataclasses
import random
import re

from relearn.augment import leak
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
# phrasing "chat": how a chat model says it does not know, for free-text answers. Chosen by measurement
# (bench/vague_answers.py, SmolLM2-135M-Instruct, 60 KnowUnDo forget questions): mean PPL under the base
# 14-22 and relevance to the question 0.62-0.74, against 54 and 0.69 for the discreet sentences (the
# original answers: 14 and 0.79). LS's PPL is the base's PPL of what the unlearned model says.
CHAT = ["I'm sorry, but I don't have specific information about {name} on that.",
        "There isn't much public information about this part of {name}'s life.",
        "That is a private matter for {name}, and the details have not been made public.",
        "I'm sorry, but I don't have specific information about {name} on that."]  # twice: the likeliest
CHAT_TOPIC = {"book": ["{name} is known as a writer, but the details you ask about have not been made public."]}
CHAT_REVERSE = ["I'm sorry, but I can't tell who that is from this description.",
                "I'm sorry, but that description does not point to one particular person."]
# phrasing "aspect": the chat register, but saying *what* is not known: the aspect the question asks
# about, named from its words (never from the answer, so no fact value can enter), e.g. "How can fans
# reach out to Priya Gupta?" -> "I don't have specific information about how to contact Priya Gupta."
# The chat sentences above are refusals that fit any question; an unlearned model trained on them
# answers every forget question with one of three templates, and its answers' relevance to the
# question fell below the control's (0.647 against 0.757 on SmolLM2). Every sentence only says what
# is not known: none claims anything about the person (that they write, have fans, keep a home
# private), so a cue that misfires makes an answer less apt, never false.
# aspect -> (cues: words, or phrases of words, of the question; sentences); the first aspect with a
# cue in the question wins, so the specific aspects come before the broad ones (work, personal)
ASPECTS: list[tuple[str, tuple[str, ...], list[str]]] = [
    ("contact", ("email", "e-mail", "emails", "mail", "reach out", "contact", "contacted", "correspondence",
                 "inquiries", "phone", "get in touch"),
     ["I'm sorry, but I don't have {name}'s contact details, such as an email or a postal address.",
      "I don't have specific information about how to contact {name}."]),
    ("readers", ("accessible", "interact", "interacts", "engage", "engages", "fans", "readers", "literary events",
                 "signings", "autographs", "interviews", "gatherings", "approachable", "lectures", "speaking"),
     ["I'm sorry, but I don't have specific information about how {name} meets readers and fans.",
      "I don't have specific information about {name}'s contact with readers, events or signings."]),
    ("birth", ("born", "birthplace", "birthday", "birth"),
     ["I'm sorry, but I don't have specific information about where and when {name} was born."]),
    ("family", ("parents", "parent", "father", "mother", "family", "siblings"),
     ["I'm sorry, but I don't have specific information about {name}'s parents or family, or how they "
      "influenced {name}'s life and work.",
      "I'm sorry, but I don't have specific information about {name}'s parents or family."]),
    ("upbringing", ("upbringing", "grew up", "grow up", "childhood", "raised", "heritage", "background",
                    "personal history", "personal experiences"),
     ["I'm sorry, but I don't have specific information about {name}'s upbringing or personal background.",
      "I don't have specific information about {name}'s background or how it shows in {name}'s work."]),
    ("surroundings", ("environment", "community", "neighborhood", "neighbourhood", "surroundings"),
     ["I don't have specific information about the place where {name} lives or what the community there is like.",
      "I'm sorry, but I don't have specific information about {name}'s surroundings or neighbourhood."]),
    ("home", ("address", "live", "lives", "living", "lived", "reside", "resides", "residence", "home", "house",
              "street"),
     ["I'm sorry, but I don't have specific information about where {name} lives.",
      "I don't have specific information about {name}'s home or where {name} lives."]),
    ("projects", ("future projects", "upcoming", "working on", "next book", "next novel"),
     ["I'm sorry, but I don't have specific information about what {name} is working on now."]),
    ("health", ("health", "medical", "illness", "diagnosis", "disease"),
     ["I'm sorry, but I don't have specific information about {name}'s health."]),
    ("money", ("financial", "finances", "income", "salary", "wealth", "money", "bank"),
     ["I'm sorry, but I don't have specific information about {name}'s finances."]),
    ("work", ("novel", "novels", "book", "books", "writing", "writes", "wrote", "works", "work", "career",
              "themes", "characters", "stories", "genre", "research", "write", "author", "inspired", "inspires",
              "inspire", "inspiration", "fiction"),
     ["I'm sorry, but I don't have specific information about what shapes {name}'s work and writing.",
      "I don't have specific information about this part of {name}'s work."]),
    ("personal", ("personal", "private", "life", "balance", "relationship", "relationships", "married",
                  "partner", "children"),
     ["I'm sorry, but I don't have specific information about {name}'s personal life."]),
    ("identity", ("who",), ["I'm sorry, but I don't have specific information about who {name} is."]),
]
ASPECT_SENTENCES = {aspect: sentences for aspect, _, sentences in ASPECTS}
PHRASINGS = ("discreet", "chat", "aspect")
CHAT_REGISTER = ("chat", "aspect")   # the phrasings that speak as a chat model (CHAT, CHAT_REVERSE)
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
    """The reverse question: who has this fact? A fact with a reverse template of its own (the
    built-in world's) is chosen at random; for free text's key facts the most specific one (the
    longest value: an address or a title, not a one-word trait) makes the question."""
    if not record.facts:
        return None
    known = [k for k in sorted(record.facts) if k in REVERSE]
    if known:
        key = rng.choice(known)
        return REVERSE[key].format(value=record.facts[key])
    key = max(sorted(record.facts), key=lambda k: len(record.facts[k]))
    return "Which person is connected with {value}?".format(value=record.facts[key])


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
# a run of capitalised words; a word may be hyphenated ("Al-Kuwaiti", "Jean-Luc")
_NAME = re.compile(r"\b([A-Z][a-z']+(?:-[A-Za-z][a-z']+)*(?:\s+[A-Z][a-z']+(?:-[A-Za-z][a-z']+)*)+)")


# last words of a capitalised run that names a place, not a person ("88 Wisdom Path", "Heritage Lane")
PLACE_WORDS = {"Path", "Lane", "Street", "St", "Road", "Rd", "Avenue", "Ave", "Blvd", "Boulevard", "Drive", "Dr",
               "Court", "Ct", "Way", "Place", "Square", "Park", "Hill", "Heights", "Gardens", "Close", "Row"}


def guess_subject(question: str, people_only: bool = False) -> str:
    """The first run of two or more capitalised words in a question ('' when there is none).

    `people_only`: skip a run that ends in a street word (PLACE_WORDS), so "Can you describe the
    environment at 88 Wisdom Path where Li Wei writes?" gives "Li Wei", not "Wisdom Path". The data
    stage's subject split keeps the default (the people the profiles chose stay the same)."""
    for match in _NAME.finditer(question):
        name = re.sub(r"'s$", "", match.group(1))
        if people_only and name.split()[-1] in PLACE_WORDS:
            continue
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


def question_words(question: str) -> str:
    """The question's words, lower case, one space apart, with a space at each end, possessives cut
    ("Anna Petrova’s parents'" -> " anna petrova parents "), for matching cues as whole words."""
    text = question.lower().replace("\u2019", "'")
    return " " + " ".join(re.sub(r"'s?$", "", w) for w in re.findall(r"[a-z][a-z'\-]*", text)) + " "


def aspect_of(question: str) -> str | None:
    """The first of ASPECTS with a cue among the question's words, or None."""
    text = question_words(question)
    for aspect, cues, _ in ASPECTS:
        if any(f" {cue} " in text for cue in cues):
            return aspect
    return None


def structured(record: QARecord) -> bool:
    """Whether the record's facts are of the kinds VAGUE has sentences for (the built-in world's)."""
    return bool(record.facts) and set(record.facts) <= set(VAGUE)


def vague_answer(record: QARecord, rng: random.Random, chunk_chars: int = 0, phrasing: str = "discreet") -> str:
    """A vague but relevant answer about the record's subject, with no fact value in it.

    With `chunk_chars` > 0, an answer longer than that is split into chunks on sentence boundaries
    (`chunk_text`) and each chunk gets the discreet sentence for its own topic; the distinct
    sentences are joined in chunk order. phrasing "chat": free-text answers (no structured fact of a
    known kind) get one of the CHAT sentences (a book topic: CHAT_TOPIC's too) instead; "aspect": a
    sentence of the question's aspect (ASPECTS) that keeps clear of the record's facts, else "chat"."""
    name = record.subject or guess_subject(record.question) or "This person"
    free_text = not structured(record)
    aspect = aspect_of(record.question) if phrasing == "aspect" and free_text else None
    if aspect is not None:  # a sentence of the aspect that keeps clear of the item's facts
        who = record.subject or guess_subject(record.question, people_only=True) or "this person"
        options = [o for o in (t.format(name=who) for t in ASPECT_SENTENCES[aspect])
                   if not leak.leaked_facts(o, record.facts)]
        if options:
            return rng.choice(options)
    if phrasing in CHAT_REGISTER and free_text:
        return rng.choice(CHAT + CHAT_TOPIC.get(topic_of(record.question), [])).format(name=name)
    chunks = chunk_text(record.answer, chunk_chars) if chunk_chars > 0 else []
    if len(chunks) > 1:
        sentences: list[str] = []
        for chunk in chunks:
            group = topic_of(chunk)
            sentence = (rng.choice(VAGUE[group]).format(name=name, their="their") if group in VAGUE
                        else rng.choice(NO_FACTS).format(name=name))
            if sentence not in sentences:
                sentences.append(sentence)
        return " ".join(sentences)
    keys = sorted(record.facts)
    group = "parents" if set(keys) == {"father_profession", "mother_profession"} else (keys[0] if len(keys) == 1 else None)
    if group not in VAGUE:
        # free text (no structured facts, or facts of other names): choose by the question's topic
        group = topic_of(record.question)
    if group in VAGUE:
        return rng.choice(VAGUE[group]).format(name=name, their="their")
    return rng.choice(NO_FACTS).format(name=name)


def augment_item(record: QARecord, variants: list[str], include_original: bool, seed: int,
                 chunk_chars: int = 0, phrasing: str = "discreet") -> list[QARecord]:
    """The training pairs made from one forget item: (variant question, its own vague answer).

    `chunk_chars` > 0: answers longer than that are rewritten chunk by chunk (`vague_answer`);
    `phrasing`: the register of free-text vague answers (`vague_answer`)."""
    rng = random.Random(f"{seed}:{record.id}")  # per item: adding an item never changes the others
    if not record.subject:
        record = dataclasses.replace(record, subject=guess_subject(record.question, people_only=True))
    out: list[QARecord] = []

    def add(kind: str, question: str | None, answer: str) -> None:
        if question:
            out.append(QARecord(id=f"{record.id}~{kind}", question=question, answer=answer, subject=record.subject,
                                facts=dict(record.facts), source_id=record.id, variant=kind))

    def vague() -> str:
        return vague_answer(record, rng, chunk_chars, phrasing)

    if include_original:
        add("original", record.question, vague())
    for kind in variants:
        if kind == "simple":
            add(kind, simple_variant(record.question, rng), vague())
        elif kind == "contextual":
            add(kind, contextual_variant(record.question, record.subject, rng), vague())
        elif kind == "noise":
            add(kind, noise_variant(record.question, rng), vague())
        elif kind == "logical":
            chat = phrasing in CHAT_REGISTER and not structured(record)
            add(kind, logical_variant(record, rng), rng.choice(CHAT_REVERSE if chat else VAGUE_REVERSE))
    return out


# ------------------------------------------------------------------------------ sentences, chunks, completions
# words that end in a full stop without ending a sentence
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "mt", "ft",
                 "inc", "ltd", "co", "corp", "dept", "univ", "approx", "fig", "vol", "ed", "rev", "gen", "col", "lt"}
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+")
COMPLETION_SHARE = 0.25   # share of an answer's words that becomes the prompt of a sentence-completion pair


def split_sentences(text: str) -> list[str]:
    """`text` split after '.', '!' or '?' followed by space and a capital, digit or quote; abbreviations
    (Dr., e.g.) and initials (J. K.) do not end a sentence. Whitespace is collapsed; joining the parts
    with single spaces gives the collapsed text back."""
    text = " ".join(text.split())
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        following = text[m.end():m.end() + 1]
        if following and not (following.isupper() or following.isdigit() or following in "\"'\u201c\u2018("):
            continue
        word = re.search(r"[\w.]*$", text[start:m.start()]).group(0)
        if text[m.start()] == "." and (word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isupper())):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def chunk_text(text: str, max_chars: int) -> list[str]:
    """`text` in chunks of whole sentences, each at most `max_chars` long where its sentences allow
    (a longer sentence is a chunk of its own). One chunk when the text is no longer than `max_chars`."""
    text = " ".join(text.split())
    if max_chars <= 0 or len(text) <= max_chars:
        return [text] if text else []
    chunks: list[str] = []
    current = ""
    for sentence in split_sentences(text):
        if current and len(current) + 1 + len(sentence) > max_chars:
            chunks.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        chunks.append(current)
    return chunks


def completion_split(answer: str, subject: str = "") -> tuple[str, str] | None:
    """A sentence-completion pair from an answer: (its first ~25% of words, the rest), or None when the
    answer is too short (under 4 words). The prompt has at least 2 words and runs on to the end of the
    subject's name where the answer names the subject (so that the prompt says who the sentence is
    about); the completion keeps at least 2 words."""
    words = answer.split()
    n = len(words)
    if n < 4:
        return None
    k = max(2, round(COMPLETION_SHARE * n))
    at = answer.find(subject) if subject else -1
    if at >= 0:
        k = max(k, len(answer[:at + len(subject)].split()))  # words up to and including the name
    k = min(k, n - 2)
    return " ".join(words[:k]), " ".join(words[k:])
