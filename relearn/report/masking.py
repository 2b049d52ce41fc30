"""Masking of forget-set facts ("secrets") in everything the unlearning report shows.

The report is read by people who must not learn the facts the model was asked to forget, so every
string that reaches the page goes through `Masker.mask` first (layer 1), and the finished page is
scanned again (layer 2, `Masker.check_html` / `Masker.check_text`) before anything is written.

What is masked (replaced by `MASK`, case-insensitively, after Unicode NFKC normalisation, the
removal of zero-width characters and soft hyphens, and ASCII apostrophes, quotes and hyphens for
their typographic forms; matches that overlap or are separated only by spaces, commas and the
like become one mask):

* the whole secret, as a substring (`Morqua Cross` also inside `Morqua Crossing`); spaces in the
  secret match any run of whitespace;
* secrets of two characters only as whole words; one-character secrets are ignored (they cannot be
  masked without masking everything);
* the rare words of a multi-word secret, as whole words: `Dalstren` from `518 Foxglove Terrace,
  Dalstren Cross`. A word is rare when it has three or more characters, contains a letter, and is
  not in `COMMON_WORDS` (or it mixes letters and digits, such as `holloway75`). Hyphenated and
  dotted words also contribute their parts;
* the local part of an e-mail address (`petra.holloway75` from `petra.holloway75@postbox.example`);
* numbers: every run of three or more digits in a secret as a stand-alone number (not inside a
  longer number and not as either side of a decimal point, so the metrics `0.518` and `518.2`
  survive a house number `518`); an all-digit secret (also with separators, e.g. `555-0142`) as a
  stand-alone number; and every run of two or more consecutive digit groups of a secret holding six
  digits or more (phone numbers, dates) with any separators, or none, between the groups
  (`+1 (555) 014-2233` masks `15550142233`, `555.014.2233` and `(555) 014 2233`);
* dates: a secret that parses as a date also masks its other common spellings (`August 13, 1998`
  masks `13 August 1998`, `1998-08-13`, `13/08/1998`, `08/13/1998`, `13.08.1998`, ...).

The final scan raises `SecretLeakError` rather than masking: by then every piece of data has
been masked already, so a survivor means either a bug or a secret that collides with the page's
own vocabulary (CSS or SVG markup such as `sans-serif`), and an unverified page must not reach
an approver. The error names the secret by its index and length, never by its text. In the page's
code (CSS, tag and attribute names, SVG geometry) the scan looks for whole secrets with letters
only: a lone rare word of a longer secret ('Path' of '88 Wisdom Path') is masked in every text and
readable attribute, but as an SVG tag it is markup, not a leak.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from html.parser import HTMLParser
from typing import Iterable

from relearn.errors import UserError

MASK = "[redacted]"

_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))
_INVISIBLE.update(dict.fromkeys(map(ord, "\u2018\u2019\u201b\u02bc\u2032"), "'"))  # typographic apostrophes
_INVISIBLE.update(dict.fromkeys(map(ord, "\u201c\u201d\u201f\u2033"), '"'))
_INVISIBLE.update(dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2212"), "-"))  # hyphens, en dash, minus
_SEP = r"[\s().\-/+,]*"
_NUM_BEFORE = r"(?<!\d)(?<!\d[.,])"  # not inside a number, not its decimals
_NUM_AFTER = r"(?![.,]?\d)"
_GAP = re.compile(r"[\s,;:/()\-]*")  # masks separated only by this become one mask

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_DATE_FORMATS = ["%B %d, %Y", "%B %d %Y", "%d %B %Y", "%b %d, %Y", "%b %d %Y", "%d %b %Y",
                 "%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y"]

# Words that are too common to mask on their own when they are only part of a secret. A whole
# secret is always masked; this list only decides which of its words are masked by themselves.
COMMON_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more
most my myself no nor not now of off on once only or other our ours out over own same she should so
some such than that the their theirs them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your yours
one two three four five six seven eight nine ten eleven twelve hundred thousand first second third
fourth fifth last next new old great good little big small long short high low large early late
young north south east west northern southern eastern western upper lower central middle inner outer
saint st mount mt fort port lake river bay hill hills park square street st road rd lane avenue ave
way drive close court place terrace crescent cross gardens garden grove row walk view green bridge
house hall farm field fields wood woods town city village county state country island islands coast
valley vale hollow heights point end gate gates common market church castle tower mill well spring
springs beach harbour harbor bank banks creek brook falls forest rock stone glen marsh moor heath
apartment flat suite floor building block unit box po
company co inc ltd limited corp corporation group partners associates sons brothers bros
prize award medal honour honor society institute university college school academy foundation
association council club center centre trust fund fellowship scholarship lecture chair professor
doctor dr mr mrs ms miss sir lady lord king queen prince princess general captain
national international regional local community public civic royal american british european world
service services science sciences arts art history natural social research studies study culture
literature poetry music film book books novel story stories poem poems collection volume edition
press journal review magazine news times daily weekly
january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday
day days week weeks month months year years time times date born died age
man woman men women child children son daughter father mother brother sister family wife husband
friend friends people person name names life work works job career home family
red orange yellow green blue purple black white grey gray brown silver golden gold glass iron
quiet silent restless lost hidden secret last final broken bright dark light night morning evening
summer winter autumn spring sea sky sun moon star stars fire water wind earth land
data information example email mail com org net www http https
model target control unlearned forget retain metric metrics report value values version method
""".split())


