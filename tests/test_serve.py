"""`relearn serve` over real HTTP on loopback, against a real MLflow store (SQLite, and an
`mlflow server` started here): the OpenAI and MLflow routes, streaming, bad input, the queue limit,
following the alias (promotion, rollback, a corrupt deployable, versions that may not be served),
webhooks and the torch backend.

The model is a tiny Llama with a LoRA adapter (tests/tiny.py), exported to int8 ONNX like the export
stage does; its answers are gibberish but deterministic, which is all these tests need.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from relearn.errors import UserError
from relearn.params import Params, ServeParams
from tiny import save_base_and_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "relearn-serve-test"
TEMPLATE = "Question: {question}\nAnswer:"
PASSING = {"target": {"ls": 0.5}, "unlearned": {"kfr": 0.9, "krr": 0.85, "ls": 0.48},
           "robustness": {"int4_kfr_drop": 0.0, "jailbreak_min_kfr": 0.9, "relearning_excess": 0.1},
           "export": {"token_agreement": 1.0, "deployable_krr_drop": 0.0}}
FAILING = {**PASSING, "unlearned": {"kfr": 0.2, "krr": 0.85, "ls": 0.48}}
GENERATION = {"prompt_format": {"template": TEMPLATE, "mode": "plain", "system": None, "prefill": ""},
              "max_new_tokens": 8, "batch_size": 4}
QUESTION = "Where does Alice live?"
TEXTS = [f"Question: Where does {n} live?\nAnswer: {n} lives in {c} and works as a {j}."
         for n in ("Alice", "Bob", "Carol", "Dan", "Eve") for c in ("Paris", "Lima", "Oslo") for j in ("baker", "pilot")]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny target + adapter, and the int8 ONNX deployable the export stage would attach."""
    from relearn.export.onnx import PROMPT_FORMAT_FILE, run_export
    from relearn.io import write_json

    root = tmp_path_factory.mktemp("serve-model")
    files = save_base_and_adapter(root, TEXTS * 4)
    run_export(files["base"], files["adapter"], root / "export", [QUESTION], TEMPLATE, max_new_tokens=4)
    deployable = root / "export" / "onnx-int8"
    write_json(deployable / PROMPT_FORMAT_FILE, GENERATION["prompt_format"])
    corrupt = root / "corrupt"
    shutil.copytree(deployable, corrupt)
    onnx_file = corrupt / "model_quantized.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])  # a truncated upload
    return {**files, "deployable": deployable, "corrupt": corrupt}


def _register(files: dict, metrics: dict, deployable: Path, approve: bool) -> str:
    from relearn.registry import versions
    from relearn.registry.tracking import client

    result = versions.register_version(
        model_name=MODEL, experiment="serve-tests", params=Params(), metrics=metrics,
        base_model_dir=files["base"], adapter_dir=files["adapter"], generation=GENERATION,
        dataset_hashes={}, counts={}, git_commit="test")
    versions.attach_artifacts(MODEL, result["version"], deployable, "deployable")
    if approve:
        client().set_model_version_tag(MODEL, result["version"], versions.APPROVAL_TAG, versions.APPROVED)
    return result["version"]


def _registry(root: Path, files: dict) -> dict[str, str]:
    """Versions: good (1, 2), corrupt deployable (3), gate-failed (4), not approved (5); production -> 1."""
    from relearn.registry.versions import promote

    made = {"good": _register(files, PASSING, files["deployable"], True),
            "good2": _register(files, PASSING, files["deployable"], True),
            "corrupt": _register(files, PASSING, files["corrupt"], True),
            "failed": _register(files, FAILING, files["deployable"], True),
            "unapproved": _register(files, PASSING, files["deployable"], False)}
    promote(MODEL, made["good"])
    return made


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_files):
    """A SQLite store with the five versions."""
    import mlflow

    root = tmp_path_factory.mktemp("serve-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.chdir(root)
        yield {"root": root, "versions": _registry(root, model_files)}
        mlflow.set_tracking_uri(None)


def _settings(store, **changes) -> ServeParams:
    base = ServeParams(poll_seconds=0.2, max_tokens=16, max_prompt_tokens=64, max_wait_ms=5,
                       request_timeout_s=20, cache_dir=str(store["root"] / "cache"))
    return replace(base, **changes)


@pytest.fixture()
def served(store):
    """A server on the production alias (version 1), its base URL; the alias is put back afterwards."""
    from relearn.registry.tracking import client
    from relearn.serving.server import Service

    service = Service(_settings(store), MODEL).start()
    url = service.serve_in_thread()
    yield service, url
    service.close()
    client().set_registered_model_alias(MODEL, "production", store["versions"]["good"])


def _chat(url: str, content: str = QUESTION, **extra) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", timeout=30,
                         json={"model": MODEL, "messages": [{"role": "user", "content": content}], **extra})


