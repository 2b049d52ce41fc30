"""ReLearn (Xu et al., ACL 2025): unlearning by learning vague answers, with retain anchoring.

    L = w_f * CE(theta; augmented forget) + w_r * CE(theta; retain) + w_kl * KL(p_ref || p_theta; retain)

CE is over answer tokens only; the KL is over retain answer tokens only; p_ref is the target model,
which with LoRA is the same weights with the adapter disabled (no second copy).
"""
from __future__ import annotations

from typing import Callable

import torch

from relearn.methods.losses import answer_ce, answer_kl


def loss(model, forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor],
         reference: Callable[[dict], torch.Tensor], weights) -> tuple[torch.Tensor, dict[str, float]]:
    forget_logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    retain_logits = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
    forget_ce = answer_ce(forget_logits, forget["labels"])
    retain_ce = answer_ce(retain_logits, retain["labels"])
    total = weights.forget_weight * forget_ce + weights.retain_weight * retain_ce
    parts = {"forget_ce": forget_ce.item(), "retain_ce": retain_ce.item()}
    if weights.kl_weight:
        kl = answer_kl(retain_logits, reference(retain), retain["labels"])
        total = total + weights.kl_weight * kl
        parts["retain_kl"] = kl.item()
    return total, parts
