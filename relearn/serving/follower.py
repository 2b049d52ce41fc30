"""Following a registry alias: a promotion or a rollback reaches traffic without a restart.

`AliasFollower` reads the alias every `poll_seconds` (and at once when `wake()` is called, which an
MLflow webhook does). When it names another version than the one serving, the new version is
loaded completely beside the old one and checked (`Engine.self_check`); only then does the
`EngineHolder` switch, so the next batch runs on it while the running batch finishes on the old one.
A version that may not be served, fails to load or fails its check leaves the old one serving; the
failure is logged and counted. A refused version is checked again at every reading (approving it
is enough), one that failed to load after `retry_seconds`. If the version serving loses its
approval, it stops answering (503) until a servable version is behind the alias.

MLflow registry webhooks (MLflow >= 3.3) sign `<delivery id>.<timestamp>.<body>` with HMAC-SHA256
and send `X-MLflow-Signature: v1,<base64 digest>`; `verify_webhook` checks it and the timestamp.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from typing import Callable, Optional

from relearn.serving.batcher import EngineHolder
from relearn.serving.metrics import ServeMetrics
from relearn.serving.registry import AliasTarget, RegistrySource, VersionLoader

log = logging.getLogger("relearn.serve")
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"
WEBHOOK_MAX_AGE_S = 300  # a signed delivery older than this is refused (replay)


class AliasFollower:
    def __init__(self, source: RegistrySource, loader: VersionLoader, holder: EngineHolder, metrics: ServeMetrics,
                 poll_seconds: float, on_swap: Optional[Callable] = None):
        self.source, self.loader, self.holder, self.metrics = source, loader, holder, metrics
        self.poll_seconds = poll_seconds
        self.on_swap = on_swap
        self.failed: dict[str, str] = {}   # version -> why it is not serving
        self._retry_at: dict[str, float] = {}  # version that failed to load -> when to try it again
        self.retry_seconds = max(30.0, 10 * poll_seconds)
        self.last_error: Optional[str] = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one check at a time (poll thread, webhook, admin route)
        self._thread = threading.Thread(target=self._loop, name="relearn-alias-follower", daemon=True)

    def start(self) -> "AliasFollower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(10)

    def wake(self) -> None:
        """Read the alias now (a webhook or the admin route)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception as e:  # the registry is unreachable: keep serving, try again next time
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("cannot read %s: %s", self.source.describe(), self.last_error)

    def check(self) -> Optional[str]:
        """Read the alias; load and switch to its version if it is another one. The version serving after.

        A version that may not be served (gates, approval) is refused at every reading, so approving
        it later is enough; one that failed to load is tried again after `retry_seconds`. When the
        version serving stops being servable (its approval is revoked), it stops answering."""
        with self._lock:
            target = self.source.resolve()
            current = self.holder.current
            serving = current.version if current else None
            if target is None:
                if serving is not None and self.last_error != "alias gone":
                    log.warning("%s is gone; version %s keeps serving", self.source.describe(), serving)
                self.last_error = "alias gone"
                return serving
            if target.problem:
                self._refuse(target.version, target.problem)
                if target.version == serving:
                    self.holder.clear()
                    log.error("stopped serving version %s: it may no longer be served; promote an approved "
                              "version", serving)
                    return None
                return serving
            if target.version == serving:
                self.failed.clear()
                self.last_error = None
                return serving
            if time.monotonic() < self._retry_at.get(target.version, 0.0):
                return serving
            return self._switch(target, current)

    def _refuse(self, version: str, problem: str) -> None:
        if self.failed.get(version) != problem:  # log and count once per refusal, not at every reading
            self.failed[version] = problem
            self.last_error = f"version {version} not served: {problem}"
            self.metrics.swap_failures.labels(self.source.model_name, version).inc()
            log.error("version %s is not served: %s", version, problem)

    def _switch(self, target: AliasTarget, current) -> Optional[str]:
        serving = current.version if current else None
        labels = (self.source.model_name, target.version)
        started = time.monotonic()
        if serving is None:
            log.info("loading version %s of %s", target.version, self.source.describe())
        else:
            log.info("%s moved to version %s (serving %s): loading it beside it", self.source.describe(),
                     target.version, serving)
        try:
            engine = self.loader.load(target)
            engine.self_check()
        except Exception as e:
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            self.failed[target.version] = reason
            self._retry_at[target.version] = time.monotonic() + self.retry_seconds
            self.last_error = f"version {target.version} not served: {reason}"
            self.metrics.swap_failures.labels(*labels).inc()
            log.error("version %s was not loaded (%s); %s", target.version, reason,
                      f"version {serving} keeps serving" if serving else "nothing is serving")
            return serving
        self.failed.pop(target.version, None)
        self._retry_at.pop(target.version, None)
        previous = self.holder.swap(engine)
        self.metrics.swaps.labels(*labels).inc()
        self.metrics.serving(engine, previous)
        self.last_error = None
        log.info("serving %s (loaded and checked in %.1f s)", engine.describe(), time.monotonic() - started)
        if self.on_swap:
            self.on_swap(engine, previous)
        return engine.version


def verify_webhook(secret: str, headers, body: bytes, now: Optional[float] = None) -> Optional[str]:
    """None when the MLflow webhook signature is valid, else why it is not."""
    signature, stamp, delivery = (headers.get(h) for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER))
    if not signature or not stamp or not delivery:
        return f"missing {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} or {DELIVERY_HEADER}"
    try:
        age = abs((now or time.time()) - int(stamp))
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a number"
    if age > WEBHOOK_MAX_AGE_S:
        return f"timestamp is {age:.0f} s old (at most {WEBHOOK_MAX_AGE_S})"
    if not signature.startswith("v1,"):
        return "unknown signature version"
    signed = f"{delivery}.{stamp}.".encode("utf-8") + body
    expected = base64.b64encode(hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature[3:].encode("utf-8", "surrogateescape")):
        return "signature does not match"
    return None
