"""The loss terms every method is assembled from, computed from the model and the step's batches.

    terms = Terms(model, forget, retain, reference, weights)
    return terms.result(forget=-weights.forget_weight * terms.forget_ce(),
                        retain=weights.retain_weight * terms.retain_ce())

Each term returns a differentiable scalar and records its value (unweighted, unsigned) under its
part name: forget_ce, forget_npo, retain_ce, retain_kl. A method keeps its forget-side and
retain-side sums apart (`result(forget=..., retain=...)`): the hardening options of
relearn.training.hardening treat the two gradients differently. With `retain=None` (the second, perturbed
pass of SAM needs only the forget side) the retain terms are zero and run nothing. Logits are computed once per batch and
reused, in the order the terms are first asked for; the reference model runs only for terms that
need it (NPO on the forget batch, KL on the retain batch).
"""
from __future__ import annotations

from typing import Callable

import torch

from relearn.methods.losses import answer_ce, answer_kl, npo_loss, sequence_logprob

Batch = dict[str, torch.Tensor]


class Objective(tuple):
    """A method's result: the pair (total loss, {part: value}), with `.forget` and `.retain` (the
    forget-side and retain-side sums; retain may be None) kept for the hardening options."""

    forget: torch.Tensor
    retain: torch.Tensor | None

    def __new__(cls, forget: torch.Tensor, retain: torch.Tensor | None, parts: dict[str, float]):
        obj = super().__new__(cls, (forget if retain is None else forget + retain, parts))
        obj.forget, obj.retain = forget, retain
        return obj


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

    def _no_retain(self) -> torch.Tensor:
        return torch.zeros((), device=self.forget["input_ids"].device)

    def retain_ce(self) -> torch.Tensor:
        """Answer-token CE on the retain batch."""
        if self.retain is None:
            return self._no_retain()
        return self._record("retain_ce", answer_ce(self._model_logits("retain"), self.retain["labels"]))

    def retain_kl(self) -> torch.Tensor:
        """KL(p_ref || p_theta) on the retain batch's answer tokens."""
        if self.retain is None:
            return self._no_retain()
        kl = answer_kl(self._model_logits("retain"), self.reference(self.retain), self.retain["labels"])
        return self._record("retain_kl", kl)

    def result(self, forget: torch.Tensor, retain: torch.Tensor | None = None) -> Objective:
        return Objective(forget, None if self.retain is None else retain, self.parts)
