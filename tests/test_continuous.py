"""Continuous batching on the torch engine: rows join and leave between decoding steps, greedy
answers stay what `generate_answers` gives, a short request no longer waits for a long one, and a
model whose cache cannot be joined falls back to static batches."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from relearn.serving.batcher import Batcher, EngineHolder
from relearn.serving.continuous import DecodeSession
from relearn.serving.engine import Job, load_torch_engine
from relearn.serving.metrics import ServeMetrics
from tiny import save_base_and_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = "Question: {question}\nAnswer:"
GENERATION = {"prompt_format": {"template": TEMPLATE, "mode": "plain", "system": None, "prefill": ""},
              "dtype": "float32"}
TEXTS = [f"Question: Where does {n} live?\nAnswer: {n} lives in {c} and works as a {j}."
         for n in ("Alice", "Bob", "Carol", "Dan", "Eve") for c in ("Paris", "Lima", "Oslo") for j in ("baker", "pilot")]
QUESTIONS = ["Where does Alice live?", "What does Bob do?", "Where does Carol work as a pilot?",
             "Is Dan a baker in Lima?", "Where?", "Tell me everything about Eve and where she lives and works."]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    files = save_base_and_adapter(tmp_path_factory.mktemp("continuous"), TEXTS * 4)
    return load_torch_engine(files["base"], files["adapter"], GENERATION, model_name="m", version="1",
                             artifact="test")


def _job(engine, question: str, max_tokens: int, **kw) -> Job:
    return Job(prompt=engine.question_prompt(question), max_tokens=max_tokens, **kw)


def test_greedy_rows_that_join_and_leave_mid_flight_answer_as_generate_answers(engine):
    from relearn.modeling.generation import generate_answers

    expected = generate_answers(engine.model, engine.tokenizer, QUESTIONS, engine.fmt, 10, batch_size=4)
    jobs = [_job(engine, q, 10) for q in QUESTIONS]
    session = DecodeSession(engine, (0.0, 1.0))
    session.add(jobs[:2])
    sizes = []
    for step in range(12):
        if step == 2:
            session.add(jobs[2:4])  # prompts of other lengths join a batch already decoding
        if step == 5:
            session.add(jobs[4:])
        if len(session):
            session.step()
        sizes.append(len(session))
        for layer in session.cache.layers if session.cache is not None else []:
            assert layer.keys.shape[0] == len(session) and layer.keys.shape[2] == session.mask.shape[1]
    while len(session):
        session.step()
    assert [j.text for j in jobs] == expected
    assert all(j.finish_reason in ("length", "stop") for j in jobs)
    assert max(sizes) == 6 and sizes[-1] < 6  # all six decoded together, then rows left as they finished


def test_per_row_lengths_match_each_prompt_alone(engine):
    lengths = [12, 3, 9, 16, 5, 7]
    alone = []
    for q, n in zip(QUESTIONS, lengths):
        job = _job(engine, q, n)
        engine.generate([job])
        alone.append(job.tokens)
    jobs = [_job(engine, q, n) for q, n in zip(QUESTIONS, lengths)]
    session = DecodeSession(engine, (0.0, 1.0))
    for job in jobs:
        session.add([job])  # one newcomer every step
        session.step()
    while len(session):
        session.step()
    assert [j.tokens for j in jobs] == alone


def test_a_short_request_is_answered_while_a_long_one_decodes(engine):
    holder = EngineHolder(engine)
    batcher = Batcher(holder, ServeMetrics(), max_batch_size=8, max_wait_s=0.0, max_queue=8,
                      scheduling="continuous").start()
    try:
        long = _job(engine, QUESTIONS[5], 200)
        started = threading.Event()
        long.on_event = lambda kind, payload: started.set() if kind == "token" else None
        done = threading.Event()
        short = _job(engine, QUESTIONS[0], 3, on_event=lambda kind, payload: done.set() if kind == "done" else None)
        batcher.submit(long)
        assert started.wait(30)
        batcher.submit(short)
        assert done.wait(30)
        assert short.finish_reason == "length" and long.finished is None  # the long row is still decoding
    finally:
        long.cancelled.set()
        batcher.stop()
    assert long.finish_reason == "cancelled"


def test_static_scheduling_runs_the_batch_to_its_longest_row(engine):
    batcher = Batcher(EngineHolder(engine), ServeMetrics(), max_batch_size=8, max_wait_s=0.2, max_queue=8,
                      scheduling="static").start()
    try:
        jobs = [_job(engine, QUESTIONS[5], 40), _job(engine, QUESTIONS[0], 2)]
        for job in jobs:
            batcher.submit(job)
        deadline = time.monotonic() + 60
        while any(j.finished is None for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [j.finish_reason for j in jobs] == ["length", "length"]
        assert jobs[1].started == jobs[0].started  # one batch
    finally:
        batcher.stop()


def test_a_cache_that_cannot_be_joined_falls_back_to_static_batches(engine, monkeypatch):
    def refuse(cache):
        raise NotImplementedError("a sliding-window cache")

    monkeypatch.setattr(DecodeSession, "_check", staticmethod(refuse))
    batcher = Batcher(EngineHolder(engine), ServeMetrics(), max_batch_size=4, max_wait_s=0.0, max_queue=8,
                      scheduling="auto").start()
    try:
        job = _job(engine, QUESTIONS[0], 4)
        finished = threading.Event()
        job.on_event = lambda kind, payload: finished.set() if kind in ("done", "error") else None
        batcher.submit(job)
        assert finished.wait(30) and job.finish_reason == "length" and len(job.tokens) == 4
        assert engine.continuous is False  # later batches on this engine are static
    finally:
        batcher.stop()
        engine.continuous = True


def test_sampled_rows_follow_temperature_and_top_p(engine):
    torch.manual_seed(0)
    session = DecodeSession(engine, (0.7, 0.9))
    jobs = [_job(engine, q, 6, temperature=0.7, top_p=0.9) for q in QUESTIONS[:3]]
    session.add(jobs)
    while len(session):
        session.step()
    assert all(j.finish_reason in ("length", "stop") for j in jobs)
    logits = torch.tensor([[5.0, 4.9, -10.0, -10.0]])
    picks = {int(DecodeSession(engine, (1.0, 0.5))._choose(logits)[0]) for _ in range(50)}
    assert picks == {0}  # top_p 0.5 keeps the single most likely token here
