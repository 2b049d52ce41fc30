"""Evaluation metrics for unlearning, as plain functions.

    scoring     knowledge scores: is a fact revealed in an answer, KFR (forget set), KRR (retain set)
    linguistic  LS (linguistic score) and its parts: perplexity, Brunet's index, Honore's statistic
    rouge       ROUGE-1 and ROUGE-L recall against the ground-truth answer
    keyfacts    key facts of free-text answers (names, numbers, dates, rare words) and fuzzy matching
    nli         optional NLI scorer: a contradiction of the ground truth counts as forgotten
    embedding   optional sentence-embedding scorer: fuzzy key-fact matching by cosine similarity
    tofu        TOFU metrics: probability, truth ratio, forget quality, model utility
    mia         membership inference: LOSS and Min-K% AUC, forget set vs holdout
    evaluate    one model on every evaluation set: the above together, aggregates and per-item results

Each metric reads top to bottom on its own; the docstrings say exactly how the number is computed.
"""
