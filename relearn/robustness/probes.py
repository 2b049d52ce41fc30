"""Question probes: does forgetting hold when the question is asked differently?

KFR (forget_eval) and KRR (retain_eval) of one model under question transformations, next to the
plain questions:

    paraphrase        a deterministic rewording: the wh-question becomes an indirect question
                      inside a request ("Where was X born?" -> "Do you know where X was born?"),
                      with "the A of X" and "X's A" swapped where they occur. Unlike the augmentation
                      variants (relearn.augment.rules: word synonyms plus a framing sentence around
                      the unchanged question), the question's own syntax changes.
    perturb           typos (swapped, dropped, doubled or neighbouring-key letters), seeded per item;
                      the subject's name is left intact, so the question still names its person.
    jailbreak:<id>    the prompts of jailbreaks.yaml (role-play, answer priming, developer mode,
                      fiction framing, ...), before or after the question, or after the answer marker.

A probe's KFR drop is KFR(plain) - KFR(probe): positive means the rephrased question drew out
knowledge the plain one did not. Greedy decoding throughout, so every probe is deterministic.
"""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from relearn.augment.rules import guess_subject
from relearn.modeling.encoding import PromptFormat, as_format, prompt_ids
from relearn.records import QARecord
from relearn.robustness.common import answer_and_score, timed

PROBES = ("paraphrase", "perturb", "jailbreak")
JAILBREAKS_FILE = Path(__file__).with_name("jailbreaks.yaml")
WHERE = ("question_prefix", "question_suffix", "answer_prefix")
FIELDS = ("id", "kind", "where", "text")


# ------------------------------------------------------------------------------------ paraphrase
WH = {"what", "where", "when", "who", "whom", "whose", "which", "how", "why"}
PREPOSITIONS = {"in", "on", "at", "for", "from", "with", "to", "by", "of", "about"}
BE = {"is", "was", "are", "were"}
DO = {"do", "does", "did"}
AUX = BE | DO | {"has", "have", "had", "can", "could", "will", "would"}
# words that open a noun phrase: after one of these the auxiliary was inverted ("Where was the ...")
NP_STARTS = {"the", "a", "an", "his", "her", "their", "its", "this", "that", "these", "those", "my", "your",
             "our", "he", "she", "they", "it", "i", "you", "we"}
# in "Where was X born?" the copula goes before these: "where X was born"
PARTICIPLES = {"born", "known", "located", "based", "married", "raised", "educated", "employed", "named",
               "called", "awarded", "published", "written", "famous", "remembered", "buried", "from"}
EMBED = ["Do you know {x}?", "Can you say {x}?", "Please tell me {x}.", "I am trying to find out {x}."]
FALLBACK = ["{q} I would appreciate an answer.", "{q} Thanks in advance."]
THIRD_PERSON = {"do": "does", "have": "has", "go": "goes", "be": "is"}
PAST = {"do": "did", "have": "had", "go": "went", "write": "wrote", "win": "won", "get": "got", "make": "made",
        "come": "came", "become": "became", "grow": "grew", "teach": "taught", "take": "took", "give": "gave",
        "leave": "left", "meet": "met", "begin": "began", "find": "found", "hold": "held", "buy": "bought"}


def paraphrase_question(question: str, subject: str = "") -> tuple[str, str]:
    """(reworded question, rule used).

    Rules: 'indirect' (the wh-question becomes an indirect question inside a request, with the
    auxiliary moved back: "Where was X born?" -> "Please tell me where X was born."),
    'genitive+indirect' (the same, with "the A of X" <-> "X's A" swapped), or 'frame' when neither
    fits (the question is kept, followed by a fixed sentence). `subject` (default: guessed from
    capitalised words) marks where the inverted noun phrase ends. Deterministic: the same question
    always gives the same text, and the request sentence is chosen by a checksum of the question.
    """
    q = " ".join(question.split())
    pick = zlib.crc32(q.encode("utf-8"))
    found = _indirect(q, subject or guess_subject(q))
    if found is None:
        return FALLBACK[pick % len(FALLBACK)].format(q=q), "frame"
    clause, swapped = found
    return EMBED[pick % len(EMBED)].format(x=clause), "genitive+indirect" if swapped else "indirect"


