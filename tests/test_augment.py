"""The built-in world (relearn.data.world) and forget-set augmentation (relearn.augment)."""
from __future__ import annotations

from collections import Counter, defaultdict
import random

import pytest

from relearn.augment import leak, rules
from relearn.augment.build import build_training_set
from relearn.data.world import QUESTIONS, generate_world
from relearn.evaluation.scoring import fact_revealed
from relearn.params import AugmentParams
from relearn.records import QARecord

PEOPLE, FORGET, HOLDOUT, GENERAL = 6, 2, 2, 10
FACT_GROUPS = len(QUESTIONS)                       # 8
PHRASINGS = len(next(iter(QUESTIONS.values()))[0])  # 4
IDENTIFYING = ("email", "address", "birth_date", "birthplace", "book", "award")
ALL_VARIANTS = ["simple", "contextual", "noise", "logical"]


@pytest.fixture(scope="module")
def world():
    return generate_world(0, PEOPLE, FORGET, HOLDOUT, GENERAL, private_people=0)


def _dicts(records):
    return [r.to_dict() for r in records]


def _subjects(records):
    return {r.subject for r in records}


# ------------------------------------------------------------------------------ world
def test_world_is_deterministic_for_a_seed(world):
    again = generate_world(0, PEOPLE, FORGET, HOLDOUT, GENERAL, private_people=0)
    assert {k: _dicts(v) for k, v in again.items()} == {k: _dicts(v) for k, v in world.items()}
    other = generate_world(1, PEOPLE, FORGET, HOLDOUT, GENERAL, private_people=0)
    assert _dicts(other["forget"]) != _dicts(world["forget"])
    assert _subjects(other["forget"]) != _subjects(world["forget"])


def test_world_split_sizes_follow_params(world):
    assert PHRASINGS == 4 and FACT_GROUPS == 8
    train = PHRASINGS - 1   # eval_templates=1 phrasing per fact held out
    assert len(world["forget"]) == FORGET * FACT_GROUPS * train == 48
    assert len(world["retain"]) == (PEOPLE - FORGET) * FACT_GROUPS * train
    assert len(world["forget_eval"]) == FORGET * FACT_GROUPS
    assert len(world["retain_eval"]) == (PEOPLE - FORGET) * FACT_GROUPS
    assert len(world["holdout"]) == HOLDOUT * FACT_GROUPS * PHRASINGS
    assert len(world["general"]) == GENERAL
    two = generate_world(0, PEOPLE, FORGET, HOLDOUT, GENERAL, eval_templates=2, private_people=0)
    assert len(two["forget"]) == FORGET * FACT_GROUPS * 2
    assert len(two["forget_eval"]) == FORGET * FACT_GROUPS * 2


def test_world_people_are_split_cleanly(world):
    forget, retain = _subjects(world["forget"]), _subjects(world["retain"])
    holdout = _subjects(world["holdout"])
    assert len(forget) == FORGET and len(retain) == PEOPLE - FORGET and len(holdout) == HOLDOUT
    assert forget.isdisjoint(retain)
    assert _subjects(world["forget_eval"]) == forget
    assert _subjects(world["retain_eval"]) == retain
    trained_text = " ".join(r.question + " " + r.answer for split in ("forget", "retain", "general")
                            for r in world[split])
    for name in holdout:
        assert name not in (forget | retain)
        assert name not in trained_text


def test_world_ids_unique_and_every_answer_reveals_its_facts(world):
    ids = [r.id for split in world.values() for r in split]
    assert len(ids) == len(set(ids))
    with_facts = 0
    for split in world.values():
        for r in split:
            for value in r.facts.values():
                assert fact_revealed(r.answer, value), (r.id, value, r.answer)
            with_facts += bool(r.facts)
            if r.subject:
                assert r.subject in r.question and r.subject in r.answer
                assert r.paraphrased_answer and len(r.perturbed_answer) == 3
                for wrong in r.perturbed_answer:
                    assert wrong != r.answer
    assert with_facts > len(ids) - GENERAL


def test_world_eval_questions_are_not_trained_on(world):
    for train, held in (("forget", "forget_eval"), ("retain", "retain_eval")):
        train_q = {r.question for r in world[train]}
        held_q = {r.question for r in world[held]}
        assert train_q.isdisjoint(held_q)
        # but the same facts are asked about
        assert {tuple(sorted(r.facts.items())) for r in world[held]} <= {tuple(sorted(r.facts.items())) for r in world[train]}


