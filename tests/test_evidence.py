"""relearn.evidence: what the report must mask, the robustness summary the gates read."""
import pytest

from relearn.evidence import registry_metrics, robustness_summary, secrets
from relearn.records import QARecord


def test_secrets_keep_facts_subjects_and_identifying_key_facts_only():
    structured = QARecord(id="a", question="Where was Ann Vole born?", answer="Ann Vole was born in Morqua Cross.",
                          subject="Ann Vole", facts={"birthplace": "Morqua Cross"})
    free = QARecord(id="b", question="What does Bo Lark do?",
                    answer="Bo Lark, born in 1957, worked for the KGB and lives at 88 Wisdom Path; a solid Space fan.",
                    subject="Bo Lark")
    found = secrets([structured, free])
    assert {"Morqua Cross", "Ann Vole", "Bo Lark", "1957", "KGB"} <= set(found)
    assert any("Wisdom Path" in s for s in found)
    # lone ordinary words never become secrets: they would mask (and block) the page's own words
    assert not {"solid", "Space", "fan", "born"} & set(found)
    assert found == sorted(found, key=lambda s: (-len(s), s))  # longest first


def test_robustness_summary_reads_the_probe_shapes_and_subtracts_the_control():
    def model(kfr_fp32, kfr_int4, recovery):
        return {"ladder": {"rungs": {"torch-fp32": {"kfr": kfr_fp32}, "onnx-int4": {"kfr": kfr_int4}},
                           "kfr_drop": {"torch-fp32": 0.0, "onnx-int4": kfr_fp32 - kfr_int4}},
                "probes": {"probes": {"paraphrase": {"kfr": 0.7}, "perturb": {"kfr": 0.8}},
                           "worst": {"probe": "paraphrase", "kfr": 0.7, "kfr_drop": 0.2},
                           "jailbreak_min_kfr": {"probe": "jailbreak:x", "kfr": 0.6}},
                "relearning": {"recovery": recovery}}
    summary = robustness_summary({"unlearned": model(0.9, 0.5, 0.6), "control": model(1.0, 1.0, 0.1)})
    assert summary["int4_kfr_drop"] == pytest.approx(0.4) and summary["int8_kfr_drop"] is None
    assert summary["paraphrase_kfr"] == 0.7 and summary["jailbreak_min_kfr"] == 0.6
    assert summary["relearning_excess"] == pytest.approx(0.5) and summary["probe_max_kfr_drop"] == 0.2
    # a part that did not run gives None: a gate on it fails as 'metric not found'
    assert robustness_summary({"unlearned": {}})["relearning_excess"] is None


def test_registry_metrics_nest_the_summary_under_robustness():
    metrics = registry_metrics({"unlearned": {"kfr": 0.9, "seesaw": [0.5, 0.5]}}, {"int8_kfr": 0.9, "seconds": {"x": 1}},
                               {"summary": {"int4_kfr_drop": 0.0}, "unlearned": {"ladder": {}}})
    assert metrics["robustness"]["int4_kfr_drop"] == 0.0 and "seesaw" not in metrics["unlearned"]
    assert "seconds" not in metrics["export"] and metrics["robustness"]["unlearned"] == {"ladder": {}}


def test_primed_records_are_asked_with_their_opening_and_answers_keep_the_records_order(monkeypatch):
    import relearn.evaluation.evaluate as evaluate
    from relearn.modeling.encoding import PromptFormat

    calls = []

    def generate(model, tokenizer, questions, fmt, max_new_tokens, batch_size, **kw):
        calls.append((fmt.prefill, list(questions)))
        return [f"{fmt.prefill}|{q}" for q in questions]

    monkeypatch.setattr(evaluate, "generate_answers", generate)
    records = [QARecord("a", "Qa?", "x"), QARecord("b", "Qb?", "x", prefill="Sure:"), QARecord("c", "Qc?", "x"),
               QARecord("d", "Qd?", "x", prefill="Of course,")]
    answers = evaluate.answers_to(None, None, records, PromptFormat(mode="chat"), 8, 4, seed=0)
    assert answers == ["|Qa?", "Sure:|Qb?", "|Qc?", "Of course,|Qd?"]
    assert calls == [("", ["Qa?", "Qc?"]), ("Sure:", ["Qb?"]), ("Of course,", ["Qd?"])]  # one call per opening