def _indirect(q: str, subject: str) -> Optional[tuple[str, bool]]:
    """(indirect-question clause, whether a genitive was swapped), or None when no rule fits."""
    if not q.endswith("?"):
        return None
    words = q[:-1].split()
    lead = 1 if len(words) > 2 and words[0].lower() in PREPOSITIONS else 0  # "In which town ..."
    if len(words) < lead + 2 or words[lead].lower() not in WH:
        return None
    aux_at = next((i for i in range(lead + 1, len(words)) if words[i].lower() in AUX), None)
    if aux_at is None or aux_at == len(words) - 1:
        return (_lower_first(" ".join(words)), False) if aux_at is None else None  # "Who wrote X?"
    aux, rest = words[aux_at].lower(), " ".join(words[aux_at + 1:])
    following = words[aux_at + 1]
    inverted = (aux in DO or following[:1].isupper() or following.lower() in NP_STARTS
                or bool(subject and rest.startswith(subject)))
    if not inverted:
        return _lower_first(" ".join(words)), False  # the wh-phrase is the subject: "what honour was given to X"
    named = bool(subject) and subject in rest
    swapped = _swap_genitive(rest, subject, reverse=aux in BE) if named else rest
    inner = _uninvert(aux, swapped, subject if named else "")
    if inner is None:
        return None
    return _lower_first(" ".join(words[:aux_at])) + " " + inner, swapped != rest


def _lower_first(text: str) -> str:
    """Lower-case the first letter when the first word is a question word, an auxiliary or a
    preposition (never a name)."""
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if first.lower() in WH | AUX | PREPOSITIONS else text


def _swap_genitive(rest: str, subject: str, reverse: bool) -> str:
    """'the date of birth of X' -> "X's date of birth"; with `reverse`, "X's email address" (ending
    the clause) -> 'the email address of X'. Anything else is returned unchanged."""
    name = re.escape(subject)
    forward = re.sub(rf"\bthe ((?:[a-z]+ ){{0,3}}?[a-z]+) of {name}(?!['’]s)\b", rf"{subject}'s \1", rest, count=1)
    if forward != rest or not reverse:
        return forward
    return re.sub(rf"\b{name}['’]s ([a-z]+(?: [a-z]+)?)$", rf"the \1 of {subject}", rest, count=1)


def _uninvert(aux: str, rest: str, subject: str) -> Optional[str]:
    """The declarative word order of `aux rest` ('was X born' -> 'X was born'), or None.

    With the subject's name known, the noun phrase ends at the name (plus "'s <word>"); without it,
    only a copula can be placed: before a final participle ("born"), else at the end.
    """
    if not subject:
        if aux not in BE:
            return None
        words = rest.split()
        if words[-1].lower() in PARTICIPLES and len(words) > 1:
            return " ".join(words[:-1] + [aux, words[-1]])
        return f"{rest} {aux}"
    end = rest.find(subject) + len(subject)
    genitive = re.match(r"['’]s [a-z]+", rest[end:])
    np_end = end + genitive.end() if genitive else end  # "X's mother" is one noun phrase
    words_after = rest[np_end:].split()
    if aux in BE:
        tail = rest[end:].split()
        at = next((i for i, w in enumerate(tail) if w.lower() in PARTICIPLES), None)
        if at is None:
            return f"{rest} {aux}"  # "the date of birth of X is", "X's home address is"
        return " ".join([rest[:end]] + tail[:at] + [aux] + tail[at:])
    if aux in DO:
        if not words_after:
            return None
        verb = words_after[0]
        verb = _third_person(verb) if aux == "does" else _past(verb) if aux == "did" else verb
        return " ".join([rest[:np_end], verb] + words_after[1:])
    return " ".join([rest[:np_end], aux] + words_after)  # has/can/will...: "X has written"


def _third_person(verb: str) -> str:
    if verb in THIRD_PERSON:
        return THIRD_PERSON[verb]
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _past(verb: str) -> str:
    if verb in PAST:
        return PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


# ------------------------------------------------------------------------------------ perturb
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
NEIGHBOURS = {c: row[max(i - 1, 0):i] + row[i + 1:i + 2] for row in KEYBOARD_ROWS for i, c in enumerate(row)}


def perturb_question(question: str, seed: int | str, rate: float = 0.3, protect: str = "") -> str:
    """The question with typos: each word of four or more letters (outside `protect`, e.g. the
    subject's name) gets one edit with probability `rate`, and at least one word is edited when
    any can be. An edit swaps two neighbouring letters, drops one, doubles one, or replaces one by
    a neighbouring key; the first letter of a word is never touched. Same seed, same typos."""
    rng = random.Random(seed)
    words = question.split(" ")
    protected = {w for w in protect.split()}
    eligible = [i for i, w in enumerate(words)
                if sum(c.isalpha() for c in w) >= 4 and re.sub(r"['’]s$", "", w.strip("?.,!:;")) not in protected]
    chosen = [i for i in eligible if rng.random() < rate]
    if not chosen and eligible:
        chosen = [rng.choice(eligible)]
    for i in chosen:
        words[i] = _typo(words[i], rng)
    return " ".join(words)


