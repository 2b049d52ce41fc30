"""Relevance: does the answer address the question? (on when evaluate.embedding_model is set)

The paper has GPT-4o judge each answer's relevance; here, offline, the judge is the sentence
embedding of relearn.evaluation.embedding (all-MiniLM-L6-v2 from `relearn model get minilm`):

    relevance(item) = cos(e(question), e(answer))       in [-1, 1]; 0.0 for an answer without words

with e the mean-pooled, L2-normalised embedding (embedding.SentenceEmbedder). An answer on the
question's topic scores high whether or not it is right ("He starts from an outline of the plot"),
a template that dodges it lower ("<name> has written something, but the title is not widely
known."), an unrelated one near 0. It says nothing about correctness (that is KFR/KRR and ROUGE):
a well unlearned model should stay relevant on the forget set, a model that answers everything
with the same refusal or with babble should not.

Per set:
    relevance            mean of the items' relevance (per item: `relevance` in the evidence)
    relevance_reference  mean over the same items of cos(e(question), e(ground-truth answer)):
                         how relevant the answers the target was trained on are, by the same
                         measure (cosines between a question and its answer are far from 1 even
                         for a perfect answer, and their level depends on the data set)
    relevance_ratio      relevance / relevance_reference (None when the reference is <= 0):
                         about 1 for a model answering like its training data, the calibrated
                         number to read across data sets. The reference is the ground truth rather
                         than the target model's answers so that every model's ratio is computed
                         alone and against the same denominator; the target's own ratio shows how
                         close its answers come to that reference.

Every distinct string of a set is embedded once, in one `embedder.encode` call.
"""
from __future__ import annotations

import statistics

from relearn.evaluation.embedding import words


def relevance_scores(embedder, questions: list[str], answers: list[str]) -> list[float]:
    """cos(e(question_i), e(answer_i)) for each pair; 0.0 where the answer has no words."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions for {len(answers)} answers")
    index: dict[str, int] = {}
    for q, a in zip(questions, answers):
        if words(a):
            index.setdefault(q, len(index))
            index.setdefault(a, len(index))
    if not index:
        return [0.0] * len(answers)
    emb = embedder.encode(list(index))                                    # (N, H), unit rows
    return [float(emb[index[q]] @ emb[index[a]]) if words(a) else 0.0 for q, a in zip(questions, answers)]


def set_relevance(embedder, questions: list[str], answers: list[str], references: list[str]) -> tuple[dict, list[float]]:
    """({'relevance', 'relevance_reference', 'relevance_ratio'}, per-item relevance) for one set;
    references[i] is item i's ground-truth answer. An empty set gives {} and []."""
    if not answers:
        return {}, []
    scores = relevance_scores(embedder, questions + questions, answers + references)
    mine, reference = scores[:len(answers)], scores[len(answers):]
    value, ref = statistics.fmean(mine), statistics.fmean(reference)
    return {"relevance": value, "relevance_reference": ref,
            "relevance_ratio": value / ref if ref > 0 else None}, mine