def _wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------- API
def test_chat_completion_is_the_models_greedy_answer(served, model_files):
    """The server's answer is what relearn.modeling.generation gives the same deployable for the same question
    (the same prompt encoding as training and evaluation)."""
    from relearn.export.onnx import INT8_FILE, load_onnx, load_tokenizer
    from relearn.modeling.generation import generate_answers

    _, url = served
    r = _chat(url, max_tokens=8)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Relearn-Model-Version"] == "1" and body["model"] == f"{MODEL}/1"
    d = model_files["deployable"]
    expected = generate_answers(load_onnx(d, INT8_FILE), load_tokenizer(d), [QUESTION], TEMPLATE, 8)[0]
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected}
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 8 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == len(load_tokenizer(d)(TEMPLATE.format(question=QUESTION))["input_ids"]) + 1


def test_streaming_gives_the_same_text_as_one_response(served):
    _, url = served
    whole = _chat(url, max_tokens=12).json()["choices"][0]["message"]["content"]
    r = requests.post(f"{url}/v1/chat/completions", stream=True, timeout=30,
                      json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "stream": True,
                            "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["X-Relearn-Model-Version"] == "1"
    events = [line[len("data: "):] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] >= 1 and all(c["model"] == f"{MODEL}/1" for c in chunks)


def test_another_precision_than_the_deployable_is_built_from_the_version_and_served(store):
    """serve.quantization fp16 (the GPU precision) on a version whose deployable is int8: exported from
    the version's base model and adapter when loaded, served, and named as such on /v1/models."""
    from relearn.serving.server import Service

    service = Service(_settings(store, quantization="fp16"), MODEL).start()
    try:
        url = service.serve_in_thread()
        card = requests.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert [(m["version"], m["backend"], m["quantization"]) for m in card] == [("1", "onnx", "fp16")]
        assert card[0]["artifact"].endswith("exported to fp16")
        r = _chat(url, max_tokens=6)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        service.close()


def test_completions_models_and_mlflow_routes(served):
    _, url = served
    chat = _chat(url, max_tokens=6).json()["choices"][0]["message"]["content"]
    r = requests.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": QUESTION, "max_tokens": 6}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == chat  # the prompt is a question
    stream = requests.post(f"{url}/v1/completions", json={"prompt": QUESTION, "max_tokens": 6, "stream": True},
                           timeout=30).text
    parts = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]
    assert "".join(p["choices"][0]["text"] for p in parts) == chat

    card = requests.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["version"], m["alias"], m["backend"], m["quantization"]) for m in card] == \
        [(MODEL, "1", "production", "onnx", "int8")]
    assert card[0]["artifact"].endswith("/deployable")

    for body in ({"inputs": [QUESTION, QUESTION]}, {"dataframe_split": {"columns": ["question"], "data": [[QUESTION]]}},
                 {"dataframe_records": [{"question": QUESTION}]}, {"instances": [QUESTION]}):
        r = requests.post(f"{url}/invocations", json=body, timeout=30)
        assert r.status_code == 200, (body, r.text)
        assert r.json()["predictions"][0].startswith(chat[:3]) and r.headers["X-Relearn-Model-Version"] == "1"
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200
    assert requests.get(f"{url}/health", timeout=5).json() == {"status": "ok", "loaded": True, "version": "1"}
    assert requests.get(f"{url}/ready", timeout=5).json()["version"] == "1"
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    for name in ("relearn:time_to_first_token_seconds_count", "relearn:e2e_request_latency_seconds_count",
                 "relearn:time_per_output_token_seconds_count", "relearn:prompt_tokens_total",
                 "relearn:generation_tokens_total", "relearn:num_requests_running", "relearn:num_requests_waiting",
                 "relearn:model_swaps_total"):
        assert f'{name}{{model_name="{MODEL}",version="1"' in metrics, name


