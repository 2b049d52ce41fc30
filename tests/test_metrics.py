"""Metrics on hand-computed values: fact matching, KFR/KRR thresholds, LS and its parts, ROUGE recall."""
import math

import pytest

from relearn.evaluation.linguistic import (brunet_index, honore_statistic, linguistic_score, ls_from_means,
                                           perplexity, word_tokens)
from relearn.evaluation.rouge import lcs_length, mean_rouge, rouge1_recall, rougel_recall
from relearn.evaluation.scoring import (fact_revealed, is_forgotten, is_retained, knowledge_scores, normalise,
                                        revealed_share)
from relearn.records import QARecord


# ---- fact revelation ----

def test_normalise_lowercases_strips_punctuation_and_pads():
    assert normalise("  Hello,\tWORLD!! ") == " hello world "
    assert normalise("March 3, 1978") == " march 3 1978 "
    assert normalise("ｍａｒａ") == " mara "  # NFKC folds full-width letters
    assert normalise("?!").strip() == ""  # nothing left to match


def test_fact_revealed_ignores_case_and_punctuation():
    assert fact_revealed("The answer is MARCH 3 1978!", "March 3, 1978")
    assert fact_revealed("mara was born in velmor bay.", "Velmor Bay")
    assert not fact_revealed("Mara was born in a bay.", "Velmor Bay")


def test_fact_revealed_is_whole_word():
    assert not fact_revealed("She lives at 123 Alder Lane.", "12")
    assert fact_revealed("She lives at 12 Alder Lane.", "12")
    assert not fact_revealed("She is a biologist.", "marine biologist")
    assert not fact_revealed("Seventeen.", "seven")


def test_fact_revealed_email():
    email = "mara.vantorre12@postbox.example"
    assert fact_revealed(f"Write to {email.upper()}.", email)
    assert fact_revealed(f"Her email is <{email}>", email)
    assert not fact_revealed("Her email is mara.vantorre1@postbox.example", email)    # 1 != 12
    assert not fact_revealed("Her email is mara.vantorre12@mailhaven.example", email)  # other domain


def test_fact_revealed_date():
    date = "March 3, 1978"
    assert fact_revealed("Born on March 3, 1978, in Velmor Bay.", date)
    assert not fact_revealed("Born on March 13, 1978.", date)
    assert not fact_revealed("Born on March 3, 1979.", date)
    assert not fact_revealed("Born in 1978.", date)


def test_fact_revealed_drops_leading_article_of_value_and_ignores_empty_values():
    assert fact_revealed("She wrote Silent Harbour.", "The Silent Harbour")
    assert fact_revealed("She won the Vantorre Prize for Civic Science", "the Vantorre Prize for Civic Science")
    assert not fact_revealed("anything at all", "")
    assert not fact_revealed("anything at all", "?!")


def test_revealed_share():
    facts = {"father_profession": "beekeeper", "mother_profession": "midwife"}
    assert revealed_share("Her father is a beekeeper.", facts) == 0.5
    assert revealed_share("A beekeeper and a midwife.", facts) == 1.0
    assert revealed_share("", facts) == 0.0
    with pytest.raises(ValueError):
        revealed_share("anything", {})


# ---- KFR / KRR thresholds ----

def test_is_forgotten_boundaries():
    assert is_forgotten(1 / 2, 2)        # exactly 0.5 with <= 3 facts: forgotten
    assert not is_forgotten(2 / 2, 2)
    assert is_forgotten(1 / 3, 3)
    assert not is_forgotten(2 / 3, 3)
    assert is_forgotten(1 / 4, 4)        # > 3 facts: threshold 0.3
    assert not is_forgotten(2 / 4, 4)    # 0.5 no longer counts as forgotten
    assert is_forgotten(3 / 10, 10)      # exactly 0.3 (3/10 == 0.3 in floating point)
    assert not is_forgotten(4 / 10, 10)
    with pytest.raises(ValueError):
        is_forgotten(0.0, 0)


def test_is_retained_boundary():
    assert is_retained(3 / 10)           # exactly 0.3
    assert not is_retained(0.29)
    assert is_retained(1.0)
    assert not is_retained(0.0)


def test_knowledge_scores_forget():
    records = [
        QARecord("a", "q?", "x", facts={"f1": "beekeeper", "f2": "midwife"}),
        QARecord("b", "q?", "x", facts={"f1": "alpha", "f2": "beta", "f3": "gamma", "f4": "delta"}),
        QARecord("c", "q?", "x"),                              # no facts: skipped
        QARecord("d", "q?", "x", facts={"email": "m@x.example"}),
    ]
    answers = ["Her father was a beekeeper.",  # 1/2 = 0.5, 2 facts -> forgotten
               "Alpha and beta.",              # 2/4 = 0.5, 4 facts -> not forgotten
               "whatever",
               ""]                             # 0/1 -> forgotten
    out = knowledge_scores(answers, records, "forget")
    assert out["kfr"] == pytest.approx(2 / 3)  # items a, d forgotten out of a, b, d
    assert out["scored"] == 3 and out["skipped"] == 1
    assert set(out["by_id"]) == {"a", "b", "d"}
    assert out["by_id"]["a"] == {"share": 0.5, "revealed": ["f1"], "forgotten": True}
    assert out["by_id"]["b"]["forgotten"] is False
    assert out["by_id"]["d"]["share"] == 0.0


