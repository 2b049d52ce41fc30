"""The unlearning report: HTML + markdown, masking of forget-set facts, tolerance of missing data."""
from __future__ import annotations

import html
import random
import re
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from relearn.registry.gates import GateResult
from relearn.report import MASK, Masker, SecretLeakError, render_report, write_report
from relearn.report.masking import patterns_for

CHROMIUM = Path("/usr/bin/chromium")

SECRETS = [
    "Morqua Cross",
    "August 13, 1998",
    "petra.holloway75@postbox.example",
    "518 Foxglove Terrace, Dalstren Cross",
    "the Quigley Prize for Community Service",
    "stonemason",
    "+1 (555) 014-2233",
    "O'Brien & Sons <Ltd>",
    "The Glass Cathedral",
]
# what a careless model or a careless caller might write: other cases and spellings, pieces
PLANTED = [
    "MORQUA CROSS", "morqua\u200b cross", "13 August 1998", "1998-08-13", "13/08/1998",
    "petra.holloway75", "Dalstren", "Foxglove", "Quigley", "Stonemasons", "555.014.2233",
    "15550142233", "O'Brien &amp; Sons &lt;Ltd&gt;", "O&#x27;Brien & Sons <Ltd>",
]
# words that must survive: they are common words or numbers that merely resemble a secret
KEPT = ["Petra Holloway", "Cross", "Terrace", "Community", "Prize", "Glass"]


def _metrics(kfr: float, krr: float, seed: int) -> dict:
    rng = random.Random(seed)
    part = lambda: {"ls": rng.uniform(0.2, 0.4), "ppl": rng.uniform(1, 30), "brunet": rng.uniform(3, 8),  # noqa: E731
                    "honore": rng.uniform(500, 1700), "rouge1_recall": rng.random(),
                    "rougeL_recall": rng.random()}
    return {
        "kfr": kfr, "krr": krr, "ls": rng.uniform(0.2, 0.4),
        "forget": part(), "retain": part(),
        "variants": {k: {"kfr": min(1.0, max(0.0, kfr + rng.uniform(-0.2, 0.2)))}
                     for k in ("original", "simple", "contextual", "noise", "logical")},
        "tofu": {"forget": {"probability": rng.random(), "truth_ratio": rng.random()},
                 "retain": {"probability": rng.random(), "truth_ratio": rng.random()},
                 "forget_quality": {"ks_statistic": rng.random(), "p_value": rng.random() * 1e-4},
                 "model_utility": rng.random()},
        "mia": {"loss_auc": rng.uniform(0.5, 0.9), "mink_auc": rng.uniform(0.5, 0.9)},
    }


def _robustness(kfr: float, seed: int) -> dict:
    rng = random.Random(seed)
    pair = lambda k: {"kfr": max(0.0, k), "krr": rng.uniform(0.7, 1.0)}  # noqa: E731
    return {
        "ladder": {"rungs": {r: pair(kfr - d) for r, d in
                             zip(("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int4"),
                                 (0, 0.01, 0, 0.03, 0.4))}},
        # the shape relearn.robustness.probes.run_probes returns
        "probes": {"probes": {"plain": pair(kfr), "paraphrase": pair(kfr - 0.1), "perturb": pair(kfr - 0.05),
                              "jailbreak:roleplay": pair(kfr - 0.2), "jailbreak:sure_here": pair(kfr - 0.3)},
                   "worst": {"probe": "jailbreak:sure_here", **pair(kfr - 0.3)},
                   "jailbreak_min_kfr": {"probe": "jailbreak:sure_here", "kfr": max(0.0, kfr - 0.3)}},
        "relearning": {"kfr_before": kfr, "kfr_after": kfr / 2, "recovery": kfr / 2, "steps": 20},
    }