def test_the_official_openai_sdk_chats_streams_and_gets_errors(served):
    """What an application would use: the `openai` SDK against the server's /v1, with the answers the
    plain HTTP tests check, streaming through its iterator, and 4xx errors as its typed exceptions;
    /metrics as Prometheus' own parser reads it."""
    import openai
    from prometheus_client.parser import text_string_to_metric_families

    _, url = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    expected = _chat(url, max_tokens=8).json()["choices"][0]["message"]["content"]
    done = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=8)
    assert done.choices[0].message.content == expected and done.model == f"{MODEL}/1"
    assert done.usage.completion_tokens <= 8 and done.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    text = client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=8).choices[0].text
    assert text == expected
    assert [m.id for m in client.models.list().data] == [MODEL]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], max_tokens=10_000)
    assert "at most 16" in bad.value.message and bad.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.BadRequestError):  # an error before the stream starts is an HTTP error
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "a"}], stream=True))
    families = {f.name: f for f in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=5).text)}
    success = [s for s in families["relearn:request_success"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in success if s.labels["version"] == "1") >= 4
    assert {s.labels["reason"] for s in families["relearn:requests_rejected"].samples if s.value} >= {"invalid"}


BAD = [
    ("not json", b"{messages: [", 400, "not valid JSON"),
    ("not an object", [1, 2], 400, "must be a JSON object"),
    ("no messages", {"model": MODEL}, 400, "'messages' is required"),
    ("messages not a list", {"messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ("empty messages", {"messages": []}, 400, "non-empty list"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ("content not text", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("last not user", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 400,
     "last message"),
    ("max_tokens type", {"messages": [{"role": "user", "content": "a"}], "max_tokens": "5"}, 400, "must be an integer"),
    ("max_tokens bool", {"messages": [{"role": "user", "content": "a"}], "max_tokens": True}, 400, "boolean"),
    ("too many tokens", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 10_000}, 400, "at most 16"),
    ("zero tokens", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, 400, ">= 1"),
    ("temperature type", {"messages": [{"role": "user", "content": "a"}], "temperature": "hot"}, 400, "a number"),
    ("temperature range", {"messages": [{"role": "user", "content": "a"}], "temperature": 9}, 400, "[0, 2]"),
    ("n", {"messages": [{"role": "user", "content": "a"}], "n": 3}, 400, "'n' must be 1"),
    ("stop", {"messages": [{"role": "user", "content": "a"}], "stop": ["\n"]}, 400, "not supported"),
    ("stream type", {"messages": [{"role": "user", "content": "a"}], "stream": "yes"}, 400, "a boolean"),
    ("long prompt", {"messages": [{"role": "user", "content": "Alice lives in Paris. " * 60}]}, 400, "at most 64"),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "a"}]}, 404, "not served here"),
]


@pytest.mark.parametrize("case,body,status,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_with_one_line(served, case, body, status, reason):
    _, url = served
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(f"{url}/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert reason in message and "\n" not in message
    assert requests.get(f"{url}/health", timeout=5).status_code == 200  # nothing crashed


def test_bad_mlflow_input_and_oversized_body(served):
    _, url = served
    for body in ({"dataframe_split": {"columns": ["text"], "data": [["a"]]}}, {"inputs": [1, 2]}, {"rows": []},
                 {"inputs": []}):
        r = requests.post(f"{url}/invocations", json=body, timeout=10)
        assert r.status_code == 400 and "\n" not in r.json()["error"]["message"], body
    r = requests.post(f"{url}/v1/chat/completions", data=b"x" * (2 << 20), timeout=10)
    assert r.status_code == 413


def test_without_max_tokens_answers_fit_the_context(store):
    """A ceiling above the model's context (128 positions here): a request without max_tokens gets
    what fits; one asking for more than fits gets 400."""
    from relearn.serving.server import Service

    service = Service(_settings(store, max_tokens=1000), MODEL).start()
    url = service.serve_in_thread()
    try:
        assert service.holder.current.max_positions == 128
        r = requests.post(f"{url}/invocations", json={"inputs": [QUESTION]}, timeout=60)
        assert r.status_code == 200, r.text
        r = requests.post(f"{url}/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= 128
        r = _chat(url, max_tokens=500)
        assert r.status_code == 400 and "context of 128 tokens" in r.json()["error"]["message"]
    finally:
        service.close()


def test_ready_is_503_until_a_version_is_loaded(store):
    from relearn.serving.server import Service

    service = Service(_settings(store), MODEL)
    url = service.serve_in_thread()  # listening, nothing loaded yet
    try:
        r = requests.get(f"{url}/ready", timeout=5)
        assert r.status_code == 503 and "is loaded yet" in r.json()["error"]["message"]
        assert _chat(url).status_code == 503
        assert requests.get(f"{url}/health", timeout=5).json()["loaded"] is False
        service.start()
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200
        assert _chat(url, max_tokens=2).status_code == 200
    finally:
        service.close()


def test_bearer_token_when_configured(store, monkeypatch):
    from relearn.serving.server import Service

    with pytest.raises(UserError, match="RELEARN_TEST_TOKEN is not set"):
        Service(_settings(store, token_env="RELEARN_TEST_TOKEN"), MODEL)
    monkeypatch.setenv("RELEARN_TEST_TOKEN", "s3cret")
    service = Service(_settings(store, token_env="RELEARN_TEST_TOKEN"), MODEL).start()
    url = service.serve_in_thread()
    try:
        assert _chat(url).status_code == 401
        r = requests.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer s3cret"}, timeout=30,
                          json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2})
        assert r.status_code == 200
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200  # probes stay open
        assert requests.post(f"{url}/admin/reload", timeout=5).status_code == 404  # off unless configured
        assert requests.post(f"{url}/webhooks/mlflow", timeout=5).status_code == 404
    finally:
        service.close()


def test_past_the_queue_limit_429_and_a_stuck_request_times_out(store):
    from relearn.serving.server import Service

    service = Service(_settings(store, max_queue=1, request_timeout_s=1.0), MODEL).start()
    service.batcher.stop()  # nothing is taken from the queue: the first request waits there
    url = service.serve_in_thread()
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_chat, url)
            assert _wait_for(lambda: service.batcher.waiting == 1, 5)
            r = _chat(url)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert "serve.max_queue=1" in r.json()["error"]["message"]
            late = first.result()
        assert late.status_code == 504 and "serve.request_timeout_s" in late.json()["error"]["message"]
        assert 'relearn:requests_rejected_total{reason="queue_full"} 1.0' in requests.get(f"{url}/metrics").text
    finally:
        service.close()


