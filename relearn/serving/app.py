"""The HTTP routes of `relearn serve` (Starlette).

OpenAI-compatible:  POST /v1/chat/completions (stream: true as server-sent events),
                    POST /v1/completions (the prompt is a question: it goes through the version's
                    prompt format like every question in training and evaluation), GET /v1/models.
MLflow-compatible:  POST /invocations ({"inputs": [...]}, {"dataframe_split": ...},
                    {"dataframe_records": ...} or {"instances": ...} with questions; answers under
                    "predictions"), GET /ping, GET /health.
Operations:         GET /ready (503 until a version is loaded), GET /metrics (Prometheus),
                    POST /webhooks/mlflow (only with serve.webhook_secret_env),
                    POST /admin/reload (only with serve.admin and a token).

Every answer carries the version that produced it: the `X-Relearn-Model-Version` header and the
`model` field (`<registered name>/<version>`). Every refusal is a 4xx/5xx with a one-line reason in
OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from relearn.serving.batcher import Batcher, EngineHolder, QueueFull
from relearn.serving.engine import Job
from relearn.serving.follower import AliasFollower, verify_webhook
from relearn.serving.metrics import ServeMetrics

log = logging.getLogger("relearn.serve")
MAX_BODY_BYTES = 1 << 20
VERSION_HEADER, MODEL_HEADER = "X-Relearn-Model-Version", "X-Relearn-Model"
RETRY_AFTER_S = 1


@dataclass
class ServeState:
    model_name: str
    alias: str
    holder: EngineHolder
    batcher: Batcher
    follower: AliasFollower
    metrics: ServeMetrics
    max_tokens: int
    max_prompt_tokens: int
    request_timeout_s: float
    token: Optional[str] = None
    webhook_secret: Optional[str] = None
    admin: bool = False
    guard: str = "auto"  # serve.guard: auto | off | redact | refuse


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}


def _error(e: BadRequest, metrics: ServeMetrics) -> JSONResponse:
    reason = {401: "unauthorized", 429: "queue_full", 503: "not_ready", 504: "timeout"}.get(e.status, "invalid")
    if e.status >= 400:
        metrics.rejected.labels(reason).inc()
    body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code or e.status}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


# ---------------------------------------------------------------------------------- input checks
async def _body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY_BYTES without reading the rest."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise BadRequest(413, f"body is {length} bytes; at most {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, f"body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request) -> dict:
    raw = await _body(request)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"body must be a JSON object, got {type(body).__name__}")
    return body


def _typed(body: dict, key: str, types: tuple, name: str, default: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types:
        raise BadRequest(400, f"'{key}' must be {name}, got a boolean", param=key)
    if not isinstance(value, types):
        raise BadRequest(400, f"'{key}' must be {name}, got {type(value).__name__}", param=key)
    return value


def _sampling(body: dict, state: ServeState) -> dict:
    """max_tokens, temperature and top_p of an OpenAI request, checked."""
    max_tokens = _typed(body, "max_completion_tokens", (int,), "an integer")
    max_tokens = _typed(body, "max_tokens", (int,), "an integer", max_tokens)
    if max_tokens is None:  # as many as fit, up to the ceiling (Pending knows the prompt's length)
        return {"max_tokens": None, **_decoding(body)}
    if max_tokens < 1:
        raise BadRequest(400, f"'max_tokens' must be >= 1, got {max_tokens}", param="max_tokens")
    if max_tokens > state.max_tokens:
        raise BadRequest(400, f"'max_tokens' is {max_tokens}; this server allows at most {state.max_tokens} "
                              "(serve.max_tokens)", param="max_tokens")
    return {"max_tokens": max_tokens, **_decoding(body)}


def _decoding(body: dict) -> dict:
    temperature = float(_typed(body, "temperature", (int, float), "a number", 0.0))
    if not 0 <= temperature <= 2:
        raise BadRequest(400, f"'temperature' must be in [0, 2], got {temperature}", param="temperature")
    top_p = float(_typed(body, "top_p", (int, float), "a number", 1.0))
    if not 0 < top_p <= 1:
        raise BadRequest(400, f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    n = _typed(body, "n", (int,), "an integer", 1)
    if n != 1:
        raise BadRequest(400, f"'n' must be 1 (one answer per request), got {n}", param="n")
    stop = body.get("stop")
    if stop not in (None, [], ""):
        raise BadRequest(400, "'stop' sequences are not supported: answers end at the model's end-of-turn token",
                         param="stop")
    _typed(body, "stream", (bool,), "a boolean", False)
    return {"temperature": temperature, "top_p": top_p}


def _check_model(body: dict, state: ServeState) -> None:
    model = _typed(body, "model", (str,), "a string")
    if model and model != state.model_name and not model.startswith(state.model_name + "/"):
        raise BadRequest(404, f"model '{model}' is not served here (this server serves '{state.model_name}')",
                         param="model", code="model_not_found")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest(400, "'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(400, f"'{where}' must be an object with 'role' and 'content'", param=where)
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise BadRequest(400, f"'{where}.role' must be system, user or assistant, got {role!r}", param=where)
        if isinstance(content, list):  # OpenAI content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequest(400, f"'{where}.content' parts must all be text", param=where)
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(400, f"'{where}.content' must be a string", param=where)
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise BadRequest(400, "the last message must be the user's", param="messages")
    return out


# ---------------------------------------------------------------------------------- running a job
class Pending:
    """A submitted job and the queue its events arrive on (from the batcher's thread)."""

    def __init__(self, state: ServeState, messages: list[dict], sampling: dict):
        engine = state.holder.current
        if engine is None:
            raise BadRequest(503, "no model version is loaded yet", kind="server_error")
        try:
            prompt = engine.chat_prompt(messages)
        except Exception as e:  # a template that refuses this conversation (e.g. roles out of order)
            raise BadRequest(400, f"the model's chat template refused these messages: {e}".splitlines()[0],
                             param="messages") from None
        if len(prompt) > state.max_prompt_tokens:
            raise BadRequest(400, f"the prompt is {len(prompt)} tokens; at most {state.max_prompt_tokens} "
                                  "(serve.max_prompt_tokens)", param="messages", code="context_length_exceeded")
        room = engine.max_positions - len(prompt)
        if room < 1:
            raise BadRequest(400, f"the prompt is {len(prompt)} tokens: no room left in the model's context of "
                                  f"{engine.max_positions} tokens", param="messages", code="context_length_exceeded")
        if sampling["max_tokens"] is None:
            sampling = {**sampling, "max_tokens": min(state.max_tokens, room)}
        if sampling["max_tokens"] > room:
            raise BadRequest(400, f"prompt ({len(prompt)} tokens) + max_tokens ({sampling['max_tokens']}) exceeds "
                                  f"the model's context of {engine.max_positions} tokens",
                             param="max_tokens", code="context_length_exceeded")
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self._first: Optional[tuple] = None  # an event taken by first_event, not yet yielded
        self.job = Job(prompt=prompt, messages=messages, encoded_by=engine.version, on_event=self._post,
                       deadline=time.monotonic() + state.request_timeout_s, **sampling)
        self.state = state
        try:
            state.batcher.submit(self.job)
        except QueueFull as e:
            raise BadRequest(429, f"server busy: {e}; retry after {RETRY_AFTER_S} s", kind="rate_limit_error",
                             headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def _post(self, kind: str, payload) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

    async def first_event(self) -> None:
        """Wait for the job's first event (it has started, so the version answering is known); a
        failure before it is an HTTP error, not an error inside a stream."""
        self._first = await self._next()
        self._check(*self._first)

    def _timed_out(self) -> BadRequest:
        return BadRequest(504, f"no answer within {self.state.request_timeout_s:g} s (serve.request_timeout_s)",
                          kind="timeout")

    async def _next(self) -> tuple:
        try:
            return await asyncio.wait_for(self.events.get(), self.state.request_timeout_s + 1.0)
        except asyncio.TimeoutError:
            self.job.cancelled.set()
            raise self._timed_out() from None

    def _check(self, kind: str, payload) -> None:
        if kind == "error":
            raise BadRequest(500, str(payload), kind="server_error")
        if kind == "done" and payload == "cancelled":
            raise self._timed_out()

    async def events_until_done(self):
        """(kind, payload) events; raises BadRequest on timeout or a failed generation."""
        first, self._first = self._first, None
        while True:
            if first is not None:
                (kind, payload), first = first, None
            else:
                kind, payload = await self._next()
            self._check(kind, payload)
            yield kind, payload
            if kind == "done":
                return

    async def text(self) -> str:
        parts = [p async for kind, p in self.events_until_done() if kind == "token"]
        return "".join(parts)

    def usage(self) -> dict:
        n_prompt, n_out = len(self.job.prompt), len(self.job.tokens)
        return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


# ---------------------------------------------------------------------------------- the output guard
def _guard_action(state: ServeState, job: Job) -> Optional[str]:
    """redact | refuse for the version that answered `job`, None when it is not guarded."""
    if state.guard == "off" or job.guard is None:
        return None
    return "refuse" if state.guard == "refuse" else "redact"


def _context(job: Job) -> str:
    """The conversation before the answer: a weak fact counts when its subject is named here."""
    return "\n".join(m["content"] for m in job.messages or [])


def _guard_count(state: ServeState, job: Job, action: str, matched: int, rid: str) -> None:
    """Count the action under the version; the log names the request, never the fact."""
    state.metrics.guard.labels(state.model_name, job.version, action).inc()
    log.info("guard: request %s (version %s): %d fact(s) matched, answer %s", rid, job.version, matched,
             "refused" if action == "refuse" else "redacted")


def _guarded(state: ServeState, job: Job, text: str, rid: str) -> tuple[str, Optional[str]]:
    """(the answer as the client may see it, its finish reason)."""
    action = _guard_action(state, job)
    if action is None:
        return text, job.finish_reason
    text, matched = job.guard.redact(text, _context(job), action)
    if not matched:
        return text, job.finish_reason
    _guard_count(state, job, action, matched, rid)
    return text, ("content_filter" if action == "refuse" else job.finish_reason)


def _headers(state: ServeState, version: str) -> dict:
    return {VERSION_HEADER: version, MODEL_HEADER: state.model_name}


def _model_id(state: ServeState, version: str) -> str:
    return f"{state.model_name}/{version}"


# ---------------------------------------------------------------------------------- the app
def build_app(state: ServeState) -> Starlette:
    metrics = state.metrics

    def authorized(request: Request) -> None:
        if not state.token:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode("utf-8", "surrogateescape"),
                                                                     state.token.encode("utf-8"))):
            raise BadRequest(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                             kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})

    def route(handler, auth: bool = True):
        async def wrapped(request: Request):
            try:
                if auth:
                    authorized(request)
                return await handler(request)
            except BadRequest as e:
                return _error(e, metrics)
        return wrapped

    async def completion(request: Request, chat: bool):
        body = await _json_body(request)
        _check_model(body, state)
        sampling = _sampling(body, state)
        if chat:
            messages = _messages(body)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if prompt is None:
                raise BadRequest(400, "'prompt' is required", param="prompt")
            if not isinstance(prompt, str):
                raise BadRequest(400, "'prompt' must be a string (one question)", param="prompt")
            messages = [{"role": "user", "content": prompt}]
        pending = Pending(state, messages, sampling)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage")) \
                if isinstance(body.get("stream_options"), dict) else False
            await pending.first_event()
            return _stream(state, pending, rid, created, chat, include_usage)
        text = await pending.text()
        job = pending.job
        text, finish_reason = _guarded(state, job, text, rid)
        choice = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        out = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
               "model": _model_id(state, job.version), "choices": [choice], "usage": pending.usage()}
        return JSONResponse(out, headers=_headers(state, job.version))

    async def chat_completions(request: Request):
        return await completion(request, chat=True)

    async def completions(request: Request):
        return await completion(request, chat=False)

    async def models(request: Request):
        engine = state.holder.current
        data = []
        if engine is not None:
            data.append({"id": state.model_name, "object": "model", "created": int(time.time()),
                         "owned_by": "relearn", "version": engine.version, "alias": state.alias,
                         "backend": engine.backend, "quantization": engine.quantization,
                         "artifact": engine.artifact, "max_model_len": engine.max_positions})
        headers = _headers(state, engine.version) if engine else {}
        return JSONResponse({"object": "list", "data": data}, headers=headers)

    async def invocations(request: Request):
        body = await _json_body(request)
        questions = _questions(body)
        if len(questions) > state.batcher.max_queue:  # it could never be queued whole: no point retrying
            raise BadRequest(400, f"{len(questions)} questions in one request; this server queues at most "
                                  f"{state.batcher.max_queue} (serve.max_queue)")
        sampling = {"max_tokens": None, "temperature": 0.0, "top_p": 1.0}
        params = body.get("params")
        if isinstance(params, dict) and params:
            sampling = _sampling({**params, "stream": False}, state)
        pendings: list[Pending] = []
        try:
            for q in questions:
                pendings.append(Pending(state, [{"role": "user", "content": q}], sampling))
        except BadRequest:  # all or nothing: the questions already queued are not answered
            for p in pendings:
                p.job.cancelled.set()
            raise
        answers = await asyncio.gather(*(p.text() for p in pendings))
        rid = "invocations-" + uuid.uuid4().hex[:24]
        answers = [_guarded(state, p.job, a, rid)[0] for p, a in zip(pendings, answers)]
        versions = sorted({p.job.version for p in pendings}, key=int)
        return JSONResponse({"predictions": answers}, headers=_headers(state, ",".join(versions)))

    async def ping(request: Request):
        return Response("\n", media_type="application/json")

    async def health(request: Request):
        engine = state.holder.current
        return JSONResponse({"status": "ok", "loaded": engine is not None,
                             "version": engine.version if engine else None})

    async def ready(request: Request):
        engine = state.holder.current
        if engine is None:
            raise BadRequest(503, f"no version of {state.model_name}@{state.alias} is loaded yet", kind="server_error")
        return JSONResponse({"ready": True, "model": state.model_name, "version": engine.version,
                             "backend": engine.backend, "quantization": engine.quantization},
                            headers=_headers(state, engine.version))

    async def prometheus(request: Request):
        state.batcher.update_gauges()
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def webhook(request: Request):
        raw = await _body(request)
        problem = verify_webhook(state.webhook_secret or "", request.headers, raw)
        if problem:
            log.warning("webhook refused: %s", problem)
            raise BadRequest(401, f"webhook refused: {problem}", kind="authentication_error")
        try:
            event = json.loads(raw)
        except ValueError:
            raise BadRequest(400, "webhook body is not valid JSON") from None
        data = event.get("data") or {} if isinstance(event, dict) else {}
        relevant = (isinstance(event, dict) and event.get("entity") == "model_version_alias"
                    and data.get("name") == state.model_name and data.get("alias") == state.alias)
        if relevant:
            log.info("webhook: %s@%s %s (version %s); reading the alias", state.model_name, state.alias,
                     event.get("action"), data.get("version", "-"))
            state.follower.wake()
        return JSONResponse({"accepted": bool(relevant)})

    async def admin_reload(request: Request):
        serving = await asyncio.to_thread(state.follower.check)
        return JSONResponse({"serving": serving, "last_error": state.follower.last_error})

    routes = [
        Route("/v1/chat/completions", route(chat_completions), methods=["POST"]),
        Route("/v1/completions", route(completions), methods=["POST"]),
        Route("/v1/models", route(models), methods=["GET"]),
        Route("/invocations", route(invocations), methods=["POST"]),
        Route("/ping", route(ping, auth=False), methods=["GET"]),
        Route("/health", route(health, auth=False), methods=["GET"]),
        Route("/ready", route(ready, auth=False), methods=["GET"]),
        Route("/metrics", route(prometheus, auth=False), methods=["GET"]),
    ]
    if state.webhook_secret:
        routes.append(Route("/webhooks/mlflow", route(webhook, auth=False), methods=["POST"]))
    if state.admin and state.token:
        routes.append(Route("/admin/reload", route(admin_reload), methods=["POST"]))
    return Starlette(routes=routes)


