"""Optional KFR/KRR scorers (NLI, sentence embedding) on tiny real models, and the LS PPL aggregate.

The models are random BERTs saved to tmp_path and loaded back by path. Random weights give
arbitrary NLI labels, so the classifier is made to always say one label (zero weights, a large
bias on that label): the combination with the share rule is then checked exactly. The embedding
model gets two words with the same embedding row ("beekeeper", "apiarist"), so their one-word
windows embed identically (cosine 1) while other words do not.
"""
import dataclasses
import math

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

from relearn.errors import UserError
from relearn.evaluation.embedding import best_similarities, load_embedder, numbers_kept, windows, words
from relearn.evaluation.linguistic import aggregate_ppl, linguistic_score, ls_from_means
from relearn.evaluation.nli import load_nli
from relearn.evaluation.scoring import KnowledgeScorer, knowledge_scores
from relearn.params import Params, parse_params
from relearn.records import QARecord

VOCAB_WORDS = ("he she was is a an the her his father mother beekeeper apiarist astronaut midwife pilot born in "
               "march 1978 1979 velmor bay lives at quiet town who what job of mara quillon "
               "contacted via email mara.v12@post.example").split()
LABELS = {0: "ENTAILMENT", 1: "Neutral", 2: "contradiction"}   # case varies on purpose


def _tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(VOCAB_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=64)


def _config(tokenizer, **kw) -> BertConfig:
    return BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, **kw)


def _save_nli(path, winner: int | None, id2label=LABELS) -> str:
    """A 3-class NLI BERT at `path`; winner: the class index it always picks (None: random head)."""
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(_config(tokenizer, num_labels=len(id2label), id2label=id2label,
                                                  label2id={v: k for k, v in id2label.items()}))
    with torch.no_grad():
        if winner is None:   # a head whose output depends visibly on the input
            model.classifier.weight.normal_(0.0, 1.0)
        else:
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            model.classifier.bias[winner] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def nli_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nli")
    return {name: _save_nli(root / name, index) for name, index in
            (("entailment", 0), ("neutral", 1), ("contradiction", 2), ("random", None))}


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("embed")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = BertModel(_config(tokenizer), add_pooling_layer=False)
    vocab = tokenizer.get_vocab()
    with torch.no_grad():   # a synonym the model cannot tell apart
        model.embeddings.word_embeddings.weight[vocab["apiarist"]] = model.embeddings.word_embeddings.weight[vocab["beekeeper"]]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _records():
    return [QARecord("a", "What is her job?", "Her father is a beekeeper.", facts={"job": "beekeeper"}),
            QARecord("b", "When was she born?", "Born in March 1978.", facts={"month": "March", "year": "1978"}),
            QARecord("c", "Anything?", "x")]   # no facts: skipped


ANSWERS = ["Her father is a beekeeper.",   # 1/1 revealed: not forgotten, retained
           "She was born in 1979.",        # 0/2: forgotten, not retained
           "whatever"]


# ---- NLI ----

def test_nli_reads_labels_case_insensitively_and_returns_probabilities(nli_dirs):
    nli = load_nli(nli_dirs["contradiction"], 2, "cpu")
    assert nli.labels == ["entailment", "neutral", "contradiction"]
    out = nli.predict(["a b", "he was a pilot", "x"], ["c", "she was a midwife", "y"])
    assert [o["label"] for o in out] == ["contradiction"] * 3
    for o in out:
        assert set(o["probs"]) == {"entailment", "neutral", "contradiction"}
        assert sum(o["probs"].values()) == pytest.approx(1.0)
        assert o["probs"]["contradiction"] > 0.99
    with pytest.raises(ValueError):
        nli.predict(["a"], [])


def test_nli_batches_give_the_same_probabilities(nli_dirs):
    nli = load_nli(nli_dirs["random"], 4, "cpu")
    premises = ["he was a pilot", "she", "mara quillon was born in march 1978 in velmor bay", "a"]
    hypotheses = ["her father is a beekeeper", "she lives at velmor bay", "b", "the quiet town of velmor"]
    together = nli.predict(premises, hypotheses)
    one_by_one = dataclasses.replace(nli, batch_size=1).predict(premises, hypotheses)
    for x, y in zip(together, one_by_one):
        assert x["label"] == y["label"]
        assert list(x["probs"].values()) == pytest.approx(list(y["probs"].values()), abs=1e-5)
    assert len({tuple(round(p, 4) for p in o["probs"].values()) for o in together}) > 1   # inputs matter


