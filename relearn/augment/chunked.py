"""Chunked rewriting of long answers for the chat backends (augment.chunk_chars).

An answer longer than `chunk_chars` characters is split on sentence boundaries
(relearn.augment.rules.chunk_text). For each question, every chunk is rewritten on its own
(prompts.vague_chunk_messages) with the same leak check and regeneration rounds as a whole answer,
the chunk's rewrite being checked against all of the item's facts (or, for an item without facts,
by the model against that chunk). The rewrites are joined in chunk order and the joined answer is
leak-checked once more against the whole original answer. A chunk whose rewrite fails is left out
(`chunks_dropped`); an answer none of whose chunks could be rewritten, or whose joined text leaks,
is dropped. Answers no longer than `chunk_chars` take the backend's usual, one-call path.

`ChunkedAnswers` is a mixin for relearn.augment.endpoint.EndpointBackend and its subclasses: it
overrides `_vague_answer` and goes through the backend's own `_call` (cache, transport) and
`_leaks`, so the endpoint and the local backend share it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from relearn.augment import prompts, rules
from relearn.augment.endpoint import CallFailed, EndpointBackend
from relearn.params import EndpointParams
from relearn.records import QARecord

CHUNK_STAT_KEYS = ("chunked_answers", "chunks_dropped")


class ChunkedAnswers:
    """Mixin: answers longer than `self.chunk_chars` (> 0) are rewritten chunk by chunk."""

    chunk_chars: int = 0

    def augment(self, records, variants, include_original, seed):
        out = super().augment(records, variants, include_original, seed)
        if self.chunk_chars > 0:
            for k in CHUNK_STAT_KEYS:
                self.stats.setdefault(k, 0)
        return out

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:  # stats beyond the endpoint's own keys start at 0
            self.stats[name] = self.stats.get(name, 0) + n

    def _vague_answer(self, record: QARecord, question: str, seed: int) -> str | None:
        chunks = rules.chunk_text(record.answer, self.chunk_chars) if self.chunk_chars > 0 else []
        if len(chunks) < 2:
            return super()._vague_answer(record, question, seed)
        self._count("chunked_answers")
        parts = []
        for index, chunk in enumerate(chunks, 1):
            part_record = dataclasses.replace(record, answer=chunk)
            part = self._rewrite(part_record, prompts.vague_chunk_messages(record, question, chunk, index, len(chunks)),
                                 seed)
            if part is None:
                self._count("chunks_dropped")
            else:
                parts.append(part)
        if not parts:
            return None
        joined = " ".join(parts)
        try:
            leaked = self._leaks(record, joined, seed)
        except CallFailed:
            self._count("answers_failed")
            return None
        if leaked:
            self._count("dropped_after_rounds")
            return None
        return joined


class ChunkedEndpointBackend(ChunkedAnswers, EndpointBackend):
    """The endpoint backend with chunked rewriting of long answers."""

    def __init__(self, params: EndpointParams, *, chunk_chars: int, sleep: Callable[[float], None] = time.sleep):
        super().__init__(params, sleep=sleep)
        self.chunk_chars = int(chunk_chars)
