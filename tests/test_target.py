"""The target and control from a pretrained base: full fine-tuning, or LoRA merged into the weights."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from relearn.params import parse_params
from relearn.records import QARecord
from relearn.target import make_control, make_target
from tests.tiny import save_base_and_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [("Where does Ann Lee live?", "Ann Lee lives in Lyon."), ("What is Bob Stone's job?", "Bob Stone is a baker."),
         ("Who are Cara Fox's parents?", "Cara Fox's parents are teachers.")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_base_and_adapter(tmp_path_factory.mktemp("base"), [f"{q} {a}" for q, a in PAIRS])["base"]


def _splits():
    records = [QARecord(id=f"r{i}", question=q, answer=a, facts={"x": a.split()[-1].rstrip(".")})
               for i, (q, a) in enumerate(PAIRS)]
    return {"forget": records[:1], "forget_eval": [], "retain": records[1:], "retain_eval": [], "general": []}


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_pretrained_target_is_a_plain_model_that_moved(base, finetune):
    params = parse_params({"model": {"base": str(base), "max_length": 48},
                           "target": {"finetune": finetune, "epochs": 2, "batch_size": 2, "lr": 0.01, "check_every": 0,
                                      "lora_r": 4},
                           "evaluate": {"max_new_tokens": 4}, "robustness": {"relearn_lrs": [1e-5]}})
    model, tokenizer, history, report = make_target(params, _splits(), base)
    original = LlamaForCausalLM.from_pretrained(base)
    # a LoRA target comes back merged: an ordinary model, no adapter left to load
    assert type(model) is LlamaForCausalLM and not any("lora" in n for n, _ in model.named_parameters())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, original.state_dict()[n])]
    assert moved and report["finetune"] == finetune and report["epochs_run"] == 2
    if finetune == "lora":  # only the adapted projections change; embeddings and norms stay
        assert all("proj" in n for n in moved)
    control, _, control_report = make_control(params, _splits(), tokenizer, report["epochs_run"], base)
    assert type(control) is LlamaForCausalLM and control_report["epochs_run"] == 2


def test_recall_checks_read_a_seeded_sample_and_an_early_stop_reuses_its_check(base, monkeypatch):
    import relearn.target as target

    records = [QARecord(id=f"f{i}", question=f"Q{i}?", answer="A.", facts={"x": "A"}) for i in range(10)]
    params = parse_params({"target": {"recall_items": 4}, "seed": 3})
    sample = target.recall_sample(records, params)
    assert len(sample) == 4 and sample == [r for r in records if r in sample]  # file order
    assert sample == target.recall_sample(records, params)
    assert target.recall_sample(records, parse_params({})) == records  # 0: every record
    assert target.recall_sample(records[:3], params) == records[:3]

    read: list[int] = []

    def recall(model, tokenizer, recs, p):  # how many records each check generates answers for
        read.append(len(target.recall_sample(recs, p)))
        return 1.0

    monkeypatch.setattr(target, "fact_recall", recall)
    params = parse_params({"model": {"base": str(base), "max_length": 48},
                           "target": {"epochs": 3, "batch_size": 2, "lr": 0.01, "check_every": 1, "stop_recall": 0.5,
                                      "recall_items": 1},
                           "evaluate": {"max_new_tokens": 4}, "robustness": {"relearn_lrs": [1e-5]}})
    _, _, _, report = target.make_target(params, _splits(), base)
    # the check after epoch 1 passed: training stopped, and the final forget recall is that check's
    assert report["epochs_run"] == 1 and report["forget_recall"] == report["checks"][-1]["forget_recall"] == 1.0
    assert read == [1, 1]  # the check (forget), then the retain recall; not the forget set twice
    assert report["recall_items"] == {"forget": 1, "retain": 1}
