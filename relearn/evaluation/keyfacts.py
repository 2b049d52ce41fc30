"""Key facts of a free-text ground-truth answer, and a fuzzy test of whether an answer still holds one.

Records from TOFU and KnowUnDo carry no structured `facts`, only a short answer such as
"Isabella Marquez can be contacted via email at isabella.marquez@futuramail.es." The paper scores
them by the share of the ground truth's key entities found, fuzzily, in the model's answer; this
module supplies both halves without any model or download, deterministically (same input, same
output, in the same order).

extract_key_facts(answer, question="") -> list[str]
--------------------------------------------------
Candidates are taken from `answer` by these rules, in this priority order; a candidate that
overlaps (in characters of `answer`) a candidate accepted by an earlier rule is discarded, so a
date is not also a number and an email is not also a name:

 1. email      local@domain.tld ("isabella.marquez@futuramail.es"); a trailing "." is not part of it.
 2. URL        "http://...", "https://..." or "www...." up to the next space, trailing ".,;:!?)" cut.
 3. title      text in double quotes "..." / “...”, or single quotes '...' / ‘...’ where the opening
               quote does not follow a letter or digit and the closing one is not followed by one
               (so the apostrophes of "Marquez's" or "don't" never open a title); 1 to 12 words,
               at least one letter. The fact is the quoted text without the quotes and without
               trailing ".,;:!?" ("The Alleyway Witches," gives "The Alleyway Witches").
 4. date       month-name dates: "March 3, 1978", "3 March 1978", "3rd of March, 1978",
               "March 1978", "March 3rd" (capitalised full or three-letter month names, "Sept"
               too, optional "." after the abbreviation, ordinals st/nd/rd/th; "may 3" is no
               date); numeric dates "12/03/1978", "12-03-78", "12.03.1978", "1978-03-12". A lone
               year is rule 6 (a number).
 5. address    a number of 1 to 6 digits (optionally one letter: "12B") followed, across white
               space only, by one or more capitalised words that are not stopwords
               ("76218 Walter Village", "1000 Glacier Rd", "88 Crown Colony Rd"). It stops at the
               first other word and at any punctuation ("12 St. James Street" gives "12 St", and
               "James Street" is a name); a possessive is cut; a city after a comma is a separate
               fact. "in 1990 The Times ..." is no address ("The" is a stopword).
 6. number     a run of digits, with inner "." or "," groups and an optional ordinal suffix
               ("1978", "3.5", "12,000", "21st"), not part of a longer word ("v12" is not one).
 7. acronym    a word of 2 or more letters/digits, all upper-case letters, at least two letters
               ("KGB", "NASA").
 8. name       a sequence of two or more capitalised words (first character upper-case; hyphens and
               apostrophes inside a word are kept: "Al-Farsi", "O'Connor"), where the connectors
               of/the/for/de/la/le/del/della/da/di/du/des/van/von/der/den/al/el/bin/ibn/y/upon may
               join two capitalised words ("University of Edinburgh",
               "Vantorre Prize for Civic Science"). A possessive "'s"/"’s" is cut from the last
               word; stopwords at either end are cut ("In New Delhi" -> "New Delhi",
               "The Silent Harbour" -> "Silent Harbour"). What is left must still hold two or more
               capitalised words. Words in a sequence are separated by white space only, so
               punctuation ends it ("Edinburgh, Scotland" is two single words) and so does a
               possessive ("Marquez's Father" gives "Marquez" alone, i.e. nothing). A sentence's
               first word is capitalised by grammar, not because it is a name, so it only counts
               when the sequence continues ("Isabella Marquez's father ..." gives
               "Isabella Marquez"; "Living at ..." gives nothing); a single capitalised word,
               anywhere, is left to rule 9 (lower-cased).
 9. rare word  any other word (letters and digits, split at hyphens; a possessive "'s" cut),
               lower-cased, of length >= 4, containing a letter, not in STOPWORDS, not a lower-case
               contraction ("didn't"), and not in the question: its crude stem (`_stem`: the first
               of the suffixes ings/ing/ers/er/ies/ied/ed/es/s/ly/e that ends the word is removed,
               "ies"/"ied" becoming "y", when at least 3 characters remain) differs from the stem
               of every word of the question. So "inspiring" is dropped by a question asking what
               "inspired" her. A rare word whose stem is the stem of a word of GENERIC_WORDS
               (father, mother, author, novels, influenced, email, rich, ...: words of biographical
               prose that describe anyone) is a *generic* word: it is kept only when the answer
               yields no other fact at all ("... can be contacted via his email" gives ["email"]).

Then, in this order:
 - Question filter: a candidate from rules 1-8 is dropped when fact_revealed(question, candidate)
   (its normalised words occur, as whole words, in the normalised question; see
   relearn.evaluation.scoring.normalise), and a name or title is also dropped when every one of its
   normalised words occurs in the question ("Marquez Isabella" for a question about Isabella
   Marquez). The subject's name is usually in the question and is not a fact to forget.
 - De-duplication: candidates with the same normalised form are kept once (first appearance), and
   a candidate whose normalised form occurs as whole words inside another kept candidate's
   (that has more words) is dropped: a word of an extracted name, or a year also given in a full
   date, is not a separate fact.
 - Cap: at most MAX_FACTS (12) facts. When there are more, facts from rules 1-8 are preferred
   to rare words, and within each group earlier ones to later ones.
 - The result is ordered by first appearance in `answer`. Each fact is returned as it is written
   in the answer (after the cuts above), e.g. "March 3, 1978", "isabella.marquez@futuramail.es".

fuzzy_found(answer, fact) -> bool
---------------------------------
True when any of:
 a. exact: fact_revealed(answer, fact) (the normalised fact occurs in the normalised answer as
    whole words; a leading article of the fact is ignored);
 b. multi-word facts (two or more normalised words, leading article dropped): at least 80% of the
    fact's words (counted with repetition) are words of the answer, in any order
    ("Vantorre Prize for Civic Science" is found by "the Civic Science Prize of Vantorre"; 4 of
    5 words is enough, 3 of 4 is not);
 c. single-word facts of 6 or more characters, letters only: some word of the answer has
    difflib.SequenceMatcher ratio >= 0.85 with it (a typo or an inflection: "astrobiologst" or
    "astrobiologists" for "astrobiologist", "Vasquez" for "Vazquez"; not "engineering" for
    "engineer", ratio 0.84). Shorter words must match exactly ("nurses" does not reveal "nurse").
    Words with digits are never matched fuzzily: "1979" does not reveal "1978", and "12" is not
    in "123".
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from functools import lru_cache

from relearn.evaluation.scoring import fact_revealed, normalise

MAX_FACTS = 12
MULTIWORD_OVERLAP = 0.8
FUZZY_MIN_LENGTH = 6
FUZZY_RATIO = 0.85
RARE_MIN_LENGTH = 4

# Compact English stopword list: function words, auxiliaries, pronouns, common adverbs and
# connectives, plus a few generic words of biographical prose that carry no fact of their own
# ("renowned", "known", "deeply", ...). Only words of length >= 4 matter to rule 9, but the short
# ones are listed too because names are trimmed of stopwords at either end.
STOPWORDS = frozenset("""
a about above across after again against all almost along already also although always am among
an and another any anyone anything are around as at be became because become becomes been before
being below beside besides between both but by can cannot could did do does doing done down during
each either else enough even ever every everyone everything few for from further had has have
having he her here hers herself him himself his how however i if in including indeed instead into
is it its itself just least less let like made make makes making many may maybe me might more most
much must my myself near nearly neither never no nor not now of off often on once one only onto or
other others otherwise our ours ourselves out over own per perhaps quite rather really same she
should since so some someone something sometimes still such than that the their theirs them
themselves then there therefore these they this those though through throughout thus to together
too toward towards under until up upon us very via was we well were what whatever when whenever
where whereas wherever whether which while who whom whose why will with within without would yet
you your yours yourself yourselves
able
known renowned famous notable celebrated acclaimed respected esteemed prominent
despite regarding beyond deeply greatly highly widely particularly especially notably significantly largely truly
various several certain particular different unique
""".split())

# Generic words of biographical and literary prose: they describe anyone and identify no one, so a
# vague answer in the same register ("her father and mother influenced her writing") must not count
# as revealing them. Used by rule 9 only, compared by `_stem` (so inflections are covered:
# "influence", "influenced", "influences").
GENERIC_WORDS = frozenset("""
father mother parent family child children born life live career person people
author writer write work book novel story literature literary narrative theme reader fan genre
character influence inspire inspiration contribution experience background approach style
email contact address information detail private public
rich deep complex significant vibrant profound captivating intricate prestigious outstanding
provide include explore reflect blend incorporate feature
""".split())

# Words that may join two capitalised words inside a name or title.
NAME_CONNECTORS = frozenset(
    "of the for de la le del della da di du des van von der den al el bin ibn y upon".split())

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_YEAR = r"\d{4}"

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?://|www\.)[^\s]+", re.IGNORECASE)
_TITLE = re.compile(r"\"([^\"\n]+)\"|“([^”\n]+)”"                          # "..." and “...”
                    r"|(?<![^\W_])'([^'\n]+)'(?![^\W_])|(?<![^\W_])‘([^’\n]+)’(?![^\W_])")  # '...', ‘...’
_DATE = re.compile(
    r"(?<![\w])(?:"
    rf"{_MONTH}\s+{_DAY},?\s+{_YEAR}"                 # March 3, 1978
    rf"|{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}"     # 3 March 1978, 3rd of March, 1978
    rf"|{_MONTH},?\s+{_YEAR}"                         # March 1978
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?!\d)"   # March 3rd
    r"|\d{4}-\d{1,2}-\d{1,2}"                         # 1978-03-12
    r"|\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})"       # 12/03/1978, 12-03-78
    r")(?![\w])")
_ADDRESS_NUMBER = re.compile(r"(?<![\w.,/-])\d{1,6}[A-Za-z]?(?![\w])")
_NUMBER = re.compile(r"(?<![\w.,/-])\d+(?:[.,]\d+)*(?:st|nd|rd|th)?(?![\w])")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")          # rare-word tokens: split at hyphens
_NAME_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")   # name tokens: keep "Al-Farsi", "O'Connor"
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
_SUFFIXES = (("ings", ""), ("ing", ""), ("ers", ""), ("er", ""), ("ies", "y"), ("ied", "y"), ("ed", ""),
             ("es", ""), ("s", ""), ("ly", ""), ("e", ""))

# candidate groups: rules 1-8 are "structured", rule 9 "rare", generic rare words "generic"
_STRUCTURED, _RARE, _GENERIC = 0, 1, 2


def _stem(word: str) -> str:
    """Crude stem for comparing a rare word with generic and question words: lower-case, then
    replace the first of _SUFFIXES that ends the word ("ies"/"ied" -> "y", the others -> "") if at
    least 3 characters remain before it."""
    word = word.lower()
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + replacement
    return word


_GENERIC_STEMS = frozenset(_stem(w) for w in GENERIC_WORDS)


def _is_cap(token: str) -> bool:
    return token[:1].isupper()


def _words(text: str) -> list[str]:
    """normalise(text) as a list of words."""
    return normalise(text).split()


class _Spans:
    """Character spans of `answer` already taken by accepted candidates."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def free(self, start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in self.spans)

    def take(self, start: int, end: int) -> None:
        self.spans.append((start, end))