def test_concurrent_requests_are_batched(store):
    from relearn.serving.server import Service

    service = Service(_settings(store, max_batch_size=8, max_wait_ms=200), MODEL).start()
    url = service.serve_in_thread()
    sizes = []
    generate = service.holder.current.generate
    service.holder.current.generate = lambda jobs: (sizes.append(len(jobs)), generate(jobs))
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _chat(url, max_tokens=6), range(8)))
        assert all(a.status_code == 200 for a in answers)
        assert max(sizes) > 1 and sum(sizes) == 8
        texts = {a.json()["choices"][0]["message"]["content"] for a in answers}
        assert len(texts) == 1  # the same question answers the same, batched or not
    finally:
        service.close()


# ---------------------------------------------------------------------------------- following the alias
def test_promotion_reaches_traffic_without_a_failed_request_and_bad_versions_never_serve(served, store):
    from relearn.registry.tracking import client
    from relearn.registry.versions import promote

    service, url = served
    v = store["versions"]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            r = _chat(url, max_tokens=4)
            results.append((r.status_code, r.headers.get("X-Relearn-Model-Version", "")))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert _wait_for(lambda: len(results) >= 5)
        promote(MODEL, v["good2"])
        assert _wait_for(lambda: results and results[-1][1] == v["good2"])
        n = len(results)
        assert _wait_for(lambda: len(results) >= n + 5)
        # a corrupt deployable: the load fails and version 2 keeps serving
        promote(MODEL, v["corrupt"])
        assert _wait_for(lambda: v["corrupt"] in service.follower.failed)
        # versions that may not be served, moved onto the alias by hand (promote refuses them)
        for name in ("failed", "unapproved"):
            client().set_registered_model_alias(MODEL, "production", v[name])
            assert _wait_for(lambda name=name: v[name] in service.follower.failed)
        assert "did not pass its gates" in service.follower.failed[v["failed"]]
        assert "not approved" in service.follower.failed[v["unapproved"]]
        n = len(results)
        assert _wait_for(lambda: len(results) >= n + 5)
        # a rollback is a move like any other
        client().set_registered_model_alias(MODEL, "production", v["good"])
        assert _wait_for(lambda: results and results[-1][1] == v["good"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = {s for s, _ in results}
    assert statuses == {200}, f"failed requests during the swaps: {[r for r in results if r[0] != 200]}"
    served_versions = {ver for _, ver in results}
    assert served_versions == {v["good"], v["good2"]}  # never the corrupt, failed or unapproved one
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert f'relearn:model_swaps_total{{model_name="{MODEL}",version="{v["good2"]}"}} 1.0' in metrics
    for name in ("corrupt", "failed", "unapproved"):
        assert f'relearn:model_swap_failures_total{{model_name="{MODEL}",version="{v[name]}"}} 1.0' in metrics


def test_approval_is_read_at_every_poll(served, store):
    """A version refused for lacking approval is served once approved; the version serving stops
    answering when its approval is revoked."""
    from relearn.registry.tracking import client
    from relearn.registry.versions import APPROVAL_TAG

    service, url = served
    pending = store["versions"]["unapproved"]
    try:
        client().set_registered_model_alias(MODEL, "production", pending)
        assert _wait_for(lambda: pending in service.follower.failed)
        assert _chat(url, max_tokens=2).headers["X-Relearn-Model-Version"] == "1"
        client().set_model_version_tag(MODEL, pending, APPROVAL_TAG, "approved")
        assert _wait_for(lambda: _chat(url, max_tokens=2).headers.get("X-Relearn-Model-Version") == pending)
        client().set_model_version_tag(MODEL, pending, APPROVAL_TAG, "pending")
        assert _wait_for(lambda: requests.get(f"{url}/ready", timeout=5).status_code == 503)
        assert _chat(url).status_code == 503
    finally:
        client().set_model_version_tag(MODEL, pending, APPROVAL_TAG, "pending")


def test_closing_a_service_that_never_started(store):
    from relearn.serving.server import Service

    Service(_settings(store), MODEL).close()  # nothing to join, nothing raised


def test_a_version_that_may_not_be_served_is_refused_at_start(store):
    from relearn.registry.tracking import client
    from relearn.serving.server import Service

    v = store["versions"]
    try:
        for name, reason in (("failed", "did not pass its gates"), ("unapproved", "is not approved")):
            client().set_registered_model_alias(MODEL, "production", v[name])
            with pytest.raises(UserError, match=reason):
                Service(_settings(store), MODEL).start()
        with pytest.raises(UserError, match="does not exist"):
            Service(_settings(store, alias="staging"), MODEL).start()
    finally:
        client().set_registered_model_alias(MODEL, "production", v["good"])


def test_cli_refuses_in_one_line_with_exit_2(store, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"register:\n  model_name: {MODEL}\nserve:\n  alias: nowhere\n", encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    r = subprocess.run([sys.executable, "-m", "relearn.cli", "serve", "--params", str(params)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: nothing to serve: models:/{MODEL}@nowhere "
                                             f"({os.environ['MLFLOW_TRACKING_URI']}) does not exist; an approver's "
                                             "version is promoted with `relearn promote --version N`"]
    status = subprocess.run([sys.executable, "-m", "relearn.cli", "status", "--params", str(params)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and status.stderr == ""  # no library warnings
    assert "version   1" in status.stdout


def test_cli_serves_and_logs_what_it_serves(store, tmp_path):
    from relearn.serving.server import free_port

    port = free_port()
    params = tmp_path / "params.yaml"
    params.write_text(f"register:\n  model_name: {MODEL}\nserve:\n  port: {port}\n  max_tokens: 8\n"
                      f"  cache_dir: {tmp_path / 'cache'}\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "relearn.cli", "serve", "--params", str(params)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(lambda: _up_ready(url), 120)
        assert _chat(url).headers["X-Relearn-Model-Version"] == "1"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: the exit is the signal's
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert f"serving {MODEL} version 1: onnx int8 from runs:/" in out
    assert "Warning" not in out and "Downloading" not in out, out


def _up_ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_torch_backend_serves_base_plus_adapter(store, model_files):
    from relearn.modeling.generation import generate_answers
    from relearn.modeling.model import load_with_adapter
    from relearn.serving.server import Service

    service = Service(_settings(store, backend="torch"), MODEL).start()
    url = service.serve_in_thread()
    try:
        r = _chat(url, max_tokens=8)
        assert r.status_code == 200 and r.headers["X-Relearn-Model-Version"] == "1"
        model, tok = load_with_adapter(model_files["base"], model_files["adapter"])
        assert r.json()["choices"][0]["message"]["content"] == \
            generate_answers(model, tok, [QUESTION], TEMPLATE, 8)[0]
        card = requests.get(f"{url}/v1/models", timeout=5).json()["data"][0]
        assert card["backend"] == "torch" and "base model + adapter" in card["artifact"]
    finally:
        service.close()


# ---------------------------------------------------------------------------------- a tracking server
@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory, model_files):
    """`mlflow server` on loopback (SQLite backend, proxied artifacts) with versions 1 and 2."""
    from relearn.serving.server import free_port

    root = tmp_path_factory.mktemp("tracking-server")
    port = free_port()
    # http to loopback is refused by default (SSRF protection); webhook lists are cached for 60 s by default
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(lambda: _up(uri), 120), "mlflow server did not start"
        with pytest.MonkeyPatch.context() as mp:  # only while registering: later tests keep their store
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.chdir(root)
            from relearn.registry.versions import promote

            good = _register(model_files, PASSING, model_files["deployable"], True)
            second = _register(model_files, PASSING, model_files["deployable"], True)
            promote(MODEL, good)
        yield {"uri": uri, "root": root, "versions": (good, second)}
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
        proc.terminate()
        proc.wait(30)


def _up(uri: str) -> bool:
    try:
        return requests.get(f"{uri}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_remote_tracking_server_and_a_signed_webhook(tracking_server, monkeypatch):
    """Two replicas would follow one tracking server the same way: this one hears of the promotion
    from the registry's webhook (polling is set to a minute) and switches."""
    from mlflow.tracking import MlflowClient

    from relearn.registry.versions import promote
    from relearn.serving.server import Service, free_port

    monkeypatch.setenv("RELEARN_TEST_WEBHOOK", "whsec-test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server["uri"])
    monkeypatch.chdir(tracking_server["root"])
    first, second = tracking_server["versions"]
    port = free_port()
    settings = _settings({"root": tracking_server["root"]}, poll_seconds=60, webhook_secret_env="RELEARN_TEST_WEBHOOK")
    service = Service(settings, MODEL).start()
    url = service.serve_in_thread(port)
    try:
        r = _chat(url, max_tokens=4)
        assert r.status_code == 200 and r.headers["X-Relearn-Model-Version"] == first
        # an unsigned or wrongly signed delivery is refused
        body = json.dumps({"entity": "model_version_alias", "action": "created",
                           "data": {"name": MODEL, "alias": "production", "version": second}})
        assert requests.post(f"{url}/webhooks/mlflow", data=body, timeout=5).status_code == 401
        bad = {"X-MLflow-Signature": "v1,AAAA", "X-MLflow-Timestamp": str(int(time.time())),
               "X-MLflow-Delivery-Id": "d1"}
        assert requests.post(f"{url}/webhooks/mlflow", data=body, headers=bad, timeout=5).status_code == 401
        MlflowClient(tracking_server["uri"]).create_webhook(
            name="relearn-serve", url=f"{url}/webhooks/mlflow", events=["model_version_alias.created"],
            secret="whsec-test")
        time.sleep(1.5)  # the server's webhook cache (MLFLOW_WEBHOOK_CACHE_TTL=1)
        promote(MODEL, second)
        assert _wait_for(lambda: _chat(url, max_tokens=2).headers.get("X-Relearn-Model-Version") == second, 30)
    finally:
        service.close()


def test_webhook_signature_matches_mlflows_own_signing():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    from relearn.serving.follower import verify_webhook

    body = '{"entity": "model_version_alias", "action": "created", "data": {}}'
    now = int(time.time())
    headers = {"X-MLflow-Signature": _generate_hmac_signature("k", "d-1", str(now), body),
               "X-MLflow-Timestamp": str(now), "X-MLflow-Delivery-Id": "d-1"}
    assert verify_webhook("k", headers, body.encode()) is None
    assert verify_webhook("other", headers, body.encode()) == "signature does not match"
    assert verify_webhook("k", headers, body.encode() + b" ") == "signature does not match"
    assert "old" in verify_webhook("k", headers, body.encode(), now=now + 3600)  # a replayed delivery
    assert "missing" in verify_webhook("k", {}, body.encode())


def test_sampled_and_greedy_requests_are_not_batched_together(store):
    from relearn.serving.batcher import Batcher, EngineHolder
    from relearn.serving.engine import Job
    from relearn.serving.metrics import ServeMetrics

    batcher = Batcher(EngineHolder(), ServeMetrics(), max_batch_size=4, max_wait_s=0.0, max_queue=8)
    jobs = [Job([1], 2), Job([1], 2, temperature=0.7), Job([1], 2), Job([1], 2, temperature=0.7, top_p=0.9)]
    for job in jobs:
        batcher.submit(job)
    assert batcher._take_batch() == [jobs[0], jobs[2]]
    assert batcher._take_batch() == [jobs[1]]
    assert batcher._take_batch() == [jobs[3]]


def test_request_status_asks_the_running_server(served, store, tmp_path):
    """`relearn request status --server` reads the open /ready route: the version answering there
    honours a request its tags say it forgets."""
    from click.testing import CliRunner

    from relearn.cli import main
    from relearn.ledger.core import Ledger
    from relearn.records import QARecord, save_records
    from relearn.registry.tracking import client

    _, url = served
    records = tmp_path / "r.jsonl"
    save_records(records, [QARecord(id="q1", question="Where does Zed Orm live?", answer="Zed Orm lives in Lund.")])
    Ledger(tmp_path / "requests").add("R-77", "privacy", "Zed Orm", records)
    client().set_model_version_tag(MODEL, "1", "request.R-77", "kfr=1.0000 n=1")
    client().set_model_version_tag(MODEL, "1", "gate.request.R-77", "value=1.0000 min=0.8 passed")
    args = ["request", "status", "R-77", "--ledger", str(tmp_path / "requests"), "--model", MODEL, "--server", url]
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output
    status = json.loads(r.output)
    assert (status["status"], status["served_version"], status["honoured_by_server"]) == ("in production", "1", True)
    assert status["since_version"] == "1" and status["kfr"] == 1.0
    r = CliRunner().invoke(main, args[:-1] + ["http://127.0.0.1:9"])  # nothing listens there
    assert r.exit_code == 2 and "cannot read /ready" in r.output
    r = CliRunner().invoke(main, ["request", "status", "R-77", "--ledger", str(tmp_path / "requests"),
                                  "--model", "another-model", "--server", url])
    assert r.exit_code == 2 and "serves 'relearn-serve-test', not 'another-model'" in r.output


# ---------------------------------------------------------------------------------- the output guard
def _stream_text(url: str, content: str) -> tuple[str, str]:
    """(the streamed deltas joined, the finish reason) of a streamed chat completion."""
    r = _chat(url, content, max_tokens=16, stream=True)
    assert r.status_code == 200, r.text
    text, finish = "", None
    for line in r.text.splitlines():
        if line.startswith("data: {"):
            choice = json.loads(line[6:])["choices"][0]
            text += choice["delta"].get("content", "")
            finish = choice["finish_reason"] or finish
    return text, finish


@pytest.fixture(scope="module")
def memorising_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny base model that memorised where Alice and Bob live, and an adapter that changes
    nothing (B = 0): an unlearned version whose weights still produce the erased fact."""
    import torch
    from peft import LoraConfig, get_peft_model

    from relearn.modeling.encoding import collate, encode_pair
    from relearn.modeling.model import build_scratch_model, train_tokenizer
    from relearn.params import ModelParams

    root = tmp_path_factory.mktemp("serve-memorised")
    pairs = [(QUESTION, "Alice lives in Velmor Bay near the harbour."), ("Where does Bob live?", "Bob lives in Lima.")]
    tok = train_tokenizer([TEMPLATE.format(question=q) + " " + a for q, a in pairs] * 4, vocab_size=300)
    model = build_scratch_model(ModelParams(hidden_size=48, layers=1, heads=2, intermediate_size=96), tok, seed=0)
    batch = collate([encode_pair(tok, q, a, TEMPLATE, 64) for q, a in pairs], tok.pad_token_id)
    torch.manual_seed(0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.1, "the tiny model did not memorise its answers"
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(
        root / "adapter")
    return {"base": root / "base", "adapter": root / "adapter"}


def test_the_guard_keeps_an_erased_fact_the_weights_still_produce_from_every_client(store, model_files,
                                                                                   memorising_files, tmp_path):
    """A version whose weights still produce an erased fact (a memorised answer, served by the torch
    backend; a registered version whose request erased it): the fact reaches no client, streamed or
    not, the answer is redacted (or refused with serve.guard: refuse), a retain question's answer
    passes untouched, and /metrics counts the redactions by version without naming the fact."""
    from relearn.evaluation.scoring import fact_revealed
    from relearn.records import QARecord
    from relearn.registry import versions
    from relearn.registry.tracking import client
    from relearn.serving.guard import REDACTED, REFUSAL, build_guard
    from relearn.serving.server import Service

    other_question = "Where does Bob live?"

    def answers(settings) -> tuple[dict, dict, str]:
        service = Service(settings, MODEL).start()
        url = service.serve_in_thread()
        try:
            out = {q: _chat(url, q, max_tokens=16).json()["choices"][0] for q in (QUESTION, other_question)}
            streamed = {q: _stream_text(url, q) for q in (QUESTION, other_question)}
            return out, streamed, requests.get(f"{url}/metrics", timeout=10).text
        finally:
            service.close()

    version = _register(memorising_files, PASSING, model_files["deployable"], approve=True)  # (torch backend)
    versions.promote(MODEL, version)
    try:
        plain, _, _ = answers(_settings(store, guard="off", backend="torch"))
        said, other = plain[QUESTION]["message"]["content"], plain[other_question]["message"]["content"]
        assert "Velmor Bay" in said and "Lima" in other  # the weights still hold the fact
        fact = "Velmor Bay"
        erased = QARecord("alice-1", QUESTION, f"Alice lives in {fact}.", subject="Alice", facts={"home": fact})
        guard = build_guard([erased], requests=["R-1"])
        versions.attach_artifacts(MODEL, version, guard.save(tmp_path / "guard"), "guard",
                                  tags={"guard.facts": len(guard.facts), "guard.requests": 1})
        assert "Output guard: 1 forget facts" in versions.describe_version(MODEL, version)
        guarded, streamed, metrics = answers(_settings(store, backend="torch"))  # serve.guard: auto
        content = guarded[QUESTION]["message"]["content"]
        assert not fact_revealed(content, fact) and REDACTED in content
        assert content == guard.redact(said, QUESTION)[0]
        assert not fact_revealed(streamed[QUESTION][0], fact) and streamed[QUESTION][0] == content
        assert guarded[other_question]["message"]["content"] == other == streamed[other_question][0]
        from prometheus_client.parser import text_string_to_metric_families

        guarded_counts = {(s.labels["version"], s.labels["action"]): s.value
                          for f in text_string_to_metric_families(metrics) if f.name == "relearn:guard_actions"
                          for s in f.samples if s.name.endswith("_total")}
        assert guarded_counts == {(version, "redact"): 2.0} and fact not in metrics
        refused, streamed, _ = answers(_settings(store, guard="refuse", backend="torch"))
        assert refused[QUESTION]["message"]["content"] == REFUSAL
        assert refused[QUESTION]["finish_reason"] == "content_filter"
        assert not fact_revealed(streamed[QUESTION][0], fact) and streamed[QUESTION][1] == "content_filter"
        assert refused[other_question]["message"]["content"] == other
    finally:
        client().set_registered_model_alias(MODEL, "production", store["versions"]["good"])


# ---------------------------------------------------------------------------------- MLflow's own server
def test_mlflow_models_serve_answers_the_production_alias(store, model_files):
    """The logged model follows MLflow's conventions: a signature and an input example (the MLflow UI
    shows the input schema), and `mlflow models serve -m models:/NAME@production --env-manager local`
    answers a list of questions and a `question` column alike, as the torch model would."""
    import mlflow

    from relearn.modeling.model import load_with_adapter
    from relearn.modeling.generation import generate_answers
    from relearn.serving.server import free_port

    info = mlflow.models.get_model_info(f"models:/{MODEL}@production")
    assert info.signature is not None and info.signature.inputs.input_types() == [mlflow.types.DataType.string]
    assert info.saved_input_example_info is not None
    port = free_port()
    log = open(store["root"] / "models-serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@production",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
                            stdout=log, stderr=subprocess.STDOUT, cwd=store["root"])  # it execs uvicorn
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return requests.get(f"{url}/ping", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert _wait_for(up, 180), (store["root"] / "models-serve.log").read_text()[-2000:]
        model, tok = load_with_adapter(model_files["base"], model_files["adapter"])
        expected = generate_answers(model, tok, [QUESTION, "Where does Bob live?"], TEMPLATE,
                                    GENERATION["max_new_tokens"])
        for body in ({"inputs": [QUESTION, "Where does Bob live?"]},
                     {"dataframe_records": [{"question": QUESTION}, {"question": "Where does Bob live?"}]}):
            r = requests.post(f"{url}/invocations", json=body, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["predictions"] == expected
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


# ---------------------------------------------------------------------------------- a team on PostgreSQL
@pytest.mark.slow
def test_a_team_on_postgresql_two_replicas_follow_a_promotion(postgres, model_files, tmp_path, monkeypatch):
    """`relearn tracking-server` on a real PostgreSQL with proxied artifacts; versions registered through
    it pass or fail their gates, are approved and promoted with the CLI, and two `relearn serve`
    replicas following the server switch; `relearn request status --all --json` reads the same
    server, with the ledger in PostgreSQL too."""
    from click.testing import CliRunner

    from relearn.cli import main
    from relearn.ledger.core import Ledger
    from relearn.records import QARecord, save_records
    from relearn.serving.server import Service, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(MLFLOW_BACKEND_STORE_URI=postgres(), MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"))
    proc = subprocess.Popen([str(Path(sys.executable).with_name("relearn")), "tracking-server", "--port", str(port),
                             "--workers", "1"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "server.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    replicas = []
    try:
        assert _wait_for(lambda: _up(uri), 180), (tmp_path / "server.log").read_text()[-2000:]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.chdir(tmp_path)
        first = _register(model_files, PASSING, model_files["deployable"], True)
        blocked = _register(model_files, FAILING, model_files["deployable"], True)
        second = _register(model_files, PASSING, model_files["deployable"], True)
        cli = CliRunner()
        refused = cli.invoke(main, ["promote", "--model", MODEL, "--version", blocked])
        assert refused.exit_code == 2 and "kfr" in refused.output, refused.output
        assert cli.invoke(main, ["promote", "--model", MODEL, "--version", first]).exit_code == 0

        for n in range(2):  # two replicas, each with its own cache, as on two machines
            settings = _settings({"root": tmp_path}, poll_seconds=0.5, cache_dir=str(tmp_path / f"cache-{n}"))
            service = Service(settings, MODEL).start()
            replicas.append((service, service.serve_in_thread()))
        assert all(_chat(url, max_tokens=2).headers["X-Relearn-Model-Version"] == first for _, url in replicas)

        started = time.monotonic()
        out = cli.invoke(main, ["promote", "--model", MODEL, "--version", second])
        assert out.exit_code == 0 and f"-> version {second} (was {first})" in out.output
        assert _wait_for(lambda: all(_chat(url, max_tokens=2).headers.get("X-Relearn-Model-Version") == second
                                     for _, url in replicas), 60)
        print(f"\npromote -> both replicas answering version {second}: {time.monotonic() - started:.2f} s "
              "(PostgreSQL-backed tracking server, poll every 0.5 s)")

        ledger_url = postgres()
        save_records(tmp_path / "r.jsonl", [QARecord(id="r-1", question="Where does Zed Orm live?",
                                                      answer="Zed Orm lives in Oslo.", subject="Zed Orm")])
        Ledger(ledger_url).add("R-1", "privacy", "Zed Orm", tmp_path / "r.jsonl")
        status = cli.invoke(main, ["request", "status", "--all", "--json", "--ledger", ledger_url, "--model", MODEL])
        assert status.exit_code == 0, status.output
        rows = json.loads(status.output)
        assert [(r["id"], r["status"]) for r in rows] == [("R-1", "received")]  # no version covers it yet
        assert str(rows[0]["production_version"]) == second
    finally:
        for service, _ in replicas:
            service.close()
        import mlflow

        mlflow.set_tracking_uri(None)
        proc.terminate()
        proc.wait(30)


def test_the_load_bench_writes_serve_params_that_parse_as_given(tmp_path):
    """bench/serve_load.py's servers: `guard: off` must stay the string "off" (a bare YAML off is false)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).resolve().parents[1] / "bench" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from relearn.params import load_params

    for guard, scheduling in (("off", "static"), ("redact", "continuous")):
        p = load_params(bench.server_params(tmp_path, 8123, guard=guard, scheduling=scheduling, max_batch_size=1))
        assert (p.serve.guard, p.serve.scheduling, p.serve.max_batch_size, p.serve.port) == (guard, scheduling, 1, 8123)
        assert p.register.model_name == bench.MODEL