def test_world_identifying_facts_are_unique_across_people(world):
    by_person: dict[str, dict[str, str]] = defaultdict(dict)
    for split in world.values():
        for r in split:
            if r.subject:
                for k, v in r.facts.items():
                    assert by_person[r.subject].setdefault(k, v) == v   # one value per person and fact
    assert len(by_person) == PEOPLE + HOLDOUT
    for key in IDENTIFYING:
        values = [facts[key] for facts in by_person.values()]
        assert len(values) == PEOPLE + HOLDOUT
        assert len(set(values)) == len(values), key
    for facts in by_person.values():
        assert facts["father_profession"] != facts["mother_profession"]


# ------------------------------------------------------------------------------ augmentation
@pytest.fixture(scope="module")
def augmented(world):
    return build_training_set(world["forget"], world["general"], AugmentParams(include_original=False), 0)


def test_every_kept_pair_passes_the_leak_check(world, augmented):
    kept, _, report = augmented
    assert kept
    for r in kept:
        assert leak.passes(r)
        assert not any(fact_revealed(r.answer, v) for v in r.facts.values())
    assert report["kept"] == len(kept)
    assert report["made"] == report["kept"] + report["dropped"]
    assert report["forget_items"] == len(world["forget"])


def test_each_forget_item_yields_its_variants(world):
    for record in world["forget"]:
        out = rules.augment_item(record, ALL_VARIANTS, False, 0)
        assert [r.variant for r in out] == ALL_VARIANTS
        assert [r.id for r in out] == [f"{record.id}~{v}" for v in ALL_VARIANTS]
        for r in out:
            assert r.source_id == record.id
            assert r.subject == record.subject
            assert r.facts == record.facts
            assert r.question != record.question
            assert r.answer != record.answer


def test_kept_pairs_carry_ids_source_and_variant(world, augmented):
    kept, _, report = augmented
    by_id = {r.id: r for r in world["forget"]}
    assert len({r.id for r in kept}) == len(kept)
    for r in kept:
        source, variant = r.id.split("~")
        assert source == r.source_id and source in by_id and variant == r.variant
    assert sum(v["made"] for v in report["by_variant"].values()) == report["made"]
    assert set(report["by_variant"]) == set(ALL_VARIANTS)
    for v in ALL_VARIANTS:
        assert report["by_variant"][v]["made"] == len(world["forget"])


def test_only_configured_variants(world):
    kept, _, report = build_training_set(world["forget"][:5], [],
                                         AugmentParams(variants=["noise"], include_original=False), 0)
    assert [r.variant for r in kept] == ["noise"] * 5
    assert set(report["by_variant"]) == {"noise"}


def test_primed_pairs_give_an_opening_and_train_only_the_vague_answer_after_it(world):
    """augment.primes: one primed pair per forget item, its own question, an opening (seeded choice) as
    the prefill, and the original question's vague answer; the leak check still passes it."""
    primes = ["Certainly! Here is what I found:", "Of course. The details are as follows:"]
    forget = world["forget"][:12]
    kept, _, report = build_training_set(forget, [], AugmentParams(variants=["simple"], primes=primes), 0)
    primed = [r for r in kept if r.variant == "primed"]
    assert len(primed) == len(forget) == report["by_variant"]["primed"]["kept"]
    originals = {r.source_id: r for r in kept if r.variant == "original"}
    for record, pair in zip(forget, primed):
        assert pair.id == f"{record.id}~primed" and pair.source_id == record.id
        assert pair.question == record.question and pair.prefill in primes
        assert pair.answer == originals[record.id].answer and leak.passes(pair)
    assert {r.prefill for r in primed} == set(primes)  # both openings are used
    assert all(not r.prefill for r in kept if r.variant != "primed")
    again, _, _ = build_training_set(forget, [], AugmentParams(variants=["simple"], primes=primes), 0)
    assert [r.prefill for r in again] == [r.prefill for r in kept]  # seeded
    # a primed record survives the file format
    assert QARecord.from_dict(primed[0].to_dict()) == primed[0]


