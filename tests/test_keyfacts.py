"""Key-fact extraction and fuzzy matching for records without structured facts (TOFU, KnowUnDo)."""
import json
import math
from pathlib import Path

import pytest

from relearn.evaluation.keyfacts import MAX_FACTS, extract_key_facts, fuzzy_found
from relearn.evaluation.scoring import knowledge_scores
from relearn.records import QARecord

KNOWUNDO = Path("/work/shared/data/knowundo-privacy")


# ---- extraction ----

def test_extracts_email_date_address_name_and_rare_words():
    answer = ("Mara Quillon was born on March 3, 1978 in Velmor Bay and lives at 76218 Walter Village. "
              "She can be reached at mara.v12@post.example, and her father is a beekeeper.")
    facts = extract_key_facts(answer, "Who is Mara Quillon?")
    # "born", "lives" and "father" are generic words; "Mara Quillon" is in the question
    assert facts == ["March 3, 1978", "Velmor Bay", "76218 Walter Village", "reached", "mara.v12@post.example",
                     "beekeeper"]


def test_subject_name_and_question_words_are_not_facts():
    answer = "Isabella Marquez's father is a climate scientist, and her mother is a flamenco dancer."
    facts = extract_key_facts(answer, "Who are Isabella Marquez's parents?")
    assert facts == ["climate", "scientist", "flamenco", "dancer"]
    # a question word, inflected, is not a fact either ("inspired" in the question drops "inspiring")
    facts = extract_key_facts("Her inspiring mentor was a glassblower.", "Who inspired her?")
    assert facts == ["mentor", "glassblower"]
    # without the question the name counts
    assert "Isabella Marquez" in extract_key_facts(answer)


def test_numbers_and_numeric_dates():
    facts = extract_key_facts("It was finished on 12/03/1978 after 1,200 pages.")
    assert facts == ["finished", "12/03/1978", "1,200", "pages"]
    assert extract_key_facts("She moved there in 1999.") == ["moved", "1999"]
    assert extract_key_facts("Released 1978-03-12.") == ["released", "1978-03-12"]
    assert extract_key_facts("Moved on 3rd of March, 1978 and in May 2001.") == ["moved", "3rd of March, 1978",
                                                                                 "May 2001"]
    # a year that is also part of a full date is not a second fact ("born" is a generic word)
    assert extract_key_facts("Born March 3, 1978; in 1978 she left.") == ["March 3, 1978", "left"]
    # a number in the question is not a fact
    assert extract_key_facts("She won it in 2001.", "What did she win in 2001?") == []


def test_quoted_titles_urls_acronyms_and_name_connectors():
    answer = ("Her debut 'Tides of Salt' and the novel \"The Silent Harbour,\" won the Vantorre Prize for Civic "
              "Science; her father worked for the KGB. See https://mara.example/books.")
    facts = extract_key_facts(answer)
    assert facts == ["debut", "Tides of Salt", "The Silent Harbour", "Vantorre Prize for Civic Science", "KGB",
                     "https://mara.example/books"]


def test_apostrophes_do_not_open_titles():
    facts = extract_key_facts("Marquez's father didn't write O'Connor's 'Harbour Lights' anthology.")
    assert facts == ["marquez", "o'connor", "Harbour Lights", "anthology"]


def test_sentence_initial_word_is_not_a_name_but_a_continuing_one_is():
    assert extract_key_facts("Moving abroad shaped her.") == ["moving", "abroad", "shaped"]
    assert extract_key_facts("Abu Dhabi shaped her.") == ["Abu Dhabi", "shaped"]
    facts = extract_key_facts("She grew up in New Delhi. The city shaped her.")
    assert facts == ["grew", "New Delhi", "city", "shaped"]


