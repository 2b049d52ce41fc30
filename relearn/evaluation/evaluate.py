"""Evaluate one model: generate answers for each evaluation set and score them.

For a set of forget questions: KFR (share of items forgotten); for retain questions: KRR. For every
set: LS (PPL of the answer under a reference model, here the target, plus Brunet and Honore) and
ROUGE recall against the ground truth. Returns aggregates and the per-item evidence separately, so
that a surprising number can be traced to its questions.
"""
from __future__ import annotations

import math
from collections import defaultdict

from relearn.evaluation.embedding import embedding_changes
from relearn.evaluation.linguistic import linguistic_score, perplexity
from relearn.evaluation.relevance import set_relevance
from relearn.evaluation.rouge import mean_rouge, rouge1_recall, rougel_recall
from relearn.evaluation.scoring import KnowledgeScorer
from relearn.modeling.generation import answer_nll, generate_answers
from relearn.params import Params
from relearn.records import QARecord, seeded_subset


def _mean_dicts(dicts: list[dict]) -> dict:
    """Element-wise mean of nested dicts of numbers (for several sampling rounds)."""
    out = {}
    for key, value in dicts[0].items():
        if isinstance(value, dict):
            out[key] = _mean_dicts([d[key] for d in dicts])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = sum(d[key] for d in dicts) / len(dicts)
        else:
            out[key] = value
    return out


def score_set(answers: list[str], records: list[QARecord], kind: str, ppl_model, ppl_tokenizer,
              params: Params) -> tuple[dict, dict]:
    """(aggregate metrics, per-item results) for one set; kind is 'forget' or 'retain'.

    With evaluate.embedding_model set, the aggregate also has `relevance`, `relevance_reference`,
    `relevance_ratio` (relearn.evaluation.relevance), `embedding_changed` and
    `<rate>_without_embedding` (relearn.evaluation.embedding.embedding_changes), and each item its
    `relevance` and `<label>_without_embedding`."""
    scorer = KnowledgeScorer.from_params(params.evaluate)
    knowledge = scorer.score(answers, records, kind)
    nll = answer_nll(ppl_model, ppl_tokenizer, [r.question for r in records], answers,
                     params.model.prompt, params.model.max_length, params.evaluate.batch_size)
    ppls = [perplexity(s, n) for s, n in nll]
    ls = linguistic_score(answers, ppls, ppl_aggregate=params.evaluate.ppl_aggregate)
    rouge = mean_rouge(answers, [r.answer for r in records])
    rate = "kfr" if kind == "forget" else "krr"
    label = "forgotten" if kind == "forget" else "retained"
    aggregate = {rate: knowledge[rate], **knowledge.get("components", {}), **ls, **rouge, "n": len(records)}
    extra: dict[str, dict] = {r.id: {} for r in records}
    if scorer.embedder is not None:
        by_id = knowledge["by_id"]
        counts = {r.id: len(by_id[r.id]["key_facts"]) if by_id[r.id].get("scorer") == "keyfacts" else len(r.facts)
                  for r in records if r.id in by_id}
        changed, without = embedding_changes(by_id, counts, kind)
        aggregate["embedding_changed"] = changed
        aggregate[f"{rate}_without_embedding"] = sum(without.values()) / len(without) if without else math.nan
        for rid, ok in without.items():
            extra[rid][f"{label}_without_embedding"] = ok
        relevance, per_item = set_relevance(scorer.embedder, [r.question for r in records], answers,
                                            [r.answer for r in records])
        aggregate.update(relevance)
        for r, value in zip(records, per_item):
            extra[r.id]["relevance"] = value
    # per item too, so that every set-level number can be given an interval over items
    items = {r.id: {"answer": a, "ppl": p, "rouge1_recall": rouge1_recall(a, r.answer),
                    "rougeL_recall": rougel_recall(a, r.answer), **knowledge["by_id"].get(r.id, {}), **extra[r.id]}
             for r, a, p in zip(records, answers, ppls)}
    return aggregate, items


