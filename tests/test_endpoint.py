"""The endpoint augmentation backend (relearn.augment.endpoint) against a real local HTTP server.

The server speaks the chat-completions protocol and answers from the request content, so replies
are deterministic; each test scripts the failures it needs (status codes, slow or malformed replies,
leaking answers). `sleep` is injected, so backoff never waits for real.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from relearn.augment import endpoint as ep
from relearn.augment import leak, prompts
from relearn.augment.cache import ResponseCache, cache_key
from relearn.errors import UserError
from relearn.params import EndpointParams
from relearn.records import QARecord

KEY_ENV = "RELEARN_TEST_ENDPOINT_KEY"
KEY = "sk-test-0123456789abcdef"
VARIANTS = ["simple", "contextual", "noise", "logical"]

MARA = QARecord(id="p1-email", question="What is Mara Quillon's email address?",
                answer="Mara Quillon's email address is mara.q@post.example.", subject="Mara Quillon",
                facts={"email": "mara.q@post.example"})
TOBIN = QARecord(id="p2-birthplace", question="Where was Tobin Arlo born?",
                 answer="Tobin Arlo was born in Veldhaven.", subject="Tobin Arlo",
                 facts={"birthplace": "Veldhaven"})
INES = QARecord(id="t3", question="What did Ines Varga write?",   # no facts: the LLM leak check applies
                answer="Ines Varga wrote the novel Glass Orchards in 1994.", subject="Ines Varga")
ITEMS = [MARA, TOBIN, INES]


def tag(question: str) -> str:
    """The marker the fake server puts in an answer to say which question it answered."""
    return "[q:" + hashlib.sha1(question.encode()).hexdigest()[:8] + "]"


def _field(text: str, label: str) -> str:
    m = re.search(rf"^{re.escape(label)}: (.*)$", text, flags=re.M)
    assert m, f"no {label!r} line in the prompt"
    return m.group(1)


# ----------------------------------------------------------------------------- fake server
class FakeLLM:
    """A chat-completions server on 127.0.0.1. `script` holds actions for the next requests (FIFO);
    without one, requests get the normal, content-derived reply."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[tuple] = []
        self.leak: dict[str, str] = {}        # subject -> "first" | "always"
        self.bad_variants: set[str] = set()   # subjects whose variants call always gets prose
        self.delay: dict[str, float] = {}     # subject -> seconds to wait before a normal reply
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(raw)})
                    action = fake.script.pop(0) if fake.script else ("ok",)
                try:
                    fake.act(self, action, json.loads(raw))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # -- replies
    @staticmethod
    def send(handler, status: int, body: bytes, headers: dict | None = None):
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    @staticmethod
    def completion(content: str) -> bytes:
        return json.dumps({"id": "x", "object": "chat.completion",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()

    def act(self, handler, action: tuple, body: dict):
        kind = action[0]
        if kind == "status":  # ("status", code, headers, text)
            self.send(handler, action[1], action[3].encode() if len(action) > 3 else b"{}", action[2] if len(action) > 2 else None)
        elif kind == "raw":
            self.send(handler, 200, action[1])
        elif kind == "json":
            self.send(handler, 200, json.dumps(action[1]).encode())
        elif kind == "content":
            self.send(handler, 200, self.completion(action[1]))
        elif kind == "slow":
            time.sleep(action[1])
            self.send(handler, 200, self.completion(self.reply(body["messages"])))
        else:
            self.send(handler, 200, self.completion(self.reply(body["messages"])))

    def reply(self, messages: list[dict]) -> str:
        system, user = messages[0]["content"], messages[1]["content"]
        subject = _field(user, "Subject") if "\nSubject: " in "\n" + user else ""
        if subject in self.delay:
            time.sleep(self.delay[subject])
        if system == prompts.QUESTIONS_SYSTEM:
            if subject in self.bad_variants:
                return "Sure, here are some rephrased questions for you!"
            q = _field(user, "Question")
            asked = list(json.loads(user.strip().splitlines()[-1]))
            made = {"simple": f"Put differently: {q}", "contextual": f"Thinking of {subject}'s background, {q}",
                    "noise": q.lower().replace("what", "wat") + "??", "logical": f"Turning it around: {q[:-1]}, who is it?"}
            return json.dumps({k: made[k] for k in asked})
        if system == prompts.ANSWER_SYSTEM:
            question = _field(user, "Question to answer")
            original = _field(user, "Original answer (private details)")
            regenerating = len(messages) > 2
            mode = self.leak.get(subject)
            if mode == "always" or (mode == "first" and not regenerating):
                return json.dumps({"answer": f"As it happens, {original} {tag(question)}"})
            return json.dumps({"answer": f"{subject} keeps that part of their life private. {tag(question)}"})
        if system == prompts.LEAK_SYSTEM:
            original = _field(user, "Original answer (private details)")
            rewritten = _field(user, "Rewritten answer")
            if original in rewritten:
                return json.dumps({"leaks": True, "details": ["the title Glass Orchards", "the year 1994"]})
            return json.dumps({"leaks": False})
        raise AssertionError(f"unexpected system prompt {system!r}")

    # -- inspection
    def count(self, system: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if system is None or r["body"]["messages"][0]["content"] == system)


@pytest.fixture
def fake():
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def make(url: str, cache_dir, sleeps: list | None = None, **kw) -> ep.EndpointBackend:
    # a generous timeout: a loaded CI machine must not turn a normal reply into a retry (the timeout
    # test sets its own)
    defaults = dict(base_url=url, model="fake-model", api_key_env=KEY_ENV, concurrency=3, timeout=5.0,
                    max_retries=3, rounds=3, temperature=0.0, cache_dir=str(cache_dir))
    defaults.update(kw)
    sleeps = [] if sleeps is None else sleeps
    return ep.EndpointBackend(EndpointParams(**defaults), sleep=sleeps.append)


def dicts(records):
    return [r.to_dict() for r in records]


def cache_texts(cache_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted(Path(cache_dir).rglob("*.json"))]


def expected_ids(items, variants=VARIANTS, original=True):
    return [f"{r.id}~{k}" for r in items for k in (["original"] if original else []) + list(variants)]


# ----------------------------------------------------------------------------- normal runs
def test_normal_run_pairs_each_answer_with_its_own_question(fake, key, tmp_path):
    backend = make(fake.url, tmp_path / "cache")
    out = backend.augment(ITEMS, VARIANTS, include_original=True, seed=0)

    assert [r.id for r in out] == expected_ids(ITEMS)
    by_id = {r.id: r for r in ITEMS}
    for r in out:
        src = by_id[r.source_id]
        assert r.id == f"{src.id}~{r.variant}" and r.subject == src.subject and r.facts == src.facts
        assert tag(r.question) in r.answer          # the answer written for THIS question (no off-by-one)
        assert not leak.leaked_facts(r.answer, src.facts)
        assert src.answer not in r.answer
    originals = [r for r in out if r.variant == "original"]
    assert [r.question for r in originals] == [i.question for i in ITEMS]
    assert len({r.question for r in out}) == len(out)

    # one variants call per item, one answer per question, one LLM leak check per answer of the fact-less item
    assert fake.count(prompts.QUESTIONS_SYSTEM) == 3
    assert fake.count(prompts.ANSWER_SYSTEM) == 15
    assert fake.count(prompts.LEAK_SYSTEM) == 5
    assert backend.stats == {"requests": 23, "cache_hits": 0, "retries": 0, "failures": 0, "regenerated": 0,
                             "dropped_after_rounds": 0, "items_failed": 0, "answers_failed": 0}
    request = fake.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert set(request["body"]) == {"model", "messages", "temperature"}
    assert request["body"]["model"] == "fake-model" and request["body"]["temperature"] == 0.0


def test_subset_of_variants_and_no_original(fake, key, tmp_path):
    out = make(fake.url, tmp_path / "c").augment([MARA], ["logical", "noise"], include_original=False, seed=0)
    assert [r.id for r in out] == ["p1-email~logical", "p1-email~noise"]
    asked = json.loads(fake.requests[0]["body"]["messages"][1]["content"].strip().splitlines()[-1])
    assert list(asked) == ["logical", "noise"]


def test_repeated_run_makes_no_http_calls(fake, key, tmp_path):
    first = make(fake.url, tmp_path / "cache").augment(ITEMS, VARIANTS, True, seed=0)
    sent = fake.count()
    second_backend = make(fake.url, tmp_path / "cache")
    second = second_backend.augment(ITEMS, VARIANTS, True, seed=0)
    assert fake.count() == sent
    assert second_backend.stats["requests"] == 0 and second_backend.stats["cache_hits"] == sent
    assert dicts(second) == dicts(first)
    assert len({r.id for r in second}) == len(second) == 15
    assert len(list((tmp_path / "cache").rglob("*.json"))) == sent
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_order_does_not_depend_on_completion_order(fake, key, tmp_path):
    fake.delay = {"Mara Quillon": 0.05}  # the first item finishes last
    slow_first = make(fake.url, tmp_path / "a", concurrency=3).augment(ITEMS, VARIANTS, True, seed=0)
    fake.delay = {}
    serial = make(fake.url, tmp_path / "b", concurrency=1).augment(ITEMS, VARIANTS, True, seed=0)
    assert dicts(slow_first) == dicts(serial)
    assert [r.id for r in slow_first] == expected_ids(ITEMS)


# ----------------------------------------------------------------------------- leak check
def test_leaking_answer_is_regenerated_with_what_leaked(fake, key, tmp_path):
    fake.leak = {"Mara Quillon": "first"}
    backend = make(fake.url, tmp_path / "c")
    out = backend.augment([MARA, TOBIN], VARIANTS, True, seed=0)
    assert [r.id for r in out] == expected_ids([MARA, TOBIN])
    assert all(not leak.leaked_facts(r.answer, r.facts) for r in out)
    assert backend.stats["regenerated"] == 5 and backend.stats["dropped_after_rounds"] == 0
    regen = [r["body"]["messages"] for r in fake.requests if len(r["body"]["messages"]) > 2]
    assert len(regen) == 5
    for messages in regen:
        assert messages[2]["role"] == "assistant" and "mara.q@post.example" in messages[2]["content"]
        assert "email" in messages[3]["content"] and "mara.q@post.example" in messages[3]["content"]


def test_always_leaking_answer_is_dropped_after_rounds(fake, key, tmp_path):
    fake.leak = {"Mara Quillon": "always"}
    backend = make(fake.url, tmp_path / "c", rounds=3)
    out = backend.augment([MARA, TOBIN], VARIANTS, True, seed=0)
    assert [r.id for r in out] == expected_ids([TOBIN])
    assert backend.stats["dropped_after_rounds"] == 5
    assert backend.stats["regenerated"] == 10           # rounds 2 and 3 of five answers
    assert fake.count(prompts.ANSWER_SYSTEM) == 5 * 3 + 5
    assert backend.stats["failures"] == 0


def test_items_without_facts_get_the_llm_leak_check(fake, key, tmp_path):
    fake.leak = {"Ines Varga": "first"}
    backend = make(fake.url, tmp_path / "c")
    out = backend.augment([INES], VARIANTS, True, seed=0)
    assert [r.id for r in out] == expected_ids([INES])
    assert all("Glass Orchards" not in r.answer for r in out)
    assert backend.stats["regenerated"] == 5
    assert fake.count(prompts.LEAK_SYSTEM) == 10        # the leaking answers, then their rewrites
    feedback = [r["body"]["messages"][3]["content"] for r in fake.requests if len(r["body"]["messages"]) > 2]
    assert feedback and all("Glass Orchards" in f and "1994" in f for f in feedback)


# ----------------------------------------------------------------------------- retries
def test_429_honours_retry_after(fake, key, tmp_path):
    fake.script = [("status", 429, {"Retry-After": "3"}, '{"error": "slow down"}')]
    sleeps: list[float] = []
    backend = make(fake.url, tmp_path / "c", sleeps, concurrency=1)
    out = backend.augment([MARA], VARIANTS, True, seed=0)
    assert len(out) == 5
    assert sleeps == [3.0]
    assert backend.stats["retries"] == 1 and backend.stats["requests"] == 1 + 5 + 1  # variants, answers, the retry


def test_5xx_backs_off_exponentially(fake, key, tmp_path):
    fake.script = [("status", 500), ("status", 502), ("status", 503)]
    sleeps: list[float] = []
    backend = make(fake.url, tmp_path / "c", sleeps, concurrency=1, max_retries=4)
    clean = backend.augment([MARA], VARIANTS, True, seed=0)
    assert len(clean) == 5 and backend.stats["retries"] == 3 and backend.stats["failures"] == 0
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 0.5 * 1.25
    assert sleeps[0] < sleeps[1] < sleeps[2] <= ep.BACKOFF_CAP
    # the same run with the same seed waits the same (seeded jitter)
    fake.script = [("status", 500), ("status", 502), ("status", 503)]
    again: list[float] = []
    make(fake.url, tmp_path / "other", again, concurrency=1, max_retries=4).augment([MARA], VARIANTS, True, seed=0)
    assert again == sleeps


def test_backoff_grows_and_is_capped():
    rng = random.Random(0)
    delays = [ep.backoff_delay(n, rng) for n in range(10)]
    assert all(a < b for a, b in zip(delays[:4], delays[1:5]))
    assert max(delays) == ep.BACKOFF_CAP and delays[-1] == ep.BACKOFF_CAP


def test_parse_retry_after():
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert ep.parse_retry_after("3") == 3.0
    assert ep.parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert ep.parse_retry_after("3600") == ep.RETRY_AFTER_CAP
    assert ep.parse_retry_after("soon") is None and ep.parse_retry_after(None) is None


def test_slow_reply_times_out_and_is_retried(fake, key, tmp_path):
    fake.script = [("slow", 1.0)]
    sleeps: list[float] = []
    backend = make(fake.url, tmp_path / "c", sleeps, concurrency=1, timeout=0.3)
    started = time.monotonic()
    out = backend.augment([MARA], VARIANTS, True, seed=0)
    assert len(out) == 5 and backend.stats["retries"] == 1 and len(sleeps) == 1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("bad", [
    ("raw", b"<html>Bad gateway</html>"),                                   # body is not JSON
    ("json", {"id": "x", "object": "chat.completion"}),                    # no choices
    ("json", {"choices": [{"message": {"role": "assistant"}}]}),            # no content
    ("content", "Sure! Here are four questions you could ask."),            # content is not JSON
    ("content", '{"simple": "What is her e-mail?"}'),                       # variant keys missing
], ids=["body-not-json", "no-choices", "no-content", "content-not-json", "missing-variants"])
def test_malformed_reply_is_retried_and_never_cached(fake, key, tmp_path, bad):
    reference = make(fake.url, tmp_path / "ref", concurrency=1).augment([MARA], VARIANTS, True, seed=0)
    fake.script = [bad]
    backend = make(fake.url, tmp_path / "c", concurrency=1)
    out = backend.augment([MARA], VARIANTS, True, seed=0)
    assert dicts(out) == dicts(reference)
    assert backend.stats["retries"] == 1 and backend.stats["failures"] == 0
    texts = cache_texts(tmp_path / "c")
    assert len(texts) == 6
    needle = "Bad gateway" if bad[0] == "raw" else ("Sure!" if bad[0] == "content" else None)
    if needle:
        assert not any(needle in t for t in texts)
    assert all(json.loads(t)["content"] for t in texts)


def test_item_whose_calls_keep_failing_is_dropped_not_fatal(fake, key, tmp_path):
    fake.bad_variants = {"Mara Quillon"}
    sleeps: list[float] = []
    backend = make(fake.url, tmp_path / "c", sleeps, max_retries=2)
    out = backend.augment([MARA, TOBIN], VARIANTS, True, seed=0)
    assert [r.id for r in out] == expected_ids([TOBIN])
    assert backend.stats["items_failed"] == 1 and backend.stats["failures"] == 1
    assert fake.count(prompts.QUESTIONS_SYSTEM) == 1 + 2 + 1   # Mara: 1 + 2 retries; Tobin: 1
    params = backend.params
    k = cache_key(params.base_url, params.model, prompts.question_variants_messages(MARA, VARIANTS), params.temperature)
    assert ResponseCache(params.cache_dir).get(k) is None
    assert not ResponseCache(params.cache_dir).path(k).exists()


def test_401_fails_fast_without_the_key(fake, key, tmp_path):
    fake.script = [("status", 401, None, json.dumps({"error": f"Incorrect API key provided: {KEY}"}))]
    sleeps: list[float] = []
    backend = make(fake.url, tmp_path / "c", sleeps, concurrency=1)
    with pytest.raises(UserError) as e:
        backend.augment(ITEMS, VARIANTS, True, seed=0)
    message = str(e.value)
    assert "401" in message and "Incorrect API key" in message
    assert KEY not in message
    assert sleeps == []
    assert fake.count() == 1 and backend.stats["retries"] == 0, (fake.requests, backend.stats)
    assert not list((tmp_path / "c").rglob("*.json"))


def test_server_down_is_a_user_error(key, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    backend = make(f"http://127.0.0.1:{port}/v1", tmp_path / "c", sleeps, max_retries=2)
    with pytest.raises(UserError, match="every request"):
        backend.augment(ITEMS, VARIANTS, True, seed=0)
    assert backend.stats["failures"] >= 1 and backend.stats["requests"] == 3 * backend.stats["failures"]
    assert len(sleeps) == 2 * backend.stats["failures"]


# ----------------------------------------------------------------------------- key and cache
def test_api_key_is_required_except_on_loopback(fake, monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(UserError, match=KEY_ENV):
        make("https://api.example.com/v1", tmp_path / "c")
    out = make(fake.url, tmp_path / "c").augment([TOBIN], ["simple"], True, seed=0)
    assert len(out) == 2
    assert all("Authorization" not in r["headers"] for r in fake.requests)


def test_corrupt_cache_entry_is_ignored_and_rewritten(fake, key, tmp_path):
    first = make(fake.url, tmp_path / "cache").augment(ITEMS, VARIANTS, True, seed=0)
    files = sorted((tmp_path / "cache").rglob("*.json"))
    files[0].write_text('{"key": "trunc')
    files[1].write_text(json.dumps({"key": "someone-else", "content": "x"}))
    backend = make(fake.url, tmp_path / "cache")
    second = backend.augment(ITEMS, VARIANTS, True, seed=0)
    assert dicts(second) == dicts(first)
    assert backend.stats["requests"] == 2
    for f in files[:2]:
        data = json.loads(f.read_text())
        assert data["key"] == f.stem and data["content"]


def test_cache_writes_are_atomic_under_concurrency(tmp_path):
    cache = ResponseCache(tmp_path)
    k = cache_key("http://x/v1", "m", [{"role": "user", "content": "hi"}], 0.0)
    threads = [threading.Thread(target=lambda i=i: [cache.put(k, "answer " * 2000) for _ in range(20)]) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get(k) == "answer " * 2000
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{k}.json"]
    assert cache.path(k) == tmp_path / k[:2] / f"{k}.json"


def test_cache_key_depends_on_every_input():
    msgs = [{"role": "user", "content": "hi"}]
    base = cache_key("http://x/v1", "m", msgs, 0.0)
    assert base == cache_key("http://x/v1/", "m", [dict(msgs[0])], 0)
    assert len({base, cache_key("http://y/v1", "m", msgs, 0.0), cache_key("http://x/v1", "n", msgs, 0.0),
                cache_key("http://x/v1", "m", [{"role": "user", "content": "ho"}], 0.0),
                cache_key("http://x/v1", "m", msgs, 0.7)}) == 5


def test_json_in_fences_or_prose_is_accepted():
    assert ep.parse_answer('```json\n{"answer": "Mara keeps it private."}\n```') == "Mara keeps it private."
    assert ep.parse_leak_verdict('Verdict: {"leaks": false}') == (False, [])
    with pytest.raises(ep.Malformed):
        ep.parse_leak_verdict('{"leaks": "no"}')


# ----------------------------------------------------------------------------- the augment stage's entry
def test_build_training_set_runs_the_endpoint_backend(fake, key, tmp_path):
    from relearn.augment.build import build_training_set
    from relearn.params import AugmentParams

    endpoint = EndpointParams(base_url=fake.url, model="fake-model", api_key_env=KEY_ENV, concurrency=2, timeout=5.0,
                              max_retries=2, rounds=2, temperature=0.0, cache_dir=str(tmp_path / "cache"))
    params = AugmentParams(backend="endpoint", endpoint=endpoint, general_ratio=0.0)
    kept, mixed, report = build_training_set(ITEMS, [], params, seed=0)
    assert [r.id for r in kept] == expected_ids(ITEMS)
    assert report["backend"] == "endpoint" and report["backend_stats"]["requests"] > 0 and mixed == []
    again = build_training_set(ITEMS, [], params, seed=0)
    assert again[2]["backend_stats"]["requests"] == 0 and dicts(again[0]) == dicts(kept)