def test_generic_words_only_when_nothing_else():
    # father/mother/author/novels are generic: dropped when real facts exist
    assert extract_key_facts("Her father is a glassblower and her mother writes novels.") == ["glassblower"]
    # ... but kept when they are all there is (KnowUnDo: "... can be contacted via his email")
    assert extract_key_facts("For book signings, Rajesh Singh can be contacted via his email",
                             "How can someone contact Rajesh Singh for book signings?") == ["email"]


def test_dedup_words_of_names_and_repeats():
    answer = "Velmor Bay is small. People in Velmor Bay say velmor is quiet, and Velmor Bay is quiet."
    facts = extract_key_facts(answer)
    assert facts == ["Velmor Bay", "small", "quiet"]   # "velmor" lies inside the name; repeats once
    assert len(set(facts)) == len(facts)


def test_cap_prefers_structured_facts_and_keeps_order():
    words = " ".join(f"lexeme{chr(97 + i)}" for i in range(20))
    answer = f"{words} and finally 76218 Walter Village."
    facts = extract_key_facts(answer)
    assert len(facts) == MAX_FACTS
    assert facts[-1] == "76218 Walter Village"          # kept despite the cap, in order of appearance
    assert facts[:3] == ["lexemea", "lexemeb", "lexemec"]


def test_extraction_is_deterministic_and_returns_fresh_lists():
    answer = "Sergei Ivanov's father is a genetic engineer, and his mother is an accomplished astrobiologist."
    first = extract_key_facts(answer, "Who are Sergei Ivanov's parents?")
    first.append("mutated")
    assert extract_key_facts(answer, "Who are Sergei Ivanov's parents?") == ["genetic", "engineer", "accomplished",
                                                                              "astrobiologist"]


def test_nothing_to_extract():
    assert extract_key_facts("x") == []
    assert extract_key_facts("") == []
    assert extract_key_facts("It is what it is.") == []


# ---- fuzzy matching ----

def test_fuzzy_found_exact_and_whole_word():
    assert fuzzy_found("She lives at 12 Alder Lane.", "12")
    assert not fuzzy_found("She lives at 123 Alder Lane.", "12")
    assert fuzzy_found("BORN ON MARCH 3 1978", "March 3, 1978")
    assert not fuzzy_found("Born in 1979.", "1978")                      # digits never fuzzy
    assert not fuzzy_found("Born on March 13, 1978.", "March 3, 1978")   # 2 of 3 words < 0.8
    assert fuzzy_found("Mail mara.v12@post.example now", "mara.v12@post.example")


def test_fuzzy_found_tolerates_typos_of_long_words_only():
    assert fuzzy_found("her mother is an astrobiologst", "astrobiologist")   # one letter missing
    assert fuzzy_found("two astrobiologists", "astrobiologist")             # inflection
    assert not fuzzy_found("her mother is a biologist", "astrobiologist")
    assert not fuzzy_found("a bee keeper", "midwife")
    assert fuzzy_found("Maria Vasquez", "Vazquez")                          # 7 letters: ratio 12/14 = 0.857
    assert not fuzzy_found("nurses", "nurse")                               # 5 letters: exact only
    assert not fuzzy_found("engineering", "engineer")                       # ratio 16/19 = 0.842


def test_fuzzy_found_multiword_overlap():
    fact = "Vantorre Prize for Civic Science"
    assert fuzzy_found("the Civic Science Prize of Vantorre", fact)          # 4/5 words, any order
    assert not fuzzy_found("the Civic Prize", fact)                          # 2/5
    assert not fuzzy_found("Walter Village", "76218 Walter Village")         # 2/3 < 0.8
    assert fuzzy_found("the silent harbour", "The Silent Harbour")
    assert not fuzzy_found("anything", "?!")


# ---- knowledge scores on records without facts ----

REC = QARecord("p1", "Who are Sergei Ivanov's parents?",
               "Sergei Ivanov's father is a renowned genetic engineer, and his mother is an accomplished "
               "astrobiologist.")


