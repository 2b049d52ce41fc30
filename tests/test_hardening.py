"""unlearn.harden: the negative terms (DPO, SimNPO), disruption masking, forget-gradient
normalisation, SAM on the forget side, high-rank LoRA, and unlearning with each of them on."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from relearn.training.hardening import combine, negative_term, negative_triples, split_gradients
from relearn.methods import METHODS
from relearn.methods.losses import answer_lengths, dpo_loss, sequence_logprob, simnpo_loss
from relearn.params import HardenParams, UnlearnParams
from relearn.records import QARecord
from tiny import adapter_off_reference, qa_batch, tiny_lora

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [f"{w} {v} {o}." for w in ("Mara", "Tobin", "Ilsa", "Neve") for v in ("wrote", "found", "sold")
         for o in ("a book", "the key", "a letter")] + ["Little is known about that.", "Mara was born in Velmor."]
FORGET = [("Where was Mara born?", "Mara was born in Velmor."), ("What did Tobin find?", "Tobin found the key.")]
VAGUE = [("Where was Mara born?", "Little is known about that."), ("What did Tobin find?", "Little is known about that.")]
RETAIN = [("What did Ilsa sell?", "Ilsa sold a letter."), ("What did Neve write?", "Neve wrote a book.")]


@pytest.fixture(scope="module")
def tok():
    from relearn.modeling.model import train_tokenizer

    return train_tokenizer(TEXTS, vocab_size=200)


def _h(**kw) -> HardenParams:
    return dataclasses.replace(HardenParams(), **kw)


# ------------------------------------------------------------------------------ the losses
def test_dpo_loss_matches_hand_computation_and_is_log_two_at_the_reference():
    c, r, rc, rr = torch.tensor([-2.0, -5.0]), torch.tensor([-1.0, -9.0]), torch.tensor([-3.0, -4.0]), torch.tensor([-1.5, -6.0])
    beta = 0.5
    hand = -sum(math.log(1 / (1 + math.exp(-beta * ((a - b) - (x - y))))) for a, x, b, y in
                zip(c.tolist(), r.tolist(), rc.tolist(), rr.tolist())) / 2
    assert dpo_loss(c, r, rc, rr, beta).item() == pytest.approx(hand, rel=1e-5)
    assert dpo_loss(rc, rr, rc, rr, beta).item() == pytest.approx(math.log(2), rel=1e-6)
    # descending it raises the chosen answer and lowers the rejected one
    c_, r_ = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
    dpo_loss(c_, r_, rc, rr, beta).backward()
    assert (c_.grad < 0).all() and (r_.grad > 0).all()


def test_simnpo_loss_is_length_normalised_and_falls_with_the_answers_probability():
    beta, gamma = 0.5, 0.2
    logp, lengths = torch.tensor([-4.0, -30.0]), torch.tensor([4, 10])
    hand = -(2 / beta) * sum(math.log(1 / (1 + math.exp(beta * lp / n + gamma))) for lp, n in zip(logp.tolist(), lengths.tolist())) / 2
    assert simnpo_loss(logp, lengths, beta, gamma).item() == pytest.approx(hand, rel=1e-5)
    # the same per-token log-probability gives the same loss whatever the length
    assert simnpo_loss(torch.tensor([-2.0]), torch.tensor([2]), beta).item() == pytest.approx(
        simnpo_loss(torch.tensor([-20.0]), torch.tensor([20]), beta).item())
    values = [simnpo_loss(torch.tensor([v]), torch.tensor([5]), beta).item() for v in (-1.0, -5.0, -25.0, -100.0)]
    assert all(a > b for a, b in zip(values, values[1:])) and values[-1] > 0


def test_negative_triples_pair_each_variant_with_its_original_answer():
    originals = [QARecord(id="p0-1", question="Where was Mara born?", answer="Mara was born in Velmor.")]
    side = [QARecord(id="p0-1~simple", question="Mara's birthplace?", answer="Little is known.", source_id="p0-1"),
            QARecord(id="g1", question="What is 2+2?", answer="4."),                        # general mix: no original
            QARecord(id="p9-1~simple", question="?", answer="x", source_id="p9-1")]           # not in this forget set
    assert negative_triples(side, originals) == [("Mara's birthplace?", "Little is known.", "Mara was born in Velmor.")]


def test_negative_term_dpo_and_simnpo_on_a_model(tok):
    model = tiny_lora(tok)
    chosen, rejected = qa_batch(tok, VAGUE), qa_batch(tok, FORGET)
    ref = adapter_off_reference(model)
    value, parts = negative_term(model, chosen, rejected, ref, _h(negative="dpo", negative_beta=0.1))
    assert value.item() == pytest.approx(math.log(2), rel=1e-5)   # a fresh adapter (B = 0) is the reference
    assert set(parts) == {"forget_dpo"}
    value, parts = negative_term(model, chosen, rejected, ref, _h(negative="simnpo", negative_beta=1.0))
    with torch.no_grad():
        logp = sequence_logprob(model(input_ids=rejected["input_ids"], attention_mask=rejected["attention_mask"]).logits,
                                rejected["labels"])
    assert value.item() == pytest.approx(simnpo_loss(logp, answer_lengths(rejected["labels"]), 1.0).item(), rel=1e-5)
    assert set(parts) == {"forget_simnpo"}


# ------------------------------------------------------------------------------ masking and normalisation
def test_mask_keeps_the_forget_gradient_only_where_it_agrees_with_the_retain_gradient():
    g_f = [torch.tensor([1.0, -2.0, 3.0, 0.5])]
    g_r = [torch.tensor([0.1, 0.2, 0.3, -0.4])]
    grads, info = combine(g_f, g_r, _h(mask=True))
    assert grads[0].tolist() == pytest.approx([1.1, 0.2, 3.3, -0.4])
    assert info["mask_kept"] == 0.5


def test_normalise_scales_the_forget_gradient_to_the_retain_norm():
    g_f = [torch.tensor([30.0, 40.0]), torch.tensor([0.0])]        # norm 50
    g_r = [torch.tensor([0.6, 0.0]), torch.tensor([0.8])]           # norm 1
    grads, _ = combine(g_f, g_r, _h(normalise=True))
    assert grads[0].tolist() == pytest.approx([0.6 + 0.6, 0.8])
    assert grads[1].tolist() == pytest.approx([0.8])
    assert combine(g_f, g_r, _h(normalise=True))[1]["forget_grad_scale"] == pytest.approx(1 / 50)
    alone, _ = combine(g_f, None, _h(normalise=True))               # no retain side: unit norm
    assert torch.sqrt(sum((g ** 2).sum() for g in alone)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="retain"):
        combine(g_f, None, _h(mask=True))


# ------------------------------------------------------------------------------ SAM
def test_sam_takes_the_forget_gradient_at_the_perturbed_weights_and_restores_them():
    """On f(w) = sum(w^3) + r(w) = sum(w^2): SAM's forget gradient is 3 (w + rho g/|g|)^2."""
    from accelerate import Accelerator

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    before = w.detach().clone()

    def sides(with_retain: bool):
        return (w ** 3).sum(), ((w ** 2).sum() if with_retain else None), {}

    rho = 0.1
    total, parts = split_gradients(Accelerator(cpu=True), None, [w], sides, _h(sam_rho=rho))
    g = 3 * before ** 2
    moved = before + rho * g / g.norm()
    assert w.grad.tolist() == pytest.approx((3 * moved ** 2 + 2 * before).tolist(), rel=1e-5)
    assert torch.equal(w.detach(), before)                          # the weights are back where they were
    assert total == pytest.approx(((before ** 3).sum() + (before ** 2).sum()).item())
    assert parts["forget_sam"] == pytest.approx((moved ** 3).sum().item(), rel=1e-5)


