"""ReLearn (Xu et al., ACL 2025): unlearning by learning vague answers, with retain anchoring.

    L = w_f * CE(theta; augmented forget) + w_r * CE(theta; retain) + w_kl * KL(p_ref || p_theta; retain)

CE is over answer tokens only; the KL is over retain answer tokens only (and skipped, reference
and all, when w_kl is 0); p_ref is the target model, which with LoRA is the same weights with the
adapter disabled (no second copy). Parts: forget_ce, retain_ce, retain_kl.
"""
from __future__ import annotations

from typing import Callable

import torch

from relearn.methods._parts import Terms


def loss(model, forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor],
         reference: Callable[[dict], torch.Tensor], weights) -> tuple[torch.Tensor, dict[str, float]]:
    terms = Terms(model, forget, retain, reference, weights)
    forget_side = weights.forget_weight * terms.forget_ce()   # first: the parts (loss plot columns) keep their order
    retain_side = weights.retain_weight * terms.retain_ce()
    if weights.kl_weight:
        retain_side = retain_side + weights.kl_weight * terms.retain_kl()
    return terms.result(forget=forget_side, retain=retain_side)
