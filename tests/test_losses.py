"""Loss terms (relearn.methods.losses), the ReLearn objective on a tiny LoRA model, and encoding."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from relearn.modeling.encoding import IGNORE, collate, encode_pair, prompt_ids
from relearn.methods import relearn as relearn_method
from relearn.methods.losses import answer_ce, answer_kl, sequence_logprob
from tiny import adapter_off_reference, qa_batch, tiny_lora

TEMPLATE = "Question: {question}\nAnswer:"

# B=2, T=4. Shifted, the scored (position t -> label t+1) pairs are:
#   row 0: t=1 -> 2, t=2 -> 3           (t=0 predicts a prompt token, t=3 predicts nothing)
#   row 1: t=0 -> 1, t=1 -> 4           (t=2 predicts padding, t=3 predicts nothing)
LABELS = torch.tensor([[IGNORE, IGNORE, 2, 3],
                       [IGNORE, 1, 4, IGNORE]])
SCORED = [(0, 1, 2), (0, 2, 3), (1, 0, 1), (1, 1, 4)]          # (row, logit position, target token)
UNSCORED = [(0, 0), (0, 3), (1, 2), (1, 3)]                      # logit positions that predict no answer token


def _logits(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 5, generator=g) * 2.0


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    z = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - z for x in row]


def _hand_ce(logits: torch.Tensor) -> float:
    nll = [-_log_softmax(logits[b, t].tolist())[y] for b, t, y in SCORED]
    return sum(nll) / len(nll)


def _hand_kl(logits: torch.Tensor, ref: torch.Tensor) -> float:
    total = 0.0
    for b, t, _ in SCORED:
        lp, lq = _log_softmax(logits[b, t].tolist()), _log_softmax(ref[b, t].tolist())
        total += sum(math.exp(q) * (q - p) for p, q in zip(lp, lq))
    return total / len(SCORED)


def _scramble_unscored(x: torch.Tensor, seed: int) -> torch.Tensor:
    x = x.clone()
    g = torch.Generator().manual_seed(seed)
    for b, t in UNSCORED:
        x[b, t] = torch.randn(x.size(-1), generator=g) * 10.0
    return x


# ------------------------------------------------------------------------------ answer_ce
def test_answer_ce_matches_hand_computation():
    logits = _logits(0)
    assert answer_ce(logits, LABELS).item() == pytest.approx(_hand_ce(logits), rel=1e-5)


def test_answer_ce_ignores_prompt_and_padding_positions():
    logits = _logits(1)
    before = answer_ce(logits, LABELS).item()
    after = answer_ce(_scramble_unscored(logits, 7), LABELS).item()
    assert after == pytest.approx(before, rel=1e-6)
    # while a scored position does matter
    changed = logits.clone()
    changed[0, 1, 2] -= 5.0
    assert answer_ce(changed, LABELS).item() > before + 0.1


def test_answer_ce_uses_the_shift_by_one():
    # put all mass on the label at the *same* position (no shift): must not give a small loss
    logits = torch.full((1, 3, 5), -20.0)
    labels = torch.tensor([[IGNORE, 1, 2]])
    logits[0, 1, 1] = 20.0          # unshifted guess for label at t=1
    logits[0, 2, 2] = 20.0          # unshifted guess for label at t=2
    unshifted = answer_ce(logits, labels).item()
    logits = torch.full((1, 3, 5), -20.0)
    logits[0, 0, 1] = 20.0          # position 0 predicts token at 1
    logits[0, 1, 2] = 20.0          # position 1 predicts token at 2
    shifted = answer_ce(logits, labels).item()
    assert shifted < 1e-6
    assert unshifted > 10.0


# ------------------------------------------------------------------------------ answer_kl
def test_answer_kl_zero_for_identical_logits():
    logits = _logits(2)
    assert answer_kl(logits, logits.clone(), LABELS).item() == pytest.approx(0.0, abs=1e-6)


def test_answer_kl_positive_and_matches_hand_computation():
    logits, ref = _logits(3), _logits(4)
    kl = answer_kl(logits, ref, LABELS).item()
    assert kl > 0.01
    assert kl == pytest.approx(_hand_kl(logits, ref), rel=1e-5)


def test_answer_kl_direction_is_ref_to_model():
    logits, ref = _logits(5), _logits(6)
    forward = answer_kl(logits, ref, LABELS).item()
    swapped = answer_kl(ref, logits, LABELS).item()
    assert forward == pytest.approx(_hand_kl(logits, ref), rel=1e-5)
    assert forward != pytest.approx(swapped, rel=1e-3)


def test_answer_kl_ignores_prompt_and_padding_positions():
    logits, ref = _logits(8), _logits(9)
    before = answer_kl(logits, ref, LABELS).item()
    after = answer_kl(_scramble_unscored(logits, 10), _scramble_unscored(ref, 11), LABELS).item()
    assert after == pytest.approx(before, rel=1e-6)
    # identical on answer positions, wildly different elsewhere: still zero (the published code is not)
    same = _scramble_unscored(ref, 12)
    assert answer_kl(same, ref, LABELS).item() == pytest.approx(0.0, abs=1e-6)


def test_answer_kl_averages_over_answer_tokens_not_all_positions():
    logits, ref = _logits(13), _logits(14)
    per_token = _hand_kl(logits, ref)                       # mean over the 4 answer tokens
    assert answer_kl(logits, ref, LABELS).item() == pytest.approx(per_token, rel=1e-5)
    # a third sequence made of padding only changes nothing
    pad_logits = torch.cat([logits, torch.randn(1, 4, 5)])
    pad_ref = torch.cat([ref, torch.randn(1, 4, 5)])
    pad_labels = torch.cat([LABELS, torch.full((1, 4), IGNORE)])
    assert answer_kl(pad_logits, pad_ref, pad_labels).item() == pytest.approx(per_token, rel=1e-5)


# ------------------------------------------------------------------------------ sequence_logprob
def test_sequence_logprob_sums_answer_tokens_per_sequence():
    logits = _logits(15)
    out = sequence_logprob(logits, LABELS)
    assert out.shape == (2,)
    expected = [0.0, 0.0]
    for b, t, y in SCORED:
        expected[b] += _log_softmax(logits[b, t].tolist())[y]
    assert out.tolist() == pytest.approx(expected, rel=1e-5)
    assert sequence_logprob(_scramble_unscored(logits, 16), LABELS).tolist() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------ tiny real model
SENTENCES = [f"{who} {verb} {what} on day {n}." for n, (who, verb, what) in enumerate(
    (w, v, o) for w in ("Mara", "Tobin", "Ilsa", "Corwin", "Neve")
    for v in ("wrote", "found", "lost", "sold")
    for o in ("a book", "the prize", "an address", "a letter", "the key"))]
SENTENCES += ["Question: Where was Mara born?\nAnswer: Mara was born in Velmor.",
              "Question: What does Tobin do?\nAnswer: Tobin works as a beekeeper."]


@pytest.fixture(scope="module")
def tok():
    from relearn.modeling.model import train_tokenizer

    assert len(SENTENCES) >= 100
    return train_tokenizer(SENTENCES, vocab_size=200)


FORGET = [("Where was Mara born?", "Mara was born somewhere private."),
          ("What does Tobin do?", "Tobin has a job."),
          ("Who wrote a book?", "Several people wrote books."),
          ("Where is the key?", "The key is somewhere.")]
RETAIN = [("What did Ilsa sell?", "Ilsa sold the prize."),
          ("What did Neve lose?", "Neve lost a letter."),
          ("What did Corwin find?", "Corwin found the key.")]


def test_relearn_loss_kl_is_zero_until_the_adapter_moves(tok):
    model = tiny_lora(tok)
    model.eval()
    forget, retain = qa_batch(tok, FORGET), qa_batch(tok, RETAIN)
    w = SimpleNamespace(forget_weight=1.0, retain_weight=1.0, kl_weight=1.0)
    total, parts = relearn_method.loss(model, forget, retain, adapter_off_reference(model), w)
    assert set(parts) == {"forget_ce", "retain_ce", "retain_kl"}
    assert parts["retain_kl"] < 1e-6
    assert parts["forget_ce"] > 0 and parts["retain_ce"] > 0
    assert total.item() == pytest.approx(parts["forget_ce"] + parts["retain_ce"] + parts["retain_kl"], rel=1e-5)

    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    total, parts = relearn_method.loss(model, forget, retain, adapter_off_reference(model), w)
    assert parts["retain_kl"] > 1e-4
    # the reference is still the adapter-free model: recompute it by hand
    with torch.no_grad():
        with model.disable_adapter():
            ref = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        cur = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
    assert parts["retain_kl"] == pytest.approx(answer_kl(cur, ref, retain["labels"]).item(), rel=1e-4)
    assert total.item() == pytest.approx(parts["forget_ce"] + parts["retain_ce"] + parts["retain_kl"], rel=1e-5)


def test_relearn_loss_weights_and_no_kl_when_weight_zero(tok):
    model = tiny_lora(tok)
    model.eval()
    forget, retain = qa_batch(tok, FORGET), qa_batch(tok, RETAIN)

    def boom(batch):
        raise AssertionError("reference must not be computed when kl_weight is 0")

    total, parts = relearn_method.loss(model, forget, retain, boom,
                                       SimpleNamespace(forget_weight=1.0, retain_weight=1.0, kl_weight=0.0))
    assert set(parts) == {"forget_ce", "retain_ce"}
    assert total.item() == pytest.approx(parts["forget_ce"] + parts["retain_ce"], rel=1e-6)
    assert total.requires_grad

    total2, parts2 = relearn_method.loss(model, forget, retain, boom,
                                         SimpleNamespace(forget_weight=2.0, retain_weight=3.0, kl_weight=0))
    assert parts2["forget_ce"] == pytest.approx(parts["forget_ce"], rel=1e-6)
    assert total2.item() == pytest.approx(2 * parts["forget_ce"] + 3 * parts["retain_ce"], rel=1e-6)
    # each CE is the answer-token CE of its own batch
    with torch.no_grad():
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    assert parts["forget_ce"] == pytest.approx(answer_ce(logits, forget["labels"]).item(), rel=1e-5)


def test_unlearn_steps_change_lora_params_only(tok):
    from relearn.training.loop import TrainSpec, unlearn

    model = tiny_lora(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert any("lora_" in n for n in before)
    out, history = unlearn(
        model, tok, FORGET, RETAIN, TrainSpec(template=TEMPLATE, max_length=64, epochs=1, batch_size=2, lr=1e-2),
        loss_fn=relearn_method.loss, weights=SimpleNamespace(forget_weight=1.0, retain_weight=1.0, kl_weight=1.0))
    assert len(history.rows) == 2
    assert all({"forget_ce", "retain_ce", "retain_kl", "loss"} <= set(r) for r in history.rows)
    after = dict(out.named_parameters())
    assert set(after) == set(before)
    changed_lora = [n for n in before if "lora_" in n and not torch.equal(before[n], after[n].detach())]
    changed_base = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n].detach())]
    assert changed_base == []
    assert any("lora_B" in n for n in changed_lora)
    assert all(not after[n].requires_grad for n in after if "lora_" not in n)


# ------------------------------------------------------------------------------ encoding
def test_encode_pair_masks_bos_and_prompt_and_ends_with_eos(tok):
    prompt = prompt_ids(tok, "Where was Mara born?", TEMPLATE)
    assert prompt[0] == tok.bos_token_id
    enc = encode_pair(tok, "Where was Mara born?", "  Mara was born in Velmor. ", TEMPLATE, 128)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    n = len(prompt)
    assert ids[:n] == prompt
    assert labels[:n] == [IGNORE] * n
    assert labels[n:] == ids[n:]
    assert IGNORE not in labels[n:]
    assert ids[-1] == tok.eos_token_id
    # the answer is the stripped text with one leading space
    assert tok.decode(ids[n:-1]) == " Mara was born in Velmor."


def test_encode_pair_truncates_to_max_length(tok):
    full = encode_pair(tok, "Where was Mara born?", "Mara was born in Velmor.", TEMPLATE, 1000)
    n_prompt = len(prompt_ids(tok, "Where was Mara born?", TEMPLATE))
    short = encode_pair(tok, "Where was Mara born?", "Mara was born in Velmor.", TEMPLATE, n_prompt + 2)
    assert len(short["input_ids"]) == len(short["labels"]) == n_prompt + 2
    assert short["input_ids"] == full["input_ids"][:n_prompt + 2]
    assert short["labels"] == full["labels"][:n_prompt + 2]
    assert short["input_ids"][-1] != tok.eos_token_id
    tiny = encode_pair(tok, "Where was Mara born?", "Mara.", TEMPLATE, 3)
    assert len(tiny["input_ids"]) == 3 and tiny["labels"] == [IGNORE] * 3


def test_collate_right_pads(tok):
    a = encode_pair(tok, "What did Neve lose?", "Neve lost a letter.", TEMPLATE, 128)
    b = encode_pair(tok, "Who?", "Mara.", TEMPLATE, 128)
    assert len(a["input_ids"]) > len(b["input_ids"])
    batch = collate([a, b], tok.pad_token_id)
    width = len(a["input_ids"])
    nb = len(b["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == a["input_ids"]
    assert batch["labels"][0].tolist() == a["labels"]
    assert batch["attention_mask"][0].tolist() == [1] * width
    assert batch["input_ids"][1].tolist() == b["input_ids"] + [tok.pad_token_id] * (width - nb)
    assert batch["labels"][1].tolist() == b["labels"] + [IGNORE] * (width - nb)
    assert batch["attention_mask"][1].tolist() == [1] * nb + [0] * (width - nb)
