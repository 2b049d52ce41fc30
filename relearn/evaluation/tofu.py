"""TOFU metrics (Maini et al., 2024): probability, truth ratio, forget quality and model utility.

All probabilities are *length-normalised*: for an answer a of |a| tokens (the answer tokens and the
closing eos, see relearn.modeling.encoding), P(a|q) ** (1/|a|) = exp(mean over answer tokens of log p(token)).
An answer cut off by `max_length` is scored on the tokens that remain; one with no tokens left scores None.

Per item
    probability              P(a|q) ** (1/|a|)
    normalised_probability   P(a) / (P(a) + sum_i P(perturbed_i)), all length-normalised (TOFU's
                             probability for the real-authors and world-facts sets: the share of the
                             true answer among the options); None without perturbed answers
    paraphrased_probability  P(paraphrased answer | q) ** (1/|paraphrased|)
    perturbed_probabilities  the same for each perturbed answer
    truth_ratio              R = geometric mean of the perturbed probabilities / base probability,
                             computed in log space. The base is the paraphrased answer; a record with
                             perturbed answers but no paraphrase uses its own answer as the base (as
                             TOFU does for the real-authors and world-facts sets). R < 1: the model
                             prefers the true answer; R > 1: it prefers the wrong ones.

Per set
    probability                  mean of `probability` (or of `normalised_probability` with
                                 normalise_probability=True)
    rougeL_recall                mean ROUGE-L recall of the generated answers against the answers
    truth_ratio                  mean R
    truth_ratio_stat_retain      mean of max(0, 1 - R): the truth-ratio number in model utility
                                 (high = the model tells true from false answers)
    truth_ratio_stat_forget      mean of min(R, 1/R): TOFU's forget-set number (1 = the true and the
                                 perturbed answers are equally likely, what a model that never saw
                                 the data would do)

Across models and sets
    forget_quality   two-sample Kolmogorov-Smirnov test between the truth ratios of the unlearned
                     model and of a retain-only model on the forget set; the p-value is the quality
                     (high = indistinguishable from never having learnt the forget set)
    model_utility    harmonic mean of probability, rougeL_recall and truth_ratio_stat_retain over
                     the given sets (TOFU: retain, real authors, world facts: 9 numbers)
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

from relearn.evaluation.rouge import rougel_recall
from relearn.modeling.generation import answer_token_logprobs
from relearn.records import QARecord

KINDS = ("forget", "retain", "general")
UTILITY_KEYS = ("probability", "rougeL_recall", "truth_ratio_stat_retain")


# ---------------------------------------------------------------------------------------------- pure math

def _finite(values: Iterable[Optional[float]]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = _finite(values)
    return sum(vals) / len(vals) if vals else None


def length_normalised_probability(token_logprobs: list[float]) -> Optional[float]:
    """P(a|q) ** (1/|a|) = exp(mean token log-prob); None for an answer with no tokens."""
    if not token_logprobs:
        return None
    return math.exp(sum(token_logprobs) / len(token_logprobs))


def truth_ratio(perturbed_probabilities: list[float], base_probability: Optional[float]) -> Optional[float]:
    """R = (prod_i p_i) ** (1/n) / p_base over the perturbed probabilities p_1..p_n (all length-normalised).

    None when there is no perturbed probability or no positive base probability; 0.0 when a perturbed
    probability is 0.
    """
    perturbed = [p for p in perturbed_probabilities if p is not None]
    if not perturbed or len(perturbed) != len(perturbed_probabilities) or not base_probability or base_probability <= 0:
        return None
    if min(perturbed) <= 0:
        return 0.0
    return math.exp(sum(math.log(p) for p in perturbed) / len(perturbed) - math.log(base_probability))


def option_share(probability: Optional[float], perturbed_probabilities: list[float]) -> Optional[float]:
    """P(a) / (P(a) + sum_i P(perturbed_i)): TOFU's probability for real-authors / world-facts sets."""
    if probability is None or not perturbed_probabilities or any(p is None for p in perturbed_probabilities):
        return None
    total = probability + sum(perturbed_probabilities)
    return probability / total if total > 0 else None


def truth_ratio_stat_retain(ratios: Iterable[Optional[float]]) -> Optional[float]:
    """mean over items of max(0, 1 - R) (None values skipped; None if nothing is left)."""
    return _mean(max(0.0, 1.0 - r) for r in _finite(ratios))


def truth_ratio_stat_forget(ratios: Iterable[Optional[float]]) -> Optional[float]:
    """mean over items of min(R, 1/R) (R = 0 counts 0; None values skipped; None if nothing is left)."""
    return _mean((min(r, 1.0 / r) if r > 0 else 0.0) for r in _finite(ratios))