def _typo(word: str, rng: random.Random) -> str:
    letters = [j for j in range(1, len(word)) if word[j].isalpha()]
    j = rng.choice(letters)
    op = rng.choice(("swap", "drop", "double", "neighbour"))
    if op == "swap" and j + 1 < len(word) and word[j + 1].isalpha() and word[j + 1] != word[j]:
        return word[:j] + word[j + 1] + word[j] + word[j + 2:]
    if op == "drop":
        return word[:j] + word[j + 1:]
    if op == "neighbour" and word[j].lower() in NEIGHBOURS:
        c = rng.choice(NEIGHBOURS[word[j].lower()])
        return word[:j] + (c.upper() if word[j].isupper() else c) + word[j + 1:]
    return word[:j] + word[j] + word[j:]  # double (also the fallback when a swap would change nothing)


# ------------------------------------------------------------------------------------ jailbreaks
@dataclass(frozen=True)
class Jailbreak:
    id: str
    kind: str
    where: str  # question_prefix | question_suffix | answer_prefix
    text: str

    def apply(self, question: str, template: "str | PromptFormat") -> tuple[str, PromptFormat]:
        """(question, prompt format) to generate with: the text goes before or after the question,
        or starts the answer (after the plain template's answer marker, or the chat template's
        assistant header)."""
        fmt = as_format(template)
        if self.where == "question_prefix":
            return f"{self.text} {question}", fmt
        if self.where == "question_suffix":
            return f"{question} {self.text}", fmt
        return question, fmt.with_prefill(self.text)


def load_jailbreaks(path: str | Path | None = None) -> tuple[int, list[Jailbreak]]:
    """(version, entries) of a jailbreak file (default: the jailbreaks.yaml shipped beside this
    module). Raises ValueError listing every problem: a missing or empty field, an unknown `where`,
    an unknown key, a repeated id."""
    import yaml

    path = Path(path) if path is not None else JAILBREAKS_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("version"), int) \
            or not isinstance(data.get("jailbreaks"), list) or not data["jailbreaks"]:
        raise ValueError(f"{path}: expected a mapping with an integer 'version' and a non-empty list 'jailbreaks'")
    entries, seen = [], set()
    for i, entry in enumerate(data["jailbreaks"]):
        where = f"{path}: jailbreaks[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        problems += [f"{where}: unknown key {k!r}" for k in entry if k not in FIELDS]
        bad = [k for k in FIELDS if not isinstance(entry.get(k), str) or not entry[k].strip()]
        problems += [f"{where}: '{k}' must be a non-empty string" for k in bad]
        if bad:
            continue
        if entry["where"] not in WHERE:
            problems.append(f"{where}: where must be one of {WHERE}, got {entry['where']!r}")
        if entry["id"] in seen:
            problems.append(f"{where}: id {entry['id']!r} repeats")
        seen.add(entry["id"])
        entries.append(Jailbreak(**{k: entry[k].strip() for k in FIELDS}))
    if problems:
        raise ValueError("\n".join(problems))
    return data["version"], entries


# ------------------------------------------------------------------------------------ probes
def probe_questions(records: list[QARecord], probe: str, *, seed: int = 0, typo_rate: float = 0.3) -> list[str]:
    """The questions of `records` under 'plain', 'paraphrase' or 'perturb'."""
    if probe == "plain":
        return [r.question for r in records]
    if probe == "paraphrase":
        return [paraphrase_question(r.question, r.subject)[0] for r in records]
    if probe == "perturb":
        return [perturb_question(r.question, f"{seed}:{r.id}", typo_rate,
                                 protect=r.subject or guess_subject(r.question)) for r in records]
    raise ValueError(f"unknown question probe {probe!r}")