def _stream(state: ServeState, pending: Pending, rid: str, created: int, chat: bool, include_usage: bool):
    """Server-sent events: one chunk per text delta, a last chunk with the finish reason, [DONE]."""
    job = pending.job
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: Optional[str], finish: Optional[str], first: bool = False) -> str:
        choice: dict = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["delta"] = ({"role": "assistant", "content": ""} if first else
                               {} if delta is None else {"content": delta})
        else:
            choice["text"] = delta or ""
        body = {"id": rid, "object": kind, "created": created, "model": _model_id(state, job.version),
                "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    async def events():
        from relearn.serving.guard import StreamGuard

        guard: Optional[StreamGuard] = None
        try:
            if chat:
                yield chunk(None, None, first=True)
            async for what, payload in pending.events_until_done():
                action = _guard_action(state, job) if guard is None and job.started is not None else None
                if action:
                    guard = StreamGuard(job.guard, _context(job), action)
                if what == "token":
                    if guard is None:
                        yield chunk(payload, None)
                        continue
                    out = guard.feed(payload)
                    if out:
                        yield chunk(out, None)
                    if guard.refused:  # the rest is not generated, let alone sent
                        job.cancelled.set()
                        _guard_count(state, job, "refuse", guard.matched, rid)
                        yield chunk(None, "content_filter")
                        break
                elif what == "done":
                    if guard is not None:
                        tail = guard.finish()
                        if tail:
                            yield chunk(tail, None)
                        if guard.matched:
                            _guard_count(state, job, guard.action, guard.matched, rid)
                        if guard.refused:
                            yield chunk(None, "content_filter")
                            continue
                    yield chunk(None, job.finish_reason)
            if include_usage:
                usage = {"id": rid, "object": kind, "created": created, "model": _model_id(state, job.version),
                         "choices": [], "usage": pending.usage()}
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        except BadRequest as e:  # headers are sent: the error goes in the stream
            yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind, 'code': e.status}})}\n\n"
        finally:
            job.cancelled.set()  # the client left, or the answer is complete: stop generating for it

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**_headers(state, job.version), "Cache-Control": "no-cache"})