def harmonic_mean(values: Iterable[Optional[float]]) -> Optional[float]:
    """n / sum(1/v) over the given values; None values skipped; 0.0 if any value is 0; None if none."""
    vals = _finite(values)
    if not vals:
        return None
    if any(v < 0 for v in vals):
        raise ValueError(f"harmonic mean of negative values: {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def model_utility(per_set: dict[str, dict]) -> Optional[float]:
    """Harmonic mean of each set's 'probability', 'rougeL_recall' and 'truth_ratio_stat_retain'.

    `per_set` maps a set name to its aggregate (as tofu_set_metrics returns it). Missing or None
    values are skipped; any zero makes the utility 0.0; None when no value is given at all.
    """
    return harmonic_mean(aggregate.get(key) for aggregate in per_set.values() for key in UTILITY_KEYS)


def forget_quality(truth_ratios_a: Iterable[Optional[float]], truth_ratios_b: Iterable[Optional[float]],
                   min_n: int = 2) -> dict:
    """Two-sample KS test between two truth-ratio samples (None and non-finite values dropped).

    a: the unlearned model on the forget set, b: a retain-only model on the same set. The p-value is
    TOFU's forget quality. (TOFU tests 1/R rather than R; the KS statistic and p-value are the same,
    since the test only depends on the order of the values.) With fewer than `min_n` values on
    either side, the statistic and p-value are None and a 'note' says why.
    """
    a, b = _finite(truth_ratios_a), _finite(truth_ratios_b)
    result = {"ks_statistic": None, "p_value": None, "n_a": len(a), "n_b": len(b)}
    if len(a) < max(1, min_n) or len(b) < max(1, min_n):
        result["note"] = f"needs at least {max(1, min_n)} truth ratios on each side"
        return result
    from scipy.stats import ks_2samp

    test = ks_2samp(a, b)
    result.update(ks_statistic=float(test.statistic), p_value=float(test.pvalue))
    return result


# ---------------------------------------------------------------------------------------------- with a model

def _logprob_rows(model, tokenizer, pairs: list[tuple[str, str]], template: str, max_length: int,
                  batch_size: int) -> list[list[float]]:
    """answer_token_logprobs of every pair, in one batched pass; pairs of similar length share a batch."""
    if not pairs:
        return []
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    rows = answer_token_logprobs(model, tokenizer, [pairs[i][0] for i in order], [pairs[i][1] for i in order],
                                 template, max_length, batch_size)
    out: list[list[float]] = [[] for _ in pairs]
    for i, row in zip(order, rows):
        out[i] = row
    return out


def tofu_item_scores(model, tokenizer, records: list[QARecord], template: str, max_length: int,
                     batch_size: int) -> list[dict]:
    """Per record: probability, normalised_probability, paraphrased_probability, perturbed_probabilities,
    truth_ratio, truth_ratio_base ('paraphrased' | 'answer' | None) and answer_tokens.

    Every (question, answer), (question, paraphrased answer) and (question, perturbed answer) pair of
    all records goes through one batched call.
    """
    pairs: list[tuple[str, str]] = []
    slots = []  # per record: (answer index, paraphrase index or None, perturbed indices)
    for r in records:
        a = len(pairs)
        pairs.append((r.question, r.answer))
        p = None
        if r.paraphrased_answer.strip():
            p = len(pairs)
            pairs.append((r.question, r.paraphrased_answer))
        perturbed = []
        for answer in r.perturbed_answer:
            if answer.strip():
                perturbed.append(len(pairs))
                pairs.append((r.question, answer))
        slots.append((a, p, perturbed))
    rows = _logprob_rows(model, tokenizer, pairs, template, max_length, batch_size)

    items = []
    for a, p, perturbed in slots:
        probability = length_normalised_probability(rows[a])
        paraphrased = length_normalised_probability(rows[p]) if p is not None else None
        perturbed_probs = [length_normalised_probability(rows[j]) for j in perturbed]
        base, base_name = (paraphrased, "paraphrased") if p is not None else (probability, "answer")
        ratio = truth_ratio(perturbed_probs, base) if perturbed else None
        items.append({
            "probability": probability,
            "normalised_probability": option_share(probability, perturbed_probs),
            "paraphrased_probability": paraphrased,
            "perturbed_probabilities": perturbed_probs or None,
            "truth_ratio": ratio,
            "truth_ratio_base": base_name if ratio is not None else None,
            "answer_tokens": len(rows[a]),
        })
    return items


def aggregate_items(items: list[dict], normalise_probability: bool = False) -> dict:
    """Set aggregate of tofu_item_scores results (plus 'rougeL_recall' where items have it)."""
    ratios = [it["truth_ratio"] for it in items]
    prob_key = "normalised_probability" if normalise_probability else "probability"
    return {
        "n": len(items),
        "probability": _mean(it[prob_key] for it in items),
        "normalise_probability": normalise_probability,
        "rougeL_recall": _mean(it.get("rougeL_recall") for it in items),
        "truth_ratio": _mean(ratios),
        "truth_ratio_stat_retain": truth_ratio_stat_retain(ratios),
        "truth_ratio_stat_forget": truth_ratio_stat_forget(ratios),
        "n_truth_ratio": len(_finite(ratios)),
    }


def tofu_set_metrics(model, tokenizer, records: list[QARecord], answers_generated: Optional[list[str]],
                     template: str, max_length: int, batch_size: int, kind: str = "retain",
                     normalise_probability: Optional[bool] = None) -> tuple[dict, dict]:
    """(aggregate, per-item results keyed by record id) of the TOFU metrics on one set.

    kind: 'forget', 'retain' or 'general' (real authors / world facts); it is recorded in the
    aggregate, and 'general' makes normalise_probability default to True (TOFU's convention).
    answers_generated: the model's generated answers, one per record, for ROUGE-L recall against
    the record's answer; None leaves rougeL_recall out (None).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if answers_generated is not None and len(answers_generated) != len(records):
        raise ValueError(f"{len(answers_generated)} generated answers for {len(records)} records")
    if normalise_probability is None:
        normalise_probability = kind == "general"
    items = tofu_item_scores(model, tokenizer, records, template, max_length, batch_size)
    for i, (record, item) in enumerate(zip(records, items)):
        item["rougeL_recall"] = (rougel_recall(answers_generated[i], record.answer)
                                 if answers_generated is not None else None)
    aggregate = {"kind": kind, **aggregate_items(items, normalise_probability)}
    return aggregate, {r.id: item for r, item in zip(records, items)}