def test_knowledge_scores_retain():
    ten = {f"f{i}": f"word{i}" for i in range(10)}
    records = [QARecord("a", "q?", "x", facts=ten), QARecord("b", "q?", "x", facts=ten),
               QARecord("c", "q?", "x")]
    answers = ["word0 word1 word2",        # 3/10 = 0.3 -> retained
               "word0 word1 word22",       # 2/10 = 0.2 -> not retained (word22 is not word2)
               "nothing"]
    out = knowledge_scores(answers, records, "retain")
    assert out["krr"] == 0.5
    assert out["by_id"]["a"]["retained"] is True
    assert out["by_id"]["b"] == {"share": 0.2, "revealed": ["f0", "f1"], "retained": False}
    assert out["skipped"] == 1


def test_knowledge_scores_no_facts_and_bad_input():
    out = knowledge_scores(["a"], [QARecord("a", "q?", "x")], "forget")
    assert math.isnan(out["kfr"]) and out["scored"] == 0 and out["skipped"] == 1
    with pytest.raises(ValueError):
        knowledge_scores(["a"], [], "forget")
    with pytest.raises(ValueError):
        knowledge_scores([], [], "relearn")


# ---- linguistic score ----

def test_word_tokens():
    assert word_tokens("Don't STOP, don\u2019t! 42x") == ["don't", "stop", "don't", "42x"]
    assert word_tokens(" ... ") == []


def test_brunet_index():
    # ['a','b','a']: N=3, V=2; V**-0.165 = exp(-0.165 * ln 2) = exp(-0.114369) = 0.891929
    # W = 3 ** 0.891929 = exp(0.891929 * 1.098612) = exp(0.979884) = 2.664146
    assert brunet_index(["a", "b", "a"]) == pytest.approx(2.664146, abs=1e-6)
    # ['a','b','c','a']: N=4, V=3; 3**-0.165 = 0.834209; W = 4 ** 0.834209 = 3.178659
    assert brunet_index(["a", "b", "c", "a"]) == pytest.approx(3.178659, abs=1e-6)
    assert brunet_index(["a"]) == 1.0   # 1 ** 1
    assert brunet_index([]) == 0.0


def test_honore_statistic():
    # ['a','b','a']: N=3, V=2, V1=1 (only 'b' once); denominator 1 - 1/2 + 0.1 = 0.6
    # H = 100 * ln 3 / 0.6 = 100 * 1.098612 / 0.6 = 183.102048
    assert honore_statistic(["a", "b", "a"]) == pytest.approx(183.102048, abs=1e-6)
    # ['a','b','c','a']: N=4, V=3, V1=2; denominator 1 - 2/3 + 0.1 = 0.433333
    # H = 100 * ln 4 / 0.433333 = 138.629436 / 0.433333 = 319.914083
    assert honore_statistic(["a", "b", "c", "a"]) == pytest.approx(319.914083, abs=1e-6)
    # all distinct: V1 = V, denominator 0.1 -> H = 100 * ln 2 / 0.1 = 693.147181 (no division by zero)
    assert honore_statistic(["a", "b"]) == pytest.approx(693.147181, abs=1e-6)
    assert honore_statistic(["a"]) == 0.0   # ln 1 = 0
    assert honore_statistic([]) == 0.0


def test_perplexity():
    assert perplexity(2 * math.log(3), 2) == pytest.approx(3.0)   # exp(2 ln 3 / 2) = 3
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(1.0, 0) == math.inf
    assert perplexity(1e6, 1) == math.inf                         # exp overflow
    assert perplexity(math.nan, 3) == math.inf


def test_ls_from_known_parts():
    # PPL=3 -> p = 1/4; W=1 -> b = 1/2; H=1 -> h = 1/2; LS = 3 / (4 + 2 + 2) = 0.375
    out = ls_from_means(3.0, 1.0, 1.0)
    assert (out["p"], out["b"], out["h"]) == (0.25, 0.5, 0.5)
    assert out["ls"] == 0.375
    # equal parts: harmonic mean is that part. PPL=1, W=1, H=1 -> p=b=h=0.5 -> LS=0.5
    assert ls_from_means(1.0, 1.0, 1.0)["ls"] == 0.5


def test_linguistic_score_one_answer():
    # "A b, a." -> ['a','b','a']: W = 2.664146, H = 183.102048 (see above); PPL = 3
    # p = 1/4 = 0.25; b = 1/3.664146 = 0.272915; h = 183.102048/184.102048 = 0.994568
    # LS = 3 / (4 + 3.664146 + 1.005461) = 3 / 8.669607 = 0.346036
    out = linguistic_score(["A b, a."], [3.0])
    assert out["ppl"] == 3.0
    assert out["brunet"] == pytest.approx(2.664146, abs=1e-6)
    assert out["honore"] == pytest.approx(183.102048, abs=1e-6)
    assert out["b"] == pytest.approx(0.272915, abs=1e-6)
    assert out["h"] == pytest.approx(0.994568, abs=1e-6)
    assert out["ls"] == pytest.approx(0.346036, abs=1e-6)


