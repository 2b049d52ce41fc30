"""NPO, Negative Preference Optimization (Zhang et al., 2024) on the forget set:

    L = w_f * -(2/beta) * mean log sigmoid(-beta * (log p_theta(a|q) - log p_ref(a|q)))

with sequence log-probabilities over answer tokens and beta = weights.npo_beta. Unlike GA the loss
is bounded below, so it slows down once the forget answers are unlikely. Parts: forget_npo.
"""
from __future__ import annotations

from relearn.methods._parts import Terms


def loss(model, forget, retain, reference, weights):
    terms = Terms(model, forget, retain, reference, weights)
    return terms.result(forget=weights.forget_weight * terms.forget_npo())
