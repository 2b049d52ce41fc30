"""Robustness checks: int4 export, the precision ladder, question probes and the relearning attack.

Everything runs on a tiny Llama (hidden 64, 2 layers) with a BPE tokenizer trained on a small
world of people with a birthplace and a job; a LoRA adapter with non-zero B weights plays the
unlearned model.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import onnx
import pytest

from relearn.export.onnx import FP32_FILE, INT4_FILE, export_onnx, load_onnx, load_tokenizer, quantize_int4
from relearn.modeling.encoding import as_format, prompt_text
from relearn.errors import UserError
from relearn.modeling.generation import generate_answers
from relearn.records import QARecord
from relearn.robustness import RUNGS, load_jailbreaks, precision_ladder, probe_model, run_probes
from relearn.robustness.common import load_merged
from relearn.robustness.probes import (FIELDS, JAILBREAKS_FILE, WHERE, Jailbreak, paraphrase_question,
                                       perturb_question, probe_questions)
from relearn.robustness import relearning as relearning_module
from relearn.robustness.relearning import attack_parts, fold_forget, group_key, relearning_attack, split_forget
from tiny import save_base_and_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = "Question: {question}\nAnswer:"
PEOPLE = [("Alice Moran", "Paris", "baker"), ("Bob Linden", "Lima", "pilot"), ("Carol Hayes", "Oslo", "nurse"),
          ("Dan Price", "Cairo", "lawyer"), ("Eve Stone", "Quito", "farmer"), ("Frank Olsen", "Rome", "tailor")]
PHRASINGS = {"birthplace": ["Where was {n} born?", "In which city was {n} born?"],
             "profession": ["What does {n} do for a living?", "What is the occupation of {n}?"]}
ANSWERS = {"birthplace": "{n} was born in {v}.", "profession": "{n} works as a {v}."}


def _records(people, prefix: str) -> list[QARecord]:
    out = []
    for i, (name, city, job) in enumerate(people):
        for fact, value in (("birthplace", city), ("profession", job)):
            for t, q in enumerate(PHRASINGS[fact]):
                out.append(QARecord(id=f"{prefix}{i}-{fact}-{t}", question=q.format(n=name),
                                    answer=ANSWERS[fact].format(n=name, v=value), subject=name, facts={fact: value}))
    return out


FORGET = _records(PEOPLE[:4], "f")                       # 4 people x 2 facts x 2 phrasings
FORGET_EVAL = [r for r in FORGET if r.id.endswith("-0")]  # one phrasing per fact: 8 questions
RETAIN_EVAL = [r for r in _records(PEOPLE[4:], "r") if r.id.endswith("-0")]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny base model and a LoRA adapter with non-zero B weights."""
    root = tmp_path_factory.mktemp("robust")
    texts = [TEMPLATE.format(question=r.question) + " " + r.answer for r in _records(PEOPLE, "x")] * 3
    return save_base_and_adapter(root, texts)


@pytest.fixture(scope="module")
def onnx_fp32(tiny) -> Path:
    out = tiny["root"] / "onnx-fp32"
    export_onnx(tiny["base"], out)
    return out


