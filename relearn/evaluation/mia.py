"""Membership inference: can the model's likelihoods tell the forget set (members, trained on) from a
holdout set (non-members, never trained on)? After successful unlearning they should not.

Per item, two scores, both losses (positive; lower = more member-like):
    loss   mean negative log-likelihood of the answer tokens given the question (LOSS attack,
           Yeom et al., 2018)
    mink   Min-K% Prob (Shi et al., 2024): the negated mean of the k lowest-probability answer
           tokens' log-probs, k = max(1, floor(k_share * tokens)), i.e. the mean NLL of the
           hardest k% of the tokens

AUC: the probability that a random member looks more like a member (lower loss) than a random
non-member, ties counted half (the Mann-Whitney U statistic over n_members * n_nonmembers).
0.5: indistinguishable; 1.0: every member scores below every non-member; below 0.5: members look
*less* familiar than non-members (a sign of over-unlearning, which also leaks membership).
"""
from __future__ import annotations

import math
from typing import Optional

from relearn.generation import answer_token_logprobs
from relearn.records import QARecord


def auc(positive_scores: list[float], negative_scores: list[float]) -> Optional[float]:
    """P(positive score > negative score) + 0.5 * P(equal), from ranks with ties averaged.

    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the sum of the positives' ranks
    in the pooled sample. None when either side is empty.
    """
    pos, neg = list(positive_scores), list(negative_scores)
    if not pos or not neg:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(pos + neg)  # average ranks for ties
    rank_sum = float(ranks[:len(pos)].sum())
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def loss_score(token_logprobs: list[float]) -> Optional[float]:
    """Mean NLL of the answer tokens; None without tokens."""
    if not token_logprobs:
        return None
    return -sum(token_logprobs) / len(token_logprobs)


def mink_score(token_logprobs: list[float], k: float = 0.2) -> Optional[float]:
    """-(mean of the floor(k * n) lowest token log-probs, at least one); None without tokens."""
    if not token_logprobs:
        return None
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], not {k}")
    n = max(1, math.floor(k * len(token_logprobs) + 1e-9))
    lowest = sorted(token_logprobs)[:n]
    return -sum(lowest) / n


def _token_rows(model, tokenizer, records: list[QARecord], template: str, max_length: int,
                batch_size: int) -> list[list[float]]:
    """answer_token_logprobs of every record, batched with records of similar length together."""
    if not records:
        return []
    order = sorted(range(len(records)), key=lambda i: len(records[i].question) + len(records[i].answer))
    rows = answer_token_logprobs(model, tokenizer, [records[i].question for i in order],
                                 [records[i].answer for i in order], template, max_length, batch_size)
    out: list[list[float]] = [[] for _ in records]
    for i, row in zip(order, rows):
        out[i] = row
    return out


def mia(model, tokenizer, members: list[QARecord], nonmembers: list[QARecord], template: str, max_length: int,
        batch_size: int, k: float = 0.2) -> tuple[dict, dict]:
    """(aggregate, per-item results) of the LOSS and Min-K% attacks, members vs non-members.

    aggregate: {'loss_auc', 'mink_auc', 'n_members', 'n_nonmembers', 'k'} (plus 'note' when an AUC
    cannot be computed); n_* count the items that have a score (answers with at least one token).
    per item, keyed by record id: {'loss', 'mink', 'member', 'tokens'}. Record ids must not repeat
    across the two sets.
    """
    shared = {r.id for r in members} & {r.id for r in nonmembers}
    if shared:
        raise ValueError(f"ids in both members and non-members: {sorted(shared)[:5]}")
    records = list(members) + list(nonmembers)
    rows = _token_rows(model, tokenizer, records, template, max_length, batch_size)
    items = {}
    for i, (record, row) in enumerate(zip(records, rows)):
        items[record.id] = {"loss": loss_score(row), "mink": mink_score(row, k), "member": i < len(members),
                            "tokens": len(row)}

    def member_likeness(key: str, member: bool) -> list[float]:
        # lower loss = more member-like, so the AUC ranks the negated loss
        return [-it[key] for it in items.values() if it["member"] == member and it[key] is not None]

    n_members = len(member_likeness("loss", True))
    n_nonmembers = len(member_likeness("loss", False))
    aggregate = {
        "loss_auc": auc(member_likeness("loss", True), member_likeness("loss", False)),
        "mink_auc": auc(member_likeness("mink", True), member_likeness("mink", False)),
        "n_members": n_members,
        "n_nonmembers": n_nonmembers,
        "k": k,
    }
    if not n_members or not n_nonmembers:
        missing = [name for name, n in (("members", n_members), ("non-members (holdout)", n_nonmembers)) if not n]
        aggregate["note"] = f"no scored {' or '.join(missing)}: AUC undefined"
    return aggregate, items
