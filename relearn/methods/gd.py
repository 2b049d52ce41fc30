"""GD ("GA+GDR"), gradient ascent on forget plus gradient descent on retain:

    L = -w_f * CE(theta; forget) + w_r * CE(theta; retain)

Parts: forget_ce, retain_ce.
"""
from __future__ import annotations

from relearn.methods._parts import Terms


def loss(model, forget, retain, reference, weights):
    terms = Terms(model, forget, retain, reference, weights)
    return terms.result(forget=-weights.forget_weight * terms.forget_ce(),
                        retain=weights.retain_weight * terms.retain_ce())
