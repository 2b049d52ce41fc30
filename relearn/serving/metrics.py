"""Prometheus metrics of `relearn serve` (GET /metrics).

Names are vLLM's (`vllm:<name>`) under the `relearn:` prefix, so a vLLM dashboard needs only the
prefix changed: num_requests_running, num_requests_waiting, time_to_first_token_seconds,
time_per_output_token_seconds, e2e_request_latency_seconds, prompt_tokens_total,
generation_tokens_total, request_success_total. relearn's own: model_swaps_total,
model_swap_failures_total, requests_rejected_total, guard_actions_total, model_info. Every series carries `model_name`
and `version` (the version that answered; for waiting requests, the version serving now).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "relearn:"
LABELS = ("model_name", "version")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.running = Gauge(PREFIX + "num_requests_running", "Requests in the batch being generated.", LABELS, registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Requests queued for a batch.", LABELS, registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time from arrival to the first output token.",
                              LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(PREFIX + "time_per_output_token_seconds", "Time per output token after the first.",
                              LABELS, buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Time from arrival to the last token.",
                             LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.", LABELS, registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", LABELS, registry=r)
        self.success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                               LABELS + ("finished_reason",), registry=r)
        self.rejected = Counter(PREFIX + "requests_rejected", "Requests refused (queue_full, timeout, invalid, "
                                "unauthorized, not_ready).", ("reason",), registry=r)
        self.swaps = Counter(PREFIX + "model_swaps", "Switches to a newly loaded version.", LABELS, registry=r)
        self.swap_failures = Counter(PREFIX + "model_swap_failures", "Versions that failed to load or to pass their "
                                     "check; the previous version kept serving.", LABELS, registry=r)
        self.guard = Counter(PREFIX + "guard_actions", "Answers the output guard changed, by action (redact, "
                             "refuse); the facts themselves are never in a label or the log.",
                             LABELS + ("action",), registry=r)
        self.info = Gauge(PREFIX + "model_info", "1 for the version serving now.",
                          LABELS + ("backend", "quantization"), registry=r)

    def job_done(self, job, model_name: str) -> None:
        """Record a finished job's latencies and token counts under the version that ran it."""
        labels = (model_name, job.version)
        self.prompt_tokens.labels(*labels).inc(len(job.prompt))
        self.generation_tokens.labels(*labels).inc(len(job.tokens))
        self.success.labels(*labels, job.finish_reason or "unknown").inc()
        if job.first_token is not None:
            self.ttft.labels(*labels).observe(job.first_token - job.submitted)
            if job.finished is not None and len(job.tokens) > 1:
                self.tpot.labels(*labels).observe((job.finished - job.first_token) / (len(job.tokens) - 1))
        if job.finished is not None:
            self.e2e.labels(*labels).observe(job.finished - job.submitted)

    def serving(self, engine, previous=None) -> None:
        if previous is not None:
            self.info.remove(previous.model_name, previous.version, previous.backend, previous.quantization)
            for gauge in (self.waiting, self.running):  # its queue is the new version's now
                try:
                    gauge.remove(previous.model_name, previous.version)
                except KeyError:
                    pass
        self.info.labels(engine.model_name, engine.version, engine.backend, engine.quantization).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