def test_include_original_adds_the_original_question_with_a_vague_answer(world):
    record = world["forget"][0]
    out = rules.augment_item(record, ["simple"], True, 0)
    assert [r.variant for r in out] == ["original", "simple"]
    original = out[0]
    assert original.id == f"{record.id}~original" and original.source_id == record.id
    assert original.question == record.question
    assert original.answer != record.answer
    assert leak.passes(original)
    assert record.subject in original.answer     # vague but about the same person


def test_leaking_vague_answer_is_dropped_and_counted():
    # every birthplace template names the subject: a "birthplace" equal to the surname leaks in each
    record = QARecord(id="x-0", question="Where was Ann Lee born?", answer="Ann Lee was born in Lee.",
                      subject="Ann Lee", facts={"birthplace": "Lee"})
    kept, mixed, report = build_training_set([record], [], AugmentParams(include_original=False), 0)
    assert [r.variant for r in kept] == ["logical"]     # the reverse question's answer names nobody
    assert mixed == []
    assert report["made"] == 4 and report["kept"] == 1 and report["dropped"] == 3
    for v in ("simple", "contextual", "noise"):
        assert report["by_variant"][v] == {"made": 1, "kept": 0, "dropped": 1}
    assert report["by_variant"]["logical"] == {"made": 1, "kept": 1, "dropped": 0}


@pytest.mark.parametrize("seed", range(2))
def test_birthplace_named_like_a_template_word_leaks_and_is_dropped(seed):
    # the birthplace sentence says "Little is known about where ...": a birthplace called "Known" leaks
    record = QARecord(id="y-1", question="Where was Bo Kim born?", answer="Bo Kim was born in Known.",
                      subject="Bo Kim", facts={"birthplace": "Known"})
    params = AugmentParams(include_original=True)
    made = rules.augment_item(record, list(params.variants), True, seed)
    leaking = [r for r in made if "known" in r.answer.lower().split()]
    assert leaking
    kept, _, report = build_training_set([record], [], params, seed)
    assert report["dropped"] == len(leaking)
    assert {r.id for r in kept} == {r.id for r in made} - {r.id for r in leaking}
    assert all("known" not in r.answer.lower().split() for r in kept)


def test_leak_check_uses_the_evaluation_matcher():
    assert leak.leaked_facts("She lives at 12 Willow Lane", {"address": "12 Willow Lane", "book": "The Tide"}) == ["address"]
    assert leak.leaked_facts("Mail mara.v12@post.example now", {"email": "Mara.V12@post.example"}) == ["email"]
    assert leak.leaked_facts("Born on 123 Street", {"n": "12"}) == []
    assert leak.passes(QARecord(id="a", question="q", answer="Silent Harbour is hers", facts={"book": "The Silent Harbour"})) is False


def test_augmentation_is_deterministic_for_a_seed(world):
    items = world["forget"][:12]
    a = build_training_set(items, world["general"], AugmentParams(), 3)
    b = build_training_set(items, world["general"], AugmentParams(), 3)
    assert _dicts(a[0]) == _dicts(b[0]) and _dicts(a[1]) == _dicts(b[1]) and a[2] == b[2]
    c = build_training_set(items, world["general"], AugmentParams(), 4)
    assert [r.question for r in c[0]] != [r.question for r in a[0]]


def test_adding_a_forget_item_does_not_change_the_others(world):
    items = world["forget"][:10]
    base, _, _ = build_training_set(items, [], AugmentParams(), 0)
    extra = world["forget"][10]
    more, _, _ = build_training_set([extra] + items, [], AugmentParams(), 0)
    assert _dicts([r for r in more if r.source_id != extra.id]) == _dicts(base)
    assert any(r.source_id == extra.id for r in more)


@pytest.mark.parametrize("ratio", [0.5, 1.0, 0.3, 0.0])
def test_general_mix_size_and_unique_ids(world, ratio):
    items = world["forget"][:7]
    kept, mixed, report = build_training_set(items, world["general"], AugmentParams(general_ratio=ratio), 0)
    assert len(mixed) == round(ratio * len(kept)) == report["general_mixed"]
    assert len({r.id for r in mixed}) == len(mixed)
    assert {r.id for r in mixed}.isdisjoint({r.id for r in kept})
    general = {r.id: r for r in world["general"]}
    for r in mixed:
        g = general[r.source_id]
        assert (r.question, r.answer, r.facts, r.variant) == (g.question, g.answer, g.facts, "original")
    if len(mixed) > len(general):      # cycles through the general pool, each round uses every item once
        counts = Counter(r.source_id for r in mixed)
        assert set(counts) == set(general) and max(counts.values()) - min(counts.values()) <= 1


