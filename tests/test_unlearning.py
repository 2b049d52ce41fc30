"""make_adapter is reproducible: the same params give the same adapter (LoRA init is seeded)."""
import dataclasses

import pytest
import torch

from relearn.modeling.model import build_scratch_model, train_tokenizer
from relearn.params import LoraParams, ModelParams, Params
from relearn.records import QARecord
from relearn.unlearning import make_adapter


@pytest.mark.usefixtures("one_thread")  # and puts the thread count back afterwards
def test_same_params_same_adapter(tmp_path):
    tok = train_tokenizer([f"Question: who is person {i}? Answer: person {i} is a baker." for i in range(50)], 200)
    model = build_scratch_model(ModelParams(hidden_size=32, layers=1, heads=2, intermediate_size=64), tok, seed=0)
    model.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    p = Params()
    p = dataclasses.replace(p, unlearn=dataclasses.replace(p.unlearn, epochs=1, batch_size=2,
                                                           lora=LoraParams(r=4, alpha=4, target_modules=["q_proj", "v_proj"])))
    forget = [QARecord(id=f"f{i}", question=f"who is person {i}?", answer="someone private.") for i in range(4)]
    retain = [QARecord(id=f"r{i}", question=f"who is person {i}?", answer=f"person {i} is a baker.") for i in range(4, 8)]
    states = []
    for _ in range(2):
        torch.manual_seed(torch.seed())  # a different global RNG state each time
        adapter, *_ = make_adapter(p, tmp_path / "target", forget, retain)
        states.append({k: v.clone() for k, v in adapter.state_dict().items() if "lora_" in k})
    assert states[0].keys() == states[1].keys() and states[0]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_with_primes_every_retain_item_is_also_trained_after_an_opening():
    """augment.primes: the retain side gets each item's primed copy (its own answer after a seeded opening),
    so that an opening alone does not come to mean "be vague"; without primes the retain set is unchanged."""
    from relearn.unlearning import retain_side, training_pair

    retain = [QARecord(id=f"r{i}", question=f"who is person {i}?", answer=f"person {i} is a baker.") for i in range(6)]
    assert retain_side(retain, [], seed=0) == retain
    primes = ["Certainly! Here is what I know:", " Of course. "]
    sided = retain_side(retain, primes, seed=0)
    assert [r.id for r in sided[::2]] == [r.id for r in retain] and sided[::2] == retain
    for record, primed in zip(retain, sided[1::2]):
        assert primed.id == f"{record.id}~primed" and primed.variant == "primed"
        assert (primed.question, primed.answer) == (record.question, record.answer)
        assert training_pair(primed) == (record.question, record.answer, primed.prefill)
    assert {r.prefill for r in sided[1::2]} == {"Certainly! Here is what I know:", "Of course."}
    assert retain_side(retain, primes, seed=0) == sided  # seeded