class SecretLeakError(UserError):
    """A secret was found in the finished report; nothing was written."""


@dataclass(frozen=True)
class _Pattern:
    regex: str
    source: int   # index of the secret it comes from
    letters: bool  # contains a letter: also scanned in markup; digit-only ones only in text
    size: int     # length of the text it stands for
    anchor: str   # lower-case text that every match contains (to skip the pattern quickly)
    piece: bool = False  # one rare word of a longer secret: masked everywhere, but looked for in
                         # code (CSS, markup, geometry) only as part of the whole secret


def normalize(text: str) -> str:
    """NFKC, without zero-width characters and soft hyphens, with typographic apostrophes, quotes
    and hyphens made ASCII (so `O’Brien` is found by the secret `O'Brien`)."""
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def _has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def _phrase(text: str) -> str:
    """`text` as a regex: literal, with any whitespace run matching any whitespace run."""
    return r"\s+".join(re.escape(part) for part in text.split())


def _number(text: str) -> str:
    return _NUM_BEFORE + _phrase(text) + _NUM_AFTER


def _word(text: str) -> str:
    return r"(?<!\w)" + _phrase(text) + r"(?!\w)"


def _date_spellings(secret: str) -> list[str]:
    for fmt in _DATE_FORMATS:
        try:
            d: date = datetime.strptime(secret.strip(), fmt).date()
        except ValueError:
            continue
        month, short = _MONTHS[d.month - 1], _MONTHS[d.month - 1][:3]
        y, m, dd = d.year, d.month, d.day
        out = [f"{month} {dd}, {y}", f"{month} {dd} {y}", f"{dd} {month} {y}", f"{dd} {month}, {y}",
               f"{short} {dd}, {y}", f"{short} {dd} {y}", f"{dd} {short} {y}",
               f"{month} {dd:02d}, {y}", f"{dd:02d} {month} {y}"]
        for a, b in ((dd, m), (m, dd)):
            out += [f"{a}/{b}/{y}", f"{a:02d}/{b:02d}/{y}", f"{a}.{b}.{y}", f"{a:02d}.{b:02d}.{y}",
                    f"{a}-{b}-{y}", f"{a:02d}-{b:02d}-{y}"]
        out += [f"{y}-{m:02d}-{dd:02d}", f"{y}/{m:02d}/{dd:02d}", f"{y}-{m}-{dd}"]
        return out
    return []


