"""Augmentation through an OpenAI-compatible chat API (relearn-method.md, steps 2-4).

For each forget item:
  1. one call returns the question variants as JSON ({"simple": ..., "contextual": ..., ...});
  2. for the original question (include_original) and for each variant, one call writes a vague but
     relevant answer to THAT question (each answer is paired with its own question: no off-by-one);
  3. every answer is checked for leaks: deterministically with relearn.augment.leak when the item
     has facts, otherwise by one more call that asks the model ({"leaks": true/false});
     a leaking answer is regenerated, the model being told what leaked, up to `rounds` rounds in
     total; one still leaking after that is dropped and counted.
Output records look like the rule backend's: id `<id>~<variant>`, subject and facts copied,
source_id, variant; in item order, then original, then the variants in the order asked for,
whatever order the worker threads finish in.

HTTP: POST {base_url}/chat/completions with {"model", "messages", "temperature"}, standard library
only. Timeouts, connection errors, 429 and 5xx are retried with exponential backoff (0.5 s * 2**n,
up to +25% jitter from a seeded random.Random, capped at 8 s; a Retry-After header on 429/503 is
used instead, capped at 60 s). Any other HTTP error (401, 404, ...) stops the run at once with a
UserError (status and a short excerpt of the body, never the API key). A malformed reply (body not
JSON, no choices[0].message.content, content that is not the requested JSON) is a failed attempt
and is retried too; when a call's retries are spent, its item (variants call) or its answer (answer
or leak-check call) is dropped and counted. If no call succeeds at all, the run fails with a
UserError. Successful, well-formed replies are cached on disk (relearn.augment.cache), so a repeated
run with the same inputs makes no HTTP calls.
"""
from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from typing import Callable, TypeVar

from relearn.augment import leak, prompts
from relearn.augment.cache import ResponseCache, cache_key
from relearn.errors import UserError
from relearn.params import EndpointParams
from relearn.records import QARecord

T = TypeVar("T")

BACKOFF_BASE = 0.5       # seconds before the first retry
BACKOFF_CAP = 8.0        # longest computed backoff
BACKOFF_JITTER = 0.25    # up to this share added on top, from a seeded RNG
RETRY_AFTER_CAP = 60.0   # longest wait a server's Retry-After can ask for
EXCERPT_CHARS = 200      # how much of an error body goes into a message
# consecutive failed calls, with no success yet, after which the endpoint is taken to be unusable
ALL_FAILED_AFTER = 3

STAT_KEYS = ("requests", "cache_hits", "retries", "failures", "regenerated", "dropped_after_rounds",
             "items_failed", "answers_failed")


class _AttemptFailed(Exception):
    """One HTTP attempt failed in a way worth retrying (timeout, connection, 429, 5xx, malformed reply)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Malformed(_AttemptFailed):
    """The reply did not have the requested shape."""


class CallFailed(Exception):
    """A call failed on every attempt; the message is the last attempt's error."""


class _Aborted(Exception):
    """Another worker stopped the run."""


# ----------------------------------------------------------------------------- helpers
def is_loopback(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def backoff_delay(retry: int, rng: random.Random) -> float:
    """Seconds to wait before retry number `retry` (0 = the first retry)."""
    base = BACKOFF_BASE * (2 ** retry)
    return min(BACKOFF_CAP, base * (1.0 + BACKOFF_JITTER * rng.random()))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds, within [0, RETRY_AFTER_CAP]; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(RETRY_AFTER_CAP, seconds))


def extract_json_object(content: str) -> dict:
    """The JSON object in a reply's content; tolerates a ``` fence or a sentence around the object."""
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0].strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise Malformed(f"the reply is not the requested JSON object: {_excerpt(content)!r}")


def parse_variants(content: str, variants: list[str]) -> dict[str, str]:
    data = extract_json_object(content)
    out = {}
    for v in variants:
        q = data.get(v)
        if not isinstance(q, str) or not q.strip():
            raise Malformed(f"the reply has no {v!r} question: {_excerpt(content)!r}")
        out[v] = " ".join(q.split())
    return out


def parse_answer(content: str) -> str:
    answer = extract_json_object(content).get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise Malformed(f"the reply has no 'answer': {_excerpt(content)!r}")
    return " ".join(answer.split())


def parse_leak_verdict(content: str) -> tuple[bool, list[str]]:
    data = extract_json_object(content)
    verdict = data.get("leaks")
    if not isinstance(verdict, bool):
        raise Malformed(f"the reply has no true/false 'leaks': {_excerpt(content)!r}")
    details = data.get("details")
    details = [str(d) for d in details if str(d).strip()] if isinstance(details, list) else []
    return verdict, details