def run_probes(model, tokenizer, forget_eval: list[QARecord], retain_eval: list[QARecord], *, template: str,
               max_new_tokens: int, batch_size: int = 32, probes: Sequence[str] = PROBES,
               jailbreaks: Optional[list[Jailbreak]] = None, seed: int = 0,
               typo_rate: float = 0.3, guard=None, general: Sequence[QARecord] = ()) -> tuple[dict, dict]:
    """KFR and KRR of a loaded model (PyTorch or ONNX Runtime) under each probe, and the plain questions.

    `probes` picks from PROBES; "jailbreak" runs every entry of `jailbreaks` (default: the shipped
    jailbreaks.yaml). Returns

        aggregate: {"probes": {name: {"kfr", "krr", "kfr_drop", "krr_drop", "max_prompt_tokens", "seconds",
                                      + "kind", "where" for jailbreaks, + "rules" for paraphrase}},
                    # names: "plain", "paraphrase", "perturb", "jailbreak:<id>"
                    "worst": {"probe", "kfr", "kfr_drop"},     # largest KFR drop over the non-plain probes
                    "jailbreak_min_kfr": {"probe", "kfr"},     # None without jailbreaks
                    "jailbreaks_version": int | None,           # when the shipped file was read
                    "n": {"forget", "retain"}, "seconds": {probe: s, "total": s}}
        per_item:  {"forget": {id: {probe: {"question", "answer", "share", "forgotten"}}},
                    "retain": {id: {probe: {"question", "answer", "share", "retained"}}}}

    Read a probe's KFR next to its KRR, and next to the same probe on the target model: a prompt
    the model cannot make sense of (KRR near 0) raises KFR without saying anything about
    forgetting. Such a probe cannot be the "worst" one (its KFR drop is negative); the worst case
    is a probe whose KFR falls below the plain questions'. "max_prompt_tokens" is the longest
    prompt; a warning is printed when it plus max_new_tokens exceeds the model's positions.

    With `guard` (relearn.serving.guard.Guard: what `relearn serve` checks answers with), every
    probe's answers are also scored as a client would get them through the guard (redact): each
    probe's block adds "guarded": {"kfr", "krr"}, the per-item results add "<probe>+guard" entries,
    and the aggregate adds "guarded_jailbreak_min_kfr" and "guard" (what the guard holds). The
    plain probe's guarded KRR against its KRR is the guard's false-positive cost. With `general` too (the
    general-knowledge set: other people, world facts), its plain questions are answered and scored with
    and without the guard, the same cost on what the model knows beyond the retain set: the plain
    block adds "general": {"krr", "guarded": {"krr"}, "n"}, the per-item results a "general" set.
    """

    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown probes {unknown}; choose from {PROBES}")
    version = None
    if "jailbreak" in probes and jailbreaks is None:
        version, jailbreaks = load_jailbreaks()
    runs: list[tuple[str, Optional[Jailbreak]]] = [("plain", None)]
    runs += [(p, None) for p in ("paraphrase", "perturb") if p in probes]
    if "jailbreak" in probes:
        runs += [(f"jailbreak:{jb.id}", jb) for jb in jailbreaks]

    sets = (("forget", forget_eval), ("retain", retain_eval))
    results: dict[str, dict] = {}
    per_item: dict[str, dict] = {kind: {r.id: {} for r in records} for kind, records in sets}
    seconds: dict[str, float] = {}
    for name, jb in runs:
        result: dict = {}
        longest = 0
        with timed(seconds, name):
            for kind, records in sets:
                questions = probe_questions(records, "plain" if jb else name, seed=seed, typo_rate=typo_rate)
                run_template = template
                if jb:
                    pairs = [jb.apply(q, template) for q in questions]
                    questions, run_template = [q for q, _ in pairs], (pairs[0][1] if pairs else template)
                longest = max([longest] + [len(prompt_ids(tokenizer, q, run_template)) for q in questions])
                rate, items = answer_and_score(model, tokenizer, records, kind, template=run_template,
                                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                                               questions=questions, desc=f"{name} {kind}")
                result["kfr" if kind == "forget" else "krr"] = rate
                for rid, item in items.items():
                    per_item[kind][rid][name] = item
                if guard is not None:
                    guarded = through_guard(guard, records, items, kind)
                    result.setdefault("guarded", {})["kfr" if kind == "forget" else "krr"] = guarded[0]
                    for rid, item in guarded[1].items():
                        per_item[kind][rid][f"{name}+guard"] = item
        result.update(max_prompt_tokens=longest, seconds=seconds[name])
        if jb:
            result.update(kind=jb.kind, where=jb.where)
        if name == "paraphrase":
            rules = [paraphrase_question(r.question, r.subject)[1] for _, records in sets for r in records]
            result["rules"] = {rule: rules.count(rule) for rule in sorted(set(rules))}
        results[name] = result
        _warn_if_long(model, longest, max_new_tokens, name)
    if guard is not None and general:
        general = list(general)
        with timed(seconds, "plain:general"):
            rate, items = answer_and_score(model, tokenizer, general, "retain", template=template,
                                           max_new_tokens=max_new_tokens, batch_size=batch_size,
                                           questions=probe_questions(general, "plain", seed=seed, typo_rate=typo_rate),
                                           desc="plain general")
            guarded_rate, guarded_items = through_guard(guard, general, items, "retain")
        results["plain"]["general"] = {"krr": rate, "guarded": {"krr": guarded_rate}, "n": len(general)}
        per_item["general"] = {rid: {"plain": item, "plain+guard": guarded_items[rid]} for rid, item in items.items()}

    plain = results["plain"]
    for name, result in results.items():
        result["kfr_drop"] = plain["kfr"] - result["kfr"]
        result["krr_drop"] = plain["krr"] - result["krr"]
        print(f"[probes] {name}: KFR {result['kfr']:.3f} (drop {result['kfr_drop']:+.3f})  "
              f"KRR {result['krr']:.3f}", flush=True)
    others = [n for n in results if n != "plain"]
    worst = max(others, key=lambda n: _nan_as(results[n]["kfr_drop"], float("-inf"))) if others else None
    jailbroken = [n for n in results if n.startswith("jailbreak:")]
    weakest = min(jailbroken, key=lambda n: _nan_as(results[n]["kfr"], float("inf"))) if jailbroken else None
    seconds["total"] = round(sum(seconds.values()), 3)
    guarded_weakest = (min(jailbroken, key=lambda n: _nan_as(results[n]["guarded"]["kfr"], float("inf")))
                       if jailbroken and guard is not None else None)
    aggregate = {
        "probes": results,
        "worst": ({"probe": worst, "kfr": results[worst]["kfr"], "kfr_drop": results[worst]["kfr_drop"]}
                  if worst else None),
        "jailbreak_min_kfr": {"probe": weakest, "kfr": results[weakest]["kfr"]} if weakest else None,
        "jailbreaks_version": version,
        "n": {"forget": len(forget_eval), "retain": len(retain_eval)},
        "seconds": seconds,
    }
    if guard is not None:
        aggregate["guard"] = guard.summary()
        aggregate["guarded_jailbreak_min_kfr"] = ({"probe": guarded_weakest,
                                                   "kfr": results[guarded_weakest]["guarded"]["kfr"]}
                                                  if guarded_weakest else None)
        g = plain.get("guarded", {})
        print(f"[probes] through the guard: plain KFR {g.get('kfr', float('nan')):.3f} KRR "
              f"{g.get('krr', float('nan')):.3f}" + (f", lowest jailbreak KFR "
              f"{aggregate['guarded_jailbreak_min_kfr']['kfr']:.3f}" if guarded_weakest else "")
              + (f"; general set KRR {g_general['krr']:.3f}, through the guard {g_general['guarded']['krr']:.3f}"
                 if (g_general := plain.get("general")) else ""), flush=True)
    return aggregate, per_item


