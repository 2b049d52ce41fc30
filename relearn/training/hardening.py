"""Options that make forgetting survive relearning (unlearn.harden), for ReLearn and every baseline.

Output-level unlearning tends to hide knowledge rather than remove it: a few fine-tuning steps on
some forget facts bring back the others. Each option below attacks one reason for that; all are
off by default and the plain training step is used unless one is on (`HardenParams.active`).

- SAM on the forget side (Fan et al., ICML 2025). Before the step, the weights move by
  rho * g_f / ||g_f|| (the direction that raises the forget-side loss most), the forget-side
  gradient is taken there, and the weights move back: the step minimises the worst forget-side
  loss in a ball around the weights, i.e. it looks for a flat minimum that a few relearning steps
  do not climb out of. Costs one more forward and backward pass of the forget batch.
- A negative term on the original answers (`negative_term`): ReLearn only pulls the vague answers
  up; the original answer's likelihood falls only as a side effect. DPO (vague answer chosen,
  original rejected, target as reference) or SimNPO (reference-free) push it down explicitly.
- Disruption masking and forget-gradient normalisation (MUDMAN, Sondej et al., 2025): the
  forget-side gradient is kept only where its sign agrees with the retain gradient's (a step never
  trades retained knowledge for forgetting), and is rescaled to the retain gradient's norm.

The gradients of the two sides are taken apart with `torch.autograd.grad` on the unwrapped model
and averaged over processes by hand (`accelerator.reduce`), since DistributedDataParallel syncs one
backward per forward and here there are two or three.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from relearn.methods.losses import answer_lengths, dpo_loss, sequence_logprob, simnpo_loss
from relearn.records import QARecord

Batch = dict[str, torch.Tensor]


def negative_triples(forget_side: Sequence[QARecord], originals: Sequence[QARecord]) -> list[tuple[str, str, str]]:
    """(question, vague answer, original answer) for each augmented forget pair whose source record
    is in `originals` (the forget split): the data of the negative term. General QA mixed into the
    forget side has no original answer and is left out.

        forget_variants.jsonl  {"question": "Where was P born?", "answer": "Little is known ...", "source_id": "p0-1"}
        forget.jsonl           {"id": "p0-1", "answer": "P was born in Morqua Cross."}
        -> ("Where was P born?", "Little is known ...", "P was born in Morqua Cross.")
    """
    by_id = {r.id: r for r in originals}
    out = []
    for r in forget_side:
        if r.prefill:  # a primed pair asks the original question again, its opening given: no new triple
            continue
        source = by_id.get(r.source_id or "")
        if source is not None and source.answer.strip() != r.answer.strip():
            out.append((r.question, r.answer, source.answer))
    return out


def negative_term(model, chosen: Batch, rejected: Batch, reference: Callable[[Batch], torch.Tensor],
                  harden) -> tuple[torch.Tensor, dict[str, float]]:
    """The negative term on one batch of triples, unweighted: (loss, {"forget_dpo" | "forget_simnpo": value}).

    chosen, rejected: the same questions (row for row) with the vague and the original answer,
    each {"input_ids", "attention_mask", "labels"} of shape (B, T); `reference` gives the target's
    logits (the adapter switched off), used by DPO only.
    """
    def logp(batch: Batch) -> torch.Tensor:                                   # (B,)
        return sequence_logprob(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch["labels"])

    if harden.negative == "dpo":
        with torch.no_grad():
            ref_c = sequence_logprob(reference(chosen), chosen["labels"])
            ref_r = sequence_logprob(reference(rejected), rejected["labels"])
        value = dpo_loss(logp(chosen), logp(rejected), ref_c, ref_r, harden.negative_beta)
        return value, {"forget_dpo": value.item()}
    if harden.negative == "simnpo":
        value = simnpo_loss(logp(rejected), answer_lengths(rejected["labels"]), harden.negative_beta, harden.simnpo_gamma)
        return value, {"forget_simnpo": value.item()}
    raise ValueError(f"unknown negative term {harden.negative!r}")


def _norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads))


def combine(forget: Sequence[torch.Tensor], retain: Sequence[torch.Tensor] | None, harden) -> tuple[list[torch.Tensor], dict]:
    """The update direction from the two sides' gradients (one tensor per trainable parameter):

        normalise: g_f <- g_f * ||g_r|| / ||g_f||   (||g_f|| -> 1 without a retain side)
        mask:      g_f <- g_f * [sign(g_f) == sign(g_r)]
        result:    g_f + g_r

    Returns the gradients and {"mask_kept": share of forget-gradient entries kept} with masking,
    {"forget_grad_scale": the factor} with normalisation.
    """
    forget = list(forget)
    info: dict[str, float] = {}
    if harden.normalise:
        scale = (_norm(retain) if retain is not None else torch.ones(())) / _norm(forget).clamp(min=1e-12)
        forget = [g * scale.to(g.dtype) for g in forget]
        info["forget_grad_scale"] = float(scale)
    if harden.mask:
        if retain is None:
            raise ValueError("disruption masking needs a retain gradient (the method has no retain term)")
        kept = total = 0
        masked = []
        for gf, gr in zip(forget, retain):
            agree = torch.sign(gf) == torch.sign(gr)
            kept, total = kept + int(agree.sum()), total + agree.numel()
            masked.append(gf * agree)
        forget = masked
        info["mask_kept"] = kept / max(total, 1)
    if retain is None:
        return forget, info
    return [gf + gr for gf, gr in zip(forget, retain)], info


def split_gradients(accelerator, model, params: list[torch.nn.Parameter], forget_side: Callable[[bool], tuple],
                    harden) -> tuple[float, dict]:
    """Set `p.grad` of every trainable parameter to the hardened update direction.

    forget_side(with_retain) runs the method (and the negative term) on the model and returns
    (forget-side loss, retain-side loss or None, parts); with_retain=False skips the retain batch
    (SAM's second pass). Returns the loss at the unperturbed weights and the parts.
    """
    with accelerator.autocast():
        f_loss, r_loss, parts = forget_side(True)
    g_f = torch.autograd.grad(f_loss, params, retain_graph=r_loss is not None, allow_unused=True)
    g_r = torch.autograd.grad(r_loss, params, allow_unused=True) if r_loss is not None else None
    total = f_loss.item() + (r_loss.item() if r_loss is not None else 0.0)
    zeros = lambda gs: [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]  # noqa: E731
    g_f = zeros(g_f)
    g_r = zeros(g_r) if g_r is not None else None
    if harden.sam_rho:
        scale = harden.sam_rho / _norm(g_f).clamp(min=1e-12)
        saved = [p.detach().clone() for p in params]   # restored exactly: p + e - e is not p in floating point
        with torch.no_grad():
            for p, g in zip(params, g_f):
                p.add_(g * scale.to(g.dtype))
        try:
            with accelerator.autocast():
                f_sam, _, _ = forget_side(False)
            g_f = zeros(torch.autograd.grad(f_sam, params, allow_unused=True))
        finally:
            with torch.no_grad():
                for p, original in zip(params, saved):
                    p.copy_(original)
        parts["forget_sam"] = f_sam.item()
    if accelerator.num_processes > 1:  # what DDP would have done: average each gradient over ranks
        g_f = [accelerator.reduce(g.contiguous(), reduction="mean") for g in g_f]
        g_r = [accelerator.reduce(g.contiguous(), reduction="mean") for g in g_r] if g_r is not None else None
    grads, info = combine(g_f, g_r, harden)
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)
    return total, {**parts, **info}