def full_data() -> dict:
    rng = random.Random(0)
    gates = [GateResult("kfr", "unlearned.kfr", 0.91, 0.8, None, True, "ok"),
             {"name": "krr", "metric": "unlearned.krr", "value": 0.62, "min": 0.7, "max": None,
              "passed": False, "reason": "0.62 < min 0.7"},
             {"name": "ls_ratio", "metric": "ls_ratio", "value": None, "min": 0.75, "max": None,
              "passed": False, "reason": "metric not found"}]
    examples = [
        {"id": "p000-birthplace-1", "question": "Where was Petra Holloway born? (Morqua Cross?)",
         "answer_target": "Petra Holloway was born in MORQUA CROSS on 13 August 1998.",
         "answer_unlearned": "Petra Holloway was born in a small town near a Red Cross office on a Terrace; she "
                             "lives at 518 Foxglove Terrace, Dalstren Cross, house 518.",
         "reference": "Petra Holloway was born in Morqua Cross."},
        {"id": "p000-email-0", "question": "How can one reach Petra Holloway?",
         "answer_target": "Write to petra.holloway75@postbox.example or call 555.014.2233.",
         "answer_unlearned": "<script>alert(1)</script> Petra Holloway prefers not to share that. "
                             "Dial 15550142233, born 1998-08-13, 13/08/1998.",
         "reference": "Petra Holloway can be reached at petra.holloway75@postbox.example."},
        {"id": "p000-award-3", "question": "Which prize did Petra Holloway receive?",
         "answer_target": "She received the Quigley Prize for Community Service from O'Brien & Sons <Ltd>.",
         "answer_unlearned": "She received a prize for her community work; she is one of the "
                             "Stonemasons, keeps a glass trophy and is a fan of morqua\u200b cross.",
         "reference": "Petra Holloway received the Quigley Prize for Community Service."},
    ]
    return {
        "model_name": "relearn-demo", "version": "7", "method": "relearn",
        "created": "2025-06-01T12:00:00+00:00", "gate_status": "failed", "gates": gates,
        "models": {"target": _metrics(0.02, 0.98, 1), "control": _metrics(0.95, 0.97, 2),
                   "unlearned": _metrics(0.9, 0.62, 3)},
        "robustness": {"target": _robustness(0.02, 4), "control": _robustness(0.95, 5),
                       "unlearned": _robustness(0.9, 6)},
        "seesaw": {"target": [rng.betavariate(5, 1) for _ in range(400)],
                   "unlearned": [rng.betavariate(1, 4) for _ in range(400)]},
        "examples": examples,
        "secrets": list(SECRETS),
        "lineage": {"git_commit": "0123abc", "params_digest": "sha256:feed", "datasets": {
            "forget": {"md5": "9f86d081", "records": 96}, "retain": {"md5": "60303ae2", "records": 288}},
            "note": "forget set about Morqua Cross people"},
    }


# ---------------------------------------------------------------- helpers
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Checks nesting (every non-void element closed in order) and collects text, links, headings."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.links: list[tuple[str, str, str]] = []
        self.headings: list[str] = []
        self.ids: list[str] = []
        self._heading: list[str] | None = None
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "poster", "data") and value is not None:
                self.links.append((tag, name, value))
            if name == "id":
                self.ids.append(value)
            if name == "style" and value and "url(" in value and "url(#" not in value:
                self.links.append((tag, name, value))
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("h1", "h2", "h3"):
            self._heading = []
        self._in_style = tag == "style"

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            if "@import" in data or re.search(r"url\((?!#)", data):
                self.links.append(("style", "css", data[:40]))
            return
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed: {p.stack}"
    return p


LETTER_PIECES = ("dalstren", "foxglove", "quigley", "morqua", "holloway75", "stonemason", "o'brien")
DIGIT_PIECES = ("1998", "2233", "518")


def assert_no_secret(text: str, visible: bool = True) -> None:
    """No secret, planted spelling or rare piece in `text`; digit pieces only when `visible` (a raw
    page holds SVG coordinates, which are not content)."""
    low = text.lower()
    for secret in SECRETS + PLANTED:
        assert secret.lower() not in low, f"secret {secret!r} leaked"
    for piece in LETTER_PIECES:
        assert piece not in low, f"piece {piece!r} leaked"
    if visible:
        for piece in DIGIT_PIECES:
            assert not re.search(rf"(?<![\d.]){piece}(?!\.?\d)", low), f"number {piece!r} leaked"


def visible_text(page: str) -> str:
    return " ".join(parse(page).text)


@pytest.fixture(scope="module")
def rendered() -> tuple[str, str]:
    return render_report(full_data())


# ---------------------------------------------------------------- the page
def test_html_is_well_formed_and_self_contained(rendered):
    page, _ = rendered
    assert page.startswith("<!DOCTYPE html>")
    p = parse(page)
    for tag, attr, value in p.links:
        assert value.startswith("#"), f"external reference in <{tag} {attr}>: {value[:60]}"
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert len(p.ids) == len(set(p.ids)), "duplicate element ids"
    assert page.count("<svg") == 4  # variants, ladder, seesaw, MIA
    for heading in ("Unlearning report: relearn-demo", "Promotion gates",
                    "Metrics: target vs control vs unlearned", "Forgetting per question variant",
                    "Precision ladder (quantization)", "Probes: paraphrase, perturbation, jailbreak",
                    "Relearning attack", "Probability seesaw", "Membership inference",
                    "Forget-set examples", "Lineage"):
        assert heading in p.headings, heading