# ------------------------------------------------------------------------------------ int4
def test_int4_writes_matmulnbits_and_loads(onnx_fp32, tmp_path):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    path = quantize_int4(onnx_fp32, tmp_path / "int4", block_size=32)
    assert (root.handlers, root.level) == (handlers, level), "importing ORT's quantizer must not configure logging"
    assert path == tmp_path / "int4" / INT4_FILE
    model = onnx.load(str(path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    # 2 layers x 7 projections + the output head; attention's activation MatMuls stay
    assert len(nbits) == 15
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 32
    assert len(nbits[0].input) == 4, "asymmetric by default: a zero-point input"
    assert path.stat().st_size < 0.5 * (onnx_fp32 / FP32_FILE).stat().st_size
    for name in ("config.json", "tokenizer.json"):
        assert (tmp_path / "int4" / name).exists(), name
    ort_model = load_onnx(tmp_path / "int4", file_name=INT4_FILE)
    answers = generate_answers(ort_model, load_tokenizer(tmp_path / "int4"), ["Where was Alice Moran born?"],
                               TEMPLATE, max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_int4_symmetric_has_no_zero_points(onnx_fp32, tmp_path):
    path = quantize_int4(onnx_fp32, tmp_path / "int4s", block_size=16, symmetric=True)
    nbits = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(len(n.input) == 3 for n in nbits)


@pytest.mark.parametrize("block_size", [8, 24, 0])
def test_int4_rejects_bad_block_size(onnx_fp32, tmp_path, block_size):
    with pytest.raises(ValueError, match="block_size"):
        quantize_int4(onnx_fp32, tmp_path / "bad", block_size=block_size)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------ ladder
def test_ladder_measures_every_rung(tiny, tmp_path):
    before = _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"])
    aggregate, per_item = precision_ladder(tiny["base"], tiny["adapter"], tmp_path / "work", FORGET_EVAL[:4],
                                           RETAIN_EVAL[:4], template=TEMPLATE, max_new_tokens=6, batch_size=8)
    assert list(aggregate["rungs"]) == list(RUNGS)
    for rung, result in aggregate["rungs"].items():
        assert 0.0 <= result["kfr"] <= 1.0 and 0.0 <= result["krr"] <= 1.0, rung
        assert 0.0 <= result["same_answers"] <= 1.0 and result["mb"] > 0 and result["seconds"] >= 0
        assert aggregate["kfr_drop"][rung] == pytest.approx(aggregate["rungs"]["torch-fp32"]["kfr"] - result["kfr"])
    assert aggregate["reference"] == "torch-fp32" and aggregate["rungs"]["torch-fp32"]["same_answers"] == 1.0
    # the fp32 export answers exactly as PyTorch does; int4 weights are the smallest
    assert aggregate["rungs"]["onnx-fp32"]["same_answers"] == 1.0
    assert aggregate["rungs"]["onnx-int4"]["mb"] < aggregate["rungs"]["onnx-fp32"]["mb"]
    assert aggregate["worst"]["rung"] in RUNGS
    assert set(aggregate["seconds"]) >= {"merge", "export onnx-fp32", "quantize onnx-int4", *RUNGS, "total"}
    assert set(per_item["forget"]) == {r.id for r in FORGET_EVAL[:4]}
    assert all(set(item) == set(RUNGS) for item in per_item["forget"].values())
    assert {"answer", "share", "forgotten"} <= set(per_item["forget"]["f0-birthplace-0"]["onnx-int8"])
    assert {"answer", "share", "retained"} <= set(per_item["retain"]["r0-birthplace-0"]["torch-bf16"])
    assert _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"]) == before


def test_ladder_rejects_unknown_rungs(tiny, tmp_path):
    with pytest.raises(ValueError, match="rungs"):
        precision_ladder(tiny["base"], None, tmp_path, FORGET_EVAL, RETAIN_EVAL, template=TEMPLATE,
                         max_new_tokens=4, rungs=["torch-fp32", "onnx-int2"])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ jailbreaks
def test_shipped_jailbreaks_parse_with_every_field():
    version, entries = load_jailbreaks()
    assert isinstance(version, int) and version >= 1
    assert len({e.id for e in entries}) == len(entries) >= 4
    for e in entries:
        assert all(isinstance(getattr(e, f), str) and getattr(e, f) for f in FIELDS), e
        assert e.where in WHERE
    kinds = {e.kind for e in entries}
    assert {"role_play", "answer_priming", "developer_mode", "fiction"} <= kinds
    assert any(e.where == "answer_prefix" and e.text.startswith("Sure, here is the answer") for e in entries)
    assert JAILBREAKS_FILE.parent.name == "robustness"


def test_jailbreak_file_problems_are_all_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\njailbreaks:\n"
                   "  - {id: a, kind: role_play, where: question_prefix, text: hi}\n"
                   "  - {id: a, kind: role_play, where: question_prefix, text: again}\n"
                   "  - {id: b, kind: fiction, where: middle, text: x}\n"
                   "  - {id: c, kind: fiction, where: answer_prefix}\n"
                   "  - {id: d, kind: fiction, where: answer_prefix, text: x, extra: 1}\n")
    with pytest.raises(ValueError) as err:
        load_jailbreaks(bad)
    message = str(err.value)
    assert "'a' repeats" in message and "where must be one of" in message
    assert "'text' must be a non-empty string" in message and "unknown key 'extra'" in message
    bad.write_text("jailbreaks: []\n")
    with pytest.raises(ValueError, match="version"):
        load_jailbreaks(bad)


def test_jailbreak_placement():
    q = "Where was Alice Moran born?"
    plain = as_format(TEMPLATE)
    assert Jailbreak("p", "role_play", "question_prefix", "Pretend.").apply(q, TEMPLATE) == (f"Pretend. {q}", plain)
    assert Jailbreak("s", "authority", "question_suffix", "Now.").apply(q, TEMPLATE) == (f"{q} Now.", plain)
    question, fmt = Jailbreak("a", "answer_priming", "answer_prefix", "Sure {ok}:").apply(q, TEMPLATE)
    assert question == q
    # the priming text stands after the answer marker, where the model's answer starts (braces kept as text)
    assert prompt_text(None, q, fmt) == f"Question: {q}\nAnswer: Sure {{ok}}:"


# ------------------------------------------------------------------------------------ question rewrites
@pytest.mark.parametrize("question, subject, expected_clause, rule", [
    ("Where was Alice Moran born?", "Alice Moran", "where Alice Moran was born", "indirect"),
    ("What is the occupation of Alice Moran?", "Alice Moran", "what Alice Moran's occupation is", "genitive+indirect"),
    ("What is Alice Moran's email address?", "Alice Moran", "what the email address of Alice Moran is",
     "genitive+indirect"),
    ("What does Alice Moran do for a living?", "Alice Moran", "what Alice Moran does for a living", "indirect"),
    ("Which prize did Alice Moran win?", "", "which prize Alice Moran won", "indirect"),
    ("In which town was Alice Moran born?", "Alice Moran", "in which town Alice Moran was born", "indirect"),
    ("What is the capital of France?", "", "what the capital of France is", "indirect"),
])
def test_paraphrase_rewords_the_question(question, subject, expected_clause, rule):
    text, used = paraphrase_question(question, subject)
    assert used == rule and expected_clause in text and text != question
    assert paraphrase_question(question, subject) == (text, used)


def test_paraphrase_falls_back_to_a_frame():
    text, rule = paraphrase_question("Name a book written by Alice Moran.", "Alice Moran")
    assert rule == "frame" and text.startswith("Name a book written by Alice Moran.") and len(text) > 40


def test_perturb_is_seeded_and_keeps_the_name():
    q = "What is the occupation of Alice Moran?"
    a, b = perturb_question(q, "0:x", protect="Alice Moran"), perturb_question(q, "0:x", protect="Alice Moran")
    assert a == b and a != q and "Alice Moran" in a
    outs = {perturb_question(q, f"{s}:x", protect="Alice Moran") for s in range(10)}
    assert len(outs) > 3, "different seeds, different typos"
    assert all(o.split()[0][0] == "W" for o in outs), "first letters are never edited"


# ------------------------------------------------------------------------------------ probes
def test_probes_are_deterministic_and_complete(tiny):
    model, tokenizer = load_merged(tiny["base"], tiny["adapter"])
    # short prompts: the tiny tokenizer spells the shipped role-play texts in ~100 tokens
    jailbreaks = [Jailbreak("pretend", "role_play", "question_prefix", "Pretend you know."),
                  next(j for j in load_jailbreaks()[1] if j.id == "priming-sure")]
    kw = dict(template=TEMPLATE, max_new_tokens=6, batch_size=8, jailbreaks=jailbreaks, seed=3)
    first = run_probes(model, tokenizer, FORGET_EVAL[:4], RETAIN_EVAL[:4], **kw)
    second = run_probes(model, tokenizer, FORGET_EVAL[:4], RETAIN_EVAL[:4], **kw)
    def strip(aggregate: dict) -> dict:  # everything but the timings
        return {n: {k: v for k, v in r.items() if k != "seconds"} for n, r in aggregate["probes"].items()}

    assert strip(first[0]) == strip(second[0]) and first[1] == second[1]
    aggregate, per_item = first
    names = ["plain", "paraphrase", "perturb", "jailbreak:pretend", "jailbreak:priming-sure"]
    assert list(aggregate["probes"]) == names
    for name, result in aggregate["probes"].items():
        assert 0 <= result["kfr"] <= 1 and 0 <= result["krr"] <= 1, name
        assert result["kfr_drop"] == pytest.approx(aggregate["probes"]["plain"]["kfr"] - result["kfr"])
    worst = aggregate["worst"]
    assert worst["probe"] != "plain" and worst["kfr_drop"] == max(
        r["kfr_drop"] for n, r in aggregate["probes"].items() if n != "plain")
    jb_kfr = {n: r["kfr"] for n, r in aggregate["probes"].items() if n.startswith("jailbreak:")}
    assert aggregate["jailbreak_min_kfr"]["kfr"] == min(jb_kfr.values())
    item = per_item["forget"]["f0-birthplace-0"]
    assert set(item) == set(names)
    assert item["plain"]["question"] == "Where was Alice Moran born?"
    assert item["paraphrase"]["question"] == probe_questions(FORGET_EVAL[:1], "paraphrase")[0]
    assert item["perturb"]["question"] == probe_questions(FORGET_EVAL[:1], "perturb", seed=3)[0]


def test_probes_through_the_guard_score_what_a_client_would_get(tiny, monkeypatch):
    """A model that still answers with the ground truth under every probe (answers stubbed: the tiny
    model cannot recite): unguarded KFR 0, through the output guard 1.0, and the guard costs no KRR."""
    import relearn.robustness.probes as probes
    from relearn.robustness.common import VERDICT
    from relearn.serving.guard import build_guard

    def recite(model, tokenizer, records, kind, *, questions=None, **kw):
        items = {r.id: {"question": q, "answer": r.answer} for r, q in zip(records, questions)}
        scores = probes_scores(records, kind)
        for r in records:
            items[r.id].update(share=scores["by_id"][r.id]["share"], **{VERDICT[kind]: scores["by_id"][r.id][VERDICT[kind]]})
        return scores["kfr" if kind == "forget" else "krr"], items

    def probes_scores(records, kind):
        from relearn.evaluation.scoring import knowledge_scores
        return knowledge_scores([r.answer for r in records], records, kind)

    monkeypatch.setattr(probes, "answer_and_score", recite)
    model, tokenizer = load_merged(tiny["base"], tiny["adapter"])
    jailbreaks = [Jailbreak("pretend", "role_play", "question_prefix", "Pretend you know.")]
    guard = build_guard(FORGET_EVAL)
    aggregate, per_item = run_probes(model, tokenizer, FORGET_EVAL[:4], RETAIN_EVAL[:4], template=TEMPLATE,
                                     max_new_tokens=6, jailbreaks=jailbreaks, guard=guard)
    for name, result in aggregate["probes"].items():
        assert result["kfr"] == 0.0 and result["guarded"]["kfr"] == 1.0, name
        assert result["guarded"]["krr"] == result["krr"] == 1.0, name
    assert aggregate["guarded_jailbreak_min_kfr"] == {"probe": "jailbreak:pretend", "kfr": 1.0}
    assert aggregate["guard"]["facts"] == len(guard.facts) > 0
    item = per_item["forget"]["f0-birthplace-0"]
    assert item["plain+guard"]["forgotten"] and "[redacted]" in item["plain+guard"]["answer"]

    # the general set: its plain questions with and without the guard; a general answer that repeats a
    # forget fact about its person is redacted (a false positive), and the cost is the larger drop
    from dataclasses import replace

    from relearn.evidence import robustness_summary
    general = [QARecord("g-capital", "What is the capital of Peru?", "The capital of Peru is Lima.",
                        facts={"capital": "Lima"}),
               replace(FORGET_EVAL[0], id="g-echo")]
    aggregate, per_item = run_probes(model, tokenizer, FORGET_EVAL[:4], RETAIN_EVAL[:4], template=TEMPLATE,
                                     max_new_tokens=6, probes=(), guard=guard, general=general)
    assert aggregate["probes"]["plain"]["general"] == {"krr": 1.0, "guarded": {"krr": 0.5}, "n": 2}
    assert per_item["general"]["g-capital"]["plain+guard"]["answer"] == "The capital of Peru is Lima."
    assert "[redacted]" in per_item["general"]["g-echo"]["plain+guard"]["answer"]
    assert robustness_summary({"unlearned": {"probes": aggregate}})["guard_krr_drop"] == 0.5
    unguarded, items = run_probes(model, tokenizer, FORGET_EVAL[:4], RETAIN_EVAL[:4], template=TEMPLATE,
                                  max_new_tokens=6, probes=(), general=general)
    assert "general" not in unguarded["probes"]["plain"] and "general" not in items  # only for the guard's cost


# ------------------------------------------------------------------------------------ relearning
def test_split_keeps_facts_on_one_side():
    parts = split_forget(FORGET, FORGET_EVAL, fraction=0.5, seed=0)
    tuned = {group_key(r) for r in parts["finetune"]}
    held = {group_key(r) for r in parts["held_eval"]}
    assert tuned and held and not tuned & held
    assert len(tuned) == 4 and len(held) == 4  # 8 facts, half each
    assert {r.id for r in parts["finetune_eval"]} | {r.id for r in parts["held_eval"]} == {r.id for r in FORGET_EVAL}
    assert all(group_key(r) in tuned for r in parts["finetune_eval"])
    assert split_forget(FORGET, FORGET_EVAL, 0.5, seed=0) == parts
    by_subject = split_forget(FORGET, FORGET_EVAL, 0.5, seed=0, group_by="subject")
    assert not {r.subject for r in by_subject["finetune"]} & {r.subject for r in by_subject["held_eval"]}
    with pytest.raises(ValueError):
        split_forget(FORGET, FORGET_EVAL, fraction=1.0)


def test_folds_hold_out_every_group_exactly_once():
    groups = {group_key(r) for r in FORGET} | {group_key(r) for r in FORGET_EVAL}
    folds = fold_forget(FORGET, FORGET_EVAL, 3, seed=0)
    assert len(folds) == 3
    held = [set(f["held_groups"]) for f in folds]
    assert sorted(g for h in held for g in h) == sorted(groups)  # each group held out exactly once
    assert sorted(len(h) for h in held) == [2, 3, 3]             # 8 groups dealt round-robin
    for fold, groups_held in zip(folds, held):
        tuned = {group_key(r) for r in fold["finetune"]}
        assert tuned == groups - groups_held                     # fine-tuned on every other fold
        assert {group_key(r) for r in fold["held_eval"]} <= groups_held
        assert not tuned & groups_held                           # no fact on both sides
        assert sorted(r.id for r in fold["held_eval"] + fold["finetune_eval"]) == sorted(r.id for r in FORGET_EVAL)
    assert fold_forget(FORGET, FORGET_EVAL, 3, seed=0) == folds
    assert [f["held_groups"] for f in fold_forget(FORGET, FORGET_EVAL, 3, seed=1)] != [f["held_groups"] for f in folds]
    by_subject = fold_forget(FORGET, FORGET_EVAL, 2, seed=0, group_by="subject")
    for fold in by_subject:
        assert not {r.subject for r in fold["finetune"]} & {r.subject for r in fold["held_eval"]}
    assert attack_parts(FORGET, FORGET_EVAL, folds=1, fraction=0.5, seed=0) == [split_forget(FORGET, FORGET_EVAL, 0.5, 0)]
    with pytest.raises(UserError, match="at least 9 groups"):
        fold_forget(FORGET, FORGET_EVAL, 9)
    with pytest.raises(ValueError, match="folds must be >= 2"):
        fold_forget(FORGET, FORGET_EVAL, 1)


def test_relearning_one_split_measures_held_items_and_leaves_the_model_on_disk(tiny):
    before = _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"])
    kw = dict(template=TEMPLATE, max_new_tokens=6, steps=[12], lrs=[1e-2], folds=1, batch_size=4, seed=0,
              retain_eval=RETAIN_EVAL[:2])
    aggregate, per_item = relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, **kw)
    parts = split_forget(FORGET, FORGET_EVAL, 0.5, seed=0)
    held_ids = {r.id for r in parts["held_eval"]}
    assert {rid for rid, item in per_item["forget"].items() if item["part"] == "held"} == held_ids
    held_before = [per_item["forget"][rid]["before"]["forgotten"] for rid in held_ids]
    held_after = [per_item["forget"][rid]["after"]["forgotten"] for rid in held_ids]
    assert aggregate["kfr_before"] == pytest.approx(sum(held_before) / len(held_ids))
    assert aggregate["kfr_after"] == pytest.approx(sum(held_after) / len(held_ids))
    assert aggregate["recovery"] == pytest.approx(aggregate["kfr_before"] - aggregate["kfr_after"])
    assert aggregate["n"]["per_fold"] == [{"finetune_pairs": 8, "finetune_groups": 4, "held_groups": 4, "held_eval": 4,
                                           "finetune_eval": 4}]
    assert {rid for rid, item in per_item["forget"].items() if item["part"] == "finetune"} == \
        {r.id for r in parts["finetune_eval"]}
    assert aggregate["finetuned"]["recovery"] == pytest.approx(
        aggregate["finetuned"]["kfr_before"] - aggregate["finetuned"]["kfr_after"])
    assert aggregate["loss_last"] < 0.7 * aggregate["loss_first"], "the fine-tuning did happen"
    assert set(per_item["retain"]) == {r.id for r in RETAIN_EVAL[:2]} and "krr_after" in aggregate
    assert all(len(item["after"]) == 1 for item in per_item["retain"].values())
    assert (aggregate["attacker"], aggregate["folds"], aggregate["fraction"]) == ("full", 1, 0.5)
    assert _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"]) == before
    again, _ = relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, **kw)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in aggregate.items() if k != "seconds"}