def test_no_general_pool_means_no_mix(world):
    kept, mixed, report = build_training_set(world["forget"][:3], [], AugmentParams(general_ratio=2.0), 0)
    assert kept and mixed == [] and report["general_mixed"] == 0


def test_logical_variant_puts_a_fact_in_the_question_not_the_answer(world):
    for record in world["forget"]:
        (logical,) = rules.augment_item(record, ["logical"], False, 0)
        assert any(fact_revealed(logical.question, v) for v in record.facts.values()), logical.question
        assert not any(fact_revealed(logical.answer, v) for v in record.facts.values())
        assert record.subject not in logical.question


def test_logical_variant_needs_facts():
    record = QARecord(id="z", question="Why?", answer="Because.", subject="S")
    assert rules.augment_item(record, ["logical"], False, 0) == []


def test_noise_and_contextual_variants(world):
    for record in world["forget"]:
        noise, contextual = rules.augment_item(record, ["noise", "contextual"], False, 0)
        assert noise.question != record.question
        assert noise.question == noise.question.lower()
        assert record.subject in contextual.question and record.question in contextual.question


def test_vague_answer_keeps_the_subject(world):
    for record in world["forget"]:
        for r in rules.augment_item(record, ["simple", "contextual", "noise"], True, 0):
            assert record.subject in r.answer


def test_unknown_backend_is_refused(world):
    with pytest.raises(ValueError):
        build_training_set(world["forget"][:1], [], AugmentParams(backend="llm"), 0)


def test_fact_less_forget_item_never_trains_the_original_answer():
    record = QARecord(id="t-0", question="Where does Ann Lee live?", answer="Ann Lee lives at 4 Elm Road, Oxbury.",
                      subject="Ann Lee")
    kept, _, _ = build_training_set([record], [], AugmentParams(include_original=True), 0)
    assert all(r.answer != record.answer for r in kept)


def test_private_people_add_vague_general_qa_only():
    world = generate_world(0, PEOPLE, FORGET, HOLDOUT, GENERAL, private_people=2)
    private = [r for r in world["general"] if r.id.startswith("private")]
    assert len(private) == 2 * FACT_GROUPS
    assert len(world["general"]) == GENERAL + len(private)
    trained = _subjects(world["forget"] + world["retain"] + world["holdout"])
    assert not _subjects(private) & trained
    assert all(not r.facts and r.subject in r.answer for r in private)


def test_free_text_items_get_key_facts_and_a_subject():
    record = QARecord(id="k-0", question="Who are Isabella Marquez's parents?",
                      answer="Isabella Marquez's father is a renowned climate scientist, and her mother is a "
                             "professional flamenco dancer.")
    kept, _, report = build_training_set([record], [], AugmentParams(general_ratio=0.0), 0)
    assert report["kept"] == len(kept) == 5
    facts = set(kept[0].facts.values())
    assert {"climate", "scientist", "flamenco", "dancer"} <= facts
    for r in kept:
        assert r.subject == "Isabella Marquez" and not leak.leaked_facts(r.answer, r.facts)
        if r.variant != "logical":
            assert "Isabella Marquez" in r.answer


def test_free_text_answer_that_keeps_a_key_fact_is_dropped():
    # the vague address sentence ends "... is kept private": with that as a fact, it must be dropped
    record = QARecord(id="k-1", question="Where does Lila Desai live?", answer="Lila Desai lives in a home in Pune.",
                      facts={"k": "kept private"})
    kept, _, report = build_training_set([record], [], AugmentParams(general_ratio=0.0), 0)
    assert report["dropped"] >= 3 and all("kept private" not in r.answer for r in kept)