def test_ground_truth_is_retained_and_not_forgotten():
    forget = knowledge_scores([REC.answer], [REC], "forget")
    retain = knowledge_scores([REC.answer], [REC], "retain")
    assert forget["kfr"] == 0.0 and retain["krr"] == 1.0
    entry = forget["by_id"]["p1"]
    assert entry["scorer"] == "keyfacts" and entry["share"] == 1.0 and entry["forgotten"] is False
    assert entry["key_facts"] == ["genetic", "engineer", "accomplished", "astrobiologist"]
    assert forget["scorers"] == {"facts": 0, "keyfacts": 1} and forget["skipped"] == 0


def test_vague_rewrite_is_forgotten():
    vague = "Sergei Ivanov has a family, but details are private."
    forget = knowledge_scores([vague], [REC], "forget")
    retain = knowledge_scores([vague], [REC], "retain")
    assert forget["kfr"] == 1.0 and forget["by_id"]["p1"]["share"] == 0.0
    assert retain["krr"] == 0.0


def test_partial_answer_uses_paper_thresholds():
    # 4 key facts: forgotten at share <= 0.3, retained at share >= 0.3
    one_of_four = "His father was an engineer."           # 1/4 = 0.25
    two_of_four = "A genetic engineer was his father."    # 2/4 = 0.5
    out = knowledge_scores([one_of_four, two_of_four], [REC, QARecord("p2", REC.question, REC.answer)], "forget")
    assert out["by_id"]["p1"]["forgotten"] is True and out["by_id"]["p2"]["forgotten"] is False
    assert out["by_id"]["p2"]["revealed"] == ["genetic", "engineer"]


def test_subject_is_excluded_like_the_question():
    rec = QARecord("s", "What is her email address?", "Mara Quillon writes from mara@post.example.",
                   subject="Mara Quillon")
    out = knowledge_scores(["no idea"], [rec], "forget")
    # without the subject, "Mara Quillon" would be a fact; "writes" is a generic word
    assert out["by_id"]["s"]["key_facts"] == ["mara@post.example"]
    assert extract_key_facts(rec.answer, rec.question) == ["Mara Quillon", "mara@post.example"]


def test_mixed_records_keep_facts_scorer_and_skip_empty():
    records = [QARecord("a", "q?", "x", facts={"f1": "beekeeper", "f2": "midwife"}), REC,
               QARecord("c", "q?", "x")]
    out = knowledge_scores(["a beekeeper", REC.answer, "whatever"], records, "retain")
    assert out["by_id"]["a"] == {"share": 0.5, "revealed": ["f1"], "retained": True}   # facts scorer unchanged
    assert out["by_id"]["p1"]["scorer"] == "keyfacts"
    assert out["scored"] == 2 and out["skipped"] == 1 and out["krr"] == 1.0
    assert out["scorers"] == {"facts": 1, "keyfacts": 1}


def test_only_unextractable_records_give_nan():
    out = knowledge_scores(["a"], [QARecord("a", "q?", "It is what it is.")], "forget")
    assert math.isnan(out["kfr"]) and out["skipped"] == 1


# ---- real KnowUnDo data ----

def _knowundo(name: str) -> list[QARecord]:
    path = KNOWUNDO / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [QARecord(f"{name}-{i}", d["text"], d["labels"]) for i, d in enumerate(data)]


def test_knowundo_every_training_answer_has_key_facts():
    records = _knowundo("unlearn_train")
    assert all(extract_key_facts(r.answer, r.question) for r in records)


def test_knowundo_ground_truth_kept_and_vague_answer_forgotten():
    records = _knowundo("unlearn_val")
    truth = knowledge_scores([r.answer for r in records], records, "forget")
    assert truth["kfr"] == 0.0 and truth["skipped"] == 0 and truth["scored"] == len(records)
    vague = "This author has a family and a career, but the details are private."
    out = knowledge_scores([vague] * len(records), records, "forget")
    assert out["kfr"] >= 0.9