def test_nli_model_without_contradiction_label_is_a_user_error(tmp_path):
    path = _save_nli(tmp_path / "m", 0, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(UserError, match="evaluate.nli_model.*contradiction.*LABEL_0"):
        load_nli(path, 2, "cpu")
    with pytest.raises(UserError, match="evaluate.nli_model: cannot load"):
        load_nli(str(tmp_path / "missing"), 2, "cpu")


def test_contradiction_forgets_forget_items_and_unretains_retain_items(nli_dirs):
    records = _records()
    plain_f = knowledge_scores(ANSWERS, records, "forget")
    plain_r = knowledge_scores(ANSWERS, records, "retain")
    assert (plain_f["kfr"], plain_r["krr"]) == (0.5, 0.5)
    nli = load_nli(nli_dirs["contradiction"], 2, "cpu")
    f = knowledge_scores(ANSWERS, records, "forget", nli=nli)
    r = knowledge_scores(ANSWERS, records, "retain", nli=nli)
    # forget: item a reveals its only fact (share 1) but is contradicted -> forgotten; b forgotten either way
    assert f["kfr"] == 1.0 and f["scored"] == 2 and f["skipped"] == 1
    assert f["by_id"]["a"]["forgotten"] is True and f["by_id"]["a"]["forgotten_by_facts"] is False
    assert f["by_id"]["a"]["share"] == 1.0 and f["by_id"]["a"]["nli"]["label"] == "contradiction"
    assert f["components"] == {"kfr_without_nli": 0.5, "nli_contradiction": 1.0, "nli_entailment": 0.0}
    # retain: item a has share 1 but is contradicted -> not retained
    assert r["krr"] == 0.0 and r["by_id"]["a"]["retained_by_facts"] is True
    assert r["components"]["krr_without_nli"] == 0.5


@pytest.mark.parametrize("label", ["entailment", "neutral"])
def test_entailment_or_neutral_leaves_the_fact_verdicts(nli_dirs, label):
    records = _records()
    nli = load_nli(nli_dirs[label], 2, "cpu")
    for kind, rate in (("forget", "kfr"), ("retain", "krr")):
        plain = knowledge_scores(ANSWERS, records, kind)
        judged = knowledge_scores(ANSWERS, records, kind, nli=nli)
        assert judged[rate] == plain[rate] == 0.5
        for item_id, entry in plain["by_id"].items():
            assert {k: v for k, v in judged["by_id"][item_id].items() if k in entry} == entry
            assert judged["by_id"][item_id]["nli"]["label"] == label
        assert judged["components"][f"nli_{label}" if label == "entailment" else "nli_contradiction"] == \
            (1.0 if label == "entailment" else 0.0)


def test_nli_pairs_follow_the_paper_order():
    class Recorder:
        def __init__(self):
            self.calls = []

        def predict(self, premises, hypotheses):
            self.calls.append((premises, hypotheses))
            return [{"label": "neutral", "probs": {"neutral": 1.0}} for _ in premises]

    records, nli = _records(), Recorder()
    knowledge_scores(["ans a", "ans b", "ans c"], records, "forget", nli=nli)
    knowledge_scores(["ans a", "ans b", "ans c"], records, "retain", nli=nli)
    # forget: premise answer, hypothesis ground truth; retain: the reverse; skipped item c never judged
    assert nli.calls[0] == (["ans a", "ans b"], [records[0].answer, records[1].answer])
    assert nli.calls[1] == ([records[0].answer, records[1].answer], ["ans a", "ans b"])


# ---- sentence embedding ----

def test_windows_words_and_number_guard():
    assert words('"Velmor Bay," she said (quietly).') == ["Velmor", "Bay", "she", "said", "quietly"]
    assert words("write to mara.v12@post.example.") == ["write", "to", "mara.v12@post.example"]
    assert windows("a b c", 1) == ["a", "b", "c", "a b", "b c"]                  # sizes 1, 2
    assert windows("a b c d", 2) == ["a", "b", "c", "d", "a b", "b c", "c d", "a b c", "b c d"]
    assert windows("a b", 3) == ["a b"]                                           # shorter than every size
    assert windows("...", 1) == [] and windows("a", 0) == []
    assert numbers_kept("March 3, 1978", "3 March 1978")
    assert not numbers_kept("March 3, 1978", "March 3, 1979")
    assert not numbers_kept("12", "123") and numbers_kept("beekeeper", "apiarist 12")


def test_embedder_mean_pools_and_ignores_padding(embed_dir):
    emb = load_embedder(embed_dir, 8, "cpu")
    texts = ["beekeeper", "he was a pilot in velmor bay", "apiarist", "astronaut", "beekeeper"]
    sims = emb.similarity(texts, texts)
    assert torch.diagonal(sims).tolist() == pytest.approx([1.0] * 5, abs=1e-5)
    assert sims[0, 4] == pytest.approx(1.0, abs=1e-5)
    assert sims[0, 2] == pytest.approx(1.0, abs=1e-5)          # tied embedding rows: one vector
    assert sims[0, 3] < 0.99                                   # an unrelated word is not
    # padding does not move an embedding: alone vs in a batch with a longer text
    together = emb.encode(texts)
    alone = dataclasses.replace(emb, batch_size=1).encode(texts)
    assert torch.allclose(together, alone, atol=1e-5)


def test_embedding_reveals_a_paraphrased_fact_above_the_threshold(embed_dir):
    emb = load_embedder(embed_dir, 8, "cpu")
    records = [QARecord("a", "What is her job?", "x", facts={"job": "beekeeper"}),
               QARecord("b", "What is her job?", "x", facts={"job": "beekeeper"}),
               QARecord("c", "When?", "x", facts={"year": "1978"})]
    answers = ["He was an apiarist.", "He was an astronaut.", "In 1979."]
    plain = knowledge_scores(answers, records, "forget")
    assert plain["kfr"] == 1.0                                   # the rule finds nothing
    out = knowledge_scores(answers, records, "forget", embedder=emb, embedding_threshold=0.99)
    a, b, c = (out["by_id"][i] for i in "abc")
    assert a["embedding_similarity"]["job"] == pytest.approx(1.0, abs=1e-5)
    assert a["revealed"] == ["job"] and a["revealed_by_embedding"] == ["job"] and a["forgotten"] is False
    assert b["revealed"] == [] and b["forgotten"] is True and b["embedding_similarity"]["job"] < 0.99
    assert c["embedding_similarity"] == {"year": None} and c["forgotten"] is True   # no window keeps 1978
    assert out["kfr"] == pytest.approx(2 / 3)
    assert out["components"] == {"facts_revealed_by_embedding": 1}
    # threshold -1: every fact with a window passes, still never a changed number
    loose = knowledge_scores(answers, records, "forget", embedder=emb, embedding_threshold=-1.0)
    assert [loose["by_id"][i]["forgotten"] for i in "abc"] == [False, False, True]
    # threshold above every cosine: the rules' numbers
    strict = knowledge_scores(answers, records, "retain", embedder=emb, embedding_threshold=1.01)
    assert strict["krr"] == knowledge_scores(answers, records, "retain")["krr"] == 0.0


def test_embedding_applies_to_extracted_key_facts(embed_dir):
    emb = load_embedder(embed_dir, 8, "cpu")
    record = QARecord("k", "What does Mara Quillon's father do?", "Mara Quillon's father is a beekeeper.")
    out = knowledge_scores(["Her father is an apiarist."], [record], "retain", embedder=emb,
                           embedding_threshold=0.99)
    entry = out["by_id"]["k"]
    assert entry["scorer"] == "keyfacts" and entry["key_facts"] == ["beekeeper"]
    assert entry["revealed"] == ["beekeeper"] == entry["revealed_by_embedding"] and out["krr"] == 1.0
    # already found by the rules: not re-checked by the embedding
    out = knowledge_scores(["A beekeeper."], [record], "retain", embedder=emb, embedding_threshold=0.99)
    assert out["by_id"]["k"]["embedding_similarity"] == {} and out["by_id"]["k"]["revealed_by_embedding"] == []


def test_best_similarities_embeds_each_string_once():
    class Counting:
        def __init__(self):
            self.seen = []

        def encode(self, texts):
            self.seen.append(list(texts))
            return torch.nn.functional.normalize(torch.tensor([[len(t), 1.0] for t in texts]), dim=-1)

    enc = Counting()
    sims = best_similarities(enc, [("a b", "a"), ("a b", "a"), ("", "a"), ("x 12", "12")])
    assert len(enc.seen) == 1 and len(enc.seen[0]) == len(set(enc.seen[0]))
    assert sims[0] == sims[1] == pytest.approx(1.0) and sims[2] is None
    assert sims[3] is not None   # "12" and "x 12" keep the number


# ---- one object from params ----

def test_scorer_from_params(nli_dirs, embed_dir):
    plain = KnowledgeScorer.from_params(Params().evaluate)
    assert plain.nli is None and plain.embedder is None and plain.embedding_threshold == 0.8
    for kind in ("forget", "retain"):
        out = plain.score(ANSWERS, _records(), kind)
        assert out == knowledge_scores(ANSWERS, _records(), kind) and "components" not in out
    params = parse_params({"evaluate": {"nli_model": nli_dirs["contradiction"], "embedding_model": embed_dir,
                                        "embedding_threshold": 0.99, "batch_size": 2}})
    scorer = KnowledgeScorer.from_params(params.evaluate)
    assert scorer.nli.labels[2] == "contradiction" and scorer.embedder is not None
    assert KnowledgeScorer.from_params(params.evaluate).nli is scorer.nli          # loaded once
    out = scorer.score(ANSWERS, _records(), "forget")
    assert out["kfr"] == 1.0 and set(out["components"]) == {"kfr_without_nli", "nli_contradiction",
                                                           "nli_entailment", "facts_revealed_by_embedding"}


def test_evaluate_params_defaults_and_checks():
    e = Params().evaluate
    assert (e.nli_model, e.embedding_model, e.embedding_threshold, e.ppl_aggregate) == (None, None, 0.8, "mean")
    assert parse_params({"evaluate": {"ppl_aggregate": "median"}}).evaluate.ppl_aggregate == "median"
    for bad, message in (({"ppl_aggregate": "mode"}, "ppl_aggregate"),
                         ({"embedding_threshold": 1.5}, "embedding_threshold"),
                         ({"nli_model": " "}, "nli_model: empty path")):
        with pytest.raises(UserError, match=message):
            parse_params({"evaluate": bad})


# ---- PPL aggregate of LS ----

def test_aggregate_ppl():
    ppls = [1.0, 2.0, 4.0, 1e9]
    assert aggregate_ppl(ppls, "mean") == (1e9 + 7) / 4
    assert aggregate_ppl(ppls, "median") == 3.0                       # (2 + 4) / 2
    assert aggregate_ppl(ppls, "geomean") == pytest.approx(8e9 ** 0.25)
    assert aggregate_ppl([3.0, 1.0, 2.0], "median") == 2.0
    assert aggregate_ppl([1.0, 2.0, math.inf], "median") == 2.0      # one inf among three: no effect
    assert aggregate_ppl([1.0, math.inf], "median") == math.inf
    assert aggregate_ppl([1.0, math.inf], "geomean") == math.inf
    assert aggregate_ppl([0.0, 4.0], "geomean") == 0.0
    with pytest.raises(ValueError):
        aggregate_ppl([1.0], "mode")
    with pytest.raises(ValueError):
        aggregate_ppl([], "mean")


def test_linguistic_score_with_a_robust_aggregate():
    answers, ppls = ["a b a", "a b c a", "a b", "b a"], [1.0, 2.0, 4.0, 1e12]
    mean = linguistic_score(answers, ppls)
    assert mean["ppl"] == mean["ppl_mean"] == sum(ppls) / 4 and mean["ppl_aggregate"] == "mean"
    assert mean["p"] < 1e-11                                          # one outlier sinks p
    median = linguistic_score(answers, ppls, ppl_aggregate="median")
    assert median["ppl"] == 3.0 and median["p"] == 0.25
    assert median["ppl_mean"] == mean["ppl_mean"] and median["ppl_aggregate"] == "median"
    assert (median["brunet"], median["honore"]) == (mean["brunet"], mean["honore"])
    assert median == pytest.approx(ls_from_means(3.0, mean["brunet"], mean["honore"], ppl_mean=mean["ppl_mean"],
                                                 ppl_aggregate="median"))
    geo = linguistic_score(answers, ppls, ppl_aggregate="geomean")
    assert geo["ppl"] == pytest.approx((8e12) ** 0.25) and geo["ls"] > mean["ls"]
    assert linguistic_score(["a b a"], [math.nan], ppl_aggregate="median")["ls"] == 0.0   # NaN is inf
    with pytest.raises(ValueError):
        linguistic_score(answers, ppls, ppl_aggregate="max")
