"""Loss terms as pure functions of logits and labels.

Shapes: logits (B, T, V), labels (B, T) with -100 on every position that is not an answer token
(prompt, padding). Position t's logits predict token t+1, so both are shifted by one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, :-1, :], labels[:, 1:]                       # (B, T-1, V), (B, T-1)


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy over answer tokens."""
    logits, labels = _shift(logits, labels)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)


def answer_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_theta) summed over the vocabulary, averaged over answer tokens only.

    (The published code averages over prompt and padding positions too; we mask them.)
    """
    logits, labels = _shift(logits, labels)
    ref_logits = ref_logits[:, :-1, :]
    mask = (labels != IGNORE).float()                              # (B, T-1)
    logp = F.log_softmax(logits.float(), dim=-1)                   # (B, T-1, V)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1)          # (B, T-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(answer token) per sequence, shape (B,)."""
    logits, labels = _shift(logits, labels)
    mask = labels != IGNORE
    logp = F.log_softmax(logits.float(), dim=-1)
    tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)   # (B, T-1)
    return (tok * mask).sum(dim=1)


def npo_loss(logp_theta: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al., 2024) on forget answers:

        -(2 / beta) * mean_b log sigmoid(-beta * (logp_theta_b - logp_ref_b))

    logp_theta, logp_ref: (B,) sequence log-probabilities of the answers (`sequence_logprob`) under
    the model being unlearned and the frozen reference. Equal inputs give (2 / beta) * log 2; the
    loss falls as logp_theta drops below logp_ref, and is bounded below by 0 (unlike -CE).
    """
    log_ratio = logp_theta - logp_ref                              # (B,)
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()  # ()


def dpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al., 2023) with the vague answer chosen and the original answer rejected:

        -mean_b log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))

    All inputs (B,): sequence log-probabilities (`sequence_logprob`) of the chosen and rejected
    answers to the same question, under the model and the frozen reference. Equal margins give
    log 2; the loss falls as the model prefers the chosen answer more than the reference did.
    """
    margin = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)   # (B,)
    return -F.logsigmoid(beta * margin).mean()


def simnpo_loss(logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al., 2024): NPO without a reference model, on length-normalised log-probability:

        -(2 / beta) * mean_b log sigmoid(-(beta / |y_b|) * logp_b - gamma)

    logp: (B,) sequence log-probabilities of the answers to forget; lengths: (B,) their answer-token
    counts. It falls as the answers' per-token log-probability drops, and is bounded below by 0.
    """
    per_token = logp / lengths.clamp(min=1).to(logp.dtype)                 # (B,)
    return -(2.0 / beta) * F.logsigmoid(-beta * per_token - gamma).mean()


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """(B,) answer-token counts of a batch (the positions `sequence_logprob` sums over)."""
    return (labels[:, 1:] != IGNORE).sum(dim=1)
