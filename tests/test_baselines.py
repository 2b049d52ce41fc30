"""Baseline unlearning methods (GA, GD, GA+KLR, NPO, NPO+GDR, NPO+KLR) and the NPO loss."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from relearn.modeling.encoding import IGNORE
from relearn.methods import METHODS, REVERSE_METHODS
from relearn.methods.losses import answer_ce, answer_kl, npo_loss, sequence_logprob
from relearn.params import UnlearnParams
from tiny import adapter_off_reference, qa_batch, tiny_lora

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = "Question: {question}\nAnswer:"

PARTS = {
    "relearn": {"forget_ce", "retain_ce", "retain_kl"},
    "ga": {"forget_ce"},
    "gd": {"forget_ce", "retain_ce"},
    "ga_klr": {"forget_ce", "retain_kl"},
    "npo": {"forget_npo"},
    "npo_gd": {"forget_npo", "retain_ce"},
    "npo_klr": {"forget_npo", "retain_kl"},
}


def _w(**kw) -> UnlearnParams:
    return dataclasses.replace(UnlearnParams(), **kw)


# ------------------------------------------------------------------------------ npo_loss
def _hand_npo(theta: list[float], ref: list[float], beta: float) -> float:
    log_sigmoid = lambda z: -math.log1p(math.exp(-z))  # noqa: E731
    return -(2 / beta) * sum(log_sigmoid(-beta * (t - r)) for t, r in zip(theta, ref)) / len(theta)


def test_npo_loss_matches_hand_computation():
    theta, ref = [-1.0, -3.0, -10.0], [-2.0, -2.0, -4.0]
    for beta in (0.1, 0.5, 2.0):
        got = npo_loss(torch.tensor(theta), torch.tensor(ref), beta).item()
        assert got == pytest.approx(_hand_npo(theta, ref, beta), rel=1e-5)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 3.0])
def test_npo_loss_at_the_reference_is_two_over_beta_log_two(beta):
    logp = torch.tensor([-5.0, -0.5, -12.0])
    assert npo_loss(logp, logp.clone(), beta).item() == pytest.approx((2 / beta) * math.log(2), rel=1e-6)


def test_npo_loss_falls_as_forget_probability_falls():
    ref = torch.tensor([-3.0])
    values = [npo_loss(torch.tensor([t]), ref, 0.1).item() for t in (2.0, 0.0, -3.0, -10.0, -50.0, -200.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] > 0                                   # bounded below by 0, unlike -CE
    # so a descent step lowers logp_theta: the gradient is positive
    theta = torch.tensor([-3.0, -1.0], requires_grad=True)
    npo_loss(theta, torch.tensor([-3.0, -2.0]), 0.1).backward()
    assert (theta.grad > 0).all()


def test_npo_loss_beta():
    theta, ref = torch.tensor([-4.0, -1.0]), torch.tensor([-2.0, -2.0])
    assert npo_loss(theta, ref, 0.1).item() != pytest.approx(npo_loss(theta, ref, 1.0).item(), rel=1e-3)
    # small beta: (2/beta) log 2 + mean(logp_theta - logp_ref), i.e. GA on sequence log-probability
    beta = 1e-3
    expected = (2 / beta) * math.log(2) + (theta - ref).mean().item()
    assert npo_loss(theta.double(), ref.double(), beta).item() == pytest.approx(expected, abs=1e-3)
    # at the reference the gradient per sequence is 1/B whatever beta is
    for beta in (0.1, 1.0, 5.0):
        t = ref.clone().requires_grad_(True)
        npo_loss(t, ref, beta).backward()
        assert t.grad.tolist() == pytest.approx([0.5, 0.5], rel=1e-6)


# ------------------------------------------------------------------------------ registry
def test_registry_names_every_method_and_the_reverse_ones():
    assert set(METHODS) == set(PARTS)
    assert set(REVERSE_METHODS) == {"ga", "gd", "ga_klr", "npo", "npo_gd", "npo_klr"}
    assert "relearn" not in REVERSE_METHODS
    assert all(callable(f) for f in METHODS.values())


# ------------------------------------------------------------------------------ tiny real model
SENTENCES = [f"{who} {verb} {what} on day {n}." for n, (who, verb, what) in enumerate(
    (w, v, o) for w in ("Mara", "Tobin", "Ilsa", "Corwin", "Neve")
    for v in ("wrote", "found", "lost", "sold")
    for o in ("a book", "the prize", "an address", "a letter", "the key"))]
SENTENCES += ["Question: Where was Mara born?\nAnswer: Mara was born in Velmor.",
              "Question: What does Tobin do?\nAnswer: Tobin works as a beekeeper."]

FORGET = [("Where was Mara born?", "Mara was born in Velmor."),
          ("What does Tobin do?", "Tobin works as a beekeeper."),
          ("What did Mara write?", "Mara wrote a book on day 0."),
          ("What did Tobin find?", "Tobin found the key.")]
RETAIN = [("What did Ilsa sell?", "Ilsa sold the prize."),
          ("What did Neve lose?", "Neve lost a letter."),
          ("What did Corwin find?", "Corwin found the key.")]


@pytest.fixture(scope="module")
def tok():
    from relearn.modeling.model import train_tokenizer

    return train_tokenizer(SENTENCES, vocab_size=200)


def _move_adapter(model, seed: int = 0) -> None:
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _no_reference(batch):
    raise AssertionError("this method must not run the reference model")


@pytest.fixture(scope="module")
def setup(tok):
    model = tiny_lora(tok)
    model.eval()
    return model, qa_batch(tok, FORGET), qa_batch(tok, RETAIN)


def test_ga_and_gd_signs(setup):
    model, forget, retain = setup
    ce_f = answer_ce(_logits(model, forget), forget["labels"]).item()
    ce_r = answer_ce(_logits(model, retain), retain["labels"]).item()
    assert ce_f > 0 and ce_r > 0

    total, parts = METHODS["ga"](model, forget, retain, _no_reference, _w())
    assert parts == pytest.approx({"forget_ce": ce_f}, rel=1e-5)
    assert total.item() == pytest.approx(-ce_f, rel=1e-5)
    assert total.requires_grad
    total, _ = METHODS["ga"](model, forget, retain, _no_reference, _w(forget_weight=2.0))
    assert total.item() == pytest.approx(-2 * ce_f, rel=1e-5)

    total, parts = METHODS["gd"](model, forget, retain, _no_reference, _w(kl_weight=5.0))  # gd has no KL
    assert parts == pytest.approx({"forget_ce": ce_f, "retain_ce": ce_r}, rel=1e-5)
    assert total.item() == pytest.approx(-ce_f + ce_r, rel=1e-5)
    total, _ = METHODS["gd"](model, forget, retain, _no_reference, _w(forget_weight=0.5, retain_weight=3.0))
    assert total.item() == pytest.approx(-0.5 * ce_f + 3 * ce_r, rel=1e-5)


def test_at_initialisation_npo_is_two_over_beta_log_two_and_kl_is_zero(setup):
    model, forget, retain = setup               # LoRA B is zero: the model is its own reference
    ref = adapter_off_reference(model)
    ce_f = answer_ce(_logits(model, forget), forget["labels"]).item()
    ce_r = answer_ce(_logits(model, retain), retain["labels"]).item()
    for beta in (0.1, 0.5):
        npo0 = (2 / beta) * math.log(2)
        total, parts = METHODS["npo"](model, forget, retain, ref, _w(npo_beta=beta))
        assert parts["forget_npo"] == pytest.approx(npo0, rel=1e-5)
        assert total.item() == pytest.approx(npo0, rel=1e-5)
        total, parts = METHODS["npo_gd"](model, forget, retain, ref, _w(npo_beta=beta, retain_weight=2.0))
        assert total.item() == pytest.approx(npo0 + 2 * ce_r, rel=1e-5)
        total, parts = METHODS["npo_klr"](model, forget, retain, ref, _w(npo_beta=beta))
        assert parts["retain_kl"] == pytest.approx(0.0, abs=1e-6)
        assert total.item() == pytest.approx(npo0, rel=1e-5)
    total, parts = METHODS["ga_klr"](model, forget, retain, ref, _w())
    assert parts["retain_kl"] == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(-ce_f, rel=1e-5)


def test_npo_and_kl_use_the_reference_once_the_adapter_moves(tok):
    model = tiny_lora(tok)
    model.eval()
    _move_adapter(model)
    forget, retain = qa_batch(tok, FORGET), qa_batch(tok, RETAIN)
    ref = adapter_off_reference(model)
    logp_theta = sequence_logprob(_logits(model, forget), forget["labels"])
    logp_ref = sequence_logprob(ref(forget), forget["labels"])
    assert (logp_theta - logp_ref).abs().max() > 1e-3
    expected_npo = npo_loss(logp_theta, logp_ref, 0.2).item()
    expected_kl = answer_kl(_logits(model, retain), ref(retain), retain["labels"]).item()
    assert expected_npo != pytest.approx((2 / 0.2) * math.log(2), rel=1e-3)
    assert expected_kl > 1e-4

    total, parts = METHODS["npo_klr"](model, forget, retain, ref, _w(npo_beta=0.2, forget_weight=1.5, kl_weight=2.0))
    assert parts["forget_npo"] == pytest.approx(expected_npo, rel=1e-4)
    assert parts["retain_kl"] == pytest.approx(expected_kl, rel=1e-4)
    assert total.item() == pytest.approx(1.5 * expected_npo + 2 * expected_kl, rel=1e-4)
    total, parts = METHODS["ga_klr"](model, forget, retain, ref, _w(kl_weight=2.0, retain_weight=9.0))
    assert total.item() == pytest.approx(-parts["forget_ce"] + 2 * expected_kl, rel=1e-4)


def test_padding_and_the_other_batch_change_nothing(tok):
    model = tiny_lora(tok)
    model.eval()
    _move_adapter(model, seed=1)
    ref = adapter_off_reference(model)
    forget, retain = qa_batch(tok, FORGET), qa_batch(tok, RETAIN)
    w = _w(npo_beta=0.3)

    # NPO is a mean over sequences: each row alone (no padding) gives the same per-row value
    _, parts = METHODS["npo"](model, forget, retain, ref, w)
    rows = [METHODS["npo"](model, qa_batch(tok, [p]), retain, ref, w)[1]["forget_npo"] for p in FORGET]
    assert parts["forget_npo"] == pytest.approx(sum(rows) / len(rows), rel=1e-4)

    # extra padding columns (pad id, label -100, attention 0) change no part of any method
    def pad(batch, n=5):
        extra = lambda x, v: torch.cat([x, torch.full((x.size(0), n), v, dtype=x.dtype)], dim=1)  # noqa: E731
        return {"input_ids": extra(batch["input_ids"], tok.pad_token_id),
                "attention_mask": extra(batch["attention_mask"], 0), "labels": extra(batch["labels"], IGNORE)}

    for name, method in METHODS.items():
        _, plain = method(model, forget, retain, ref, w)
        _, padded = method(model, pad(forget), pad(retain), ref, w)
        assert padded == pytest.approx(plain, rel=1e-4, abs=1e-6), name

    # the forget-only methods do not look at the retain batch at all
    other = qa_batch(tok, RETAIN[:1])
    for name in ("ga", "npo"):
        assert METHODS[name](model, forget, other, ref, w)[1] == pytest.approx(
            METHODS[name](model, forget, retain, ref, w)[1], rel=1e-6)

    # prompt tokens carry label -100: giving them real labels would change the loss
    unmasked = dict(forget, labels=torch.where(forget["attention_mask"].bool(), forget["input_ids"], IGNORE))
    assert METHODS["ga"](model, unmasked, retain, ref, w)[1]["forget_ce"] != pytest.approx(
        METHODS["ga"](model, forget, retain, ref, w)[1]["forget_ce"], rel=1e-3)


# ------------------------------------------------------------------------------ training steps
def _one_step(tok, method: str, lr: float = 1e-2, **weights):
    from relearn.training.loop import TrainSpec, unlearn

    model = tiny_lora(tok)
    spec = TrainSpec(template=TEMPLATE, max_length=64, epochs=1, batch_size=len(FORGET), lr=lr)
    return unlearn(model, tok, FORGET, RETAIN, spec, loss_fn=METHODS[method], weights=_w(**weights), desc=method)


def test_one_ga_step_raises_forget_ce(tok):
    forget = qa_batch(tok, FORGET)
    before = tiny_lora(tok).eval()
    ce_before = answer_ce(_logits(before, forget), forget["labels"]).item()
    model, history = _one_step(tok, "ga")
    model.eval()
    ce_after = answer_ce(_logits(model, forget), forget["labels"]).item()
    assert len(history.rows) == 1
    assert history.rows[0]["forget_ce"] == pytest.approx(ce_before, rel=1e-4)
    assert ce_after > ce_before + 1e-3


def test_one_npo_step_lowers_forget_sequence_logprob(tok):
    forget = qa_batch(tok, FORGET)
    before = tiny_lora(tok).eval()
    lp_before = sequence_logprob(_logits(before, forget), forget["labels"]).mean().item()
    model, history = _one_step(tok, "npo", npo_beta=0.1)
    model.eval()
    lp_after = sequence_logprob(_logits(model, forget), forget["labels"]).mean().item()
    assert history.rows[0]["forget_npo"] == pytest.approx(20 * math.log(2), rel=1e-4)
    assert lp_after < lp_before - 1e-3


@pytest.mark.parametrize("method", sorted(PARTS))
def test_every_method_runs_a_step(tok, method):
    _, history = _one_step(tok, method)
    assert len(history.rows) == 1
    row = history.rows[0]
    assert set(row) == {"step", "epoch", "loss"} | PARTS[method]
    assert all(math.isfinite(row[k]) for k in PARTS[method] | {"loss"})