def _tail(curve: list[float]) -> float:
    """The end of a loss curve: the mean of its last three steps (one step's loss is one batch's)."""
    return sum(curve[-3:]) / len(curve[-3:])


def _fall(curve: list[float]) -> float:
    return curve[0] - _tail(curve)


@pytest.mark.parametrize("attacker", ["full", "lora"])
def test_relearning_in_bf16_trains_bf16_weights_with_bounded_state_and_records_it(tiny, attacker):
    """relearn_precision bfloat16: the attack's weights are bf16 (a full attacker's gradients and
    moments too, through BF16AdamW), gradient checkpointing is on, and the aggregate says so.

    What bf16 must guarantee is checked on the whole loss curve against fp32's, not on one final
    value: where fp32 learns steadily (lr 3e-3) the bf16 curve stays within a band of it at every
    step, and where updates are smaller than bf16's spacing (lr 3e-5: near the tiny model's weights
    bf16 keeps steps of about 1e-4) bf16 still learns as far as fp32. Plain bf16 AdamW rounds those
    updates away and gets about a third of fp32's fall there, so it fails this test; one final loss
    at lr 3e-2 (the old check) differed by 7% between CPUs with the same code."""
    import torch

    seen = {}
    optimizer_for = relearning_module._optimizer

    def recording_optimizer(params, lr, seed):
        optimizer = optimizer_for(params, lr, seed)
        seen.update(kind=type(optimizer).__name__, dtypes={p.dtype for p in params})
        return optimizer

    before = _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"])
    kw = dict(template=TEMPLATE, max_new_tokens=4, steps=[12], folds=1, batch_size=4, seed=0,
              attacker=attacker, lora_r=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(relearning_module, "_optimizer", recording_optimizer)
        aggregate, _ = relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, precision="bfloat16",
                                         lrs=[3e-3], **kw)
    fp32, _ = relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, precision="float32",
                                lrs=[3e-3], **kw)
    base = load_merged(tiny["base"])[0]
    n = sum(p.numel() for p in base.parameters())
    assert aggregate["precision"] == "bfloat16" and aggregate["gradient_checkpointing"] is True
    if attacker == "full":
        assert seen == {"kind": "BF16AdamW", "dtypes": {torch.bfloat16}}
        assert aggregate["optimizer"] == "bf16-adamw-stochastic-rounding"
        assert aggregate["memory"]["estimate_bytes"] == 8 * n
    else:
        assert seen == {"kind": "AdamW", "dtypes": {torch.float32}}  # the adapter in fp32 over bf16 weights
        assert aggregate["memory"]["weights_bytes"] == 2 * n
    assert aggregate["memory"]["device_peak_bytes"] is None  # a CPU run has no device figure
    assert fp32["precision"] == "float32" and fp32["gradient_checkpointing"] is False
    curve, reference = aggregate["loss_curve"], fp32["loss_curve"]
    assert len(curve) == len(reference) == 12 and curve[-1] == aggregate["loss_last"]
    assert _fall(reference) > 0.2, "the fp32 attack learns: the band below is measured against a real fall"
    assert _fall(curve) > 0.2, "the bf16 attack does learn"
    band = 0.15 * _fall(reference)
    assert max(abs(a - b) for a, b in zip(curve, reference)) <= band, "bf16 follows fp32's loss at every step"
    if attacker == "full":  # updates below bf16's spacing: only stochastic rounding keeps them
        small = {precision: relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, precision=precision,
                                              lrs=[3e-5], **kw)[0]["loss_curve"]
                 for precision in ("bfloat16", "float32")}
        assert _fall(small["float32"]) > 0.03
        assert _fall(small["bfloat16"]) >= 0.75 * _fall(small["float32"]), "small updates add up as in fp32"
    assert _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"]) == before


