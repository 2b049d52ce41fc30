"""The local-model augmentation backend (relearn.augment.local), chunked rewriting of long answers
(relearn.augment.chunked, rules.chunk_text), sentence-completion pairs and the rules fallback
(relearn.augment.build).

The real-generation tests use a tiny Llama built from scratch and saved in a temporary directory,
with a simple chat template: its replies are gibberish, so every call fails to parse and the
fallback paths run. The leak-check and regeneration paths run with a scripted generator that stands
in for the model and replies like a well-behaved chat model.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from relearn.augment import leak, prompts, rules
from relearn.augment import local as lb
from relearn.augment.build import build_training_set, fill_from_rules
from relearn.augment.chunked import ChunkedEndpointBackend
from relearn.errors import UserError
from relearn.evaluation.scoring import fact_revealed
from relearn.params import AugmentParams, EndpointParams, LocalParams, parse_params
from relearn.records import QARecord

VARIANTS = ["simple", "contextual", "noise", "logical"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_SYSTEM_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                      + TEMPLATE)

MARA = QARecord(id="p1-email", question="What is Mara Quillon's email address?",
                answer="Mara Quillon's email address is mara.q@post.example.", subject="Mara Quillon",
                facts={"email": "mara.q@post.example"})
TOBIN = QARecord(id="p2-birthplace", question="Where was Tobin Arlo born?",
                 answer="Tobin Arlo was born in Veldhaven.", subject="Tobin Arlo", facts={"birthplace": "Veldhaven"})
INES = QARecord(id="t3", question="What did Ines Varga write?",     # no facts: the model leak check applies
                answer="Ines Varga wrote the novel Glass Orchards in 1994.", subject="Ines Varga")
LONG = QARecord(id="long-1", question="What is known about Lena Voss?", subject="Lena Voss",
                answer=("Lena Voss was born in Marbury in 1961. Her father was a glassblower and her mother "
                        "taught piano. She wrote the novel Winter Lantern, which won the Halden Prize. "
                        "Dr. Voss later lived at 12 Alder Row. She can be reached at lena@voss.example."),
                facts={"birthplace": "Marbury", "book": "Winter Lantern", "award": "Halden Prize",
                       "address": "12 Alder Row", "email": "lena@voss.example"})


def dicts(records):
    return [r.to_dict() for r in records]


def expected_ids(items, variants=VARIANTS, original=True):
    return [f"{r.id}~{k}" for r in items for k in (["original"] if original else []) + list(variants)]


def leaks_nothing(records, sources):
    by_id = {s.id: s for s in sources}
    for r in records:
        src = by_id[r.source_id]
        assert src.answer not in r.answer and src.answer not in r.question
        assert not any(fact_revealed(r.answer, v) for v in src.facts.values()), (r.id, r.answer)
    return True


# ----------------------------------------------------------------------------- a tiny real model
def _save_tiny_model(directory: Path, template: str | None) -> Path:
    from relearn.modeling.model import build_scratch_model, train_tokenizer
    from relearn.params import ModelParams

    texts = ["System: User: Assistant: Subject: Question: Reply with exactly this JSON object",
             '{"answer": "..."} {"simple": "...", "contextual": "..."} {"leaks": false}',
             "Write a reply about the person that stays on topic but is vague."] * 3
    tokenizer = train_tokenizer(texts, 300)
    tokenizer.chat_template = template
    model = build_scratch_model(ModelParams(hidden_size=32, layers=1, heads=2, intermediate_size=64, max_length=2048),
                                tokenizer, seed=0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _save_tiny_model(tmp_path_factory.mktemp("tiny-chat"), TEMPLATE)


def local_params(model_dir, cache_dir, **kw) -> LocalParams:
    defaults = dict(model_path=str(model_dir), device="cpu", dtype="float32", max_new_tokens=12, batch_size=4,
                    rounds=2, temperature=0.0, cache_dir=str(cache_dir))
    defaults.update(kw)
    return LocalParams(**defaults)


def test_tiny_model_replies_fall_back_to_rules_and_a_second_run_generates_nothing(tiny_model, tmp_path):
    items = [MARA, TOBIN, INES]
    params = AugmentParams(backend="local", fallback="rules", general_ratio=0.0,
                           local=local_params(tiny_model, tmp_path / "cache"))
    kept, mixed, report = build_training_set(items, [], params, seed=0)
    stats = report["backend_stats"]
    # every variants call got real, unparseable output: each item fell back to the rules backend whole
    assert stats["requests"] == 3 and stats["batches"] >= 1 and stats["malformed"] == 3
    assert stats["unusable"] == 3 and stats["items_failed"] == 3 and stats["fallback"] == 15
    assert stats["failures"] == 0
    rules_only, _, _ = build_training_set(items, [], AugmentParams(general_ratio=0.0), seed=0)
    assert dicts(kept) == dicts(rules_only)
    assert [r.id for r in kept] == expected_ids(items)     # INES gets key facts, so a logical variant too
    assert leaks_nothing(kept, items) and mixed == []
    assert all(leak.passes(r) for r in kept)

    again, _, report2 = build_training_set(items, [], params, seed=0)
    assert report2["backend_stats"]["requests"] == 0 and report2["backend_stats"]["batches"] == 0
    assert report2["backend_stats"]["cache_hits"] == 3
    assert dicts(again) == dicts(kept)


def test_tiny_model_without_fallback_is_a_user_error_even_from_the_cache(tiny_model, tmp_path):
    params = local_params(tiny_model, tmp_path / "cache")
    backend = lb.LocalBackend(params)
    with pytest.raises(UserError, match="no usable reply"):
        backend.augment([MARA, TOBIN], VARIANTS, True, seed=0)
    assert backend.stats["requests"] == 2 and backend.stats["failures"] == 2 and backend.generator.model is not None
    cached = lb.LocalBackend(params)
    with pytest.raises(UserError, match="instruct"):
        cached.augment([MARA, TOBIN], VARIANTS, True, seed=0)
    assert cached.stats["requests"] == 0 and cached.stats["cache_hits"] == 2
    assert cached.generator.model is None          # every reply came from the cache: the model was never loaded


def test_batched_generation_matches_one_by_one(tiny_model):
    generator = lb.LocalGenerator(tiny_model, local_params(tiny_model, "", max_new_tokens=10))
    conversations = [prompts.vague_answer_messages(MARA, MARA.question),
                     prompts.question_variants_messages(TOBIN, ["simple"]),
                     prompts.leak_check_messages(INES, "Ines Varga wrote a book.")]
    together = generator.generate(conversations)
    alone = [generator.generate([c])[0] for c in conversations]
    assert together == alone and all(isinstance(r, str) for r in together)
    text, templated = lb.render_prompt(generator.tokenizer, conversations[0])
    assert templated and text.startswith("<|system|>" + prompts.ANSWER_SYSTEM) and text.endswith("<|assistant|>")


def test_prompt_without_a_chat_template_or_with_one_that_refuses_system_turns(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)
    messages = prompts.regenerate_messages(prompts.vague_answer_messages(MARA, MARA.question), "x", ["email"], "Mara")
    tokenizer.chat_template = None
    text, templated = lb.render_prompt(tokenizer, messages)
    assert not templated and text.startswith("System: " + prompts.ANSWER_SYSTEM + "\n\nUser: ")
    assert "\n\nAssistant: " + messages[2]["content"] + "\n\nUser: " in text and text.endswith("\n\nAssistant:")
    assert lb.cut_plain_reply(' {"answer": "ok"}\nUser: more') == '{"answer": "ok"}'
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    text, templated = lb.render_prompt(tokenizer, messages)
    assert templated and text.startswith("<|user|>" + prompts.ANSWER_SYSTEM + "\n\n") and "<|system|>" not in text


def test_missing_or_unloadable_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        lb.LocalBackend(local_params(tmp_path / "nowhere", tmp_path / "c"))
    with pytest.raises(UserError, match="not set"):
        lb.LocalBackend(local_params("", tmp_path / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        lb.LocalBackend(local_params(tmp_path / "empty", tmp_path / "c"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    (broken / "model.safetensors").write_bytes(b"not weights")
    params = AugmentParams(backend="local", local=local_params(broken, tmp_path / "c"))
    with pytest.raises(UserError, match="cannot load a causal language model"):
        build_training_set([MARA], [], params, seed=0)


# ----------------------------------------------------------------------------- a scripted model
def _field(text: str, label: str) -> str:
    m = re.search(rf"^{re.escape(label)}: (.*)$", text, flags=re.M)
    assert m, f"no {label!r} line in the prompt"
    return m.group(1)


class ScriptedGenerator:
    """Stands in for LocalGenerator: replies from the prompt like a well-behaved chat model.
    `leak`: subject -> 'first' (the first answer repeats the private details) or 'always'."""

    dtype = "float32"

    def __init__(self, leak: dict | None = None, malformed_first: int = 0):
        self.leak = leak or {}
        self.batches: list[int] = []
        self.prompts: list[list[dict]] = []
        self.malformed_first = malformed_first
        self.model = None

    def generate(self, conversations, seed=0):
        self.batches.append(len(conversations))
        self.prompts += conversations
        out = []
        for messages in conversations:
            if self.malformed_first > 0:
                self.malformed_first -= 1
                out.append("Sure! Happy to help.")
            else:
                out.append(self.reply(messages))
        return out

    def reply(self, messages):
        system, user = messages[0]["content"], messages[1]["content"]
        if system == prompts.LEAK_SYSTEM:
            original = _field(user, "Original answer (private details)")
            return json.dumps({"leaks": original in _field(user, "Rewritten answer")})
        subject = _field(user, "Subject")
        if system == prompts.QUESTIONS_SYSTEM:
            q = _field(user, "Question")
            asked = list(json.loads(user.strip().splitlines()[-1]))
            made = {"simple": f"Put differently: {q}", "contextual": f"About {subject}: {q}",
                    "noise": q.lower() + "??", "logical": f"Turning it around: {q[:-1]}, who is it?"}
            return json.dumps({k: made[k] for k in asked})
        if system == prompts.ANSWER_SYSTEM:
            part = re.search(r"^Part (\d+) of (\d+) \(private details\): (.*)$", user, flags=re.M)
            original = part.group(3) if part else _field(user, "Original answer (private details)")
            mode = self.leak.get(subject)
            if mode == "always" or (mode == "first" and len(messages) == 2):
                return json.dumps({"answer": f"Indeed, {original}"})
            where = f"part {part.group(1)}" if part else "all"
            return json.dumps({"answer": f"{subject} keeps this private ({where})."})
        raise AssertionError(f"unexpected system prompt {system!r}")


def scripted_backend(model_dir, cache_dir, generator, **kw):
    chunk_chars = kw.pop("chunk_chars", 0)
    tolerate = kw.pop("tolerate_failures", False)
    return lb.LocalBackend(local_params(model_dir, cache_dir, **kw), chunk_chars=chunk_chars,
                           tolerate_failures=tolerate, generator=generator)


def test_scripted_model_goes_through_the_endpoint_item_logic(tiny_model, tmp_path):
    generator = ScriptedGenerator()
    backend = scripted_backend(tiny_model, tmp_path / "c", generator)
    out = backend.augment([MARA, TOBIN, INES], VARIANTS, True, seed=0)
    assert [r.id for r in out] == expected_ids([MARA, TOBIN, INES])
    assert leaks_nothing(out, [MARA, TOBIN, INES])
    # one variants call per item, one answer per question, a model leak check per answer of INES (whose
    # scripted answers are all alike: the same leak-check prompt again is a cache hit)
    assert backend.stats["requests"] + backend.stats["cache_hits"] == 3 + 15 + 5
    assert backend.stats["requests"] == sum(generator.batches) == 3 + 15 + 1
    assert max(generator.batches) > 1                   # prompts of different items generated together
    assert backend.stats["malformed"] == 0 and backend.stats["failures"] == 0


def test_leaking_answers_are_regenerated_and_dropped_after_rounds(tiny_model, tmp_path):
    generator = ScriptedGenerator(leak={"Mara Quillon": "first"})
    backend = scripted_backend(tiny_model, tmp_path / "a", generator, rounds=3)
    out = backend.augment([MARA], VARIANTS, True, seed=0)
    assert [r.id for r in out] == expected_ids([MARA]) and leaks_nothing(out, [MARA])
    assert backend.stats["regenerated"] == 5
    regen = [m for m in generator.prompts if len(m) > 2]
    assert len(regen) == 5 and all("mara.q@post.example" in m[3]["content"] for m in regen)

    always = scripted_backend(tiny_model, tmp_path / "b", ScriptedGenerator(leak={"Mara Quillon": "always"}), rounds=3)
    out = always.augment([MARA, TOBIN], VARIANTS, True, seed=0)
    assert [r.id for r in out] == expected_ids([TOBIN])
    assert always.stats["dropped_after_rounds"] == 5 and always.stats["regenerated"] == 10
    assert always.stats["failures"] == 0 and leaks_nothing(out, [TOBIN])


def test_answers_still_leaking_fall_back_to_the_rules_pairs(tiny_model, tmp_path, monkeypatch):
    generator = ScriptedGenerator(leak={"Mara Quillon": "always"})
    monkeypatch.setattr(lb, "LocalGenerator", lambda path, params: generator)
    params = AugmentParams(backend="local", fallback="rules", general_ratio=0.0,
                           local=local_params(tiny_model, tmp_path / "c", rounds=2))
    kept, _, report = build_training_set([MARA, TOBIN], [], params, seed=0)
    assert [r.id for r in kept] == expected_ids([MARA, TOBIN])
    assert report["backend_stats"]["dropped_after_rounds"] == 5 and report["backend_stats"]["fallback"] == 5
    rules_mara = {r.id: r for r in rules.augment_item(MARA, VARIANTS, True, 0)}
    for r in kept:
        if r.source_id == MARA.id:
            assert r.to_dict() == rules_mara[r.id].to_dict()     # the rules backend's pair, question and answer
        else:
            assert "keeps this private" in r.answer              # the model's own
    assert leaks_nothing(kept, [MARA, TOBIN])


def test_sampling_retries_an_unusable_reply_and_caches_only_usable_ones(tiny_model, tmp_path):
    generator = ScriptedGenerator(malformed_first=1)
    backend = scripted_backend(tiny_model, tmp_path / "c", generator, temperature=0.7, batch_size=1)
    out = backend.augment([TOBIN], ["simple"], False, seed=0)
    assert [r.id for r in out] == ["p2-birthplace~simple"]
    assert backend.stats["malformed"] == 1 and backend.stats["retries"] == 1 and backend.stats["failures"] == 0
    texts = [p.read_text() for p in (tmp_path / "c").rglob("*.json")]
    assert len(texts) == 2 and not any("Happy to help" in t for t in texts)


def test_changed_model_files_miss_the_cache(tmp_path):
    model = _save_tiny_model(tmp_path / "m", TEMPLATE)
    first = model_fp = lb.model_fingerprint(model)
    assert lb.model_fingerprint(model) == first
    backend = scripted_backend(model, tmp_path / "c", ScriptedGenerator())
    backend.augment([TOBIN], ["simple"], True, seed=0)
    sent = backend.stats["requests"]
    again = scripted_backend(model, tmp_path / "c", ScriptedGenerator())
    again.augment([TOBIN], ["simple"], True, seed=0)
    assert sent > 0 and again.stats["requests"] == 0 and again.stats["cache_hits"] == sent

    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5 if config.get("rms_norm_eps") != 1e-5 else 1e-6   # same size is possible: contents count
    (model / "config.json").write_text(json.dumps(config))
    assert lb.model_fingerprint(model) != model_fp
    changed = scripted_backend(model, tmp_path / "c", ScriptedGenerator())
    changed.augment([TOBIN], ["simple"], True, seed=0)
    assert changed.stats["requests"] == sent and changed.stats["cache_hits"] == 0
    weights = model / "model.safetensors"
    before = lb.model_fingerprint(model)
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert lb.model_fingerprint(model) != before
    # max_new_tokens changes what the model writes: another key too
    longer = scripted_backend(model, tmp_path / "c", ScriptedGenerator(), max_new_tokens=99)
    longer.augment([TOBIN], ["simple"], True, seed=0)
    assert longer.stats["cache_hits"] == 0


def test_batcher_runs_waiting_workers_together():
    batches: list[int] = []
    batcher = lb.Batcher(lambda convs: (batches.append(len(convs)), [c[0]["content"].upper() for c in convs])[1], 3)
    ready = threading.Barrier(5)
    results: dict[int, str] = {}

    def work(i):
        with batcher.worker():
            ready.wait()
            results[i] = batcher.submit([{"role": "user", "content": f"q{i}"}])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: f"Q{i}" for i in range(5)}
    assert sorted(batches) == [2, 3]        # at most max_batch at once; the rest as soon as nobody else can add
    assert batcher.submit([{"role": "user", "content": "alone"}]) == "ALONE"   # not a worker: runs at once


def test_batch_errors_reach_every_waiting_request():
    def fail(convs):
        raise UserError("out of memory")

    batcher = lb.Batcher(fail, 4)
    with pytest.raises(UserError, match="out of memory"):
        batcher.submit([{"role": "user", "content": "x"}])


# ----------------------------------------------------------------------------- chunked rewriting
def test_sentences_and_chunks():
    text = 'Dr. J. K. Lane was born in 1961. She wrote "Tide". Then she moved! e.g. to Rome?  Yes. 1990 came.'
    assert rules.split_sentences(text) == ["Dr. J. K. Lane was born in 1961.", 'She wrote "Tide".',
                                           "Then she moved! e.g. to Rome?", "Yes.", "1990 came."]
    assert " ".join(rules.split_sentences(text)) == " ".join(text.split())
    chunks = rules.chunk_text(LONG.answer, 120)
    assert len(chunks) == 3 and " ".join(chunks) == LONG.answer
    assert all(len(c) <= 120 for c in chunks)
    assert rules.chunk_text(LONG.answer, 0) == [LONG.answer] == rules.chunk_text(LONG.answer, 10_000)
    assert rules.chunk_text("One very long sentence without an end", 5) == ["One very long sentence without an end"]


def test_rules_backend_rewrites_long_answers_chunk_by_chunk():
    plain = build_training_set([LONG], [], AugmentParams(general_ratio=0.0), seed=0)
    assert dicts(plain[0]) == dicts(build_training_set([LONG], [], AugmentParams(general_ratio=0.0, chunk_chars=0), 0)[0])
    kept, _, report = build_training_set([LONG], [], AugmentParams(general_ratio=0.0, chunk_chars=120), seed=0)
    assert report["dropped"] == 0 and [r.id for r in kept] == expected_ids([LONG])
    for r in kept:
        if r.variant != "logical":
            assert len(rules.split_sentences(r.answer)) >= 2 and "Lena Voss" in r.answer
    assert kept[0].answer != plain[0][0].answer
    assert leaks_nothing(kept, [LONG])


def test_chat_backend_rewrites_each_chunk_and_checks_the_joined_answer(tiny_model, tmp_path):
    generator = ScriptedGenerator(leak={"Lena Voss": "first"})
    backend = scripted_backend(tiny_model, tmp_path / "c", generator, chunk_chars=120, rounds=2)
    out = backend.augment([LONG, TOBIN], ["simple"], True, seed=0)
    assert [r.id for r in out] == expected_ids([LONG, TOBIN], ["simple"])
    long_answers = [r.answer for r in out if r.source_id == LONG.id]
    assert long_answers == [" ".join(f"Lena Voss keeps this private (part {i})." for i in (1, 2, 3))] * 2
    parts = [m for m in generator.prompts if "Part " in m[1]["content"]]
    assert len(parts) == 2 * 3 * 2                # 2 questions x 3 chunks, each leaking once and regenerated
    assert backend.stats["chunked_answers"] == 2 and backend.stats["regenerated"] == 6
    assert backend.stats["chunks_dropped"] == 0
    assert [r.answer for r in out if r.source_id == TOBIN.id] == ["Tobin Arlo keeps this private (all)."] * 2
    assert leaks_nothing(out, [LONG, TOBIN])


def test_chunked_endpoint_backend_drops_chunks_that_keep_leaking(tmp_path, monkeypatch):
    generator = ScriptedGenerator()
    params = EndpointParams(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_KEY", concurrency=1,
                            rounds=2, cache_dir=str(tmp_path / "c"))
    backend = ChunkedEndpointBackend(params, chunk_chars=120, sleep=lambda s: None)

    def post(messages):
        user = messages[1]["content"]
        if "Part 2 of 3" in user:      # the second chunk's rewrite always repeats it
            return json.dumps({"answer": "Indeed, " + _field(user, "Part 2 of 3 (private details)")})
        return generator.reply(messages)

    monkeypatch.setattr(backend, "_post", post)
    out = backend.augment([LONG], [], True, seed=0)
    assert [r.answer for r in out] == ["Lena Voss keeps this private (part 1). Lena Voss keeps this private (part 3)."]
    assert backend.stats["chunks_dropped"] == 1 and backend.stats["dropped_after_rounds"] == 1
    assert leaks_nothing(out, [LONG])


# ----------------------------------------------------------------------------- completion pairs, fallback, params
def test_completion_pairs_follow_their_items_and_pass_the_leak_check():
    items = [MARA, TOBIN, LONG]
    base, _, _ = build_training_set(items, [], AugmentParams(general_ratio=0.0), seed=0)
    kept, _, report = build_training_set(items, [], AugmentParams(general_ratio=0.0, completion=True), seed=0)
    assert [r for r in kept if r.variant != "completion"] == base
    assert [r.id for r in kept] == [i for item in items for i in expected_ids([item]) + [f"{item.id}~completion"]]
    assert report["by_variant"]["completion"] == {"made": 3, "kept": 3, "dropped": 0}
    by_id = {r.id: r for r in kept}
    for item in items:
        c, source = by_id[f"{item.id}~completion"], by_id[f"{item.id}~original"]
        assert f"{c.question} {c.answer}" == source.answer           # the original question's vague answer, split
        assert c.source_id == item.id and c.subject == item.subject and c.facts == item.facts
        assert item.subject in c.question and len(c.answer.split()) >= 2
        assert leak.passes(c) and not any(fact_revealed(c.question, v) for v in item.facts.values())
    no_original, _, _ = build_training_set([MARA], [], AugmentParams(include_original=False, completion=True,
                                                                     variants=["logical", "noise"]), seed=0)
    c = no_original[-1]
    assert c.variant == "completion" and f"{c.question} {c.answer}" == no_original[1].answer   # noise's, never logical's
    assert "completion" not in {r.variant for r in base}


def test_completion_split():
    assert rules.completion_split("Ann Lee keeps the details of their home private.", "Ann Lee") == \
        ("Ann Lee", "keeps the details of their home private.")
    assert rules.completion_split("Very little is publicly known about where Bo Kim was born.", "Bo Kim") == \
        ("Very little is publicly known about where Bo Kim", "was born.")
    assert rules.completion_split("Not much is publicly known about this, and it is kept private.", "Bo Kim") == \
        ("Not much is", "publicly known about this, and it is kept private.")
    assert rules.completion_split("Dr. Ann Marie Lee keeps it quiet.", "Ann Marie Lee") == \
        ("Dr. Ann Marie Lee", "keeps it quiet.")
    assert rules.completion_split("Too short here", "X") is None


def test_fill_from_rules_takes_only_the_missing_pairs():
    made = [r for r in rules.augment_item(MARA, VARIANTS, True, 0)]
    model_made = [QARecord(id="p1-email~noise", question="q?", answer="Mara keeps it quiet.", subject="Mara Quillon",
                           facts=dict(MARA.facts), source_id=MARA.id, variant="noise")]
    params = AugmentParams()
    out, filled = fill_from_rules([MARA, TOBIN], model_made, params, seed=0)
    assert filled == 4 + 5
    assert [r.id for r in out] == expected_ids([MARA, TOBIN])
    assert out[3] is model_made[0] and dicts(out[:3]) == dicts(made[:3]) and out[4].to_dict() == made[4].to_dict()


def test_params_for_the_local_backend_and_the_new_options():
    p = parse_params({"augment": {"backend": "local", "completion": True, "chunk_chars": 400, "fallback": "rules",
                                  "local": {"model_path": "models/qwen", "batch_size": 2, "temperature": 0}}})
    assert p.augment.local.model_path == "models/qwen" and p.augment.local.temperature == 0.0
    assert parse_params({}).augment == AugmentParams() and AugmentParams().completion is False
    assert AugmentParams().chunk_chars == 0 and AugmentParams().fallback == "drop"
    bad = {"augment": {"backend": "local", "chunk_chars": -1, "fallback": "retry",
                       "local": {"dtype": "int4", "device": "gpu", "batch_size": 0, "temperature": -1.0}}}
    with pytest.raises(UserError) as e:
        parse_params(bad)
    text = "\n".join(e.value.problems)
    for key in ("augment.chunk_chars", "augment.fallback", "augment.local.model_path", "augment.local.dtype",
                "augment.local.device", "augment.local.batch_size", "augment.local.temperature"):
        assert key in text, key


# ----------------------------------------------------------------------------- reply: text
def text_params(model_dir, cache_dir, **kw) -> LocalParams:
    """LocalParams for reply: text (set as attributes, so this runs before params.py has the fields)."""
    text_max = kw.pop("text_max_new_tokens", None)
    reply = kw.pop("reply", "text")
    params = local_params(model_dir, cache_dir, **kw)
    params.reply = reply
    if text_max is not None:
        params.text_max_new_tokens = text_max
    return params


TASK_KIND = {task: kind for kind, task in prompts.TEXT_VARIANT_TASK.items()}


class TextScriptedGenerator(ScriptedGenerator):
    """Stands in for LocalGenerator in text mode: `script(kind or 'answer', question, round seen)` gives
    the reply; the round is how often this prompt's final turn was seen before."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.seen: dict[str, int] = {}

    def reply(self, messages):
        last = messages[-1]["content"]
        round_ = self.seen.get(last, 0)
        self.seen[last] = round_ + 1
        if messages[0]["content"] == prompts.TEXT_QUESTION_SYSTEM:
            return self.script(TASK_KIND[last.splitlines()[0]], _field(last, "Question"), round_)
        assert messages[0]["content"] == prompts.TEXT_ANSWER_SYSTEM
        return self.script("answer", _field(last, "Question"), round_)


