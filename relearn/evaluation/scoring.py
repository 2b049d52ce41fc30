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

Per item, share = (facts revealed) / (facts). Thresholds follow the paper, for both scorers:
    forgotten  share <= 0.5 if the item has <= 3 facts, else share <= 0.3
    retained   share >= 0.3
KFR = share of forget-set items forgotten; KRR = share of retain-set items retained. Items with
neither facts nor extractable key facts cannot be scored and are skipped (and counted).

Two optional model-based scorers (both off by default; then the numbers are the rules' alone):

- Sentence embedding (evaluate.embedding_model, relearn.evaluation.embedding): a fact the rule
  does not find still counts as revealed when some window of the answer has cosine similarity
  >= evaluate.embedding_threshold with it (number guard and windows: see that module). It only
  changes `share`, and only upwards.
- NLI (evaluate.nli_model, relearn.evaluation.nli), as in the paper and its code: forget items
  are judged with premise = answer, hypothesis = ground-truth answer (record.answer); retain items
  with premise = ground truth, hypothesis = answer. The label is the arg-max class. Then
      forgotten = (label == contradiction) OR share-rule forgotten
      retained  = (label != contradiction) AND share >= 0.3
  Entailment and neutral count alike: only a contradiction changes a verdict, making a forget item
  forgotten whatever its share, and a retain item not retained whatever its share. Only scored
  items are judged (an item without facts stays skipped).

`KnowledgeScorer.from_params(params.evaluate)` loads the configured models once (cached) and
`.score(answers, records, kind)` is knowledge_scores with them.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

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


def knowledge_scores(answers: list[str], records: list[QARecord], kind: str, nli=None, embedder=None,
                     embedding_threshold: float = 0.8) -> dict:
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

    Optional scorers (module docstring): `embedder` (relearn.evaluation.embedding.SentenceEmbedder or
    anything with its `encode`) with `embedding_threshold`, and `nli` (relearn.evaluation.nli.NLIModel
    or anything with its `predict`). With them, an entry also holds
        embedder: 'embedding_similarity': {fact: best cosine or None} for the facts the rule missed,
                  'revealed_by_embedding': [those at or above the threshold] (also in 'revealed');
        nli:      'nli': {'label': str, 'probs': {label: float}},
                  'forgotten_by_facts' | 'retained_by_facts': the verdict of the share rule alone;
    and the result holds 'components': {numbers}: with nli '<rate>_without_nli' (the rate by the
    share rule alone), 'nli_contradiction' and 'nli_entailment' (shares of scored items with that
    label); with an embedder 'facts_revealed_by_embedding' (a count). Without either, no extra key.
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
    # pass 1: the facts of each item and which of them the rules find
    # items: (record, answer, [(name, value)], [found by the rule], entry)
    items: list[tuple[QARecord, str, list[tuple[str, str]], list[bool], dict]] = []
    for answer, record in zip(answers, records):
        if record.facts:
            facts = list(record.facts.items())
            found = [fact_revealed(answer, value) for _, value in facts]
            entry: dict = {}
            scorers["facts"] += 1
        else:
            question = f"{record.question}\n{record.subject}" if record.subject else record.question
            key_facts = extract_key_facts(record.answer, question)
            if not key_facts:
                skipped += 1
                continue
            facts = [(fact, fact) for fact in key_facts]
            found = [fuzzy_found(answer, fact) for fact in key_facts]
            entry = {"scorer": "keyfacts", "key_facts": key_facts}
            scorers["keyfacts"] += 1
        items.append((record, answer, facts, found, entry))

    # pass 2 (optional): facts the rules missed, matched by embedding similarity, in one batch
    by_embedding = 0
    if embedder is not None:
        from relearn.evaluation.embedding import best_similarities

        missed = [(i, j) for i, (_, _, facts, found, _) in enumerate(items) for j in range(len(facts)) if not found[j]]
        sims = best_similarities(embedder, [(items[i][1], items[i][2][j][1]) for i, j in missed])
        for (i, j), sim in zip(missed, sims):
            _, _, facts, found, entry = items[i]
            entry.setdefault("embedding_similarity", {})[facts[j][0]] = sim
            if sim is not None and sim >= embedding_threshold:
                found[j] = True
                entry.setdefault("revealed_by_embedding", []).append(facts[j][0])
                by_embedding += 1
        for *_, entry in items:
            entry.setdefault("embedding_similarity", {})
            entry.setdefault("revealed_by_embedding", [])

    # pass 3: the share rule, then (optional) the NLI label
    judged = None
    if nli is not None:
        pairs = [(a, r.answer) if kind == "forget" else (r.answer, a) for r, a, *_ in items]
        judged = nli.predict([p for p, _ in pairs], [h for _, h in pairs])
    for n, (record, _answer, facts, found, extra) in enumerate(items):
        revealed = [name for (name, _), ok in zip(facts, found) if ok]
        share = len(revealed) / len(facts)
        ok = is_forgotten(share, len(facts)) if kind == "forget" else is_retained(share)
        entry = {"share": share, "revealed": revealed, label: ok, **extra}
        if judged is not None:
            contradiction = judged[n]["label"] == "contradiction"
            entry[label] = (ok or contradiction) if kind == "forget" else (ok and not contradiction)
            entry[f"{label}_by_facts"] = ok
            entry["nli"] = judged[n]
        by_id[record.id] = entry
    scored = len(by_id)
    rate_name = "kfr" if kind == "forget" else "krr"
    rate = sum(item[label] for item in by_id.values()) / scored if scored else math.nan
    out = {rate_name: rate, "scored": scored, "skipped": skipped, "scorers": scorers, "by_id": by_id}
    components: dict[str, float] = {}
    if judged is not None:
        labels = [j["label"] for j in judged]
        components[f"{rate_name}_without_nli"] = (sum(e[f"{label}_by_facts"] for e in by_id.values()) / scored
                                                  if scored else math.nan)
        for name in ("contradiction", "entailment"):
            components[f"nli_{name}"] = labels.count(name) / scored if scored else math.nan
    if embedder is not None:
        components["facts_revealed_by_embedding"] = by_embedding
    if components:
        out["components"] = components
    return out


@dataclass
class KnowledgeScorer:
    """knowledge_scores with the optional scorers of params.evaluate bound (None: not used)."""

    nli: object = None
    embedder: object = None
    embedding_threshold: float = 0.8

    @classmethod
    def from_params(cls, evaluate_params) -> "KnowledgeScorer":
        """From params.evaluate: loads evaluate.nli_model and evaluate.embedding_model when set (each
        model once per process: the loaders are cached), batches of evaluate.batch_size."""
        e = evaluate_params
        nli = embedder = None
        if e.nli_model:
            from relearn.evaluation.nli import load_nli

            nli = load_nli(e.nli_model, e.batch_size)
        if e.embedding_model:
            from relearn.evaluation.embedding import load_embedder

            embedder = load_embedder(e.embedding_model, e.batch_size)
        return cls(nli=nli, embedder=embedder, embedding_threshold=e.embedding_threshold)

    def score(self, answers: list[str], records: list[QARecord], kind: str) -> dict:
        return knowledge_scores(answers, records, kind, nli=self.nli, embedder=self.embedder,
                                embedding_threshold=self.embedding_threshold)
