"""Wiring `relearn serve`: the registry source, the first version, the batcher, the follower, uvicorn.

`Service(...).run()` (the CLI) refuses with a `UserError` when the alias names no version or one
that may not be served, then serves HTTP in the foreground while the version loads in the
background (GET /ready is 503 until then). `start()` loads first and starts the batcher and the
alias follower; `serve_in_thread()` then serves HTTP from a thread (tests, benchmarks).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Optional

from relearn.errors import UserError
from relearn.params import ServeParams
from relearn.serving.app import ServeState, build_app
from relearn.serving.batcher import Batcher, EngineHolder
from relearn.serving.follower import AliasFollower
from relearn.serving.metrics import ServeMetrics
from relearn.serving.registry import RegistrySource, VersionLoader

log = logging.getLogger("relearn.serve")


def secret_from_env(variable: Optional[str], what: str) -> Optional[str]:
    """The value of the environment variable named in params (never the secret itself in params)."""
    if not variable:
        return None
    value = os.environ.get(variable, "").strip()
    if not value:
        raise UserError(f"{what}: environment variable {variable} is not set (params name it; it holds the secret)")
    return value


class Service:
    def __init__(self, params: ServeParams, model_name: str, provider: str = "auto"):
        self.params = params
        self.token = secret_from_env(params.token_env, "serve.token_env")
        webhook_secret = secret_from_env(params.webhook_secret_env, "serve.webhook_secret_env")
        if params.host not in ("127.0.0.1", "localhost", "::1") and not self.token:
            log.warning("binding %s without a bearer token (serve.token_env): anyone who reaches it can query "
                        "the model", params.host)
        self.metrics = ServeMetrics()
        self.holder = EngineHolder()
        self.source = RegistrySource(model_name, params.alias)
        self.loader = VersionLoader(self.source, params.backend, params.quantization, params.cache_dir, provider)
        self.batcher = Batcher(self.holder, self.metrics, max_batch_size=params.max_batch_size,
                               max_wait_s=params.max_wait_ms / 1000, max_queue=params.max_queue,
                               scheduling=params.scheduling)
        self.follower = AliasFollower(self.source, self.loader, self.holder, self.metrics, params.poll_seconds)
        self.state = ServeState(model_name=model_name, alias=params.alias, holder=self.holder, batcher=self.batcher,
                                follower=self.follower, metrics=self.metrics, max_tokens=params.max_tokens,
                                max_prompt_tokens=params.max_prompt_tokens,
                                request_timeout_s=params.request_timeout_s, token=self.token,
                                webhook_secret=webhook_secret, admin=params.admin,
                                guard=params.guard)
        self.app = build_app(self.state)
        self._server = None
        self._thread: Optional[threading.Thread] = None

    def check_alias(self):
        """The version behind the alias, refusing (UserError) when there is none or it may not be served."""
        target = self.source.resolve()
        if target is None:
            raise UserError(f"nothing to serve: {self.source.describe()} does not exist; an approver's version is "
                            f"promoted with `relearn promote --version N`")
        if target.problem:
            raise UserError(f"not serving {self.source.describe()}: {target.problem}")
        return target

    def load_first(self) -> None:
        target = self.check_alias()
        self.follower.check()
        if self.holder.current is None:
            raise UserError(f"version {target.version} could not be loaded: {self.follower.failed.get(target.version)}")

    def start(self) -> "Service":
        """Load the alias's version (or refuse), then start batching and following."""
        self.load_first()
        self.batcher.start()
        self.follower.start()
        return self
    def _uvicorn(self, port: int):
        import uvicorn

        config = uvicorn.Config(self.app, host=self.params.host, port=port, log_level="warning",
                                access_log=False,  # requests in flight may finish on shutdown
                                timeout_graceful_shutdown=int(self.params.request_timeout_s) + 1)
        self._server = uvicorn.Server(config)
        return self._server

    def run(self) -> None:
        """Check the alias, then serve HTTP at once (GET /ready is 503 until the version is loaded, in the
        background) until interrupted; Ctrl-C or SIGTERM let the requests in flight finish first. A
        first version that cannot be loaded stops the server with a UserError."""
        self.check_alias()
        server = self._uvicorn(self.params.port)
        failure: list[UserError] = []

        def first_load() -> None:
            while not server.should_exit:
                try:
                    self.load_first()
                    break
                except UserError as e:  # nothing servable, or it does not load: stop
                    failure.append(e)
                    server.should_exit = True
                    return
                except Exception as e:  # the registry is unreachable for now: try again
                    log.warning("cannot read %s yet (%s: %s); trying again in %g s", self.source.describe(),
                                type(e).__name__, str(e).splitlines()[0] if str(e) else "", self.params.poll_seconds)
                    time.sleep(self.params.poll_seconds)
            self.follower.start()

        self.batcher.start()
        threading.Thread(target=first_load, name="relearn-first-load", daemon=True).start()
        log.info("listening on http://%s:%d", self.params.host, self.params.port)
        try:
            server.run()
        finally:
            self.close()
        if failure:
            raise failure[0]

    def serve_in_thread(self, port: Optional[int] = None) -> str:
        """Serve HTTP from a background thread; the base URL once it accepts connections."""
        port = port or free_port(self.params.host)
        server = self._uvicorn(port)
        self._thread = threading.Thread(target=server.run, name="relearn-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return f"http://{self.params.host}:{port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.follower.stop()
        self.batcher.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