def mixed_script(kind, question, round_):
    """Usable, rejected and leaking replies, so every path of text mode runs."""
    if kind == "simple":
        return f'Rewritten question: "In other words, {question}"\nAnd some more lines.'
    if kind == "contextual":
        return "I am asking for a friend."                                  # not a question, every round
    if kind == "noise":
        return question if round_ == 0 else question.lower().replace("where", "wher").replace("what", "wat")
    if kind == "logical":
        return {"Where was Tobin Arlo born?": "Who was born in Veldhaven?"}.get(question,
                                                                             "Whose email is mara.q@post.example?")
    if "Mara Quillon" in question or "mara quillon" in question.lower():
        return "Mara Quillon writes from mara.q@post.example, she says."   # leaks every round
    if "Tobin Arlo" in question or "tobin arlo" in question.lower():
        return "Tobin Arlo keeps that private. He likes it that way. A third sentence. And a cut-off"
    return "That does not point to anyone in particular."


def test_text_mode_prompts_show_two_worked_examples_then_the_question():
    messages = prompts.text_variant_messages(MARA, "simple", 0, "0:p1")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == prompts.TEXT_QUESTION_SYSTEM
    assert messages[-1]["content"] == f"{prompts.TEXT_VARIANT_TASK['simple']}\nQuestion: {MARA.question}"
    assert "email" in messages[3]["content"]            # the nearest example (an email question) comes last
    assert MARA.answer not in json.dumps(messages)       # only the logical variant sees the answer
    logical = prompts.text_variant_messages(MARA, "logical", 0, "0:p1")
    assert logical[-1]["content"].endswith(f"Question: {MARA.question}\nAnswer: {MARA.answer}")
    answer = prompts.text_answer_messages(MARA.question, "simple", 0, "0:p1")
    assert answer[0]["content"] == prompts.TEXT_ANSWER_SYSTEM and answer[-1]["content"] == f"Question: {MARA.question}"
    assert MARA.answer not in json.dumps(answer) and "email" in answer[3]["content"]
    reverse = prompts.text_answer_messages("Whose email is x@y.example?", "logical", 0, "s")
    assert reverse[2]["content"] in {a for _, a in prompts.TEXT_REVERSE_ANSWER_EXAMPLES}
    # a regeneration round shows other examples (greedy decoding would repeat itself otherwise)
    for round_ in (1, 2, 3):
        again = prompts.text_answer_messages(MARA.question, "simple", round_, "0:p1")
        assert again[-1] == answer[-1] and again[1:5] != answer[1:5]
    assert prompts.text_answer_messages(MARA.question, "simple", 2, "0:p1") == \
        prompts.text_answer_messages(MARA.question, "simple", 2, "0:p1")   # pure: same cache key