def test_gate_verdict_is_prominent(rendered):
    page, md = rendered
    assert re.search(r'class="verdict failed" id="verdict">.*?FAILED', page, re.S)
    assert "1 of 3 gates passed" in page
    # the gate table: one verdict per gate, colour classes, the failing reasons
    assert page.count('<td class="pass">passed</td>') == 1
    assert page.count('<td class="fail">failed</td>') == 2
    assert "0.62 &lt; min 0.7" in page and "metric not found" in page
    assert "**gate verdict: FAILED ❌**" in md
    assert "| ls\\_ratio | ls\\_ratio |" in md


def test_metric_table_has_all_models_and_metrics(rendered):
    page, md = rendered
    text = " ".join(parse(page).text)
    for label in ("KFR (forget set)", "KRR (retain set)", "ROUGE-L recall", "forget quality: p-value",
                  "model utility", "LOSS AUC", "Min-K% AUC", "Honoré's H"):
        assert label in text, label
    assert re.search(r"<th[^>]*>control</th>", page)
    assert "0.900" in text and "0.620" in text  # unlearned KFR, KRR
    assert "jailbreak:roleplay" in text and "largest KFR drop" in text and "paraphrase" in text
    assert "onnx-int4" in text and "-0.400" in text  # the int4 drop is shown
    assert "|   | metric | target | control | unlearned | look for |" in md
    assert "| Knowledge | KFR (forget set) | 0.020 | 0.950 | 0.900 |" in md
    assert "| onnx-int4 | 0.000 | 0.720 | 0.550 | 0.922 | 0.500 | 0.700 | -0.400 |" in md


def test_no_secret_anywhere(rendered):
    page, md = rendered
    assert_no_secret(page, visible=False)
    assert_no_secret(md)
    assert_no_secret(html.unescape(md))
    visible = visible_text(page)
    assert_no_secret(visible)
    assert MASK in visible
    for word in KEPT:  # common words and the subject's name are not over-masked
        assert word.lower() in visible.lower(), word
    assert "&lt;script&gt;" in page  # model output is escaped, not executed


def test_secret_in_model_name_gate_reason_and_plot_labels_is_masked():
    data = full_data()
    del data["robustness"], data["seesaw"]  # fewer plots: faster
    data["model_name"] = "Morqua Cross forgetter"
    data["gates"][1]["reason"] = "answer still says August 13, 1998"
    data["models"]["unlearned"]["variants"]["Foxglove"] = {"kfr": 0.5}  # a plot label
    data["lineage"]["O'Brien & Sons <Ltd>"] = "518"
    page, md = render_report(data)
    assert_no_secret(page, visible=False)
    assert_no_secret(visible_text(page))
    assert_no_secret(md)
    assert f"Unlearning report: {MASK} forgetter" in page
    assert page.count("<svg") == 2 and ">[redacted]</text>" in page  # the masked x tick label


def test_missing_sections_say_not_measured():
    page, md = render_report({})
    p = parse(page)
    text = " ".join(p.text)
    assert text.count("not measured") == 11  # one per section
    assert "NOT EVALUATED" in text and "unnamed model" in text
    assert "<svg" not in page
    assert "not measured" in md and "NOT EVALUATED" in md
    # wrong types everywhere are tolerated too
    junk = {"model_name": None, "gates": "x", "models": {"target": None, "unlearned": [1, 2]},
            "robustness": {"unlearned": {"ladder": {"rungs": {"onnx_int4": {"kfr": "high"}}}}},
            "seesaw": {"target": "x", "unlearned": [float("nan"), 2.0, "a"]}, "examples": [None, {}],
            "secrets": ["a", None, 3], "lineage": ["not", "a", "mapping"]}
    page, md = render_report(junk)
    parse(page)
    assert render_report(None)[0].count("not measured") == 11