def _excerpt(text: str, secret: str = "") -> str:
    text = " ".join(text.split())
    if secret:
        text = text.replace(secret, "***")
    return text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else "")


# ----------------------------------------------------------------------------- backend
class EndpointBackend:
    """Question variants and vague answers from an OpenAI-compatible chat endpoint.

    `stats` (reset by each `augment` call) counts: requests (HTTP requests sent), cache_hits,
    retries, failures (calls that failed on every attempt), regenerated (answers rewritten after a
    leak), dropped_after_rounds (answers still leaking after `rounds` rounds), items_failed (items
    dropped because their variants call failed), answers_failed (answers dropped because their
    answer or leak-check call failed).
    """

    def __init__(self, params: EndpointParams, *, sleep: Callable[[float], None] = time.sleep):
        self.params = params
        self._sleep = sleep
        self._url = params.base_url.rstrip("/") + "/chat/completions"
        if urllib.parse.urlsplit(self._url).scheme not in ("http", "https"):
            raise UserError(f"augment.endpoint.base_url: expected an http(s) URL, got {params.base_url!r}")
        self._api_key = os.environ.get(params.api_key_env, "").strip()
        if not self._api_key and not is_loopback(params.base_url):
            raise UserError(f"augment.endpoint: the environment variable {params.api_key_env} is not set; "
                            f"it must hold the API key for {params.base_url}")
        # a loopback server is reached directly, whatever proxy the environment names
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(params.base_url) else []
        self._opener = urllib.request.build_opener(*handlers)
        self._cache = ResponseCache(params.cache_dir)
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._abort_error: UserError | None = None
        self._successes = 0
        self._last_error = ""
        self.stats: dict = {k: 0 for k in STAT_KEYS}

    # --------------------------------------------------------------------- public
    def augment(self, records: list[QARecord], variants: list[str], include_original: bool,
                seed: int) -> list[QARecord]:
        """The training pairs for `records`, in a fixed order: item by item, original first, then `variants`."""
        variants = list(dict.fromkeys(variants))
        unknown = [v for v in variants if v not in prompts.VARIANT_GUIDE]
        if unknown:
            raise UserError(f"augment.variants: unknown variant(s) {unknown} (known: {', '.join(prompts.VARIANT_GUIDE)})")
        self.stats = {k: 0 for k in STAT_KEYS}
        self._successes, self._last_error = 0, ""
        self._abort.clear()
        self._abort_error = None
        if not records or (not variants and not include_original):
            return []

        results: list[list[QARecord] | None] = [None] * len(records)
        workers = max(1, min(int(self.params.concurrency), len(records)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relearn-augment")
        try:
            futures = {pool.submit(self._run_item, r, variants, include_original, seed): i
                       for i, r in enumerate(records)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        except BaseException as e:
            self._abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            if isinstance(e, _Aborted) and self._abort_error is not None:
                raise self._abort_error from None
            raise
        pool.shutdown(wait=True)
        if self._successes == 0 and self.stats["failures"] > 0:
            raise self._all_failed()
        return [r for item in results for r in (item or [])]

    # --------------------------------------------------------------------- per item
    def _run_item(self, record: QARecord, variants: list[str], include_original: bool,
                  seed: int) -> list[QARecord]:
        """One item in a worker; an error that stops the run stops the other workers before their next request."""
        if self._abort.is_set():
            raise _Aborted()
        try:
            return self._augment_item(record, variants, include_original, seed)
        except _Aborted:
            raise
        except BaseException:
            self._abort.set()
            raise

    def _augment_item(self, record: QARecord, variants: list[str], include_original: bool,
                      seed: int) -> list[QARecord]:
        questions: list[tuple[str, str]] = [("original", record.question)] if include_original else []
        if variants:
            try:
                made = self._call(prompts.question_variants_messages(record, variants),
                                  lambda content: parse_variants(content, variants), seed)
            except CallFailed:
                self._count("items_failed")
                return []
            questions += [(v, made[v]) for v in variants]
        out = []
        for kind, question in questions:
            answer = self._vague_answer(record, question, seed)
            if answer is not None:
                out.append(QARecord(id=f"{record.id}~{kind}", question=question, answer=answer,
                                    subject=record.subject, facts=dict(record.facts),
                                    source_id=record.id, variant=kind))
        return out

    def _vague_answer(self, record: QARecord, question: str, seed: int) -> str | None:
        """A vague answer to `question` that passed the leak check, or None (dropped and counted)."""
        return self._rewrite(record, prompts.vague_answer_messages(record, question), seed)

    def _rewrite(self, record: QARecord, messages: list[dict], seed: int) -> str | None:
        """The reply to `messages` once it passes the leak check for `record`, regenerated up to
        `rounds` rounds in all; None (dropped and counted) when a call fails or it still leaks."""
        rounds = max(1, int(self.params.rounds))
        for round_ in range(1, rounds + 1):
            try:
                answer = self._call(messages, parse_answer, seed)
                leaked = self._leaks(record, answer, seed)
            except CallFailed:
                self._count("answers_failed")
                return None
            if not leaked:
                return answer
            if round_ == rounds:
                self._count("dropped_after_rounds")
                return None
            self._count("regenerated")
            messages = prompts.regenerate_messages(messages, answer, leaked, record.subject)
        return None  # unreachable

    def _leaks(self, record: QARecord, answer: str, seed: int) -> list[str]:
        """What `answer` gives away: fact names and values, or the model's list; empty when clean."""
        if record.facts:
            return [f"{name} ({record.facts[name]})" for name in leak.leaked_facts(answer, record.facts)]
        leaks, details = self._call(prompts.leak_check_messages(record, answer), parse_leak_verdict, seed)
        if not leaks:
            return []
        return details or ["specific details of the original answer"]

    # --------------------------------------------------------------------- one call
    def _call(self, messages: list[dict], parse: Callable[[str], T], seed: int) -> T:
        """The parsed reply to `messages`: from the cache, or from the endpoint with retries."""
        key = cache_key(self.params.base_url, self.params.model, messages, self.params.temperature)
        cached = self._cache.get(key)
        if cached is not None:
            try:
                value = parse(cached)
            except Malformed:
                pass  # an entry the current parser rejects: ask again and overwrite it
            else:
                self._count("cache_hits")
                self._succeeded()
                return value
        rng = random.Random(f"{seed}:{key}")
        last: _AttemptFailed | None = None
        for attempt in range(max(0, int(self.params.max_retries)) + 1):
            if self._abort.is_set():
                raise _Aborted()
            if attempt:
                delay = last.retry_after if last is not None and last.retry_after is not None \
                    else backoff_delay(attempt - 1, rng)
                self._count("retries")
                self._sleep(delay)
                if self._abort.is_set():
                    raise _Aborted()
            try:
                content = self._post(messages)
                value = parse(content)
            except _AttemptFailed as e:
                last = e
                continue
            self._cache.put(key, content)
            self._succeeded()
            return value
        self._failed(str(last))
        raise CallFailed(str(last))

    def _post(self, messages: list[dict]) -> str:
        """One HTTP request; the reply's message content. Raises _AttemptFailed (retry) or UserError (stop)."""
        body = json.dumps({"model": self.params.model, "messages": messages,
                           "temperature": float(self.params.temperature)}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "relearn"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        self._count("requests")
        timeout = float(self.params.timeout)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            try:
                text = e.read().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the body is only for the message
                text = ""
            finally:
                e.close()
            excerpt = _excerpt(text, self._api_key)
            if e.code == 429 or e.code >= 500:
                retry_after = parse_retry_after(e.headers.get("Retry-After")) if e.code in (429, 503) else None
                raise _AttemptFailed(f"HTTP {e.code}: {excerpt}", retry_after) from None
            raise UserError(f"augment.endpoint: {self._url} answered HTTP {e.code} {e.reason} (not retried): "
                            f"{excerpt or '(empty body)'}") from None
        except TimeoutError:
            raise _AttemptFailed(f"no reply within {timeout:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _AttemptFailed(f"no reply within {timeout:g} s") from None
            raise _AttemptFailed(f"cannot reach {self._url}: {e.reason}") from None
        except (http.client.HTTPException, OSError) as e:
            raise _AttemptFailed(f"connection to {self._url} failed: {type(e).__name__}: {e}") from None
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except ValueError:
            raise Malformed(f"the reply body is not JSON: {_excerpt(text, self._api_key)!r}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise Malformed(f"the reply has no choices[0].message.content: {_excerpt(text, self._api_key)!r}")
        return content

    # --------------------------------------------------------------------- bookkeeping
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def _succeeded(self) -> None:
        with self._lock:
            self._successes += 1

    def _failed(self, error: str) -> None:
        with self._lock:
            self.stats["failures"] += 1
            self._last_error = error
            if self._successes == 0 and self.stats["failures"] >= ALL_FAILED_AFTER and self._abort_error is None:
                self._abort_error = self._all_failed()
                self._abort.set()

    def _all_failed(self) -> UserError:
        return UserError(f"augment.endpoint: every request to {self._url} failed "
                         f"({self.stats['failures']} call(s), {self.stats['requests']} request(s)); "
                         f"last error: {self._last_error}")