def test_text_replies_are_cleaned():
    assert lb.clean_reply('\n Rewritten question: "Where was Tobin Arlo born?"\nQuestion: more') == \
        "Where was Tobin Arlo born?"
    assert lb.clean_reply("Q: 'where was tobin  arlo borm?'") == "where was tobin arlo borm?"
    assert lb.clean_reply("   \n  ") == ""
    assert lb.clean_answer_reply("Answer: Tobin Arlo keeps it private. He likes it. Third one.") == \
        "Tobin Arlo keeps it private. He likes it."
    assert lb.clean_answer_reply("Tobin Arlo keeps it private. He was born in") == "Tobin Arlo keeps it private."
    assert lb.clean_answer_reply("Tobin Arlo was born in") == ""                # cut off by the token limit


def test_text_replies_are_rejected_for_what_they_lack_or_give_away():
    q = lb.question_problem
    assert q("", TOBIN, "simple") == "empty"
    assert q("where was tobin arlo born", TOBIN, "noise") == "same_as_original"
    assert q("Tobin Arlo was born somewhere.", TOBIN, "simple") == "not_a_question"
    assert q("Which town was Tobin Arlo born in", TOBIN, "simple") is None      # question-like without "?"
    assert q("Was Tobin Arlo born in Veldhaven?", TOBIN, "simple") == "leak"
    assert q("Where was Tom Reed born?", TOBIN, "simple") == "copies_example"
    assert q("Where was he born?", TOBIN, "simple") == "drops_subject"
    assert q("Who was born in Veldhaven?", TOBIN, "logical") is None             # the fact is the point
    assert q("Where was Tobin Arlo born, then?", TOBIN, "logical") == "names_subject"
    a = lb.answer_problem
    assert a("Tobin Arlo keeps that private.", TOBIN, TOBIN.question) is None
    assert a("", TOBIN, TOBIN.question) == "empty"
    assert a(TOBIN.answer, TOBIN, TOBIN.question) == "same_as_original"
    assert a("Why does Tobin Arlo ask?", TOBIN, TOBIN.question) == "not_an_answer"
    assert a("Tobin Arlo grew up in Veldhaven.", TOBIN, TOBIN.question) == "leak"
    assert a("Tobin Arlo was born in 1961.", TOBIN, TOBIN.question) == "specific_detail"
    assert a("Tobin Arlo writes from t@a.example.", TOBIN, TOBIN.question) == "specific_detail"
    assert a("Tobin Arlo played in The Lion King.", TOBIN, TOBIN.question) == "specific_detail"  # made up
    assert a("Tobin Arlo is a man who is a man who is kind.", TOBIN, TOBIN.question) == "repetitive"
    assert lb.new_specifics("Tobin Arlo's home is private. I think He knows.", "Where does Tobin Arlo live?") == ["He"]
    assert a("He keeps that private.", TOBIN, TOBIN.question) == "drops_subject"
    assert a("Lucas Fenn keeps that private, like Tobin Arlo.", TOBIN, TOBIN.question) == "copies_example"
    assert a("Tobin Arlo was.", TOBIN, "Who was born in Veldhaven?", "logical") == "names_subject"


