"""Distillation after unlearning (UNDO: Lee et al., "Distillation Robustifies Unlearning", 2025).

The unlearned model still carries the forget set in its weights: its outputs are changed, its
knowledge is hidden. A student that starts far from those weights and learns only the unlearned
model's *outputs* inherits the behaviour without the hidden knowledge. The student starts from a
shrunk and perturbed copy,

    student = (1 - alpha) * copy + alpha * fresh         (fresh: a new random initialisation of the
                                                          same architecture, seeded)

and is trained in full to match the teacher's next-token distributions (KL(teacher || student)
over every token of the distillation sequences: retain, general and augmented-forget prompts with
their answers). alpha trades robustness (more noise: less of the hidden knowledge survives) for
the cost of distilling it back (more steps to recover utility).
"""
from __future__ import annotations

import time

import torch

from relearn.records import QARecord


def shrink_and_perturb(model: torch.nn.Module, alpha: float, seed: int) -> torch.nn.Module:
    """`model` with every weight moved to (1 - alpha) * weight + alpha * fresh, in place.

    `fresh` is the architecture's own initialisation (`from_config`, seeded): embeddings, norms and
    linear layers are each pulled towards what a new model of this shape would start from.
    """
    from transformers import AutoModelForCausalLM

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config)
    fresh_params = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(1 - alpha).add_(fresh_params[name].to(p.dtype), alpha=alpha)
    return model


def distillation_pairs(sets: list[str], splits: dict[str, list[QARecord]],
                       forget_variants: list[QARecord]) -> list[tuple[str, str]]:
    """(question, answer) sequences the student is distilled on, from the named sets. The answers
    are teacher-forced text; the loss reads the teacher's distributions, not these tokens. The
    forget set's original answers are never among them (forget_variants carries vague answers)."""
    by_set = {"retain": splits.get("retain", []), "general": splits.get("general", []),
              "forget_variants": forget_variants}
    return [(r.question, r.answer) for name in sets for r in by_set[name]]


def distill(teacher, student, tokenizer, pairs: list[tuple[str, str]], params) -> tuple[torch.nn.Module, object, dict]:
    """Train `student` (in full) on `pairs` to match `teacher`; params is a relearn.params.Params
    (distill.*, model.prompt, model.max_length, model.dtype, seed). Returns (student, History, report)."""
    from relearn.training.loop import TrainSpec, train_causal_lm

    d = params.distill
    start = time.monotonic()
    for p in student.parameters():
        p.requires_grad_(True)
    student, history = train_causal_lm(student, tokenizer, pairs, TrainSpec.of(params, d, "distill"),
                                       teacher=teacher, desc="distill")
    report = {"enabled": True, "alpha": d.alpha, "init": d.init, "sets": list(d.sets), "pairs": len(pairs),
              "epochs": d.epochs, "steps": len(history.rows),
              "final_kl": round(history.rows[-1]["loss"], 5) if history.rows else None,
              "train_seconds": round(time.monotonic() - start, 1)}
    return student, history, report