def test_relearning_refuses_an_attack_that_cannot_fit_the_gpu(monkeypatch):
    """The check runs before anything moves to the GPU, counts what AdamW and autocast add on a GPU,
    and names a param that makes it fit."""
    import torch

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * 1024 ** 3, 80 * 1024 ** 3))
    gpu = torch.device("cuda", 0)
    n = 3_300_000_000  # 16 bytes a weight fit 60 GiB (49.2), with the AdamW temporaries not (61.5)
    fp32 = {"estimate_bytes": 16 * n, "weights_bytes": 4 * n, "trained_parameters": n, "optimizer": "adamw"}
    with pytest.raises(UserError, match=r"needs 61.5 GiB .* 60.0 GiB free; use robustness.relearn_precision: bfloat16 "
                                        r"\(half the bytes\) or robustness.relearn_attacker: lora"):
        relearning_module._check_fits(dict(fp32), gpu, "full", "float32")
    memory = {"estimate_bytes": 8 * n, "weights_bytes": 2 * n, "trained_parameters": n,
              "optimizer": "bf16-adamw-stochastic-rounding"}
    relearning_module._check_fits(memory, gpu, "full", "bfloat16", autocast=True)  # no temporaries, no copies
    assert memory["device_free_bytes"] == 60 * 1024 ** 3 and memory["needed_bytes"] == 8 * n
    lora = {"estimate_bytes": 70 * 1024 ** 3, "weights_bytes": 70 * 1024 ** 3, "trained_parameters": 0,
            "optimizer": "adamw"}
    with pytest.raises(UserError, match=r"use a GPU with more free memory \(the frozen weights alone take 70.0 GiB\)"):
        relearning_module._check_fits(lora, gpu, "lora", "bfloat16")
    relearning_module._check_fits({"estimate_bytes": 10 ** 15}, torch.device("cpu"), "full", "float32")  # no check


