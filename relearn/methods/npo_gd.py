"""NPO+GDR:  L = w_f * NPO(theta; forget) + w_r * CE(theta; retain).  Parts: forget_npo, retain_ce."""
from __future__ import annotations

from relearn.methods._parts import Terms


def loss(model, forget, retain, reference, weights):
    terms = Terms(model, forget, retain, reference, weights)
    return terms.result(forget=weights.forget_weight * terms.forget_npo(),
                        retain=weights.retain_weight * terms.retain_ce())
