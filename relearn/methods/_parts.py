"""The loss terms every method is assembled from, computed from the model and the step's batches.

    terms = Terms(model, forget, retain, reference, weights)
    total = -weights.forget_weight * terms.forget_ce() + weights.retain_weight * terms.retain_ce()
    return terms.result(total)

Each term returns a differentiable scalar and records its value (unweighted, unsigned) under its
part name: forget_ce, forget_npo, retain_ce, retain_kl. Logits are computed once per batch and
reused, in the order the terms are first asked for; the reference model runs only for terms that
need it (NPO on the forget batch, KL on the retain batch).
"""
from __future__ import annotations

from typing import Callable

import torch

from relearn.methods.losses import answer_ce, answer_kl, npo_loss, sequence_logprob

Batch = dict[str, torch.Tensor]


class Terms:
    def __init__(self, model, forget: Batch, retain: Batch, reference: Callable[[Batch], torch.Tensor], weights):
        self.model, self.forget, self.retain = model, forget, retain
        self.reference, self.weights = reference, weights
        self.parts: dict[str, float] = {}
        self._logits: dict[str, torch.Tensor] = {}

    def _model_logits(self, side: str) -> torch.Tensor:
        """(B, T, V) logits of the model being trained on the 'forget' or 'retain' batch, cached."""
        if side not in self._logits:
            batch = getattr(self, side)
            self._logits[side] = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self._logits[side]

    def _record(self, name: str, value: torch.Tensor) -> torch.Tensor:
        self.parts[name] = value.item()
        return value

    def forget_ce(self) -> torch.Tensor:
        """Answer-token CE on the forget batch (GA methods minimise its negative)."""
        return self._record("forget_ce", answer_ce(self._model_logits("forget"), self.forget["labels"]))

    def forget_npo(self) -> torch.Tensor:
        """NPO loss on the forget batch, against the reference model's answer log-probabilities."""
        labels = self.forget["labels"]
        logp_theta = sequence_logprob(self._model_logits("forget"), labels)      # (B,)
        logp_ref = sequence_logprob(self.reference(self.forget), labels)         # (B,), no grad
        return self._record("forget_npo", npo_loss(logp_theta, logp_ref, self.weights.npo_beta))

    def retain_ce(self) -> torch.Tensor:
        """Answer-token CE on the retain batch."""
        return self._record("retain_ce", answer_ce(self._model_logits("retain"), self.retain["labels"]))

    def retain_kl(self) -> torch.Tensor:
        """KL(p_ref || p_theta) on the retain batch's answer tokens."""
        kl = answer_kl(self._model_logits("retain"), self.reference(self.retain), self.retain["labels"])
        return self._record("retain_kl", kl)

    def result(self, total: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return total, self.parts