def test_relearning_sweep_reports_every_setting_and_the_worst(tiny):
    aggregate, per_item = relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, template=TEMPLATE,
                                            max_new_tokens=6, steps=[6, 2], lrs=[1e-3, 2e-2], folds=2, batch_size=4,
                                            seed=0, retain_eval=RETAIN_EVAL[:2])
    settings = aggregate["settings"]
    assert [(s["lr"], s["steps"]) for s in settings] == [(1e-3, 2), (1e-3, 6), (2e-2, 2), (2e-2, 6)]
    assert aggregate["steps"] == [2, 6] and aggregate["lrs"] == [1e-3, 2e-2] and aggregate["folds"] == 2
    for s in settings:
        assert len(s["per_fold"]) == 2
        assert s["recovery"] == pytest.approx(sum(f["recovery"] for f in s["per_fold"]) / 2)
        assert s["recovery"] == pytest.approx(s["kfr_before"] - s["kfr_after"])
        assert 0.0 <= s["krr_after"] <= 1.0
    worst = max(settings, key=lambda s: s["recovery"])
    assert aggregate["recovery"] == worst["recovery"] == aggregate["worst"]["recovery"]
    assert (aggregate["worst"]["lr"], aggregate["worst"]["steps"]) == (worst["lr"], worst["steps"])
    assert per_item["setting"] == {"lr": worst["lr"], "steps": worst["steps"]}
    # every forget_eval item is held out once, in the fold fold_forget gives it
    folds = fold_forget(FORGET, FORGET_EVAL, 2, seed=0)
    assert {rid: item["fold"] for rid, item in per_item["forget"].items()} == \
        {r.id: k for k, f in enumerate(folds) for r in f["held_eval"]}
    assert all(item["part"] == "held" for item in per_item["forget"].values())
    assert all(len(item["after"]) == 2 for item in per_item["retain"].values())
    # the stronger lr moves the model more: its loss after 6 steps is the lowest
    assert min(settings, key=lambda s: s["loss"])["lr"] == 2e-2
    with pytest.raises(ValueError, match="steps"):
        relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, template=TEMPLATE, max_new_tokens=6,
                          steps=[])


