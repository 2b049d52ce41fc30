"""Continuous batching: rows join the running batch at the next decoding step and leave it when done.

A `DecodeSession` decodes the rows of one engine one token per step. A request that arrives while
others are decoding is prefilled on its own (left-padded with the other newcomers), and its KV cache
is joined to the running batch's along the batch axis, each side left-padded in time to the longer
one, with the attention mask and explicit position ids keeping every row's positions what they
were; a finished row is dropped from the cache at once, and time columns no row attends to any more
are cut. So a short answer no longer waits for the longest one in its batch, and a new request waits
for one decoding step instead of a whole batch (iteration-level scheduling, as vLLM and TGI do).

Why not transformers' own `ContinuousBatchingManager`: in the transformers this project pins (<4.58,
for optimum-onnx) it sizes its paged cache from CUDA memory and fails on a CPU, and it takes one
generation config for every request. The session works with any decoder whose cache is
transformers' `DynamicCache` of full-attention layers (Llama, SmolLM2, Qwen2, Mistral without a
sliding window, ...): the torch engine. `supports(model)` says whether a model qualifies; the ONNX
engine keeps static batches (its KV cache lives inside optimum's ORT model).

Greedy rows give the tokens `model.generate` gives for the same prompt alone (the same masked
attention over the same positions), which `tests/test_serve.py` checks against `generate_answers`.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from relearn.serving.engine import Engine, Job


def supports(engine: Engine) -> bool:
    """Whether `engine` can decode in a session (a torch model; the check of its cache is at first use)."""
    return engine.backend == "torch"


def _left_pad_time(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class DecodeSession:
    """The running batch of one engine and one way of decoding (greedy, or one temperature/top_p)."""

    def __init__(self, engine: Engine, sampling: tuple):
        self.engine, self.sampling = engine, sampling
        self.jobs: list[Job] = []
        self.decoded: list[str] = []
        self.cache = None                     # transformers DynamicCache over self.jobs, batch-major
        self.mask: Optional[torch.Tensor] = None  # (rows, time): 1 where a row has a token
        self.last: Optional[torch.Tensor] = None  # (rows, 1): the token each row feeds next

    def __len__(self) -> int:
        return len(self.jobs)

    # ------------------------------------------------------------------ joining
    @torch.no_grad()
    def add(self, jobs: list[Job]) -> None:
        """Prefill `jobs` together and join them to the batch; their first token is sent at once."""
        from relearn.modeling.generation import _left_pad

        jobs = self.engine.prepare(jobs)
        if not jobs:
            return
        device = self.engine.device
        ids, mask = _left_pad([job.prompt for job in jobs], self.engine.pad_id)
        ids, mask = ids.to(device), mask.to(device)
        out = self.engine.model(input_ids=ids, attention_mask=mask, position_ids=self._positions(mask),
                                use_cache=True)
        cache = out.past_key_values
        self._check(cache)
        tokens = self._choose(out.logits[:, -1, :])
        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers):
                old.keys = torch.cat([_left_pad_time(old.keys, width, 2), _left_pad_time(new.keys, width, 2)], dim=0)
                old.values = torch.cat([_left_pad_time(old.values, width, 2),
                                        _left_pad_time(new.values, width, 2)], dim=0)
            self.mask = torch.cat([_left_pad_time(self.mask, width, 1), _left_pad_time(mask, width, 1)], dim=0)
        first = len(self.jobs)
        self.jobs += jobs
        self.decoded += [""] * len(jobs)
        self.last = tokens[:, None] if self.last is None else torch.cat([self.last, tokens[:, None]], dim=0)
        self._emit(tokens, start=first)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def step(self) -> None:
        """One token for every row; rows that finish leave the batch."""
        if not self.jobs:
            return
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.jobs), 1))], dim=1)
        out = self.engine.model(input_ids=self.last, attention_mask=mask, position_ids=self._positions(mask)[:, -1:],
                                past_key_values=self.cache, use_cache=True)
        self.cache, self.mask = out.past_key_values, mask
        tokens = self._choose(out.logits[:, -1, :])
        self.last = tokens[:, None]
        self._emit(tokens, start=0)

    def fail(self, message: str) -> None:
        """A failed step fails the rows still in the batch, never the server."""
        for job in self.jobs:
            if job.finish_reason is None:
                job.finish_reason, job.finished = "error", time.monotonic()
                job.on_event("error", message)
        self.jobs, self.decoded, self.cache, self.mask, self.last = [], [], None, None, None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.cumsum(-1) - 1).clamp(min=0)

    @staticmethod
    def _check(cache) -> None:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            raise NotImplementedError(f"continuous batching needs a DynamicCache of full-attention layers, not "
                                      f"{type(cache).__name__}")

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        temperature, top_p = self.sampling
        if temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:  # nucleus: keep the smallest set of tokens whose probability reaches top_p
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1)[:, 0]

    def _emit(self, tokens: torch.Tensor, start: int) -> None:
        """Send rows start.. their new token; drop the rows that finished, and time no row needs."""
        stamp = time.monotonic()
        keep = list(range(start))
        for i in range(start, len(self.jobs)):
            job = self.jobs[i]
            reason, self.decoded[i] = self.engine.take_token(job, int(tokens[i - start]), self.decoded[i], stamp)
            if reason:
                self.engine.finish(job, reason, self.decoded[i])
            else:
                keep.append(i)
        if len(keep) == len(self.jobs):
            return
        if not keep:
            self.jobs, self.decoded, self.cache, self.mask, self.last = [], [], None, None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last = self.mask[index], self.last[index]
        self.jobs = [self.jobs[i] for i in keep]
        self.decoded = [self.decoded[i] for i in keep]
        used = self.mask.any(dim=0).nonzero()
        cut = int(used[0]) if len(used) else 0
        if cut > 0:  # columns every remaining row has as padding
            self.mask = self.mask[:, cut:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