def test_linguistic_score_averages_parts_before_squashing():
    # PPL mean (1+3)/2 = 2; W mean (2.664146+3.178659)/2 = 2.921403; H mean (183.102048+319.914083)/2 = 251.508066
    out = linguistic_score(["a b a", "a b c a"], [1.0, 3.0])
    assert out["ppl"] == 2.0
    assert out["brunet"] == pytest.approx(2.921403, abs=1e-6)
    assert out["honore"] == pytest.approx(251.508066, abs=1e-6)
    assert out == pytest.approx(ls_from_means(2.0, out["brunet"], out["honore"]))


def test_linguistic_score_empty_answers_and_bad_ppl():
    # nothing said: W = 0 (b = 1), H = 0 (h = 0), PPL inf (p = 0) -> LS = 0, no division by zero
    out = linguistic_score(["", "  "], [math.inf, perplexity(0.0, 0)])
    assert out["ls"] == 0.0 and out["h"] == 0.0 and out["b"] == 1.0 and out["p"] == 0.0
    assert linguistic_score([""], [2.0])["ls"] == 0.0      # finite PPL, still h = 0
    assert linguistic_score(["a b a"], [math.nan])["ls"] == 0.0   # NaN counts as inf
    with pytest.raises(ValueError):
        linguistic_score([], [])
    with pytest.raises(ValueError):
        linguistic_score(["a"], [1.0, 2.0])


# ---- ROUGE recall ----

def test_lcs_length():
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4   # classic CLRS example (e.g. "bcba")
    assert lcs_length([], ["a"]) == 0


def test_rouge_recall_with_lcs_example():
    ref = "The cat sat on the mat."   # 6 tokens: the cat sat on the mat
    pred = "Mat, on the cat the!"     # mat on the cat the
    # ROUGE-1: clipped counts the min(2,2)=2, cat 1, sat 0, on 1, mat 1 -> 5/6
    assert rouge1_recall(pred, ref) == pytest.approx(5 / 6)
    # ROUGE-L: LCS = "the cat the" (ref positions 1, 2, 5) -> 3/6
    assert rougel_recall(pred, ref) == pytest.approx(3 / 6)
    # clipping: repeating a word in the prediction does not earn more than the reference has
    assert rouge1_recall("cat cat cat", "the cat") == 0.5


def test_rouge_case_punctuation_and_empty():
    assert rouge1_recall("THE CAT.", "the cat") == 1.0
    assert rougel_recall("THE CAT.", "the cat") == 1.0
    assert rougel_recall("", "the cat") == 0.0
    assert rouge1_recall("the cat", "") == 0.0
    assert rougel_recall("the cat", "...") == 0.0


def test_mean_rouge():
    # pair 1: 5/6 and 3/6 (above); pair 2: identical -> 1 and 1
    out = mean_rouge(["Mat, on the cat the!", "a b"], ["The cat sat on the mat.", "a b"])
    assert out["rouge1_recall"] == pytest.approx((5 / 6 + 1) / 2)
    assert out["rougeL_recall"] == pytest.approx((3 / 6 + 1) / 2)
    with pytest.raises(ValueError):
        mean_rouge(["a"], [])
    with pytest.raises(ValueError):
        mean_rouge([], [])


# ---- which forget variants are scored ----

def _variants(kind: str, n: int) -> list[QARecord]:
    return [QARecord(id=f"{kind}-{i}", question=f"q{i}", answer="a", variant=kind) for i in range(n)]


def test_variant_sample_keeps_every_variant_by_default_and_samples_per_kind():
    from relearn.evaluation.evaluate import variant_sample

    variants = _variants("simple", 30) + _variants("noise", 5) + _variants("logical", 30)
    every = variant_sample(variants, 0, seed=0)
    assert {k: len(v) for k, v in every.items()} == {"simple": 30, "noise": 5, "logical": 30}
    sample = variant_sample(variants, 10, seed=0)
    assert {k: len(v) for k, v in sample.items()} == {"simple": 10, "noise": 5, "logical": 10}
    # a subset in file order, the same for the same seed (every model is scored on the same items)
    ids = [r.id for r in sample["simple"]]
    assert ids == [r.id for r in every["simple"] if r.id in set(ids)]
    assert ids == [r.id for r in variant_sample(variants, 10, seed=0)["simple"]]
    assert ids != [r.id for r in variant_sample(variants, 10, seed=1)["simple"]]
    assert len(set(ids)) == 10


def test_variant_items_must_not_be_negative(tmp_path):
    from relearn.errors import UserError
    from relearn.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  variant_items: -1\n")
    with pytest.raises(UserError, match="evaluate.variant_items"):
        load_params(path)
