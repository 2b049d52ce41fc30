"""ROUGE-1 and ROUGE-L recall of a generated answer against the ground-truth answer.

Tokens: lower-cased runs of letters and digits (all other characters separate tokens), no
stemming and no stop-word removal. For ASCII text this is the default tokenizer of the
`rouge_score` package with use_stemmer=False. Recall divides by the reference's token count;
an empty reference scores 0.0.
"""
from __future__ import annotations

import re
from collections import Counter


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits."""
    return re.findall(r"[^\W_]+", text.lower())


def rouge1_recall(prediction: str, reference: str) -> float:
    """sum over reference words of min(count in prediction, count in reference) / reference tokens."""
    pred, ref = Counter(rouge_tokens(prediction)), Counter(rouge_tokens(reference))
    n_ref = sum(ref.values())
    if n_ref == 0:
        return 0.0
    overlap = sum(min(count, pred[word]) for word, count in ref.items())
    return overlap / n_ref


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rougel_recall(prediction: str, reference: str) -> float:
    """LCS(prediction tokens, reference tokens) / reference tokens."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not ref:
        return 0.0
    return lcs_length(pred, ref) / len(ref)


def mean_rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean over pairs of ROUGE-1 and ROUGE-L recall: {'rouge1_recall': ..., 'rougeL_recall': ...}."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("mean_rouge needs at least one pair")
    pairs = list(zip(predictions, references))
    return {
        "rouge1_recall": sum(rouge1_recall(p, r) for p, r in pairs) / len(pairs),
        "rougeL_recall": sum(rougel_recall(p, r) for p, r in pairs) / len(pairs),
    }