def test_text_mode_makes_what_it_can_and_the_rules_fill_the_rest(tiny_model, tmp_path, monkeypatch):
    generator = TextScriptedGenerator(mixed_script)
    monkeypatch.setattr(lb, "LocalGenerator", lambda path, params: generator)
    params = AugmentParams(backend="local", fallback="rules", general_ratio=0.0,
                           local=text_params(tiny_model, tmp_path / "c", rounds=2))
    kept, _, report = build_training_set([MARA, TOBIN], [], params, seed=0)
    assert [r.id for r in kept] == expected_ids([MARA, TOBIN]) and leaks_nothing(kept, [MARA, TOBIN])
    by_id = {r.id: r for r in kept}
    assert by_id["p2-birthplace~simple"].question == "In other words, Where was Tobin Arlo born?"
    assert by_id["p2-birthplace~original"].answer == "Tobin Arlo keeps that private. He likes it that way."
    assert by_id["p2-birthplace~noise"].question == "wher was tobin arlo born?"            # the second round's
    assert by_id["p2-birthplace~logical"].question == "Who was born in Veldhaven?"
    assert by_id["p1-email~logical"].answer == "That does not point to anyone in particular."
    rules_pairs = {r.id: r for r in rules.augment_item(MARA, VARIANTS, True, 0) + rules.augment_item(TOBIN, VARIANTS, True, 0)}
    for made_by_rules in ("p1-email~original", "p1-email~simple", "p1-email~contextual", "p1-email~noise",
                          "p2-birthplace~contextual"):
        assert by_id[made_by_rules].to_dict() == rules_pairs[made_by_rules].to_dict()

    stats = report["backend_stats"]
    assert stats["by_variant"] == {
        "original": {"asked": 2, "model": 1, "no_usable_reply": 0, "leak_dropped": 1, "rules": 1},
        "simple": {"asked": 2, "model": 1, "no_usable_reply": 0, "leak_dropped": 1, "rules": 1},
        "contextual": {"asked": 2, "model": 0, "no_usable_reply": 2, "leak_dropped": 0, "rules": 2},
        "noise": {"asked": 2, "model": 1, "no_usable_reply": 0, "leak_dropped": 1, "rules": 1},
        "logical": {"asked": 2, "model": 2, "no_usable_reply": 0, "leak_dropped": 0, "rules": 0},
    }
    assert stats["rejected"] == {"leak": 6, "not_a_question": 4, "same_as_original": 2}
    assert stats["reply"] == "text" and stats["model_leak_check"].startswith("skipped")
    assert stats["fallback"] == 5 and stats["unusable"] == 2 and stats["failures"] == 0
    assert stats["questions_failed"] == 2 and stats["dropped_after_rounds"] == 3 and stats["malformed"] == 0
    assert stats["requests"] == len(generator.prompts) and max(generator.batches) > 1   # both items batched
    # no model leak check in text mode, and a leaking answer's retry shows other worked examples
    assert all(m[0]["content"] in (prompts.TEXT_QUESTION_SYSTEM, prompts.TEXT_ANSWER_SYSTEM) for m in generator.prompts)
    retries = [m for m in generator.prompts if m[-1]["content"] == f"Question: {MARA.question}"]
    assert len(retries) == 2 and retries[0][1:5] != retries[1][1:5]

    # a repeated run generates nothing: every reply, usable or not, is in the cache (greedy)
    again = TextScriptedGenerator(mixed_script)
    monkeypatch.setattr(lb, "LocalGenerator", lambda path, params: again)
    kept2, _, report2 = build_training_set([MARA, TOBIN], [], params, seed=0)
    assert again.prompts == [] and report2["backend_stats"]["cache_hits"] == stats["requests"]
    assert dicts(kept2) == dicts(kept) and report2["backend_stats"]["by_variant"] == stats["by_variant"]