def _words(secret: str) -> list[str]:
    """The words of a secret, with the parts of hyphenated and dotted words added."""
    words = []
    for token in re.findall(r"[^\s,;:!?()\[\]{}\"<>]+", secret):
        token = token.strip(".'-/_")
        if not token or "@" in token:
            continue
        words.append(token)
        parts = [p for p in re.split(r"[-./_']", token) if p]
        if len(parts) > 1:
            words += parts
    return words


def _is_rare(word: str) -> bool:
    if not _has_letter(word):
        return False
    if any(ch.isdigit() for ch in word):
        return len(word) >= 3
    return len(word) >= 3 and word.lower() not in COMMON_WORDS


def patterns_for(secret: str, index: int = 0) -> list[_Pattern]:
    """Every pattern that masks `secret` (see the module docstring for the rules)."""
    secret = normalize(secret).strip()
    if len(secret) < 2:
        return []
    found: list[_Pattern] = []

    def add(regex: str, letters: bool, literal: str, piece: bool = False) -> None:
        anchor = max(literal.lower().split(), key=len)
        found.append(_Pattern(regex, index, letters, len(literal), anchor, piece))

    if not _has_letter(secret):
        add(_number(secret), False, secret)
    elif len(secret) < 3:
        add(_word(secret), True, secret)
    else:
        add(_phrase(secret), True, secret)
    for run in re.findall(r"\d{3,}", secret):
        add(_number(run), False, run)
    groups = re.findall(r"\d+", secret)
    for i in range(len(groups)):
        for j in range(i + 2, len(groups) + 1):
            if sum(map(len, groups[i:j])) >= 6:
                add(_NUM_BEFORE + _SEP.join(groups[i:j]) + _NUM_AFTER, False, " ".join(groups[i:j]))
    for spelling in _date_spellings(secret):
        letters = _has_letter(spelling)
        add(_phrase(spelling) if letters else _number(spelling), letters, spelling)
    for email in re.findall(r"[^\s@<>()\[\],;:\"]+@[^\s@<>()\[\],;:\"]+", secret):
        local = email.split("@", 1)[0].strip(".")
        if len(local) >= 3:
            add(_phrase(local) if _has_letter(local) else _number(local), _has_letter(local), local)
    words = _words(secret)
    if len(words) > 1 or "@" in secret:
        for word in words:
            if _is_rare(word) and word.lower() != secret.lower():
                add(_word(word), True, word, piece=True)
    return found


