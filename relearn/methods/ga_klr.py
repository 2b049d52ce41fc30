"""GA+KLR, gradient ascent on forget with a KL anchor to the reference on retain:

    L = -w_f * CE(theta; forget) + w_kl * KL(p_ref || p_theta; retain answer tokens)

Parts: forget_ce, retain_kl.
"""
from __future__ import annotations

from relearn.methods._parts import Terms


def loss(model, forget, retain, reference, weights):
    terms = Terms(model, forget, retain, reference, weights)
    return terms.result(forget=-weights.forget_weight * terms.forget_ce(),
                        retain=weights.kl_weight * terms.retain_kl())