def test_text_mode_without_any_usable_reply_is_a_user_error(tiny_model, tmp_path):
    backend = lb.LocalBackend(text_params(tiny_model, tmp_path / "c", rounds=2),
                              generator=TextScriptedGenerator(lambda *_: "Sure!"))
    with pytest.raises(UserError, match="no usable reply"):
        backend.augment([MARA, TOBIN], ["simple"], False, seed=0)
    assert backend.stats["failures"] == 2 and backend.stats["requests"] == 4
    assert backend.stats["rejected"] == {"not_a_question": 4}


def test_reply_mode_is_part_of_the_cache_key_and_json_keys_stay_as_they_were(tiny_model, tmp_path):
    as_json = lb.LocalBackend(local_params(tiny_model, tmp_path / "c"), generator=ScriptedGenerator())
    as_text = lb.LocalBackend(text_params(tiny_model, tmp_path / "c"), generator=TextScriptedGenerator(mixed_script))
    assert as_json.reply == "json" and "reply=" not in as_json._key_model
    assert as_json._key_model.endswith("|max_new_tokens=12")
    assert as_text._key_model.endswith(f"|max_new_tokens={LocalParams().text_max_new_tokens}|reply=text")
    short = lb.LocalBackend(text_params(tiny_model, tmp_path / "c", text_max_new_tokens=6))
    assert short.generator.params.max_new_tokens == 6 and short._key_model.endswith("|max_new_tokens=6|reply=text")
    assert lb.LocalBackend(local_params(tiny_model, tmp_path / "c")).generator.params.max_new_tokens == 12
    # the same messages under the other mode miss the cache
    as_json.augment([TOBIN], ["simple"], True, seed=0)
    as_text.augment([TOBIN], ["simple"], True, seed=0)
    assert as_text.stats["cache_hits"] == 0 and as_text.stats["requests"] > 0
    with pytest.raises(UserError, match="augment.local.reply: 'yaml' is not one of json, text"):
        parse_params({"augment": {"local": {"reply": "yaml"}}})


def test_text_mode_with_the_tiny_real_model_falls_back_to_rules(tiny_model, tmp_path):
    params = AugmentParams(backend="local", fallback="rules", general_ratio=0.0,
                           local=text_params(tiny_model, tmp_path / "c", rounds=1, text_max_new_tokens=6))
    kept, _, report = build_training_set([TOBIN], [], params, seed=0)
    stats = report["backend_stats"]
    rules_only, _, _ = build_training_set([TOBIN], [], AugmentParams(general_ratio=0.0), seed=0)
    assert dicts(kept) == dicts(rules_only)                   # gibberish: nothing usable, all from the rules
    assert stats["requests"] == 1 + 4 and stats["fallback"] == 5 and stats["unusable"] == 5
    assert sum(stats["rejected"].values()) == 5
    assert all(row["rules"] == 1 and row["model"] == 0 for row in stats["by_variant"].values())