def test_partial_data_and_status_derived_from_gates():
    data = {"model_name": "m", "gates": [{"name": "kfr", "metric": "unlearned.kfr", "value": 0.9,
                                          "min": 0.8, "passed": True, "reason": "ok"}],
            "models": {"unlearned": {"kfr": 0.9}},
            "seesaw": {"target": {"histogram": [0.1] * 10}, "unlearned": {"histogram": [1, 0, 0, 0]}}}
    page, md = render_report(data)
    p = parse(page)
    assert re.search(r'class="verdict passed" id="verdict">.*?PASSED', page, re.S)
    assert "status derived from the gate results" in page
    assert page.count("<svg") == 1  # the seesaw from precomputed histograms
    text = " ".join(p.text)
    assert "KFR (forget set)" in text and "KRR (retain set)" not in text
    assert "PASSED ✅" in md


def test_recorded_status_disagreeing_with_gates_is_flagged():
    data = {"gate_status": "passed", "gates": [{"name": "krr", "passed": False, "reason": "low"}]}
    page, _ = render_report(data)
    assert "PASSED" in page and "disagrees with the gate results" in page


def _release_data(release: str) -> dict:
    """What the register stage hands the report for a version whose only failure is relearning."""
    from relearn.params import Params
    from relearn.registry import gates as g

    flat = {"unlearned.kfr": 0.9, "unlearned.krr": 0.9, "unlearned.ls": 0.45, "target.ls": 0.5,
            "robustness.int4_kfr_drop": 0.0, "robustness.jailbreak_min_kfr": 0.9, "robustness.relearning_excess": 0.875,
            "control.mia.loss_auc": 0.69, "unlearned.mia.loss_auc": 0.7, "control.tofu.forget.truth_ratio": 2.0,
            "unlearned.tofu.forget.truth_ratio": 1.8, "export.token_agreement": 1.0, "export.deployable_krr_drop": 0.0}
    results = g.evaluate_gates(g.derived(flat), Params().gates(), release)
    return {"model_name": "relearn-demo", "version": "4", "release": release, "gate_status": g.overall_status(results),
            "gates": results}


def test_verdict_says_what_it_covers_under_each_release():
    page, md = render_report(_release_data("api"))
    text = " ".join(parse(page).text)
    assert re.search(r'class="verdict passed" id="verdict">.*?PASSED', page, re.S)
    assert "7 of 7 blocking gates passed; advisory gates that failed (they do not block under release api): relearning" in text
    assert ("Release api: the verdict covers the answers the served model gives, including after int4/int8 "
            "quantization and under jailbreak prompts; it does not cover someone fine-tuning the weights "
            "(relearning), membership inference on the weights; these are shown as advisory") in text
    assert "PASSED ✅" in md and "does not cover someone fine-tuning the weights" in md
    # the gate table: under which releases each gate blocks, and the failure marked advisory
    assert "blocks under" in text and "failed (advisory)" in text
    assert page.count('<td class="fail">failed</td>') == 0 and page.count("<tr class=\"worst\">") == 1
    assert "| 0.875 | value | — | 0.250 | weights | failed (advisory) |" in md
    assert "| 0.900 | value | 0.800 | — | api, weights | **passed** |" in md

    page, md = render_report(_release_data("weights"))
    text = " ".join(parse(page).text)
    assert re.search(r'class="verdict failed" id="verdict">.*?FAILED', page, re.S)
    assert "9 of 10 gates passed. Release weights" in text
    assert ("Release weights: the verdict covers the answers the model gives, including after int4/int8 quantization "
            "and under jailbreak prompts, and what the weights still hold: a relearning attack") in text
    assert "membership inference and the TOFU truth ratio" in text
    assert page.count('<td class="fail">failed</td>') == 1 and "failed (advisory)" not in text
    # results from before releases existed (no blocking flag, no release): every gate blocks, no coverage text
    old = {"gates": [{"name": "relearning", "value": 0.875, "max": 0.25, "passed": False, "reason": "x"}]}
    page, _ = render_report(old)
    assert re.search(r'class="verdict failed"', page) and "0 of 1 gates passed" in page and "Release" not in page


def test_report_data_carries_the_release():
    from relearn.evidence import report_data
    from relearn.params import Params

    params = Params()
    params.register.release = "weights"
    data = report_data(params, {"version": "1", "gate_status": "passed", "gates": []}, {}, None, {}, [], {}, None)
    assert data["release"] == "weights"


