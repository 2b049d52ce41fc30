"""The output guard: a second line of defence that keeps erased facts out of served answers.

Unlearning changes the weights; a few fine-tuning steps or a jailbreak prompt can bring some of
what was removed back, and a served model answers whatever its weights hold. The guard checks
every answer against the facts the version was made to forget, and redacts them (or refuses).

What it holds. At register time `build_guard` takes the version's forget split (the forget set,
and with it every active erasure request's records: the data stage builds it from the ledger) and
extracts the key facts of each record exactly as the evaluator does (`record.facts` values, or
`relearn.evaluation.keyfacts.extract_key_facts`), normalised as the evaluator normalises
(`relearn.evaluation.scoring.normalise`). Each normalised word is stored only as a keyed hash,
HMAC-SHA256 under a random key made for that version (truncated to 96 bits): no fact is stored as
text, and hashes of two versions cannot be matched with each other. The record's subject (its
person) is stored the same way. A withdrawn request is not in the next version's forget split, so
it leaves the guard with that version. A *purged* request (relearn.ledger.core: its records deleted
once honoured) has its own guard, made at the purge under its own key; every later version's guard
carries it as a part (`parts`), so its facts stay out of answers without their text.

What it matches, in an answer (and for the subject, in the conversation before it):
- a fact of one word: that word, whole;
- a fact of several words (a leading "the"/"a"/"an" dropped): at least MULTIWORD_OVERLAP (0.8) of
  its words inside a window of its length + WINDOW_SLACK answer words (the evaluator's share rule,
  made local so that a stream can be checked with a bounded hold-back).
A *strong* fact, one that identifies by itself (an email, a URL, or two or more words with a digit:
an address, a phone number, a full date), is matched wherever it appears. Any other (a word, a
year, a name, a title, an award) only when its record's subject was named before it, in the
conversation or earlier in the answer: by every word of the name, or by its last word (the
surname). So "1978", "journalism" or "the Prize for Civic Science" are redacted in an answer about
the erased person, not in every answer that mentions a year, a profession or that prize, nor in
one about someone who shares only a first name. A fact the retain set states about the same person
(`build_guard(keep=...)`) is *asked*: it counts only in a conversation that asks its forget question
again (ASKED_OVERLAP of that question's word stems, less stopwords, filler and the name, also stored
as keyed hashes), and it is left out altogether when a retain question about the person asks the same.
KnowUnDo, for one, asks about the same authors in both sets: a guard holding their themes everywhere
redacted answers about their books, and one holding none let "Tel Aviv" (a birthplace, kept) answer
where an author lives (erased). A surname that someone in the retain set shares names the forgotten
person only with the whole name. That is what keeps the false-positive cost (KRR on the retain set)
near zero. A record without a subject takes the name its question asks about
(relearn.augment.rules.guess_subject); only when there is none is every fact of it strong.

Known limits (said in the docs): a misspelt fact is not matched (the evaluator's edit-distance rule
needs the text); a weak fact reached without naming its subject is not matched; an asked fact (one
the retain set states too) is not matched where its forget question is asked in other words; someone holding
both the hashes and the key can test guesses word by word, as they could query the model itself.

Actions: `redact` replaces each matched span (adjacent spans joined) with "[redacted]"; `refuse`
replaces the whole answer with a discreet refusal. `StreamGuard` does the same for a stream: it
holds back only from the first recent word that belongs to some fact and whose match window (the
fact's length + WINDOW_SLACK words) is not complete yet, and sends everything before it; a stream
that names no fact word is sent word by word, as fast as it is generated.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from relearn.evaluation.keyfacts import STOPWORDS as _STOP
from relearn.records import QARecord

FORMAT = 2
READS = (1, 2)   # format 1: no asked facts (every fact guarded in any conversation)
GUARD_FILE, KEY_FILE = "guard.json", "guard.key"
DIGEST_BYTES = 12
WINDOW_SLACK = 2
MULTIWORD_OVERLAP = 0.8   # relearn.evaluation.keyfacts' share rule for a fact of several words
REDACTED = "[redacted]"
REFUSAL = "I can't share that information."
ACTIONS = ("redact", "refuse")
ARTICLES = ("the", "a", "an")
ASKED_OVERLAP = 0.5   # of a forget question's own words, the share a conversation must hold to ask it again
ASK_FILLER = frozenset({"describe", "tell", "explain", "name", "give", "know", "share", "provide", "please",
                        "information", "detail", "details", "mention", "list", "can", "could"})


def _tokens(text: str) -> list[tuple[int, int, str]]:
    """(start, end, normalised word) for each run of letters and digits, as normalise() splits them."""
    out = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isalnum():
            j = i
            while j < n and text[j].isalnum():
                j += 1
            for word in unicodedata.normalize("NFKC", text[i:j]).lower().split():
                word = "".join(ch for ch in word if ch.isalnum())
                if word:
                    out.append((i, j, word))
            i = j
        else:
            i += 1
    return out


def _words(text: str) -> list[str]:
    return [w for _, _, w in _tokens(text)]


@dataclass(frozen=True)
class _Fact:
    words: tuple[str, ...]       # hashes, in order
    subject: int                 # index into Guard.subjects, -1 when the record has none
    strong: bool
    asks: tuple[str, ...] = ()   # hashes of its forget question's own words: guarded only when it is asked


@dataclass
class Guard:
    """A version's guard: keyed hashes of its forget facts (see the module docstring)."""
    key: bytes
    facts: list[_Fact]
    subjects: list[tuple[str, ...]]            # hashes of each subject's name words
    records: int = 0
    whole_name: set[int] = field(default_factory=set)   # subjects whose surname alone does not name them
    kept: int = 0                              # facts left out: the retain set states them and asks the same
    requests: list[str] = field(default_factory=list)
    parts: list["Guard"] = field(default_factory=list)   # carried guards (purged requests), each its own key
    _by_word: Optional[dict[str, list[int]]] = field(default=None, init=False, repr=False, compare=False)
    _reach: Optional[dict[str, int]] = field(default=None, init=False, repr=False, compare=False)
    _context: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ hashing
    def _h(self, word: str) -> str:
        return hmac.new(self.key, word.encode("utf-8"), hashlib.sha256).digest()[:DIGEST_BYTES].hex()

    def _index(self) -> dict[str, list[int]]:
        """word hash -> the facts holding it (built once)."""
        if self._by_word is None:
            self._by_word = {}
            for n, fact in enumerate(self.facts):
                for h in set(fact.words):
                    self._by_word.setdefault(h, []).append(n)
        return self._by_word

    @property
    def asked(self) -> int:
        """How many facts are asked facts (guarded only where their forget question is asked)."""
        return sum(bool(f.asks) for f in self.facts)

    @property
    def holdback(self) -> int:
        """The most words a stream can keep back: a match reaches at most this far after its first word."""
        longest = max((len(f.words) for f in self.facts), default=1)
        return max([longest + WINDOW_SLACK] + [part.holdback for part in self.parts])

    def _reaches(self) -> dict[str, int]:
        """word hash -> how many words from it a match that holds it can span: 1 for a one-word fact (decided
        once the word is whole), the fact's length + WINDOW_SLACK for a longer one (the window of `spans`)."""
        if self._reach is None:
            self._reach = {}
            for fact in self.facts:
                reach = 1 if len(fact.words) == 1 else len(fact.words) + WINDOW_SLACK
                for h in fact.words:
                    self._reach[h] = max(reach, self._reach.get(h, 0))
        return self._reach

    def open_from(self, words: list[str]) -> int:
        """Of a stream's complete normalised `words`, the index of the first that a match could still
        redact once more words come: a fact's word whose window runs past the last word. len(words) when
        none is (everything is final). Words before it are redacted now or never: a span starts at a fact
        word and ends inside that word's window (`spans`)."""
        n = len(words)
        first = n
        reaches = self._reaches()
        for i in range(max(0, n - self.holdback), n):  # a window reaches back at most `holdback` words
            if i + reaches.get(self._h(words[i]), 0) > n:
                first = i
                break
        return min([first] + [part.open_from(words) for part in self.parts])

    # ------------------------------------------------------------------ matching
    def spans(self, text: str, context: str = "") -> tuple[list[tuple[int, int]], int]:
        """(character spans of `text` to redact, merged and sorted; number of facts matched).

        `context` is the conversation before the answer (the user's messages): a weak fact counts
        when its subject is named there or earlier in `text`.
        """
        spans, matched = self._own_spans(text, context)
        for part in self.parts:
            more, n = part.spans(text, context)
            spans, matched = spans + more, matched + n
        return _merge(text, sorted(spans)), matched

    def _context_hashes(self, context: str) -> tuple[set[str], set[str]]:
        """(hashes of the context's words, hashes of their stems when some fact is asked), for the last
        context seen: a stream checks the same conversation at every delta."""
        cached = self._context
        if cached is not None and cached[0] == context:
            return cached[1], cached[2]
        words = _words(context or "")
        named = {self._h(w) for w in words}
        asking = {self._h(_stem(w)) for w in words} if self.asked else set()
        self._context = (context, named, asking)   # one assignment: safe to share between threads
        return named, asking

    def _own_spans(self, text: str, context: str) -> tuple[list[tuple[int, int]], int]:
        tokens = _tokens(text)
        hashes = [self._h(w) for _, _, w in tokens]
        named_before, asking = self._context_hashes(context)

        def asked(fact: _Fact) -> bool:
            """A fact the retain set states counts only in a conversation that asks its forget question."""
            return not fact.asks or len(set(fact.asks) & asking) + 1e-9 >= ASKED_OVERLAP * len(fact.asks)
        first_seen: dict[str, int] = {}
        for i, h in enumerate(hashes):
            first_seen.setdefault(h, i)

        def subject_named(fact: _Fact, end: int) -> bool:
            if fact.strong or fact.subject < 0:
                return True
            name = self.subjects[fact.subject]
            seen = [h in named_before or first_seen.get(h, end + 1) <= end for h in name]
            # the whole name, or the surname unless someone the version keeps shares it
            return all(seen) or (seen[-1] and fact.subject not in self.whole_name)

        redact: set[int] = set()
        matched = 0
        where: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            where.setdefault(h, []).append(i)
        candidates = sorted({n for h in where for n in self._index().get(h, ())})
        for fact in (self.facts[n] for n in candidates):
            hit = False
            if not asked(fact):
                continue
            if len(fact.words) == 1:
                for i in where.get(fact.words[0], []):
                    if subject_named(fact, i):
                        redact.add(i)
                        hit = True
            else:
                need = MULTIWORD_OVERLAP * len(fact.words)
                wanted = set(fact.words)
                starts = sorted({i for w in wanted for i in where.get(w, [])})
                size = len(fact.words) + WINDOW_SLACK
                for start in starts:
                    window = range(start, min(start + size, len(hashes)))
                    inside = [i for i in window if hashes[i] in wanted]
                    if len({hashes[i] for i in inside}) + 1e-9 < need or not subject_named(fact, inside[-1]):
                        continue
                    content = [i for i in inside if tokens[i][2] not in _STOP] or inside
                    redact.update(range(content[0], content[-1] + 1))
                    hit = True
            matched += hit
        return [(tokens[i][0], tokens[i][1]) for i in sorted(redact)], matched

    def redact(self, text: str, context: str = "", action: str = "redact") -> tuple[str, int]:
        """(`text` with the matched facts redacted, or the refusal; number of facts matched)."""
        spans, matched = self.spans(text, context)
        if not matched:
            return text, 0
        if action == "refuse":
            return REFUSAL, matched
        return _render(text, spans), matched

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """guard.json (hashes, counts) and guard.key (the key, hex) in `directory`, each written whole."""
        from relearn.io import write_json

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / GUARD_FILE, {   # format 1 when nothing needs 2: older servers still read it
            "format": FORMAT if self.asked else 1, "algorithm": f"hmac-sha256/{DIGEST_BYTES * 8}", "facts": len(self.facts),
            "records": self.records, "requests": self.requests, "subjects": [list(s) for s in self.subjects],
            "whole_name": sorted(self.whole_name), "kept": self.kept,
            "asked": self.asked,
            "entries": [{"words": list(f.words), "subject": f.subject, "strong": f.strong,
                         **({"asks": list(f.asks)} if f.asks else {})} for f in self.facts]})
        tmp = out / f".{KEY_FILE}.tmp"
        tmp.write_text(self.key.hex() + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        tmp.replace(out / KEY_FILE)
        for n, part in enumerate(self.parts):
            part.save(out / "carried" / str(n))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Guard":
        d = Path(directory)
        data = json.loads((d / GUARD_FILE).read_text(encoding="utf-8"))
        if data.get("format") not in READS:
            raise ValueError(f"{d / GUARD_FILE}: guard format {data.get('format')!r}, this relearn reads "
                             f"{', '.join(map(str, READS))}")
        key = bytes.fromhex((d / KEY_FILE).read_text(encoding="utf-8").strip())
        facts = [_Fact(tuple(e["words"]), int(e["subject"]), bool(e["strong"]), tuple(e.get("asks", ())))
                 for e in data["entries"]]
        carried = sorted((p for p in (d / "carried").glob("*") if p.is_dir()), key=lambda p: int(p.name)) \
            if (d / "carried").is_dir() else []
        return cls(key=key, facts=facts, subjects=[tuple(s) for s in data["subjects"]],
                   records=int(data.get("records", 0)), requests=list(data.get("requests", [])),
                   whole_name=set(data.get("whole_name", [])), kept=int(data.get("kept", 0)),
                   parts=[cls.load(p) for p in carried])

    def summary(self) -> dict:
        """Counts, the carried parts (purged requests) included."""
        own = {"facts": len(self.facts), "strong": sum(f.strong for f in self.facts),
               "subjects": len(self.subjects), "records": self.records, "requests": len(self.requests),
               "asked": self.asked, "kept_public": self.kept}
        for part in self.parts:
            for key, value in part.summary().items():
                if key != "purged":
                    own[key] += value
        own["purged"] = sum(len(part.requests) for part in self.parts)
        return own


def _merge(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join spans separated only by punctuation or spaces on one line ("mara.v12@post.example")."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and all(not ch.isalnum() and ch != "\n" for ch in text[out[-1][1]:start]):
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def _render(text: str, spans: list[tuple[int, int]]) -> str:
    parts, last = [], 0
    for start, end in spans:
        parts += [text[last:start], REDACTED]
        last = end
    parts.append(text[last:])
    return "".join(parts)


def record_facts(record: QARecord) -> list[str]:
    """The facts of a record the way the evaluator scores it (relearn.evaluation.scoring)."""
    from relearn.evaluation.keyfacts import extract_key_facts

    if record.facts:
        return [str(v) for v in record.facts.values()]
    question = f"{record.question}\n{record.subject}" if record.subject else record.question
    return extract_key_facts(record.answer, question)


def version_guard(records: Iterable[QARecord], requests: Iterable[str] = (), ledger_dir: Optional[str] = None,
                  keep: Iterable[QARecord] = ()) -> Guard:
    """The guard a version carries: its forget split's facts less what `keep` (the retain set) states,
    and the guards of the ledger's purged requests (data.requests; None: no ledger)."""
    guard = build_guard(records, requests, keep=keep)
    if ledger_dir:
        from relearn.ledger.core import Ledger

        guard.parts = Ledger(ledger_dir).purged_guards()
    return guard


def _subject(record: QARecord) -> str:
    """Who a record is about; sources without a subject field (KnowUnDo, TOFU): the person its question
    names, as the data stage guesses it."""
    from relearn.augment.rules import guess_subject

    return record.subject or guess_subject(record.question)


def _name_words(who: str) -> list[str]:
    return [w for w in _words(who) if len(w) >= 3 and w not in _STOP]


def _kept_words(keep: Iterable[QARecord]) -> tuple[dict[tuple[str, ...], list[set[str]]], dict[str, set[tuple]],
                                                   dict[tuple[str, ...], list[set[str]]]]:
    """What the retain set says: each person's records as word sets, who holds each surname, and each
    person's retain questions as word sets."""
    said: dict[tuple[str, ...], list[set[str]]] = {}
    surnames: dict[str, set[tuple]] = {}
    questions: dict[tuple[str, ...], list[set[str]]] = {}
    for record in keep:
        name = tuple(_name_words(_subject(record)))
        said.setdefault(name, []).append(set(_words(record.question)) | set(_words(record.answer)))
        questions.setdefault(name, []).append({_stem(w) for w in _words(record.question)})
        if name:
            surnames.setdefault(name[-1], set()).add(name)
    return said, surnames, questions


def _asked_words(question: str, name: tuple[str, ...]) -> list[str]:
    """What a question asks, as word stems: its own words less stopwords, question filler and the person's
    name ("Describe the area where Isaac Goldberg lives." -> area, liv)."""
    return sorted({_stem(w) for w in _words(question) if len(w) >= 3 and w not in _STOP and w not in ASK_FILLER
                   and w not in name})


_ENDINGS = (("ies", "y"), ("ied", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""), ("e", ""))


def _stem(word: str) -> str:
    """A crude stem, so that "lives", "live", "lived" and "living" ask alike: common endings taken off
    ("ies"/"ied" -> "y": "studied" and "study" alike) while at least three letters stay and what stays
    is not a stopword ("themes" -> "theme", not "them"); "addresses" and "address" both give "addr"."""
    while True:
        for ending, replacement in _ENDINGS:
            stem = word[:-len(ending)] + replacement
            if word.endswith(ending) and len(word) - len(ending) >= 3 and stem not in _STOP:
                word = stem
                break
        else:
            return word


def _asks_too(asks: list[str], questions: list[set[str]]) -> bool:
    """Whether one of `questions` (a retain record's) asks what `asks` does (ASKED_OVERLAP of its words)."""
    return any(len(set(asks) & q) + 1e-9 >= ASKED_OVERLAP * len(asks) for q in questions)


def _stated(words: list[str], statements: list[set[str]]) -> bool:
    """A fact one retain record states: all of a one-word fact, MULTIWORD_OVERLAP of a longer one."""
    need = MULTIWORD_OVERLAP * len(set(words)) if len(words) > 1 else 1
    return any(len(set(words) & said) + 1e-9 >= need for said in statements)


def build_guard(records: Iterable[QARecord], requests: Iterable[str] = (), key: Optional[bytes] = None,
                keep: Iterable[QARecord] = ()) -> Guard:
    """A guard over the key facts of `records` (the forget split), under a new random key.

    `keep` is what the version must go on saying (the retain set). A fact that a retain record about the
    same person states is guarded only where its forget question is asked (its `asks`), and left out when
    a retain question about that person asks the same: KnowUnDo, for one, asks about the same authors in
    both sets (their parents and addresses to forget, their books and themes to keep), and a guard holding
    "historical" for such an author everywhere redacts it from every answer about their work. A surname that someone in the
    retain set shares (Samuel and Sarah Johnson) no longer names the forgotten person alone."""
    key = key if key is not None else secrets.token_bytes(32)
    guard = Guard(key=key, facts=[], subjects=[], requests=sorted(requests))
    subject_index: dict[tuple[str, ...], int] = {}
    seen: set[tuple] = set()
    records = list(records)
    said, surnames, kept_questions = _kept_words(keep)

    for record in records:
        subject = -1
        plain = tuple(_name_words(_subject(record)))
        name = tuple(guard._h(w) for w in plain)
        if name:
            subject = subject_index.setdefault(name, len(guard.subjects))
            if subject == len(guard.subjects):
                guard.subjects.append(name)
                if surnames.get(plain[-1], set()) - {plain}:
                    guard.whole_name.add(subject)
        for fact in record_facts(record):
            words = _fact_words(fact)
            if not words or all(w in _STOP for w in words):
                continue
            asks: tuple[str, ...] = ()
            if plain and _stated(words, said.get(plain, [])):
                # the retain set says it too: guard it only where the forget question is asked, and not
                # at all if a retain question about the person asks the same (its answer must stay whole)
                asked = _asked_words(record.question, plain)
                if not asked or _asks_too(asked, kept_questions.get(plain, [])):
                    guard.kept += 1
                    continue
                asks = tuple(sorted(guard._h(w) for w in asked))
            strong = not asks and (subject < 0 or _identifying(fact, words))
            entry = _Fact(tuple(guard._h(w) for w in words), subject, strong, asks)
            if (entry.words, entry.subject, entry.asks) not in seen:
                seen.add((entry.words, entry.subject, entry.asks))
                guard.facts.append(entry)
    guard.records = len(records)
    return guard


def stated_by_keep(record: QARecord, keep: Iterable[QARecord]) -> list[str]:
    """The facts of `record` (as the evaluator extracts them) that a record of `keep` about the same person
    states: the guard holds them only where the record's question is asked (or, when a retain question asks
    the same, not at all), so a guarded miss made of them is by design. KnowUnDo's forget
    and retain sets overlap like this ("lives in a technologically advanced neighbourhood in Tel Aviv" to
    forget, "born in Tel Aviv, ... a technologically advanced society" to keep)."""
    said, _, _ = _kept_words(keep)
    statements = said.get(tuple(_name_words(_subject(record))), [])
    return [fact for fact in record_facts(record)
            if (words := _fact_words(fact)) and statements and _stated(words, statements)]


def _fact_words(fact: str) -> list[str]:
    """A fact's normalised words, a leading article of a longer fact dropped (as the evaluator scores it)."""
    words = _words(fact)
    return words[1:] if len(words) > 1 and words[0] in ARTICLES else words


def _identifying(fact: str, words: list[str]) -> bool:
    """A fact that identifies by itself: an email, a URL, or several words with a digit."""
    lowered = fact.lower()
    return ("@" in fact or "://" in fact or lowered.startswith("www.")
            or (len(words) >= 2 and any(ch.isdigit() for ch in fact)))


class StreamGuard:
    """The guard over a stream of text deltas: `feed(delta)` and `finish()` return what may be sent.

    Everything sent is final: a word is sent only when no match can still reach back to it (no fact's
    word before it has an open window: `Guard.open_from`), and never right after a redacted span (a
    span still growing would join it). With `refuse`, the first match ends the stream with the refusal (`refused`).
    """

    def __init__(self, guard: Guard, context: str = "", action: str = "redact"):
        if action not in ACTIONS:
            raise ValueError(f"guard action must be one of {ACTIONS}, got {action!r}")
        self.guard, self.context, self.action = guard, context, action
        self.raw, self.sent = "", ""
        self.matched = 0
        self.refused = False

    def feed(self, delta: str) -> str:
        if self.refused:
            return ""
        self.raw += delta
        spans, matched = self.guard.spans(self.raw, self.context)
        if matched and self.action == "refuse":
            return self._refuse(matched)
        tokens = _tokens(self.raw)
        complete = [t[2] for t in tokens if t[1] < len(self.raw)]
        cut_at = self.guard.open_from(complete)
        if cut_at <= 0:
            return ""
        self.matched = matched
        stable = tokens[cut_at][0] if cut_at < len(tokens) else len(self.raw)
        moved = True
        while moved:  # never inside a span, nor right after one
            moved = False
            for start, end in spans:
                if start < stable <= _after(self.raw, end):
                    stable, moved = start, True
        return self._emit(_render(self.raw[:stable], [s for s in spans if s[1] <= stable]))

    def finish(self) -> str:
        if self.refused:
            return ""
        spans, matched = self.guard.spans(self.raw, self.context)
        if matched and self.action == "refuse":
            return self._refuse(matched)
        self.matched = matched
        return self._emit(_render(self.raw, spans))

    def _emit(self, rendered: str) -> str:
        if not rendered.startswith(self.sent):  # cannot happen while spans are final; never resend
            raise RuntimeError("stream guard: the text already sent changed")
        out, self.sent = rendered[len(self.sent):], rendered
        return out

    def _refuse(self, matched: int) -> str:
        self.refused, self.matched = True, matched
        return (" " if self.sent and not self.sent.endswith((" ", "\n")) else "") + REFUSAL


def _after(text: str, end: int) -> int:
    """The end of the separator after position `end` (where a following span would join)."""
    while end < len(text) and not text[end].isalnum() and text[end] != "\n":
        end += 1
    return end