class Masker:
    """Masks every secret in a text; checks finished documents for survivors."""

    def __init__(self, secrets: Iterable[str] | None = None, mask: str = MASK):
        self.mask_text = mask
        self.secrets = list(secrets or [])
        patterns: dict[str, _Pattern] = {}
        for i, secret in enumerate(self.secrets):
            if not isinstance(secret, str):
                continue
            for p in patterns_for(secret, i):
                patterns.setdefault(p.regex, p)
        self.patterns = list(patterns.values())
        self._regex = [re.compile(p.regex, re.IGNORECASE) for p in self.patterns]
        # patterns by the first three characters of their anchor: a text is only searched with
        # the patterns whose anchor it contains (hundreds of secrets stay fast)
        self._index: dict[str, list[int]] = {}
        self._short: list[int] = []
        for i, p in enumerate(self.patterns):
            if len(p.anchor) >= 3:
                self._index.setdefault(p.anchor[:3], []).append(i)
            else:
                self._short.append(i)

    def __len__(self) -> int:
        return sum(isinstance(s, str) for s in self.secrets)

    def _candidates(self, low: str) -> list[int]:
        if len(self._index) <= len(low):
            keys = [k for k in self._index if k in low]
        else:
            keys = {low[i:i + 3] for i in range(len(low) - 2)} & self._index.keys()
        found = list(self._short)
        for key in keys:
            found += [i for i in self._index[key] if self.patterns[i].anchor in low]
        return found

    def _matches(self, text: str, letters_only: bool = False) -> list[tuple[int, int, int]]:
        """(start, end, pattern index) of every match of every pattern in `text` (normalised)."""
        out = []
        for i in self._candidates(text.lower()):
            # in code (letters_only): only secrets with letters, and never a lone word of a longer
            # secret ('Path' of '88 Wisdom Path' is also an SVG tag)
            if letters_only and (not self.patterns[i].letters or self.patterns[i].piece):
                continue
            out += [(m.start(), m.end(), i) for m in self._regex[i].finditer(text) if m.end() > m.start()]
        return out

    def mask(self, text: object) -> str:
        """`text` (made a string, normalised) with every secret replaced by the mask; matches that
        overlap, touch or are separated only by spaces and commas (`518 Foxglove, Dalstren`) become
        one mask."""
        text = normalize("" if text is None else str(text))
        spans = sorted(self._matches(text)) if self.patterns else []
        if not spans:
            return text
        merged: list[list[int]] = []
        for start, end, _ in spans:
            if merged and (start <= merged[-1][1] or _GAP.fullmatch(text, merged[-1][1], start)):
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        parts, pos = [], 0
        for start, end in merged:
            parts += [text[pos:start], self.mask_text]
            pos = end
        return "".join(parts) + text[pos:]

    def leaks(self, text: str, letters_only: bool = False) -> list[int]:
        """Indices of the secrets found in `text` (sorted, unique)."""
        if not self.patterns:
            return []
        return sorted({self.patterns[i].source for _, _, i in self._matches(normalize(text), letters_only)})

    def _raise(self, where: dict[int, set[str]], document: str) -> None:
        problems = [f"{document}: secret #{i} ({len(self.secrets[i])} characters) survives masking "
                    f"in {', '.join(sorted(places))}; nothing was written" for i, places in sorted(where.items())]
        raise SecretLeakError(problems)

    def check_text(self, text: str, document: str = "markdown") -> None:
        """Raise `SecretLeakError` if any secret is in `text` (as is, unescaped, or without
        backslash escapes)."""
        import html

        where: dict[int, set[str]] = {}
        variants = {text, re.sub(r"\\(.)", r"\1", text)}
        variants |= {html.unescape(v) for v in variants}
        for variant in variants:
            for i in self.leaks(variant):
                where.setdefault(i, set()).add("text")
        if where:
            self._raise(where, document)

    def check_html(self, document: str) -> None:
        """Raise `SecretLeakError` if any secret is in the page: its text, comments and attribute
        values (unescaped) and, for secrets with letters, its raw markup. Digit-only patterns are
        not looked for in SVG geometry (coordinates are numbers, not content)."""
        if not self.patterns:
            return
        scanner = _Scanner()
        scanner.feed(document)
        scanner.close()
        where: dict[int, set[str]] = {}
        for place, text, letters_only in scanner.pieces:
            for i in self.leaks(text, letters_only=letters_only):
                where.setdefault(i, set()).add(place)
        for i in self.leaks(document, letters_only=True):
            where.setdefault(i, set()).add("markup")
        if where:
            self._raise(where, "html")


# attributes whose values are read by a person (everything else is checked for letters only)
_READABLE_ATTRS = {"title", "alt", "aria-label", "aria-description", "placeholder", "value",
                   "content", "label", "summary", "href", "src"}


class _Scanner(HTMLParser):
    """Collects (place, text, letters_only) for every text node, comment and attribute value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[tuple[str, str, bool]] = []
        self._raw: str | None = None  # inside <style> or <script>: code, not content

    def handle_endtag(self, tag):  # noqa: D102
        if tag == self._raw:
            self._raw = None

    def _attrs(self, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value:
                self.pieces.append((f"attribute {name}", value, name not in _READABLE_ATTRS))

    def handle_starttag(self, tag, attrs):  # noqa: D102
        self._attrs(attrs)
        if tag in ("style", "script"):
            self._raw = tag

    def handle_startendtag(self, tag, attrs):  # noqa: D102
        self._attrs(attrs)

    def handle_data(self, data):  # noqa: D102
        if data.strip():
            place = "text" if self._raw is None else f"<{self._raw}>"
            self.pieces.append((place, data, self._raw is not None))

    def handle_comment(self, data):  # noqa: D102
        self.pieces.append(("comment", data, False))