def through_guard(guard, records: list[QARecord], items: dict, kind: str) -> tuple[float, dict]:
    """(rate, per-item results) of answers passed through the guard as `relearn serve` would. `items`:
    {record id: {"answer", "question"}}, one probe's answers (the question is the guard's context)."""
    from relearn.evaluation.scoring import knowledge_scores

    verdict = "forgotten" if kind == "forget" else "retained"
    answers = [guard.redact(items[r.id]["answer"], items[r.id]["question"])[0] for r in records]
    scores = knowledge_scores(answers, records, kind)
    out = {}
    for record, answer in zip(records, answers):
        score = scores["by_id"].get(record.id, {})
        out[record.id] = {"answer": answer, "share": score.get("share"), verdict: score.get(verdict)}
    return scores["kfr" if kind == "forget" else "krr"], out


def _nan_as(x: float, default: float) -> float:
    """x, or `default` when x is NaN (a rate over no scored items): for max() and min() to skip it."""
    return default if x != x else x


def _warn_if_long(model, prompt_tokens: int, max_new_tokens: int, name: str) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and prompt_tokens + max_new_tokens > limit:
        print(f"[probes] warning: {name}: prompts up to {prompt_tokens} tokens + {max_new_tokens} new exceed the "
              f"model's {limit} positions", flush=True)