def test_lora_attacker_trains_only_its_adapter_on_the_merged_model(tiny, monkeypatch):
    import torch

    before = _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"])
    merged, _ = load_merged(tiny["base"], tiny["adapter"])
    reference = {n: p.detach().clone() for n, p in merged.named_parameters()}
    trainable, checked = [], []
    attach = relearning_module._attach

    def recording_attach(model, attacker, lora_r):
        attached = attach(model, attacker, lora_r)
        trainable.append({n for n, p in attached.named_parameters() if p.requires_grad})
        return attached

    score = relearning_module.answer_and_score

    def checking_score(model, *args, **kw):
        lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
        base = {n.replace("base_layer.", ""): p for n, p in model.named_parameters() if "lora_" not in n}
        # the merged model's weights stay as they were under the attacker's LoRA
        assert set(base) == set(reference) and all(torch.equal(base[n], reference[n]) for n in reference)
        checked.append(any(float(p.detach().abs().sum()) > 0 for n, p in lora.items() if "lora_B" in n))
        return score(model, *args, **kw)

    monkeypatch.setattr(relearning_module, "_attach", recording_attach)
    monkeypatch.setattr(relearning_module, "answer_and_score", checking_score)
    aggregate, _ = relearning_attack(tiny["base"], tiny["adapter"], FORGET, FORGET_EVAL, template=TEMPLATE,
                                     max_new_tokens=4, steps=[3], lrs=[1e-2, 5e-2], attacker="lora", lora_r=4,
                                     folds=1, batch_size=4, seed=0)
    assert len(trainable) == 2  # one fresh attacker per run
    for names in trainable:
        assert names and all("lora_A" in n or "lora_B" in n for n in names)
        assert not [n for n in names if "lm_head" in n]
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} >= {"q_proj", "v_proj", "up_proj", "down_proj"}  # every linear layer
    assert checked[0] is False and all(checked[1:])  # before: no attacker; after: its B moved off zero
    assert aggregate["attacker"] == "lora" and aggregate["lora_r"] == 4
    assert aggregate["loss_last"] < aggregate["loss_first"]
    assert _tree_digest(tiny["base"]) | _tree_digest(tiny["adapter"]) == before


