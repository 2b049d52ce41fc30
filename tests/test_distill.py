"""The distill stage's procedure (UNDO): shrink-and-perturb, the distillation set, and a student
that learns the teacher's outputs."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from relearn.distill import distill, distillation_pairs, shrink_and_perturb
from relearn.params import DistillParams, ModelParams, Params
from relearn.records import QARecord

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [f"{w} {v} {o}." for w in ("Mara", "Tobin", "Ilsa") for v in ("wrote", "found") for o in ("a book", "the key")]


@pytest.fixture(scope="module")
def tok():
    from relearn.modeling.model import train_tokenizer

    return train_tokenizer(TEXTS, vocab_size=150)


def _model(tok, seed: int):
    from relearn.modeling.model import build_scratch_model

    return build_scratch_model(ModelParams(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=150), tok, seed=seed)


def test_shrink_and_perturb_is_a_convex_mix_with_a_seeded_fresh_initialisation(tok):
    from transformers import AutoModelForCausalLM

    original = _model(tok, seed=1)
    weights = {n: p.detach().clone() for n, p in original.named_parameters()}
    torch.manual_seed(7)
    fresh = {n: p.detach() for n, p in AutoModelForCausalLM.from_config(original.config).named_parameters()}
    assert all(torch.equal(p, weights[n]) for n, p in shrink_and_perturb(_model(tok, 1), 0.0, seed=7).named_parameters())
    assert all(torch.equal(p, fresh[n]) for n, p in shrink_and_perturb(_model(tok, 1), 1.0, seed=7).named_parameters())
    mixed = shrink_and_perturb(_model(tok, 1), 0.3, seed=7)
    for n, p in mixed.named_parameters():
        assert torch.allclose(p, 0.7 * weights[n] + 0.3 * fresh[n], atol=1e-6)
    with pytest.raises(ValueError):
        shrink_and_perturb(original, 1.5, seed=0)


def test_distillation_pairs_take_the_named_sets_and_never_the_original_forget_answers():
    splits = {"retain": [QARecord(id="r", question="Q r?", answer="A r.")],
              "general": [QARecord(id="g", question="Q g?", answer="A g.")],
              "forget": [QARecord(id="f", question="Q f?", answer="The secret.")]}
    variants = [QARecord(id="f~simple", question="Q f, simply?", answer="Little is known.", source_id="f")]
    assert distillation_pairs(["retain", "forget_variants"], splits, variants) == [
        ("Q r?", "A r."), ("Q f, simply?", "Little is known.")]
    assert all("secret" not in a for _, a in distillation_pairs(["retain", "general", "forget_variants"], splits, variants))


def test_the_student_moves_towards_the_teacher(tok):
    from relearn.methods.losses import answer_kl

    teacher, student = _model(tok, seed=1), shrink_and_perturb(_model(tok, seed=2), 0.5, seed=3)
    pairs = [(f"What did {w} do?", t) for w, t in zip(("Mara", "Tobin", "Ilsa"), TEXTS)] * 4
    params = dataclasses.replace(Params(), distill=DistillParams(enabled=True, epochs=6, batch_size=4, lr=5e-3))

    def kl() -> float:
        from tiny import qa_batch
        batch = qa_batch(tok, pairs[:3])
        every = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.no_grad():
            return answer_kl(student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, every).item()

    before = kl()
    frozen = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    student, history, report = distill(teacher, student, tok, pairs, params)
    assert kl() < 0.5 * before
    assert report["steps"] == len(history.rows) == 18 and report["enabled"] is True
    assert all(torch.equal(p, frozen[n]) for n, p in teacher.named_parameters())   # the teacher never trains