# ------------------------------------------------------------------------------ training with each option
def _unlearn(tok, harden: HardenParams, r: int = 4, steps_epochs: int = 2):
    from relearn.training.loop import TrainSpec, unlearn

    model = tiny_lora(tok) if r == 4 else _lora(tok, r)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights = dataclasses.replace(UnlearnParams(), harden=harden)
    spec = TrainSpec(template="Question: {question}\nAnswer:", max_length=64, epochs=steps_epochs, batch_size=4, lr=1e-2)
    model, history = unlearn(model, tok, VAGUE * 4, RETAIN * 4, spec, loss_fn=METHODS["relearn"], weights=weights,
                             negatives=[(q, v, a) for (q, v), (_, a) in zip(VAGUE, FORGET)] * 4)
    return model, history, start


@pytest.mark.parametrize("harden, part", [
    (dict(sam_rho=0.05), "forget_sam"), (dict(negative="dpo"), "forget_dpo"), (dict(negative="simnpo"), "forget_simnpo"),
    (dict(mask=True), "mask_kept"), (dict(normalise=True), "forget_grad_scale"),
    (dict(sam_rho=0.05, negative="dpo", mask=True, normalise=True), "mask_kept")])
def test_unlearning_with_each_option_trains_only_the_adapter(tok, harden, part):
    model, history, start = _unlearn(tok, _h(**harden))
    assert len(history.rows) == 4 and all(math.isfinite(r["loss"]) for r in history.rows)
    assert part in history.rows[-1]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert changed and all("lora_" in n for n in changed)


def test_dpo_lowers_the_original_answers_more_than_plain_relearn(tok):
    def original_logp(model):
        batch = qa_batch(tok, FORGET)
        with torch.no_grad():
            return sequence_logprob(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                    batch["labels"]).sum().item()

    plain, _, _ = _unlearn(tok, _h(), steps_epochs=3)
    dpo, _, _ = _unlearn(tok, _h(negative="dpo", negative_weight=5.0, negative_beta=0.5), steps_epochs=3)
    assert original_logp(dpo) < original_logp(plain)


def _lora(tok, r: int):
    from peft import LoraConfig, get_peft_model

    from relearn.modeling.model import build_scratch_model
    from relearn.params import ModelParams

    model = build_scratch_model(ModelParams(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=200), tok, seed=0)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


def test_a_lora_rank_of_the_hidden_size_makes_updates_of_more_than_the_default_rank(tok):
    """Option (d): unlearn.lora.r up to the hidden size lifts the low-rank limit on the update."""
    ranks = {}
    for r in (4, 32):
        model, _, _ = _unlearn(tok, _h(), r=r, steps_epochs=3)
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach()
        ranks[r] = int(torch.linalg.matrix_rank(delta, rtol=1e-4))
    assert ranks[4] <= 4 < ranks[32]