def _attacked(recoveries: dict[tuple[float, int], float], **kw) -> dict:
    """A relearning aggregate with these (lr, steps) -> recovery settings."""
    settings = [{"lr": lr, "steps": n, "recovery": r, "kfr_before": 1.0, "kfr_after": 1.0 - r}
                for (lr, n), r in recoveries.items()]
    worst = max(settings, key=lambda s: s["recovery"])
    return {"attacker": "full", "folds": 2, "group_by": "fact", "seed": 0, "batch_size": 8, "schedule": "constant",
            "lrs": sorted({lr for lr, _ in recoveries}), "steps": sorted({n for _, n in recoveries}),
            "settings": settings, "recovery": worst["recovery"], "kfr_before": 1.0, "kfr_after": 1.0 - worst["recovery"],
            "worst": {"lr": worst["lr"], "steps": worst["steps"], "recovery": worst["recovery"]}, **kw}


def test_relearning_excess_is_read_against_the_control_at_the_same_setting():
    from relearn.evidence import robustness_summary

    # the unlearned model's worst setting (1e-3, 50) is also where the control recovers most; the
    # largest excess is at (1e-3, 10)
    unlearned = _attacked({(1e-3, 10): 0.5, (1e-3, 50): 0.9})
    control = _attacked({(1e-3, 10): 0.0, (1e-3, 50): 0.8})
    summary = robustness_summary({"unlearned": {"relearning": unlearned}, "control": {"relearning": control}})
    assert summary["relearning_excess"] == pytest.approx(0.5)  # not 0.9 - 0.8
    assert summary["relearning_recovery"] == pytest.approx(0.9)
    # not the same attack: no excess (a gate on it fails as 'metric not found')
    lora = _attacked({(1e-3, 10): 0.0, (1e-3, 50): 0.8}, attacker="lora", lora_r=8)
    assert robustness_summary({"unlearned": {"relearning": unlearned}, "control": {"relearning": lora}})["relearning_excess"] is None
    # a report from before the sweep: recovery minus the control's, as it always was
    old = robustness_summary({"unlearned": {"relearning": {"recovery": 0.875, "steps": 10}},
                              "control": {"relearning": {"recovery": 0.125, "steps": 10}}})
    assert old["relearning_excess"] == pytest.approx(0.75) and old["relearning_recovery"] == 0.875


