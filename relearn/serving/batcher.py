"""Batching: a bounded queue of jobs and one worker thread that generates them.

Static batches (the ONNX engine, or `scheduling="static"`): the worker takes the oldest waiting job,
waits up to `max_wait_s` for more jobs decoded the same way (greedy, or the same temperature and
top_p) until it has `max_batch_size`, and runs them as one batch on the engine serving at that
moment (`EngineHolder.current`); the batch runs until its longest row ends.

Continuous batching (the torch engine, relearn.serving.continuous): the batch is a `DecodeSession`
that decodes one token per step; between steps, waiting jobs decoded the same way join it (up to
`max_batch_size` rows) and finished rows leave. A new version takes over when the session on the
old one has drained: jobs that started on an engine finish on it, in both modes.

Past `max_queue` waiting jobs, `submit` raises `QueueFull` (the HTTP layer answers 429).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Optional

from relearn.serving.engine import Engine, Job
from relearn.serving.metrics import ServeMetrics

log = logging.getLogger("relearn.serve")


class QueueFull(Exception):
    """More jobs are waiting than the queue holds."""


class EngineHolder:
    """The engine serving now; `swap` replaces it at once, for the next batch."""

    def __init__(self, engine: Optional[Engine] = None):
        self._engine = engine
        self._lock = threading.Lock()
        self.loaded = threading.Event()
        if engine is not None:
            self.loaded.set()

    @property
    def current(self) -> Optional[Engine]:
        with self._lock:
            return self._engine

    def clear(self) -> Optional[Engine]:
        """Stop serving: requests get 503 until the next swap."""
        with self._lock:
            previous, self._engine = self._engine, None
        self.loaded.clear()
        return previous

    def swap(self, engine: Engine) -> Optional[Engine]:
        with self._lock:
            previous, self._engine = self._engine, engine
        self.loaded.set()
        return previous


class Batcher:
    def __init__(self, holder: EngineHolder, metrics: ServeMetrics, *, max_batch_size: int, max_wait_s: float,
                 max_queue: int, scheduling: str = "auto"):
        if scheduling not in ("auto", "static", "continuous"):
            raise ValueError(f"scheduling {scheduling!r}: auto | static | continuous")
        self.holder, self.metrics, self.scheduling = holder, metrics, scheduling
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self.running = 0
        self._thread = threading.Thread(target=self._loop, name="relearn-batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (serve.max_queue={self.max_queue})")
            self._waiting.append(job)
            self._cv.notify_all()
        self.update_gauges()

    def update_gauges(self) -> None:
        engine = self.holder.current
        if engine is not None:
            self.metrics.waiting.labels(engine.model_name, engine.version).set(len(self._waiting))

    def _take_batch(self) -> list[Job]:
        """Block until jobs wait; return up to max_batch_size of the oldest job's kind."""
        with self._cv:
            while not self._waiting and not self._stop:
                self._cv.wait(0.5)
            if self._stop:
                return []
            deadline = time.monotonic() + self.max_wait_s
            kind = self._waiting[0].sampling
            while True:
                same = sum(1 for j in self._waiting if j.sampling == kind)
                left = deadline - time.monotonic()
                if same >= self.max_batch_size or left <= 0 or self._stop:
                    break
                self._cv.wait(left)
            batch, rest = [], collections.deque()
            while self._waiting:
                job = self._waiting.popleft()
                if len(batch) < self.max_batch_size and job.sampling == kind:
                    batch.append(job)
                else:
                    rest.append(job)
            self._waiting = rest
            return batch

    def _take_now(self, kind: tuple, n: int) -> list[Job]:
        """Up to n waiting jobs of `kind`, oldest first, without waiting."""
        with self._cv:
            taken, rest = [], collections.deque()
            while self._waiting:
                job = self._waiting.popleft()
                (taken if len(taken) < n and job.sampling == kind else rest).append(job)
            self._waiting = rest
        return taken

    @staticmethod
    def _live(batch: list[Job]) -> list[Job]:
        """The jobs whose clients still wait; the others end as cancelled before they start."""
        now = time.monotonic()
        live = []
        for job in batch:
            if job.cancelled.is_set() or now > job.deadline:
                job.finish_reason, job.finished = "cancelled", now
                job.on_event("done", "cancelled")
            else:
                live.append(job)
        return live

    def _continuous(self, engine: Engine) -> bool:
        from relearn.serving.continuous import supports

        return self.scheduling != "static" and supports(engine) and getattr(engine, "continuous", True)

    def _loop(self) -> None:
        session = None
        while True:
            if session is not None and len(session):  # decoding: let waiting jobs join, then one step
                if self.holder.current is session.engine and len(session) < self.max_batch_size:
                    joining = self._live(self._take_now(session.sampling, self.max_batch_size - len(session)))
                    if joining:
                        self._begin(joining, session.engine)
                        self._guarded(session, session.add, joining)
                if len(session):
                    self._guarded(session, session.step)
                self.running = len(session)
                self.metrics.running.labels(session.engine.model_name, session.engine.version).set(len(session))
                self.update_gauges()
                continue
            batch = self._take_batch()
            if not batch:
                if self._stop:
                    return
                continue
            live = self._live(batch)
            engine = self.holder.current
            if not live or engine is None:
                continue
            self._begin(live, engine)
            if self._continuous(engine):
                from relearn.serving.continuous import DecodeSession

                session = DecodeSession(engine, live[0].sampling)
                self._guarded(session, session.add, live)
                continue
            self._static(live, engine)

    def _begin(self, jobs: list[Job], engine: Engine) -> None:
        for job in jobs:  # metrics are recorded before the client hears the job is done
            job.on_event = self._recording(job, job.on_event, engine.model_name)

    def _guarded(self, session, action, *args) -> None:
        try:
            action(*args)
        except NotImplementedError as e:  # this model cannot decode in a session: run the jobs statically
            log.warning("continuous batching is off for %s version %s: %s", session.engine.model_name,
                        session.engine.version, e)
            session.engine.continuous = False  # static batches on this engine from now on
            jobs = [j for j in (args[0] if args else session.jobs) if j.finish_reason is None]
            session.jobs, session.decoded, session.cache, session.mask, session.last = [], [], None, None, None
            for job in jobs:
                job.tokens, job.first_token = [], None
            if jobs:
                self._static(jobs, session.engine)
        except Exception as e:  # a failed step fails its requests, never the server
            log.exception("decoding step failed")
            session.fail(f"generation failed: {type(e).__name__}: {e}")

    def _static(self, live: list[Job], engine: Engine) -> None:
        self.running = len(live)
        gauge = self.metrics.running.labels(engine.model_name, engine.version)
        gauge.set(len(live))
        self.update_gauges()
        try:
            engine.generate(live)
        except Exception:  # Engine.generate reports its own failures; this is a bug, keep serving
            log.exception("batch failed")
            for job in live:
                if job.finish_reason is None:
                    job.finish_reason = "error"
                    job.on_event("error", "internal error")
        finally:
            self.running = 0
            gauge.set(0)

    def _recording(self, job: Job, on_event, model_name: str):
        def on_event_recorded(kind: str, payload) -> None:
            if kind in ("done", "error"):
                self.metrics.job_done(job, model_name)
            on_event(kind, payload)
        return on_event_recorded
