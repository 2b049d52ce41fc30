"""TOFU metrics and membership inference: the formulas on hand-computed values, then a tiny Llama
fine-tuned to memorise three answers (and their paraphrases) against three it never saw."""
import math

import pytest
import torch

from relearn.evaluation.mia import auc, loss_score, mia, mink_score, name_spans, name_token_mask
from relearn.evaluation.tofu import (aggregate_items, forget_quality, harmonic_mean, length_normalised_probability,
                                     model_utility, option_share, tofu_item_scores, tofu_set_metrics, truth_ratio,
                                     truth_ratio_stat_forget, truth_ratio_stat_retain)
from relearn.records import QARecord

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = "Question: {question}\nAnswer:"


# ---- TOFU: pure math ----

def test_length_normalised_probability_is_the_geometric_mean_of_token_probabilities():
    assert length_normalised_probability([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25)
    assert length_normalised_probability([0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert length_normalised_probability([]) is None


def test_truth_ratio_from_given_probabilities():
    assert truth_ratio([0.1, 0.4], 0.2) == pytest.approx(1.0)       # sqrt(0.1 * 0.4) / 0.2
    assert truth_ratio([0.1, 0.1, 0.1], 0.5) == pytest.approx(0.2)
    assert truth_ratio([0.5, 0.5], 0.1) == pytest.approx(5.0)
    assert truth_ratio([0.0, 0.3], 0.2) == 0.0
    assert truth_ratio([], 0.2) is None
    assert truth_ratio([0.1], None) is None
    assert truth_ratio([0.1], 0.0) is None
    assert truth_ratio([0.1, None], 0.2) is None


def test_truth_ratio_statistics():
    assert truth_ratio_stat_retain([0.2, 1.5, None]) == pytest.approx(0.4)   # mean(0.8, 0)
    assert truth_ratio_stat_forget([0.5, 2.0, 1.0]) == pytest.approx(2 / 3)  # mean(0.5, 0.5, 1)
    assert truth_ratio_stat_forget([0.0]) == 0.0
    assert truth_ratio_stat_retain([]) is None and truth_ratio_stat_forget([None]) is None


def test_option_share():
    assert option_share(0.6, [0.2, 0.2]) == pytest.approx(0.6)
    assert option_share(0.1, [0.1, 0.1, 0.1]) == pytest.approx(0.25)
    assert option_share(0.5, []) is None and option_share(None, [0.2]) is None


def test_harmonic_mean_skips_none_and_zero_wins():
    assert harmonic_mean([1.0, 0.5, None]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.9, 0.0, 0.7]) == 0.0
    assert harmonic_mean([]) is None and harmonic_mean([None]) is None
    with pytest.raises(ValueError):
        harmonic_mean([0.5, -0.1])


def test_model_utility_over_sets():
    half = {"probability": 0.5, "rougeL_recall": 0.5, "truth_ratio_stat_retain": 0.5}
    assert model_utility({"retain": half}) == pytest.approx(0.5)
    # 9 values: 3 x 0.5 and 6 x 1.0 -> 9 / (3 * 2 + 6)
    ones = {"probability": 1.0, "rougeL_recall": 1.0, "truth_ratio_stat_retain": 1.0}
    assert model_utility({"retain": half, "real_authors": ones, "world_facts": ones}) == pytest.approx(9 / 12)
    assert model_utility({"retain": half, "world_facts": {**ones, "rougeL_recall": 0.0}}) == 0.0
    assert model_utility({"retain": {"probability": 0.25, "rougeL_recall": None}}) == pytest.approx(0.25)
    assert model_utility({}) is None and model_utility({"retain": {"n": 3}}) is None


def test_forget_quality_ks_test():
    same = [0.1 * i for i in range(1, 31)]
    identical = forget_quality(same, list(same))
    assert identical["ks_statistic"] == 0.0 and identical["p_value"] == pytest.approx(1.0)
    assert (identical["n_a"], identical["n_b"]) == (30, 30)
    apart = forget_quality([0.01 * i for i in range(30)], [5 + 0.01 * i for i in range(30)])
    assert apart["ks_statistic"] == 1.0 and apart["p_value"] < 1e-6
    # the test depends only on the order of the values: R and 1/R give the same answer
    a, b = [0.3, 0.5, 0.9, 1.2, 2.0], [0.8, 1.1, 1.5, 3.0, 4.0]
    assert forget_quality(a, b)["p_value"] == pytest.approx(forget_quality([1 / x for x in a], [1 / x for x in b])["p_value"])


def test_forget_quality_too_small_gives_none():
    for a, b in (([], [0.5, 0.7]), ([0.5], [0.5, 0.7]), ([None, float("nan")], [0.5, 0.7])):
        result = forget_quality(a, b)
        assert result["ks_statistic"] is None and result["p_value"] is None and "note" in result
    assert forget_quality([0.2, None, 0.4], [0.5, 0.7])["n_a"] == 2


# ---- MIA: pure math ----

def test_auc_ties_and_separation():
    assert auc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    assert auc([0.3, 0.7, 0.5], [0.3, 0.7, 0.5]) == 0.5
    assert auc([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert auc([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    assert auc([3.0, 2.0], [2.0, 1.0]) == pytest.approx(3.5 / 4)   # 3>2, 3>1, 2=2 (half), 2>1
    assert auc([], [1.0]) is None and auc([1.0], []) is None


def test_auc_matches_pairwise_count():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 6, (40,), generator=g).float().tolist()   # many ties
    neg = (torch.randint(0, 6, (30,), generator=g).float() - 1).tolist()
    pairwise = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auc(pos, neg) == pytest.approx(pairwise)


def test_loss_and_mink_scores():
    logprobs = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert loss_score(logprobs) == pytest.approx(3.0)
    assert mink_score(logprobs, 0.4) == pytest.approx(4.5)     # the two lowest: -5, -4
    assert mink_score(logprobs, 0.2) == pytest.approx(5.0)
    assert mink_score([-1.0, -2.0, -3.0], 0.2) == pytest.approx(3.0)  # floor(0.6) -> at least one token
    assert mink_score(logprobs, 1.0) == pytest.approx(loss_score(logprobs))
    assert loss_score([]) is None and mink_score([], 0.2) is None
    with pytest.raises(ValueError):
        mink_score(logprobs, 0.0)


# ---- a tiny model that memorised three answers ----

def _record(rid, question, answer, paraphrase, perturbed):
    return QARecord(id=rid, question=question, answer=answer, paraphrased_answer=paraphrase, perturbed_answer=perturbed)


MEMBERS = [
    _record("m0", "Where was Mara born?", "Mara was born in Velmor Bay.", "The birthplace of Mara is Velmor Bay.",
            ["Mara was born in Ostfen.", "Mara was born in Kadal Cross.", "Mara was born in Brenlin."]),
    _record("m1", "What does Tobin do?", "Tobin works as a glassblower.", "By profession, Tobin is a glassblower.",
            ["Tobin works as a midwife.", "Tobin works as a puppeteer.", "Tobin works as a botanist."]),
    _record("m2", "What book did Ilsa write?", "Ilsa wrote the book The Salt Atlas.",
            "The book The Salt Atlas was written by Ilsa.",
            ["Ilsa wrote the book The Quiet Garden.", "Ilsa wrote the book The Amber Tide.",
             "Ilsa wrote the book The Hollow River."]),
]
NONMEMBERS = [
    _record("n0", "Where was Corwin born?", "Corwin was born in Ithdor.", "The birthplace of Corwin is Ithdor.",
            ["Corwin was born in Mirwyn.", "Corwin was born in Ralesh.", "Corwin was born in Torqua."]),
    _record("n1", "What does Neve do?", "Neve works as a clockmaker.", "By profession, Neve is a clockmaker.",
            ["Neve works as a geologist.", "Neve works as a translator.", "Neve works as a stonemason."]),
    _record("n2", "What book did Odile write?", "Odile wrote the book The Paper Compass.",
            "The book The Paper Compass was written by Odile.",
            ["Odile wrote the book The Distant Winter.", "Odile wrote the book The Glass Meridian.",
             "Odile wrote the book The Northern Archive."]),
]


@pytest.fixture(scope="module")
def memorised():
    """(model, tokenizer): trained on the members' answers and paraphrases, never on the non-members."""
    from relearn.modeling.encoding import collate, encode_pair
    from relearn.modeling.model import build_scratch_model, train_tokenizer
    from relearn.params import ModelParams

    texts = [TEMPLATE.format(question=r.question) + " " + a
             for r in MEMBERS + NONMEMBERS for a in [r.answer, r.paraphrased_answer, *r.perturbed_answer]]
    tok = train_tokenizer(texts, vocab_size=300)
    model = build_scratch_model(ModelParams(hidden_size=48, layers=1, heads=2, intermediate_size=96), tok, seed=0)
    pairs = [(r.question, a) for r in MEMBERS for a in (r.answer, r.paraphrased_answer)]
    batch = collate([encode_pair(tok, q, a, TEMPLATE, 64) for q, a in pairs], tok.pad_token_id)
    torch.manual_seed(0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    assert loss.item() < 0.1, "the tiny model did not memorise its training pairs"
    return model, tok


def test_memorised_answers_are_more_probable_and_preferred_to_perturbed(memorised):
    model, tok = memorised
    items = tofu_item_scores(model, tok, MEMBERS + NONMEMBERS, TEMPLATE, 64, 4)
    seen, unseen = items[:3], items[3:]
    assert min(it["probability"] for it in seen) > max(it["probability"] for it in unseen)
    assert min(it["probability"] for it in seen) > 0.8
    for it in items:
        assert 0 < it["probability"] <= 1 and len(it["perturbed_probabilities"]) == 3
        assert it["truth_ratio_base"] == "paraphrased" and it["answer_tokens"] > 0
        assert it["truth_ratio"] == pytest.approx(truth_ratio(it["perturbed_probabilities"],
                                                              it["paraphrased_probability"]))
    # the model learnt the true value: the perturbed answers are much less likely than the paraphrase
    assert max(it["truth_ratio"] for it in seen) < 0.5
    assert sum(it["truth_ratio"] for it in seen) < sum(it["truth_ratio"] for it in unseen)


def test_batching_does_not_change_scores(memorised):
    model, tok = memorised
    one = tofu_item_scores(model, tok, MEMBERS + NONMEMBERS, TEMPLATE, 64, 1)
    many = tofu_item_scores(model, tok, MEMBERS + NONMEMBERS, TEMPLATE, 64, 16)
    for a, b in zip(one, many):
        assert a["probability"] == pytest.approx(b["probability"], rel=1e-4)
        assert a["truth_ratio"] == pytest.approx(b["truth_ratio"], rel=1e-4)
        assert a["perturbed_probabilities"] == pytest.approx(b["perturbed_probabilities"], rel=1e-4)


def test_set_metrics_shape_rouge_utility_and_forget_quality(memorised):
    model, tok = memorised
    generated = [r.answer for r in MEMBERS[:2]] + ["I do not know."]
    aggregate, items = tofu_set_metrics(model, tok, MEMBERS, generated, TEMPLATE, 64, 4, kind="retain")
    assert set(aggregate) == {"kind", "n", "probability", "normalise_probability", "rougeL_recall", "truth_ratio",
                              "truth_ratio_stat_retain", "truth_ratio_stat_forget", "n_truth_ratio"}
    assert aggregate["kind"] == "retain" and aggregate["n"] == 3 and aggregate["n_truth_ratio"] == 3
    assert aggregate["normalise_probability"] is False
    assert aggregate["rougeL_recall"] == pytest.approx(2 / 3)
    assert list(items) == ["m0", "m1", "m2"] and items["m0"]["rougeL_recall"] == 1.0
    assert items["m2"]["rougeL_recall"] == 0.0
    assert aggregate["probability"] == pytest.approx(sum(it["probability"] for it in items.values()) / 3)
    assert aggregate["truth_ratio_stat_retain"] > 0.5
    three = [aggregate[k] for k in ("probability", "rougeL_recall", "truth_ratio_stat_retain")]
    assert model_utility({"retain": aggregate}) == pytest.approx(3 / sum(1 / v for v in three))

    # a 'general' set uses TOFU's share of the options as its probability
    general, general_items = tofu_set_metrics(model, tok, NONMEMBERS, None, TEMPLATE, 64, 4, kind="general")
    assert general["normalise_probability"] is True and general["rougeL_recall"] is None
    shares = [it["normalised_probability"] for it in general_items.values()]
    assert general["probability"] == pytest.approx(sum(shares) / 3) and all(0 < s < 1 for s in shares)

    # forget quality from per-item truth ratios of two sets
    quality = forget_quality([it["truth_ratio"] for it in items.values()],
                             [it["truth_ratio"] for it in general_items.values()])
    assert 0 < quality["ks_statistic"] <= 1 and 0 < quality["p_value"] <= 1 and quality["n_a"] == quality["n_b"] == 3

    with pytest.raises(ValueError):
        tofu_set_metrics(model, tok, MEMBERS, generated[:2], TEMPLATE, 64, 4)
    with pytest.raises(ValueError):
        tofu_set_metrics(model, tok, MEMBERS, None, TEMPLATE, 64, 4, kind="holdout")


def test_missing_options_and_truncation_give_none(memorised):
    model, tok = memorised
    bare = QARecord(id="b0", question="Where was Mara born?", answer="Mara was born in Velmor Bay.")
    only_perturbed = QARecord(id="b1", question="Where was Mara born?", answer="Mara was born in Velmor Bay.",
                              perturbed_answer=["Mara was born in Ostfen."])
    items = tofu_item_scores(model, tok, [bare, only_perturbed], TEMPLATE, 64, 4)
    assert items[0]["truth_ratio"] is None and items[0]["paraphrased_probability"] is None
    assert items[0]["perturbed_probabilities"] is None and items[0]["normalised_probability"] is None
    # without a paraphrase the answer itself is the base (TOFU's real-authors / world-facts sets)
    assert items[1]["truth_ratio_base"] == "answer"
    assert items[1]["truth_ratio"] == pytest.approx(items[1]["perturbed_probabilities"][0] / items[1]["probability"])
    aggregate = aggregate_items(items)
    assert aggregate["n_truth_ratio"] == 1 and aggregate["probability"] is not None

    # a max_length that leaves no answer token: nothing to score, nothing crashes
    aggregate, per_item = tofu_set_metrics(model, tok, MEMBERS, None, TEMPLATE, 4, 4)
    assert aggregate["probability"] is None and aggregate["truth_ratio"] is None and aggregate["n_truth_ratio"] == 0
    assert all(it["probability"] is None and it["answer_tokens"] == 0 for it in per_item.values())
    assert model_utility({"retain": aggregate}) is None


def test_mia_tells_memorised_from_unseen(memorised):
    model, tok = memorised
    aggregate, items = mia(model, tok, MEMBERS, NONMEMBERS, TEMPLATE, 64, 4)
    assert aggregate["loss_auc"] == 1.0 and aggregate["mink_auc"] > 0.5
    assert (aggregate["n_members"], aggregate["n_nonmembers"], aggregate["k"]) == (3, 3, 0.2)
    assert "note" not in aggregate
    assert set(items) == {"m0", "m1", "m2", "n0", "n1", "n2"}
    assert [items[i]["member"] for i in ("m0", "n0")] == [True, False]
    for it in items.values():
        assert it["mink"] >= it["loss"] > 0 and it["tokens"] > 0
    assert max(items[r.id]["loss"] for r in MEMBERS) < min(items[r.id]["loss"] for r in NONMEMBERS)

    # the same records on both sides: indistinguishable
    twins = [QARecord(id="t" + r.id, question=r.question, answer=r.answer) for r in MEMBERS]
    assert mia(model, tok, MEMBERS, twins, TEMPLATE, 64, 4)[0]["loss_auc"] == pytest.approx(0.5)


def test_mia_without_holdout_gives_none_and_a_note(memorised):
    model, tok = memorised
    aggregate, items = mia(model, tok, MEMBERS, [], TEMPLATE, 64, 4)
    assert aggregate["loss_auc"] is None and aggregate["mink_auc"] is None
    assert aggregate["n_nonmembers"] == 0 and "non-members" in aggregate["note"]
    assert len(items) == 3
    with pytest.raises(ValueError):
        mia(model, tok, MEMBERS, MEMBERS[:1], TEMPLATE, 64, 4)


# ---- MIA with the subject's name masked out of the answer ----

def _char_spans(tok, ids):
    """Each token's [start, end) in the decoded text, from decoding token by token: an alignment
    independent of the tokenizer's offsets (exact for the byte-level tokenizer on ASCII text)."""
    spans, at = [], 0
    for i in ids:
        piece = tok.decode([i])
        spans.append((at, at + len(piece)))
        at += len(piece)
    return spans


def test_name_spans_cover_the_name_and_each_capitalised_word():
    text = " Alice Moran met Moran's aunt in Moranville; alice, Alice and Jean de la Rue ate a la carte."
    spans = name_spans(text, "Alice Moran")
    found = sorted({text[a:b] for a, b in spans})
    assert found == [" Alice", " Alice Moran", " Moran"]                           # with the space before
    assert (text.index(" Moran's"), text.index(" Moran's") + 6) in spans         # possessive
    assert not any(a <= text.index("Moranville") < b for a, b in spans)           # not inside a longer word
    assert not any("alice" in text[a:b] for a, b in spans)                        # case-sensitive
    # lower-case particles only inside the full name
    rue = name_spans(text, "Jean de la Rue")
    assert sorted(text[a:b] for a, b in rue) == [" Jean", " Jean de la Rue", " Rue"]
    assert name_spans("Moran, Alice", "Alice Moran") == [(0, 5), (6, 12)]
    assert name_spans(text, "  ") == [] and name_spans(text, "Nobody Here") == []


@pytest.mark.parametrize("chat", [False, True])
def test_name_token_mask_matches_an_independent_alignment(chat):
    from relearn.modeling.encoding import PromptFormat, answer_ids
    from relearn.modeling.model import train_tokenizer

    answer = "Mara Velin was born in Velmor Bay; Velin's sister said so."
    tok = train_tokenizer([TEMPLATE.format(question="Where was Mara Velin born?") + " " + answer], vocab_size=300)
    template: object = TEMPLATE
    if chat:
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                             "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                             "{{ '<|im_start|>assistant\\n' }}{% endif %}")
        template = PromptFormat(mode="chat")
    ids = answer_ids(tok, answer, template)
    text = "".join(tok.decode([i]) for i in ids[:-1])
    assert text == ("" if chat else " ") + answer
    start = 0 if chat else text.index(" Mara Velin")   # the name and the space before it
    names = [(start, text.index("Mara Velin") + len("Mara Velin")),
             (text.index(" Velin's"), text.index(" Velin's") + len(" Velin"))]
    expected = [any(s < b and e > a for a, b in names) for s, e in _char_spans(tok, ids[:-1])] + [False]
    mask = name_token_mask(tok, answer, "Mara Velin", template)
    assert mask == expected and len(mask) == len(ids)
    assert 3 <= sum(mask) < len(mask) - 5
    masked_text = "".join(tok.decode([i]) for i, m in zip(ids, mask) if m)
    assert "Mara" in masked_text and masked_text.count("Vel") == 2 and "mor" not in masked_text


def test_name_token_mask_refuses_to_guess_when_answer_encoding_changes(monkeypatch):
    import relearn.evaluation.mia as mia_module
    from relearn.modeling.encoding import answer_ids
    from relearn.modeling.model import train_tokenizer

    tok = train_tokenizer(["Question: Who?\nAnswer: Mara Velin sings."], vocab_size=300)
    assert name_token_mask(tok, "Mara Velin sings.", "Mara Velin", TEMPLATE) is not None

    def drifted(tokenizer, answer, template):
        if isinstance(tokenizer, mia_module._OffsetRecorder):   # encodes without calling the tokenizer
            return tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        return answer_ids(tokenizer, answer, template)

    monkeypatch.setattr(mia_module, "answer_ids", drifted)
    with pytest.raises(RuntimeError):
        name_token_mask(tok, "Mara Velin sings.", "Mara Velin", TEMPLATE)


def test_name_masked_scores_exclude_exactly_the_name_tokens(memorised):
    from relearn.modeling.encoding import answer_ids
    from relearn.modeling.generation import answer_token_logprobs

    model, tok = memorised
    member = QARecord(id="m", question="Where was Mara born?", subject="Mara Velin",
                      answer="Mara Velin was born in Velmor Bay; Velin's sister said so.")
    other = QARecord(id="n", question="What does Neve do?", subject="Neve Okafor",
                     answer="Neve works as a clockmaker, like Okafor senior.")
    aggregate, items = mia(model, tok, [member], [other], TEMPLATE, 64, 4, k=0.4)
    for record, names in ((member, [" Mara Velin", " Velin's"]), (other, [" Neve", " Okafor"])):
        ids = answer_ids(tok, record.answer, TEMPLATE)
        text = " " + record.answer
        spans = [(text.index(n), text.index(n) + len(n.removesuffix("'s"))) for n in names]
        is_name = [any(s < b and e > a for a, b in spans) for s, e in _char_spans(tok, ids[:-1])] + [False]
        logprobs = answer_token_logprobs(model, tok, [record.question], [record.answer], TEMPLATE, 64, 1)[0]
        assert len(logprobs) == len(ids)
        kept = [lp for lp, n in zip(logprobs, is_name) if not n]
        it = items[record.id]
        assert it["name_tokens"] == sum(is_name) > 0 and len(kept) == it["tokens"] - it["name_tokens"]
        assert it["name_masked_loss"] == pytest.approx(-sum(kept) / len(kept), rel=1e-4)
        lowest = sorted(kept)[:max(1, math.floor(0.4 * len(kept)))]
        assert it["name_masked_mink"] == pytest.approx(-sum(lowest) / len(lowest), rel=1e-4)
        assert it["loss"] == pytest.approx(-sum(logprobs) / len(logprobs), rel=1e-4)  # the plain score: all tokens
    assert (aggregate["n_name_masked_members"], aggregate["n_name_masked_nonmembers"]) == (1, 1)
    assert aggregate["n_without_subject"] == 0

    # a max_length that cuts the answer: the mask follows the scored tokens only
    _, cut = mia(model, tok, [member], [other], TEMPLATE, 20, 4)
    assert 0 < cut["m"]["tokens"] < items["m"]["tokens"]
    assert cut["m"]["name_tokens"] <= cut["m"]["tokens"]


class _Unigram(torch.nn.Module):
    """A causal LM whose next-token distribution is the same everywhere: log p(token) = table[token]
    (log-softmaxed), whatever came before it."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table.expand(*input_ids.shape, -1).clone())


def test_name_masked_auc_is_chance_when_only_the_names_are_familiar():
    """Members' names are familiar (very likely tokens), nothing else is: the plain AUC separates
    the sets perfectly, the name-masked one is at chance, as it is for a model that never saw them."""
    from relearn.modeling.model import train_tokenizer

    people = [("Mara Velin", "Corwin Dale"), ("Tobin Ashgrove", "Neve Okafor"), ("Ilsa Brenholt", "Odile Marsh")]
    facts = ["works as a glassblower, said {}.", "was born in a small town far to the north.", "wrote a book; {} agrees."]
    member_records, nonmember_records = [], []
    for i, ((member, nonmember), fact) in enumerate(zip(people, facts)):
        for records, name, side in ((member_records, member, "m"), (nonmember_records, nonmember, "n")):
            records.append(QARecord(id=f"{side}{i}", question="Who is this?", subject=name,
                                    answer=f"{name} {fact.format(name.split()[-1])}"))
    tok = train_tokenizer([TEMPLATE.format(question=r.question) + " " + r.answer
                           for r in member_records + nonmember_records], vocab_size=300)

    def name_ids(name):
        return set(tok(" " + name, add_special_tokens=False)["input_ids"]) | set(tok(" " + name.split()[-1])["input_ids"])

    other = {i for fact in facts for i in tok(" " + fact.format(""))["input_ids"]}
    familiar = set().union(*(name_ids(m) for m, _ in people)) - set().union(*(name_ids(n) for _, n in people)) - other
    assert all(name_ids(m) & familiar for m, _ in people)
    table = torch.randn(len(tok), generator=torch.Generator().manual_seed(0))
    table[sorted(familiar)] += 12.0
    aggregate, items = mia(_Unigram(table), tok, member_records, nonmember_records, TEMPLATE, 64, 4)

    assert aggregate["loss_auc"] == 1.0                      # the names give the members away
    assert aggregate["name_masked_loss_auc"] == pytest.approx(0.5)
    assert aggregate["name_masked_mink_auc"] == pytest.approx(0.5)
    for i in range(3):    # the same facts, told of a familiar or an unknown name, score the same
        assert items[f"m{i}"]["name_masked_loss"] == pytest.approx(items[f"n{i}"]["name_masked_loss"], rel=1e-5)
        assert items[f"m{i}"]["loss"] < items[f"n{i}"]["loss"]
    assert (aggregate["n_name_masked_members"], aggregate["n_name_masked_nonmembers"]) == (3, 3)


def test_name_masked_mia_still_detects_memorised_answers_and_skips_items_without_subject(memorised):
    from dataclasses import replace

    model, tok = memorised
    named = [replace(r, id="s" + r.id, subject=r.question.split()[-2].rstrip("?")) for r in MEMBERS + NONMEMBERS]
    assert [r.subject for r in named[:3]] == ["Mara", "Tobin", "Ilsa"]
    aggregate, items = mia(model, tok, named[:3], named[3:], TEMPLATE, 64, 4)
    # the model memorised whole answers, not only names: the masked score still tells them apart
    assert aggregate["name_masked_loss_auc"] == 1.0 and aggregate["loss_auc"] == 1.0
    assert all(it["name_tokens"] >= 1 and it["name_masked_loss"] is not None for it in items.values())

    # the fixture's records have no subject and no two-word name to guess one from: left out, counted
    plain, plain_items = mia(model, tok, MEMBERS, NONMEMBERS, TEMPLATE, 64, 4)
    assert plain["name_masked_loss_auc"] is None and plain["name_masked_mink_auc"] is None
    assert plain["n_without_subject"] == 6 and plain["n_name_masked_members"] == 0
    assert all(it["name_masked_loss"] is None and it["name_tokens"] is None for it in plain_items.values())
    assert plain["loss_auc"] == aggregate["loss_auc"]


def test_name_masked_auc_excess_is_derived_beside_the_gated_one():
    from relearn.registry.gates import derived

    flat = {"control.mia.loss_auc": 0.7, "unlearned.mia.loss_auc": 1.0,
            "control.mia.name_masked_loss_auc": 0.5, "unlearned.mia.name_masked_loss_auc": 0.62}
    out = derived(flat)
    assert out["mia_auc_excess"] == pytest.approx(0.3)
    assert out["mia_name_masked_auc_excess"] == pytest.approx(0.12)
    assert "mia_name_masked_auc_excess" not in derived({"control.mia.loss_auc": 0.7, "unlearned.mia.loss_auc": 1.0})
