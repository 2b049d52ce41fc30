"""Evaluation metrics for unlearning, as plain functions.

    scoring     knowledge scores: is a fact revealed in an answer, KFR (forget set), KRR (retain set)
    linguistic  LS (linguistic score) and its parts: perplexity, Brunet's index, Honore's statistic
    rouge       ROUGE-1 and ROUGE-L recall against the ground-truth answer

Each metric reads top to bottom on its own; the docstrings say exactly how the number is computed.
"""
