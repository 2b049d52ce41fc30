"""GA, gradient ascent on the forget set:  L = -w_f * CE(theta; forget).

Unbounded below: the model is pushed ever further from the forget answers, which is why it tends
to collapse. Trains on the original forget set (see REVERSE_METHODS). Parts: forget_ce.
"""
from __future__ import annotations

from relearn.methods._parts import Terms


def loss(model, forget, retain, reference, weights):
    terms = Terms(model, forget, retain, reference, weights)
    return terms.result(forget=-weights.forget_weight * terms.forget_ce())
