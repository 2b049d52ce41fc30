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

Name-controlled variant (`name_masked_loss`, `name_masked_mink`): the same two scores over the
answer tokens that are *not* part of the subject's name. Members are people the model was trained
on and non-members people it never saw, so a model can separate them by the names alone (a
familiar name is cheap to predict) even after what it knew about them is gone. The subject is the
record's `subject`, else the first run of two or more capitalised words in the question
(relearn.augment.rules.guess_subject, as relearn.data.sources.subject_of guesses it; never from
the answer, where such a run is as likely the fact itself: "Velmor Bay"); a token is a name token
when its characters overlap the full name or one of its capitalised words ("Alice Moran" also
masks a lone "Moran", "Moran's"), with the space before it, in the answer. Tokens and their
character offsets come from the very call that encodes answers for scoring
(relearn.modeling.encoding.answer_ids), so the mask lines up with the log-probs token by token; the token
that ends the answer is kept, as in the plain score. Items without a subject are left out of the
name-masked AUCs (not scored over all tokens, which would mix name-familiar scores back in) and
counted in `n_without_subject`; an item whose answer never names its subject keeps all its tokens.
"""
from __future__ import annotations

import math
import re
from typing import Optional

from relearn.modeling.encoding import PromptFormat, answer_ids
from relearn.modeling.generation import answer_token_logprobs
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


def name_spans(text: str, name: str) -> list[tuple[int, int]]:
    """Character spans [start, end) in `text` of `name` and of each of its words (whole words,
    case-sensitive; a word counts when it has two or more characters and starts with a capital, so
    "de" in "Jean de Florette" is masked only inside the full name; a hyphenated word's parts count
    too), each with the whitespace just before it: tokenizers attach that space to the name's first
    token (" Moran") or keep it apart (" ", "Moran") depending on the name, and either way it goes
    with the name. Sorted, possibly overlapping."""
    name = " ".join(name.split())
    if not name:
        return []
    words = set()
    for word in name.split():
        word = re.sub(r"'s$", "", word.strip(".,;:!?()[]\"'"))
        for part in [word] + word.split("-"):
            if len(part) >= 2 and part[0].isupper():
                words.add(part)
    spans = []
    for needle in [name, *sorted(words)]:
        # whole words: no letter or digit right before or after (punctuation and "'s" may follow)
        for match in re.finditer(rf"(?<!\w){re.escape(needle)}(?!\w)", text):
            start = match.start()
            while start > 0 and text[start - 1].isspace():
                start -= 1
            spans.append((start, match.end()))
    return sorted(spans)


class _OffsetRecorder:
    """A tokenizer seen through: every call also asks for character offsets and keeps them, so that
    running relearn.modeling.encoding.answer_ids with it tells which characters of which text each answer
    token came from, through the very call that encodes answers for scoring."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls: list[tuple[str, list[int], list[tuple[int, int]]]] = []

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text, **kwargs):
        encoded = self._tokenizer(text, return_offsets_mapping=True, **kwargs)
        self.calls.append((text, list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]))
        return encoded


def name_token_mask(tokenizer, answer: str, name: str, template: str | PromptFormat) -> Optional[list[bool]]:
    """For each token of answer_ids(tokenizer, answer, template) (the answer's tokens, then the token
    that ends it), whether its characters overlap `name` or one of its words (name_spans) in the
    answer text. None when the tokenizer cannot give offsets (a slow, non-Rust tokenizer).

    Raises RuntimeError when answer_ids no longer encodes the answer with one call of the tokenizer
    (the alignment would be a guess): fix this function rather than let the mask drift.
    """
    expected = answer_ids(tokenizer, answer, template)  # also caches the chat end-of-turn token
    recorder = _OffsetRecorder(tokenizer)
    try:
        ids = answer_ids(recorder, answer, template)
    except NotImplementedError:  # return_offsets_mapping needs a fast tokenizer
        return None
    if len(recorder.calls) != 1 or ids != expected or recorder.calls[0][1] != expected[:-1]:
        raise RuntimeError("relearn.modeling.encoding.answer_ids no longer encodes the answer with one tokenizer call; "
                           "name masking cannot align tokens with characters")
    text, _, offsets = recorder.calls[0]
    spans = name_spans(text, name)
    mask = [any(s < b and e > a for a, b in spans) for s, e in offsets]
    return mask + [False]  # the end-of-answer token is not part of the name


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
    Name-controlled (see the module docstring): 'name_masked_loss_auc', 'name_masked_mink_auc',
    'n_name_masked_members', 'n_name_masked_nonmembers' (items with a name-masked score) and
    'n_without_subject' (items left out for want of a subject).
    per item, keyed by record id: {'loss', 'mink', 'member', 'tokens', 'name_masked_loss',
    'name_masked_mink', 'name_tokens'} (name_tokens: scored tokens masked as the name; the
    name-masked scores are None without a subject or when every scored token is the name). Every
    AUC key K has its per-item score at K[:-4]. Record ids must not repeat across the two sets.
    """
    shared = {r.id for r in members} & {r.id for r in nonmembers}
    if shared:
        raise ValueError(f"ids in both members and non-members: {sorted(shared)[:5]}")
    from relearn.augment.rules import guess_subject

    records = list(members) + list(nonmembers)
    rows = _token_rows(model, tokenizer, records, template, max_length, batch_size)
    items = {}
    without_subject, without_offsets = 0, 0
    for i, (record, row) in enumerate(zip(records, rows)):
        items[record.id] = {"loss": loss_score(row), "mink": mink_score(row, k), "member": i < len(members),
                            "tokens": len(row)}
        subject = record.subject or guess_subject(record.question)
        name_mask = name_token_mask(tokenizer, record.answer, subject, template) if subject else None
        without_subject += not subject
        without_offsets += bool(subject) and name_mask is None
        kept, name_tokens = None, None
        if name_mask is not None:
            # row: the log-probs of the first len(row) answer tokens (fewer when max_length cuts)
            kept = [lp for lp, is_name in zip(row, name_mask) if not is_name]
            name_tokens = sum(name_mask[:len(row)])
        items[record.id].update({"name_masked_loss": loss_score(kept) if kept is not None else None,
                                 "name_masked_mink": mink_score(kept, k) if kept is not None else None,
                                 "name_tokens": name_tokens})

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
        "name_masked_loss_auc": auc(member_likeness("name_masked_loss", True),
                                    member_likeness("name_masked_loss", False)),
        "name_masked_mink_auc": auc(member_likeness("name_masked_mink", True),
                                    member_likeness("name_masked_mink", False)),
        "n_name_masked_members": len(member_likeness("name_masked_loss", True)),
        "n_name_masked_nonmembers": len(member_likeness("name_masked_loss", False)),
        "n_without_subject": without_subject,
    }
    if without_offsets:
        aggregate["name_masked_note"] = "the tokenizer gives no character offsets: no name-masked scores"
    if not n_members or not n_nonmembers:
        missing = [name for name, n in (("members", n_members), ("non-members (holdout)", n_nonmembers)) if not n]
        aggregate["note"] = f"no scored {' or '.join(missing)}: AUC undefined"
    return aggregate, items