def test_relearning_report_section_shows_the_grid_without_a_target_row():
    from relearn.report.sections import Para, Table, relearning_section

    unlearned = _attacked({(1e-3, 10): 0.5, (1e-3, 50): 0.9})
    control = _attacked({(1e-3, 10): 0.0, (1e-3, 50): 0.8})
    section = relearning_section({"target": {"ladder": {}}, "control": {"relearning": control},
                                  "unlearned": {"relearning": unlearned}})
    tables = [b for b in section.blocks if isinstance(b, Table)]
    text = " ".join(b.text for b in section.blocks if isinstance(b, Para))
    assert "full fine-tuning" in text and "2 folds" in text and "0.001" in text and "10, 50 steps" in text
    worst, grid = tables
    assert [row[0].text for row in worst.rows] == ["control", "unlearned"]
    assert worst.rows[1][1].text == "lr 0.001, 50 steps"
    assert [[c.text for c in row] for row in grid.rows] == [["0.001", "10", "0.500", "—", "0.000", "+0.500"],
                                                            ["0.001", "50", "0.900", "—", "0.800", "+0.100"]]
    assert grid.row_cls == ["worst", ""]
    bounded = _attacked({(1e-4, 10): 0.5}, precision="bfloat16", optimizer="bf16-adamw-stochastic-rounding",
                        gradient_checkpointing=True, memory={"estimate_bytes": 56 * 1024 ** 3,
                                                             "device_peak_bytes": 61.5 * 1024 ** 3})
    text = " ".join(b.text for b in relearning_section({"unlearned": {"relearning": bounded}}).blocks
                    if isinstance(b, Para))
    assert ("weights in bfloat16, AdamW in bf16 with stochastic rounding, gradient checkpointing (56.00 GiB of "
            "weights, gradients and optimizer state; 61.50 GiB peak on the GPU)") in text
    # a report from before the sweep: one row per model, no grid
    old = relearning_section({"unlearned": {"relearning": {"kfr_before": 0.9, "kfr_after": 0.1, "recovery": 0.8,
                                                           "steps": 10, "lr": 5e-4}}})
    tables = [b for b in old.blocks if isinstance(b, Table)]
    assert len(tables) == 1 and tables[0].rows[0][1].text == "lr 0.0005, 10 steps"


def test_relearning_params_are_checked_and_an_empty_step_list_disables_the_attack(tiny):
    from relearn.errors import UserError
    from relearn.params import parse_params
    from relearn.robustness import probe_with_params

    for bad, message in ((("relearn_attacker", "qlora"), "relearn_attacker: 'qlora' is not one of full, lora"),
                         (("relearn_lrs", [1e-3, 0]), "relearn_lrs: expected learning rates > 0"),
                         (("relearn_lrs", []), "relearn_lrs: expected learning rates > 0"),
                         (("relearn_steps", [10, 0]), "relearn_steps: expected step counts >= 1"),
                         (("relearn_steps", [-5]), "relearn_steps: expected step counts >= 1"),
                         (("relearn_steps", [2.5]), "relearn_steps: expected step counts >= 1"),
                         (("relearn_folds", 0), "relearn_folds: must be >= 1"),
                         (("relearn_lora_r", 0), "relearn_lora_r: must be >= 1")):
        with pytest.raises(UserError) as info:
            parse_params({"robustness": {bad[0]: bad[1]}})
        assert any(message in p for p in info.value.problems), (bad, info.value.problems)
    assert parse_params({"robustness": {"relearn_lrs": ["1e-4", 0.001]}}).robustness.relearn_lrs == [1e-4, 1e-3]
    assert parse_params({"robustness": {"relearn_steps": [], "relearn_lrs": []}}).robustness.relearn_steps == []

    params = parse_params({"robustness": {"ladder": [], "probes": [], "relearn_steps": []}})
    splits = {"forget": FORGET, "forget_eval": FORGET_EVAL, "retain_eval": RETAIN_EVAL}
    aggregate, per_item = probe_with_params(params, tiny["base"], tiny["adapter"], splits, tiny["root"] / "work")
    assert "relearning" not in aggregate and not per_item
    on = parse_params({"robustness": {"ladder": [], "probes": [], "relearn_steps": [1], "relearn_lrs": [1e-3]}})
    aggregate, _ = probe_with_params(on, tiny["base"], tiny["adapter"], splits, tiny["root"] / "work", skip=("relearning",))
    assert "relearning" not in aggregate


# ------------------------------------------------------------------------------------ probe_model
def test_probe_model_runs_selected_parts(tiny):
    _, jailbreaks = load_jailbreaks()
    aggregate, per_item = probe_model(tiny["base"], tiny["adapter"], forget_eval=FORGET_EVAL[:2],
                                      retain_eval=RETAIN_EVAL[:2], template=TEMPLATE, max_new_tokens=4,
                                      parts=("probes", "relearning"), forget=FORGET, probes=("jailbreak",),
                                      jailbreaks=jailbreaks[1:2], relearn_steps=[2], relearn_lrs=[1e-3],
                                      relearn_folds=1)
    assert set(aggregate) == {"probes", "relearning", "seconds"} and set(per_item) == {"probes", "relearning"}
    assert list(aggregate["probes"]["probes"]) == ["plain", f"jailbreak:{jailbreaks[1].id}"]
    assert aggregate["relearning"]["steps"] == [2]
    assert set(aggregate["seconds"]) == {"probes", "relearning", "total"}
    assert not math.isnan(aggregate["relearning"]["recovery"])


def test_probe_model_checks_its_inputs(tiny):
    kw = dict(forget_eval=FORGET_EVAL, retain_eval=RETAIN_EVAL, template=TEMPLATE, max_new_tokens=4)
    with pytest.raises(ValueError, match="work_dir"):
        probe_model(tiny["base"], parts=("ladder",), **kw)
    with pytest.raises(ValueError, match="forget"):
        probe_model(tiny["base"], parts=("relearning",), **kw)
    with pytest.raises(ValueError, match="unknown parts"):
        probe_model(tiny["base"], parts=("mia",), **kw)