def _address_spans(answer: str) -> list[tuple[int, int]]:
    """Rule 5: (start, end) of a house number followed by capitalised words that are not stopwords,
    separated by white space only; a possessive is cut and ends the address."""
    out = []
    for m in _ADDRESS_NUMBER.finditer(answer):
        end, pos, n_words = m.end(), m.end(), 0
        while True:
            gap = re.match(r"\s+", answer[pos:])
            if not gap:
                break
            word = _NAME_WORD.match(answer, pos + gap.end())
            if not word or not _is_cap(word.group()) or word.group().lower() in STOPWORDS:
                break
            n_words += 1
            possessive = _POSSESSIVE.search(word.group())
            end = pos = word.end() - (len(possessive.group()) if possessive else 0)
            if possessive:
                break
        if n_words:
            out.append((m.start(), end))
    return out


def _name_candidates(answer: str) -> list[tuple[int, int, str]]:
    """Rule 8: (start, end, text) of capitalised-word sequences, trimmed and checked."""
    tokens = [(m.start(), m.end(), m.group()) for m in _NAME_WORD.finditer(answer)]
    out = []
    i = 0
    while i < len(tokens):
        if not _is_cap(tokens[i][2]):
            i += 1
            continue
        # grow a run: capitalised words separated only by spaces, connectors allowed inside
        run = [i]
        j = i + 1
        while j < len(tokens):
            gap = answer[tokens[j - 1][1]:tokens[j][0]]
            if not gap.isspace() or _POSSESSIVE.search(tokens[j - 1][2]):
                break  # punctuation, or "Marquez's father": a possessive ends the name
            word = tokens[j][2]
            if _is_cap(word):
                run.append(j)
                j += 1
                continue
            # connector(s) followed by a capitalised word
            k = j
            while k < len(tokens) and tokens[k][2].lower() in NAME_CONNECTORS and not _is_cap(tokens[k][2]) \
                    and answer[tokens[k - 1][1]:tokens[k][0]].isspace():
                k += 1
            if k > j and k < len(tokens) and _is_cap(tokens[k][2]) and answer[tokens[k - 1][1]:tokens[k][0]].isspace():
                run.extend(range(j, k + 1))
                j = k + 1
                continue
            break
        i = j
        words = [tokens[t] for t in run]
        # a single capitalised word (sentence-initial or not) is no name: rule 9 handles it
        if len(words) < 2:
            continue
        # cut a possessive from the last word, then stopwords at both ends
        last_start, last_end, last = words[-1]
        m = _POSSESSIVE.search(last)
        if m:
            words[-1] = (last_start, last_end - len(m.group()), last[: m.start()])
        while words and (words[0][2].lower() in STOPWORDS or words[0][2].lower() in NAME_CONNECTORS):
            words.pop(0)
        while words and (words[-1][2].lower() in STOPWORDS or words[-1][2].lower() in NAME_CONNECTORS):
            words.pop()
        if len(words) < 2:
            continue
        if sum(_is_cap(w[2]) for w in words) < 2:
            continue
        start, end = words[0][0], words[-1][1]
        out.append((start, end, answer[start:end]))
    return out


