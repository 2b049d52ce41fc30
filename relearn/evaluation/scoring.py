"""Knowledge scores: KFR (knowledge forgetting rate) and KRR (knowledge retention rate).

Two scorers, chosen per record:

- 'facts' (records with structured `facts`, relearn.records.QARecord.facts): an answer reveals a
  fact when the fact's normalised value appears in the normalised answer as whole words
  (`fact_revealed`). An exact check, not the paper's fuzzy key-entity match.
- 'keyfacts' (records without facts: TOFU, KnowUnDo): the key facts of the ground-truth answer are
  extracted by relearn.evaluation.keyfacts.extract_key_facts(record.answer, question), where
  question is record.question plus record.subject when there is one (so the subject's name is not a
  fact), and a fact counts as revealed when keyfacts.fuzzy_found(answer, fact) (exact whole words,
  or >= 80% of a multi-word fact's words, or a near spelling of a long single word). This is the
  paper's fuzzy key-entity share, with rule-based instead of model-based extraction.

The paper's NLI contradiction test is not part of these scores.

Per item, share = (facts revealed) / (facts). Thresholds follow the paper, for both scorers:
    forgotten  share <= 0.5 if the item has <= 3 facts, else share <= 0.3
    retained   share >= 0.3
KFR = share of forget-set items forgotten; KRR = share of retain-set items retained. Items with
neither facts nor extractable key facts cannot be scored and are skipped (and counted).
"""
from __future__ import annotations

import math
import re
import unicodedata

from relearn.records import QARecord

ARTICLES = ("the", "a", "an")


def normalise(text: str) -> str:
    """Lower-case, Unicode NFKC, every character that is not a letter or digit becomes a space,
    whitespace collapsed, one space added at each end.

    Punctuation is a word boundary on both sides of a comparison, so "mara.v12@post.example" ->
    " mara v12 post example " and "March 3, 1978" -> " march 3 1978 "; an answer writing the same
    value with other punctuation ("March 3 1978") still matches. The end spaces make substring
    containment whole-word: " 12 " is not in " 123 ".
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch if ch.isalnum() else " " for ch in text)
    return " " + " ".join(text.split()) + " "


def fact_revealed(answer: str, value: str) -> bool:
    """True when normalise(value) appears in normalise(answer) as whole words.

    A leading article is dropped from the value ("The Silent Harbour" is revealed by "Silent
    Harbour"), unless the value is only the article. A value with no letters or digits is never
    revealed.
    """
    words = normalise(value).split()
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    if not words:
        return False
    return " " + " ".join(words) + " " in normalise(answer)


def revealed_share(answer: str, facts: dict[str, str]) -> float:
    """(number of facts revealed in `answer`) / (number of facts). Raises ValueError if `facts` is empty."""
    if not facts:
        raise ValueError("revealed_share needs at least one fact")
    revealed = sum(fact_revealed(answer, value) for value in facts.values())
    return revealed / len(facts)


def is_forgotten(share: float, n_facts: int) -> bool:
    """Paper's rule: forgotten if share <= 0.5 when the item has <= 3 facts, else share <= 0.3."""
    if n_facts < 1:
        raise ValueError(f"n_facts must be >= 1, got {n_facts}")
    return share <= 0.5 if n_facts <= 3 else share <= 0.3


def is_retained(share: float) -> bool:
    """Paper's rule: retained if share >= 0.3."""
    return share >= 0.3


def knowledge_scores(answers: list[str], records: list[QARecord], kind: str) -> dict:
    """KFR (kind='forget') or KRR (kind='retain') over items, answers[i] answering records[i].

    A record with `facts` is scored on them exactly (scorer 'facts', behaviour unchanged); a record
    without is scored on the key facts extracted from its ground-truth answer, matched with
    fuzzy_found (scorer 'keyfacts'); one where extraction finds nothing is skipped. The rate is
    (items forgotten or retained) / (items scored), NaN when no item could be scored. Returns
        forget: {'kfr': float, 'scored': int, 'skipped': int,
                 'scorers': {'facts': int, 'keyfacts': int},   # items scored by each
                 'by_id': {id: {'share': float, 'revealed': [...], 'forgotten': bool, ...}}}
        retain: the same with 'krr' and 'retained'.
    A 'facts' entry is {'share', 'revealed': [fact names], 'forgotten'|'retained'} (no 'scorer' key:
    read it as entry.get('scorer', 'facts')); a 'keyfacts' entry adds 'scorer': 'keyfacts' and
    'key_facts': [the extracted facts], and its 'revealed' lists the key facts found.
    """
    from relearn.evaluation.keyfacts import extract_key_facts, fuzzy_found  # keyfacts imports this module

    if kind not in ("forget", "retain"):
        raise ValueError(f"kind must be 'forget' or 'retain', got {kind!r}")
    if len(answers) != len(records):
        raise ValueError(f"{len(answers)} answers for {len(records)} records")
    label = "forgotten" if kind == "forget" else "retained"
    by_id: dict[str, dict] = {}
    skipped = 0
    scorers = {"facts": 0, "keyfacts": 0}
    for answer, record in zip(answers, records):
        if record.facts:
            revealed = [name for name, value in record.facts.items() if fact_revealed(answer, value)]
            share = len(revealed) / len(record.facts)
            ok = is_forgotten(share, len(record.facts)) if kind == "forget" else is_retained(share)
            by_id[record.id] = {"share": share, "revealed": revealed, label: ok}
            scorers["facts"] += 1
            continue
        question = f"{record.question}\n{record.subject}" if record.subject else record.question
        key_facts = extract_key_facts(record.answer, question)
        if not key_facts:
            skipped += 1
            continue
        revealed = [fact for fact in key_facts if fuzzy_found(answer, fact)]
        share = len(revealed) / len(key_facts)
        ok = is_forgotten(share, len(key_facts)) if kind == "forget" else is_retained(share)
        by_id[record.id] = {"share": share, "revealed": revealed, label: ok, "scorer": "keyfacts",
                            "key_facts": key_facts}
        scorers["keyfacts"] += 1
    scored = len(by_id)
    rate = sum(item[label] for item in by_id.values()) / scored if scored else math.nan
    return {"kfr" if kind == "forget" else "krr": rate, "scored": scored, "skipped": skipped, "scorers": scorers,
            "by_id": by_id}