def knowledge_rates(model, tokenizer, forget_eval: list[QARecord], retain_eval: list[QARecord], params: Params,
                    label: str = "") -> dict[str, float]:
    """KFR and KRR alone (no LS): for models that only generate, such as an exported ONNX model."""
    e = params.evaluate
    rates = {}
    for records, kind, rate in ((forget_eval, "forget", "kfr"), (retain_eval, "retain", "krr")):
        answers = generate_answers(model, tokenizer, [r.question for r in records], params.model.prompt,
                                   e.max_new_tokens, e.batch_size, desc=f"{label} {kind}".strip())
        rates[rate] = KnowledgeScorer.from_params(e).score(answers, records, kind)[rate]
    return rates


def answers_to(model, tokenizer, records: list[QARecord], fmt, max_new_tokens: int, batch_size: int,
               **generation) -> list[str]:
    """The model's answers to the records' questions, in order; a record with a prefill (a primed pair) is
    asked with that opening given after the answer marker, and its answer is what the model adds to it."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.prefill].append(i)
    answers: list[str] = [""] * len(records)
    for prefill, rows in groups.items():
        made = generate_answers(model, tokenizer, [records[i].question for i in rows],
                                fmt.with_prefill(prefill) if prefill else fmt, max_new_tokens, batch_size,
                                **generation)
        for i, answer in zip(rows, made):
            answers[i] = answer
    return answers


def variant_sample(variants: list[QARecord], per_kind: int, seed: int) -> dict[str, list[QARecord]]:
    """The forget variants by kind; with per_kind > 0, a seeded sample of that many of each kind
    (in file order), the same for every model evaluated with the same seed."""
    by_kind: dict[str, list[QARecord]] = defaultdict(list)
    for r in variants:
        by_kind[r.variant].append(r)
    return {kind: seeded_subset(records, per_kind, f"{seed}:{kind}") for kind, records in by_kind.items()}


def evaluate_model(model, tokenizer, forget_eval: list[QARecord], retain_eval: list[QARecord],
                   variants: list[QARecord], ppl_model, ppl_tokenizer, params: Params) -> tuple[dict, dict]:
    """Metrics of one model: {'kfr', 'krr', 'ls', 'forget': {...}, 'retain': {...}, 'variants': {kind: {...}}},
    and the per-item results of the first round."""
    e = params.evaluate
    by_kind = variant_sample(variants, e.variant_items, params.seed)
    sets = [("forget", forget_eval, "forget"), ("retain", retain_eval, "retain")]
    sets += [(f"variant_{kind}", rs, "forget") for kind, rs in sorted(by_kind.items())]

    rounds, items = [], {}
    for round_ in range(e.rounds):
        result: dict = {}
        for name, records, kind in sets:
            answers = answers_to(model, tokenizer, records, params.model.prompt, e.max_new_tokens, e.batch_size,
                                 do_sample=e.do_sample, temperature=e.temperature, top_p=e.top_p, top_k=e.top_k,
                                 seed=params.seed + round_, desc=f"generate {name}")
            aggregate, per_item = score_set(answers, records, kind, ppl_model, ppl_tokenizer, params)
            result[name] = aggregate
            if round_ == 0:
                items[name] = per_item
            else:  # the first round's evidence, plus each item's verdict in every round
                label = "forgotten" if kind == "forget" else "retained"
                for rid, item in per_item.items():
                    if label in item and rid in items[name]:
                        items[name][rid].setdefault(f"{label}_rounds", [items[name][rid][label]]).append(item[label])
        rounds.append(result)
    result = _mean_dicts(rounds)

    metrics = {
        "kfr": result["forget"]["kfr"],
        "krr": result["retain"]["krr"],
        # one fluency number per model: the mean of the forget-set and retain-set LS
        "ls": (result["forget"]["ls"] + result["retain"]["ls"]) / 2,
        "forget": result["forget"],
        "retain": result["retain"],
        "variants": {name.removeprefix("variant_"): v for name, v in result.items() if name.startswith("variant_")},
    }
    return metrics, items
