"""One loaded model version, generating batches of requests token by token.

An `Engine` holds a model (an ONNX Runtime `ORTModelForCausalLM` or a torch PeftModel), its
tokenizer and the `PromptFormat` the version was trained with. `generate` runs one batch of `Job`s
with `model.generate` (left padding, greedy or sampled) and reports every new token of every row as
it is produced, through a stopping criterion that also ends a row at its stop token, its own
`max_tokens` or its cancellation. The engine never changes after loading, so a batch that started
on it finishes on it even when the server has switched to another version meanwhile.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from relearn.modeling.encoding import PromptFormat, as_format, messages_ids, prompt_ids, stop_ids

PROBE_QUESTION = "What is the capital of France?"  # the self-check after loading: any fluent answer will do


@dataclass(eq=False)
class Job:
    """One request's generation: prompt ids in, tokens and text out.

    `on_event(kind, payload)` is called from the worker thread: ("token", text delta), then once
    ("done", finish reason: stop | length | cancelled) or ("error", message).
    """
    prompt: list[int]
    max_tokens: int
    messages: Optional[list[dict]] = None   # what `prompt` encodes; re-encoded by another version's engine
    encoded_by: str = ""                     # the version whose tokenizer and format made `prompt`
    temperature: float = 0.0
    top_p: float = 1.0
    on_event: Callable[[str, object], None] = lambda kind, payload: None
    deadline: float = float("inf")          # time.monotonic() after which the job is cancelled
    cancelled: threading.Event = field(default_factory=threading.Event)
    # filled in by the engine
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    version: str = ""
    submitted: float = field(default_factory=time.monotonic)
    started: Optional[float] = None
    first_token: Optional[float] = None
    finished: Optional[float] = None
    guard: object = None                     # the answering version's output guard (relearn.serving.guard.Guard)

    @property
    def sampling(self) -> tuple:
        """Jobs are batched only with jobs decoded the same way."""
        return (0.0, 1.0) if self.temperature <= 0 else (round(self.temperature, 4), round(self.top_p, 4))


@dataclass
class Engine:
    """A model version ready to answer. `artifact` says which files it was loaded from."""
    model_name: str
    version: str
    model: object
    tokenizer: object
    fmt: PromptFormat
    backend: str
    quantization: str
    artifact: str
    device: str = "cpu"
    max_positions: int = 2048
    guard: object = None  # relearn.serving.guard.Guard of this version, when it carries one

    def __post_init__(self):
        self.fmt = as_format(self.fmt)
        self.stops = stop_ids(self.tokenizer, self.fmt)
        self.pad_id = self.tokenizer.pad_token_id

    def describe(self) -> str:
        return (f"{self.model_name} version {self.version}: {self.backend} {self.quantization} from {self.artifact} "
                f"on {self.device}")

    # ------------------------------------------------------------------------ encoding
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        return messages_ids(self.tokenizer, messages, self.fmt)

    def question_prompt(self, question: str) -> list[int]:
        return prompt_ids(self.tokenizer, question, self.fmt)

    # ------------------------------------------------------------------------ generation
    def prepare(self, jobs: list[Job]) -> list[Job]:
        """Stamp `jobs` as answered by this version; re-encode those queued across a version switch.
        A job whose messages this version's chat template refuses fails here; the rest are returned."""
        now = time.monotonic()
        ready = []
        for job in jobs:
            job.version, job.guard, job.started = self.version, self.guard, now
            if job.messages is not None and job.encoded_by != self.version:  # queued across a switch
                try:
                    job.prompt, job.encoded_by = self.chat_prompt(job.messages), self.version
                except Exception as e:
                    job.finish_reason, job.finished = "error", time.monotonic()
                    job.on_event("error", f"the model's chat template refused these messages: {e}".splitlines()[0])
                    continue
            ready.append(job)
        return ready

    def take_token(self, job: Job, token: int, decoded: str, stamp: float) -> tuple[Optional[str], str]:
        """A job's next token: sends the text it adds; (why the job ends now or None, the text sent so far)."""
        reason = None
        if token in self.stops:
            reason = "stop"
        else:
            job.tokens.append(token)
            if job.first_token is None:
                job.first_token = stamp
            text = self.tokenizer.decode(job.tokens, skip_special_tokens=True).lstrip()
            if not text.endswith("\ufffd"):  # hold back half a multi-byte character
                delta, decoded = text[len(decoded):], text
                if delta:
                    job.on_event("token", delta)
            if len(job.tokens) >= job.max_tokens:
                reason = "length"
        if reason is None and (job.cancelled.is_set() or stamp > job.deadline):
            reason = "cancelled"
        return reason, decoded

    def finish(self, job: Job, reason: str, decoded: str) -> None:
        job.text = self.tokenizer.decode(job.tokens, skip_special_tokens=True).lstrip()
        tail = job.text[len(decoded):]
        if tail and reason != "cancelled":
            job.on_event("token", tail)
        job.finish_reason, job.finished = reason, time.monotonic()
        job.on_event("done", reason)

    @torch.no_grad()
    def generate(self, jobs: list[Job]) -> None:
        """Run `jobs` as one static batch (model.generate); each job's events are sent as its tokens come."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        from relearn.modeling.generation import _left_pad

        jobs = self.prepare(jobs)
        if not jobs:
            return
        ids, mask = _left_pad([job.prompt for job in jobs], self.pad_id)
        decoded = [""] * len(jobs)
        done = [False] * len(jobs)
        engine = self

        class Rows(StoppingCriteria):  # called once per step with every row's tokens so far
            def __call__(self, input_ids, scores, **kwargs):
                stamp = time.monotonic()
                for i, job in enumerate(jobs):
                    if done[i]:
                        continue
                    reason, decoded[i] = engine.take_token(job, int(input_ids[i, -1]), decoded[i], stamp)
                    if reason:
                        done[i] = True
                        engine.finish(job, reason, decoded[i])
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        temperature, top_p = jobs[0].sampling
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 \
            else dict(do_sample=False)
        try:
            self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                max_new_tokens=max(job.max_tokens for job in jobs), pad_token_id=self.pad_id,
                                eos_token_id=self.stops, stopping_criteria=StoppingCriteriaList([Rows()]),
                                **sampling)
        except Exception as e:  # a failed batch fails its requests, never the server
            for i, job in enumerate(jobs):
                if not done[i]:
                    done[i] = True
                    job.finish_reason, job.finished = "error", time.monotonic()
                    job.on_event("error", f"generation failed: {type(e).__name__}: {e}")
            return
        for i, job in enumerate(jobs):  # rows generate() ended by itself (max_new_tokens)
            if not done[i]:
                done[i] = True
                self.finish(job, "length", decoded[i])

    def self_check(self) -> None:
        """Generate a few tokens for a probe question; raises when the model cannot answer."""
        job = Job(prompt=self.question_prompt(PROBE_QUESTION), max_tokens=4)
        self.generate([job])
        if job.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"self-check failed: the probe generation ended with {job.finish_reason!r}")


# ---------------------------------------------------------------------------------- loading
def load_onnx_engine(model_dir: str | Path, file_name: str, *, model_name: str, version: str, quantization: str,
                     artifact: str, provider: str = "auto") -> Engine:
    """An engine on an exported ONNX directory (the deployable layout of relearn.export.onnx)."""
    from relearn.export.onnx import PROMPT_FORMAT_FILE, load_onnx, load_tokenizer, pick_provider
    from relearn.io import read_json

    model_dir = Path(model_dir)
    if not (model_dir / file_name).is_file():
        raise FileNotFoundError(f"{model_dir}: no {file_name}")
    fmt_file = model_dir / PROMPT_FORMAT_FILE
    if not fmt_file.is_file():
        raise FileNotFoundError(f"{model_dir}: no {PROMPT_FORMAT_FILE} (how to prompt the model)")
    chosen = pick_provider(provider)
    model = load_onnx(model_dir, file_name=file_name, provider=chosen)
    tokenizer = load_tokenizer(model_dir)
    return Engine(model_name, version, model, tokenizer, PromptFormat.from_dict(read_json(fmt_file)), "onnx",
                  quantization, artifact, device="cuda" if chosen.startswith("CUDA") else "cpu",
                  max_positions=_max_positions(model.config))


def load_torch_engine(base_dir: str | Path, adapter_dir: str | Path | None, generation: dict, *, model_name: str,
                      version: str, artifact: str) -> Engine:
    """An engine on the version's base model + LoRA adapter (the registered pyfunc's artifacts)."""
    from relearn.modeling.model import load_with_adapter

    dtype = generation.get("dtype", "float32")
    model, tokenizer = load_with_adapter(base_dir, adapter_dir, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    fmt = PromptFormat.from_dict(generation["prompt_format"]) if "prompt_format" in generation \
        else as_format(generation.get("prompt_template", ""))
    return Engine(model_name, version, model, tokenizer, fmt, "torch", dtype, artifact, device=device,
                  max_positions=_max_positions(model.config))


def _max_positions(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 2048)