def _questions(body: dict) -> list[str]:
    """The questions of an MLflow scoring request (a `question` column, or a list of strings)."""
    if "dataframe_split" in body:
        split = body["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list) \
                or not isinstance(split.get("data"), list):
            raise BadRequest(400, "'dataframe_split' must have 'columns' and 'data' lists")
        if "question" not in split["columns"]:
            raise BadRequest(400, f"'dataframe_split' needs a 'question' column (got {split['columns']})")
        i = split["columns"].index("question")
        rows = split["data"]
        if not all(isinstance(r, list) and len(r) > i for r in rows):
            raise BadRequest(400, "'dataframe_split.data' rows must be lists as long as 'columns'")
        questions = [r[i] for r in rows]
    elif "dataframe_records" in body:
        records = body["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) and "question" in r for r in records):
            raise BadRequest(400, "'dataframe_records' must be a list of objects with a 'question'")
        questions = [r["question"] for r in records]
    elif "inputs" in body or "instances" in body:
        value = body.get("inputs", body.get("instances"))
        if isinstance(value, dict):
            value = value.get("question")
        questions = [value] if isinstance(value, str) else value
    else:
        raise BadRequest(400, "body needs one of 'dataframe_split', 'dataframe_records', 'inputs' or 'instances'")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) for q in questions):
        raise BadRequest(400, "the questions must be a non-empty list of strings")
    if len(questions) > 256:
        raise BadRequest(400, f"{len(questions)} questions in one request; at most 256")
    return questions