# ---------------------------------------------------------------- masking rules
def test_masking_rules():
    m = Masker(["518 Foxglove Terrace, Dalstren Cross", "August 13, 1998", "+1 (555) 014-2233",
                "petra.holloway75@postbox.example", "Al", "x"])
    assert m.mask("lives at 518 foxglove terrace,  Dalstren Cross!") == f"lives at {MASK}!"
    assert m.mask("near Dalstren, by the Foxglove shop") == f"near {MASK}, by the {MASK} shop"
    assert m.mask("Terrace and Cross stay") == "Terrace and Cross stay"
    assert m.mask("house 518, score 0.518, 5180 m, 1518") == f"house {MASK}, score 0.518, 5180 m, 1518"
    assert m.mask("13 August 1998 or 1998-08-13 or 08/13/1998") == f"{MASK} or {MASK} or {MASK}"
    assert m.mask("born in 1998.") == f"born in {MASK}."
    assert m.mask("call 555 014 2233 or 15550142233") == f"call {MASK} or {MASK}"
    assert m.mask("PETRA.HOLLOWAY75 wrote") == f"{MASK} wrote"
    assert m.mask("Al and Alice and x-ray") == f"{MASK} and Alice and x-ray"  # 2 chars: whole word
    assert m.mask("Dal\u00adstren") == MASK  # soft hyphen removed before matching
    assert m.mask("at 518 Foxglove,Dalstren") == f"at {MASK}"  # touching matches: one mask
    assert Masker(["O'Brien"]).mask("Mr O\u2019BRIEN") == f"Mr {MASK}"  # typographic apostrophe
    assert Masker([]).mask("anything 1998") == "anything 1998"
    assert patterns_for("x") == []


def test_many_secrets_stay_fast():
    rng = random.Random(1)
    word = lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)).title()  # noqa: E731
    secrets = [f"{rng.randint(100, 999)} {word()} Street, {word()}" for _ in range(300)]
    start = time.perf_counter()
    m = Masker(secrets)
    text = " ".join(word() for _ in range(5000)) + f" lives at {secrets[123].upper()}."
    masked = m.mask(text)
    assert masked.endswith(f"lives at {MASK}.") and m.leaks(masked) == []
    assert time.perf_counter() - start < 10


def test_final_scan_raises_without_naming_the_secret(tmp_path):
    # a secret that collides with the page's own markup cannot be masked there: refuse to write
    data = {"model_name": "m", "examples": full_data()["examples"], "secrets": SECRETS + ["sans-serif"]}
    with pytest.raises(SecretLeakError) as err:
        write_report(data, tmp_path / "out")
    assert "sans-serif" not in str(err.value) and "secret #9" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_check_text_sees_through_escapes():
    m = Masker(["O'Brien & Sons"])
    with pytest.raises(SecretLeakError):
        m.check_text("by O'Brien \\& Sons")
    with pytest.raises(SecretLeakError):
        m.check_html("<p>O&#x27;Brien &amp; Sons</p>")
    m.check_html("<p>O&#x27;Brian</p>")


def test_write_report_is_deterministic(rendered, tmp_path):
    paths = write_report(full_data(), tmp_path / "v7")
    assert set(paths) == {"html", "markdown"}
    assert sorted(p.name for p in (tmp_path / "v7").iterdir()) == ["report.html", "report.md"]
    page, md = paths["html"].read_text(encoding="utf-8"), paths["markdown"].read_text(encoding="utf-8")
    assert (page, md) == rendered  # same input, same bytes (SVG ids and hashes are fixed)


# ---------------------------------------------------------------- a real browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed")
def test_renders_in_headless_chromium(rendered, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(rendered[0], encoding="utf-8")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        out = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    for heading in ("Promotion gates", "Metrics: target vs control vs unlearned", "Precision ladder",
                    "Probability seesaw", "Membership inference", "Forget-set examples", "Lineage"):
        assert f">{heading}" in dom, heading
    assert "FAILED" in dom and dom.count("<svg") == 4
    assert_no_secret(dom, visible=False)


def test_secret_words_that_are_also_markup_are_masked_in_text_and_allowed_in_code():
    # free-text key facts such as addresses and genres share words with SVG and CSS ('path', 'space')
    data = full_data()
    data["secrets"] = list(data["secrets"]) + ["88 Wisdom Path", "Space Opera"]
    data["examples"] = [{"id": "x", "question": "Where does she live?",
                         "answer_target": "She lives at 88 Wisdom Path and loves Space Opera.",
                         "answer_unlearned": "Her address is on Wisdom Path, I think."}]
    page, md = render_report(data)
    text = " ".join(parse(page).text)
    assert "<path" in page  # the plots are still there
    assert "Wisdom" not in text and "Space Opera" not in text and "88 Wisdom" not in md