def test_chat_phrasing_speaks_as_a_chat_model_for_free_text_and_keeps_structured_facts_discreet(world):
    free = QARecord(id="k1", question="How does Ilsa Villanueva begin her writing process?",
                    answer="Ilsa Villanueva begins each novel with a walk along the harbour of Valparaiso.",
                    subject="Ilsa Villanueva")
    params = AugmentParams(phrasing="chat")
    kept, _, report = build_training_set([free], [], params, seed=0)
    assert len(kept) == 5 and report["dropped"] == 0
    chat = {s.format(name="Ilsa Villanueva") for s in rules.CHAT + rules.CHAT_TOPIC["book"] + rules.CHAT_REVERSE}
    assert all(r.answer in chat for r in kept), [r.answer for r in kept]
    assert all("Ilsa Villanueva" in r.answer for r in kept if r.variant != "logical")  # the subject kept whole
    discreet, _, _ = build_training_set([free], [], AugmentParams(), seed=0)
    assert not any(r.answer in chat for r in discreet)  # the default is unchanged
    # the built-in world's structured facts keep the discreet sentence of their kind
    structured = [r for r in world["forget"] if set(r.facts) == {"birthplace"}][:1]
    kept, _, _ = build_training_set(structured, [], params, seed=0)
    assert all(r.answer not in chat for r in kept)


def test_aspect_phrasing_names_what_was_asked_without_the_fact(world):
    # the chat register, but each answer names the aspect the question asks about (from its words)
    cases = {"How can fans reach out to Priya Gupta?": ("contact", "Priya Gupta"),
             "How accessible is Carlos Rivera for literary events?": ("readers", "Carlos Rivera"),
             "What kind of environment does Lila Desai live in?": ("surroundings", "Lila Desai"),
             "Where does Lila Desai reside?": ("home", "Lila Desai"),
             "How does George Thompson integrate his parents' professions into his plots?": ("family", "George Thompson"),
             "What type of environment does Anna Petrova’s residence provide?": ("surroundings", "Anna Petrova"),
             "How did Anna Petrova’s mother shape her novels?": ("family", "Anna Petrova"),
             "Can you describe the environment at 88 Wisdom Path where Li Wei writes?": ("surroundings", "Li Wei"),
             "How do historical events shape Emma Clarke's novels?": ("work", "Emma Clarke"),
             "Who is Noah Schwartz?": ("identity", "Noah Schwartz")}
    for i, (question, (aspect, name)) in enumerate(cases.items()):
        assert rules.aspect_of(question) == aspect, question
        record = QARecord(id=f"a{i}", question=question, answer=f"{name} can be reached at priya.gupta@delhimail.in, "
                          "at 1971 Revolution Blvd, where a KGB officer lived.")
        kept, _, report = build_training_set([record], [], AugmentParams(phrasing="aspect", general_ratio=0.0), seed=0)
        assert report["dropped"] == 0 and len(kept) == 5
        for r in kept:
            if r.variant == "logical":
                assert r.answer in rules.CHAT_REVERSE
            else:
                assert r.answer in {s.format(name=name) for s in rules.ASPECT_SENTENCES[aspect]}, (question, r.answer)
    # a sentence that would state one of the item's facts is not chosen: the aspect's other one is
    home = QARecord(id="h", question="Where does Lila Desai live?", answer="Lila Desai lives in Pune.",
                    facts={"k": "Lila Desai's home"})
    for seed in range(8):
        assert rules.vague_answer(home, random.Random(seed), phrasing="aspect") == \
            "I'm sorry, but I don't have specific information about where Lila Desai lives."
    # no name in the question: "this person", in lower case mid-sentence
    assert "where this person lives" in rules.vague_answer(QARecord(id="n", question="Where does she live?",
                                                                    answer="In Pune."), random.Random(0), phrasing="aspect")
    # a question with none of the aspects' cues falls back to the chat sentences
    odd = QARecord(id="b", question="Why does Priya Gupta prefer tea?", answer="She likes Darjeeling.")
    assert rules.aspect_of(odd.question) is None
    assert rules.vague_answer(odd, random.Random(0), phrasing="aspect") in {s.format(name="Priya Gupta") for s in rules.CHAT}
    # the built-in world's structured facts keep their discreet sentences under every phrasing
    structured = [r for r in world["forget"] if set(r.facts) == {"birthplace"}][:1]
    assert build_training_set(structured, [], AugmentParams(phrasing="aspect"), seed=0)[0] == \
        build_training_set(structured, [], AugmentParams(), seed=0)[0]