def extract_key_facts(answer: str, question: str = "") -> list[str]:
    """Key facts of the ground-truth `answer`, without those already in `question`.

    Deterministic; see the module docstring for the exact rules, filters, de-duplication and the
    cap of MAX_FACTS. Returns the facts as written in the answer, in order of appearance (a new
    list each call; results are cached, since evaluation rounds score the same records again).
    """
    return list(_extract(answer, question))


@lru_cache(maxsize=16384)
def _extract(answer: str, question: str) -> tuple[str, ...]:
    spans = _Spans()
    # (start, group, text, kind)
    cands: list[tuple[int, int, str, str]] = []

    def accept(start: int, end: int, text: str, kind: str, group: int = _STRUCTURED) -> None:
        if text and spans.free(start, end):
            spans.take(start, end)
            cands.append((start, group, text, kind))

    for m in _EMAIL.finditer(answer):
        text = m.group().rstrip(".")
        if "." in text.split("@", 1)[1]:
            accept(m.start(), m.start() + len(text), text, "email")
    for m in _URL.finditer(answer):
        text = m.group().rstrip(".,;:!?)\"'”’")
        accept(m.start(), m.start() + len(text), text, "url")
    for m in _TITLE.finditer(answer):
        inner = next(g for g in m.groups() if g is not None).strip().rstrip(".,;:!?").strip()
        if 1 <= len(inner.split()) <= 12 and any(ch.isalpha() for ch in inner):
            accept(m.start(), m.end(), inner, "title")
    for m in _DATE.finditer(answer):
        accept(m.start(), m.end(), m.group(), "date")
    for start, end in _address_spans(answer):
        accept(start, end, answer[start:end], "address")
    for m in _NUMBER.finditer(answer):
        accept(m.start(), m.end(), m.group(), "number")
    for m in _NAME_WORD.finditer(answer):
        w = _POSSESSIVE.sub("", m.group())
        letters = [ch for ch in w if ch.isalpha()]
        if len(letters) >= 2 and all(ch.isupper() for ch in letters) and w.isalnum():
            accept(m.start(), m.start() + len(w), w, "acronym")
    for start, end, text in _name_candidates(answer):
        accept(start, end, text, "name")

    question_words = set(_words(question))
    question_stems = {_stem(w) for w in question_words}
    for m in _WORD.finditer(answer):
        raw = m.group()
        word = _POSSESSIVE.sub("", raw)
        if not spans.free(m.start(), m.start() + len(word)):
            continue
        lower = word.lower()
        if ("'" in word or "’" in word) and not _is_cap(word):
            continue  # contraction
        if len(lower) < RARE_MIN_LENGTH or lower in STOPWORDS or not any(ch.isalpha() for ch in lower):
            continue
        if any(_stem(w) in question_stems for w in _words(lower)):
            continue
        group = _GENERIC if _stem(lower) in _GENERIC_STEMS else _RARE
        cands.append((m.start(), group, lower, "rare"))

    # question filter (rules 1-8); rare words were filtered above
    kept: list[tuple[int, int, str, str]] = []
    for start, group, text, kind in cands:
        if group == _STRUCTURED:
            if question and fact_revealed(question, text):
                continue
            if kind in ("name", "title") and question_words and set(_words(text)) <= question_words:
                continue
        if not _words(text):
            continue
        kept.append((start, group, text, kind))

    # de-duplication: same normalised form once; forms inside a longer kept fact dropped
    kept.sort(key=lambda c: c[0])
    seen: set[str] = set()
    unique = []
    for c in kept:
        key = normalise(c[2])
        if key not in seen:
            seen.add(key)
            unique.append(c)
    forms = [normalise(c[2]) for c in unique]
    unique = [c for c, form in zip(unique, forms)
              if not any(len(other.split()) > len(form.split()) and form in other for other in forms)]

    # generic words only when nothing else is left
    if any(c[1] != _GENERIC for c in unique):
        unique = [c for c in unique if c[1] != _GENERIC]

    # cap: structured before rare, earlier before later; then back to order of appearance
    chosen = sorted(unique, key=lambda c: (c[1], c[0]))[:MAX_FACTS]
    chosen.sort(key=lambda c: c[0])
    return tuple(c[2] for c in chosen)


def fuzzy_found(answer: str, fact: str) -> bool:
    """True when `answer` still holds `fact`: exact whole-word match, or >= 80% of a multi-word
    fact's words, or (single letters-only word of >= 6 characters) an answer word with
    SequenceMatcher ratio >= 0.85. See the module docstring."""
    if fact_revealed(answer, fact):
        return True
    fact_words = _words(fact)
    if len(fact_words) > 1 and fact_words[0] in ("the", "a", "an"):
        fact_words = fact_words[1:]
    if not fact_words:
        return False
    answer_words = _words(answer)
    if len(fact_words) > 1:
        present = set(answer_words)
        share = sum(w in present for w in fact_words) / len(fact_words)
        return share >= MULTIWORD_OVERLAP
    word = fact_words[0]
    if len(word) < FUZZY_MIN_LENGTH or not word.isalpha():
        return False
    for candidate in set(answer_words):
        if not candidate.isalpha():
            continue
        matcher = SequenceMatcher(None, word, candidate, autojunk=False)
        if matcher.real_quick_ratio() >= FUZZY_RATIO and matcher.quick_ratio() >= FUZZY_RATIO \
                and matcher.ratio() >= FUZZY_RATIO:
            return True
    return False
