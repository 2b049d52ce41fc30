"""Augmentation with a local Hugging Face instruct model (augment.backend: local).

The same item logic as the endpoint backend (relearn.augment.endpoint): the same prompts
(relearn.augment.prompts), one variants call per item, one vague answer per question, the leak check
and up to `rounds` regenerations, chunked rewriting of long answers (relearn.augment.chunked). Only
the chat call differs: instead of an HTTP request, the conversation is rendered with the tokenizer's
chat template (or, without one, a plain "System: / User: / Assistant:" text) and the model generates
the reply.

Batching: `batch_size` forget items are worked on at once, one worker thread each; their prompts are
collected and generated together, a batch starting when `batch_size` prompts wait or when every
busy worker waits (no more prompts can come). Under greedy decoding a reply can still differ in the
last bits with the batch it was padded into; the cache makes a repeated run reproduce the first.

Cache: replies are stored in the same content-addressed cache as the endpoint's
(relearn.augment.cache), keyed by the model directory's resolved path, a fingerprint of its files
(names and sizes of every file, the contents of the config, generation-config, tokenizer-config
and chat-template files), dtype, max_new_tokens, temperature and the messages: a changed model
misses. Under greedy decoding (temperature 0) every reply is cached, usable or not, since the model
would write the same again; a repeated run generates nothing and does not even load the model. When
sampling, only usable replies are cached and an unusable one is sampled again (up to
SAMPLING_ATTEMPTS in all).

Failures: a reply that is not the requested JSON is `malformed`; a call without a usable reply fails
like an endpoint call (its item or answer is dropped and counted). With augment.fallback 'drop', a
run in which no call at all succeeds fails with a UserError (the model is not an instruct model, or
max_new_tokens is too small); with 'rules', failed calls are counted as `unusable` and the build step
takes the rules backend's pairs for whatever is missing. A missing model directory, a model that
cannot be loaded, or running out of memory is a UserError.

Reply modes (augment.local.reply): 'json' (the default) is everything above. 'text' is for small
instruct models (e.g. SmolLM2-135M-Instruct) that cannot write the JSON objects: every question
variant and every vague answer is its own short call (prompts.text_variant_messages,
prompts.text_answer_messages: two worked examples, then the real question) whose reply is plain
text, cleaned (first line, no quotes or "Rewritten question:" labels; an answer's first two whole
sentences) and checked (question_problem, answer_problem): a reply that is empty, not a question
(variants) or a question (answers), the same as the original, that copies a worked example, drops
the subject (or, in a reverse question, names it), gives away a key fact (relearn.augment.leak),
or (answers) adds a number, email or name the question does not hold or loops on itself is
rejected and asked again with other worked examples, up to `rounds` rounds in all. Whatever still
fails is left to augment.fallback (the rules backend's pair, or dropped). The model-based leak check
is skipped in text mode (a model this small cannot judge it), so an item without facts is only
checked for being a usable reply (counted as `unchecked_no_facts`); long answers are not chunked
(the model never sees the original answer, except the logical variant's question call, which needs a
detail to turn around). Replies are generated with at most augment.local.text_max_new_tokens tokens,
and the reply mode is part of the cache key. `stats["by_variant"]` counts per variant (and
'original'): asked, model (pairs made by the model), no_usable_reply, leak_dropped.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, TypeVar

from relearn.augment import leak, prompts, rules
from relearn.augment.cache import cache_key
from relearn.augment.chunked import ChunkedAnswers
from relearn.augment.endpoint import CallFailed, EndpointBackend, Malformed, _Aborted, _excerpt
from relearn.errors import UserError
from relearn.params import EndpointParams, LocalParams
from relearn.records import QARecord

T = TypeVar("T")

SAMPLING_ATTEMPTS = 3  # attempts per call when sampling (greedy decoding would only repeat itself)
# files whose contents enter the model fingerprint (every other file: name and size)
CONTENT_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja", "chat_template.json")
LOCAL_STAT_KEYS = ("batches", "malformed", "unusable")
TEXT_STAT_KEYS = ("questions_failed", "unchecked_no_facts")
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
MODEL_LEAK_CHECK_SKIPPED = ("skipped (reply: text): a small model cannot judge leaks; items without facts "
                            "are not leak-checked")


# ----------------------------------------------------------------------------- model directory
def check_model_dir(model_path: str) -> Path:
    """The resolved model directory; a UserError when it is not set, missing, or not a model directory."""
    if not model_path or not model_path.strip():
        raise UserError("augment.local.model_path: not set; the 'local' backend needs the directory of a "
                        "Hugging Face instruct model")
    path = Path(model_path).expanduser()
    if not path.exists():
        raise UserError(f"augment.local.model_path: {path} does not exist (the 'local' backend loads a model "
                        "directory from disk and never downloads one)")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(f"augment.local.model_path: {path} is not a Hugging Face model directory (no config.json)")
    return path.resolve()


def model_fingerprint(path: Path) -> str:
    """sha256 over the names and sizes of the directory's files and the contents of its small config files."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir(), key=lambda p: p.name):
        if f.name.startswith(".") or not f.is_file():
            continue
        h.update(f"{f.name}\0{f.stat().st_size}\n".encode("utf-8"))
        if f.name in CONTENT_FILES:
            h.update(hashlib.sha256(f.read_bytes()).hexdigest().encode("ascii"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- prompts
def plain_chat_prompt(messages: list[dict]) -> str:
    """A conversation as plain text for a tokenizer without a chat template; the model continues after 'Assistant:'."""
    turns = [f"{ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant:"


def fold_system(messages: list[dict]) -> list[dict]:
    """The system message put in front of the first user message (for templates that refuse a system turn)."""
    if len(messages) >= 2 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
        first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
        return [first, *messages[2:]]
    return list(messages)


def render_prompt(tokenizer, messages: list[dict]) -> tuple[str, bool]:
    """(prompt text, whether it came from the tokenizer's chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_chat_prompt(messages), False
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    except Exception:  # noqa: BLE001 - e.g. a jinja2 TemplateError: many templates refuse a system turn
        pass
    try:
        return tokenizer.apply_chat_template(fold_system(messages), tokenize=False, add_generation_prompt=True), True
    except Exception as e:  # noqa: BLE001
        raise UserError(f"augment.local: the model's chat template cannot render the prompts: "
                        f"{type(e).__name__}: {_excerpt(str(e))}") from None


def cut_plain_reply(text: str) -> str:
    """A plain-format reply up to where the model starts writing the next turn itself."""
    for marker in ("\nUser:", "\nSystem:", "\nAssistant:"):
        at = text.find(marker)
        if at >= 0:
            text = text[:at]
    return text.strip()


# ----------------------------------------------------------------------------- plain-text replies
# a label a model may put in front of its reply ("Rewritten question:", "Answer -", "Q:")
_LABEL = re.compile(r"^(?:(?:the\s+)?(?:rewritten|reverse|new|casual|retyped|vague)?\s*"
                    r"(?:question|answer|reply|rewrite|version)|q|a)\s*[:\-]\s*", re.IGNORECASE)
_QUOTES = "\"'`*\u201c\u201d\u2018\u2019"
QUESTION_WORDS = {"what", "whats", "what's", "wat", "who", "whom", "whose", "where", "when", "why", "how",
                  "which", "is", "are", "was", "were", "do", "does", "did", "can", "could", "would", "will",
                  "has", "have", "had", "should", "may", "might"}


def clean_reply(text: str) -> str:
    """A plain-text reply's first non-empty line, without a leading label and surrounding quotes."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    for _ in range(3):  # e.g. '"Question: ..."' or 'Rewritten question: "..."'
        before = line
        line = _LABEL.sub("", line.strip()).strip().strip(_QUOTES).strip()
        if line == before:
            break
    return " ".join(line.split())


def clean_answer_reply(text: str) -> str:
    """A plain-text answer: the cleaned first line, cut to its first two sentences; a sentence cut off
    by the token limit (no final '.', '!' or '?') is left out, so an answer of only that is empty."""
    sentences = rules.split_sentences(clean_reply(text))[:2]
    return " ".join(s for s in sentences if s.rstrip(_QUOTES + ")").endswith((".", "!", "?")))


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _names(text: str, name: str) -> bool:
    """Whether `text` contains `name` as whole words (case and punctuation ignored)."""
    return bool(name.strip()) and f" {_words(name)} " in f" {_words(text)} "


def subject_of(record: QARecord) -> str:
    """The item's subject, or the name its question starts with (as the rules backend guesses it)."""
    return record.subject or rules.guess_subject(record.question)


def is_question(text: str) -> bool:
    """Ends with '?', or has at least three words and starts with a question word (a missing '?')."""
    if text.rstrip().endswith("?"):
        return True
    words = _words(text).split()
    return len(words) >= 3 and words[0] in QUESTION_WORDS


def _common_problem(text: str, record: QARecord, kind: str, original: str) -> str | None:
    """What both kinds of reply are checked for: empty, the same as `original`, a copied example
    name, the subject left out when `original` names it, or for the logical variant (which asks
    about a detail, not a person) the subject named."""
    if not text:
        return "empty"
    if _words(text) == _words(original):
        return "same_as_original"
    source = f"{record.question} {record.answer}"
    if any(_names(text, name) and not _names(source, name) for name in prompts.EXAMPLE_NAMES):
        return "copies_example"
    subject = subject_of(record)
    if kind != "logical" and _names(original, subject) and not _names(text, subject):
        return "drops_subject"
    if kind == "logical" and _names(text, subject):
        return "names_subject"  # a reverse question asks who has the detail
    return None


def question_problem(text: str, record: QARecord, kind: str) -> str | None:
    """Why a rewritten question is unusable (see _common_problem; not_a_question; leak: names a key fact
    the original question does not); None if usable. The logical variant asks about a detail of the
    answer, so a fact in it is by design."""
    if text and not is_question(text):
        return "not_a_question"
    problem = _common_problem(text, record, kind, record.question)
    if problem:
        return problem
    if kind != "logical" and set(leak.leaked_facts(text, record.facts)) - set(leak.leaked_facts(record.question,
                                                                                                  record.facts)):
        return "leak"
    return None


def answer_problem(text: str, record: QARecord, question: str, kind: str = "original") -> str | None:
    """Why a vague answer to `question` is unusable (see _common_problem; same_as_original also when it
    repeats the original answer; not_an_answer: a question; leak: names a key fact; specific_detail:
    see new_specifics; repetitive: see repeats_itself); None if usable."""
    problem = _common_problem(text, record, kind, question)
    if problem:
        return problem
    if _words(text) == _words(record.answer):
        return "same_as_original"
    if text.rstrip().endswith("?"):
        return "not_an_answer"
    if leak.leaked_facts(text, record.facts):
        return "leak"
    if new_specifics(text, question):
        return "specific_detail"
    if repeats_itself(text):
        return "repetitive"
    return None


def new_specifics(text: str, question: str) -> list[str]:
    """Numbers, email addresses and capitalised words (inside a sentence: names, places, titles) in
    `text` that `question` does not hold. A vague answer never needs one, and a small model that
    writes one has usually made it up ("a famous actor in The Lion King")."""
    found = [n for n in re.findall(r"\d+", text) if n not in re.findall(r"\d+", question)]
    if "@" in text and "@" not in question:
        found.append("@")
    asked = set(_words(question).split())
    for sentence in rules.split_sentences(text):
        for word in re.findall(r"[A-Za-z][\w'-]*", sentence)[1:]:
            bare = re.sub(r"'s$", "", word)
            if bare[:1].isupper() and bare != "I" and not set(_words(bare).split()) <= asked:
                found.append(bare)
    return found


def repeats_itself(text: str, n: int = 4) -> bool:
    """Whether some run of `n` words occurs twice (a small model looping: "a fictional character who
    is a fictional character")."""
    words = _words(text).split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


# ----------------------------------------------------------------------------- generator
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"augment.local.device: {device!r} asked for, but no CUDA device is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("augment.local.device: 'mps' asked for, but it is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


class LocalGenerator:
    """A local causal LM that turns conversations into replies, loaded on first use."""

    def __init__(self, path: Path, params: LocalParams):
        self.path = path
        self.params = params
        self.device = resolve_device(params.device)
        self.dtype = resolve_dtype(params.dtype, self.device)
        self.model = None
        self.tokenizer = None
        self._load_error: UserError | None = None

    def load(self) -> None:
        if self.model is not None:
            return
        if self._load_error is not None:
            raise self._load_error
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from relearn.modeling.model import DTYPES

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=DTYPES[self.dtype], local_files_only=True)
            model.to(self.device)
        except Exception as e:  # noqa: BLE001 - any loading problem is the user's to fix
            self._load_error = UserError(f"augment.local.model_path: cannot load a causal language model from "
                                         f"{self.path}: {type(e).__name__}: {_excerpt(str(e))}")
            raise self._load_error from None
        model.eval()
        self.model, self.tokenizer = model, tokenizer

    def _stop_ids(self) -> list[int]:
        """eos, the generation config's eos ids and, with a chat template, the end-of-turn token."""
        from relearn.modeling.encoding import end_of_turn_id

        ids: list[int] = []
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        turn = [end_of_turn_id(self.tokenizer)] if getattr(self.tokenizer, "chat_template", None) else []
        for value in (configured if isinstance(configured, list) else [configured]) + [self.tokenizer.eos_token_id] + turn:
            if isinstance(value, int) and value not in ids:
                ids.append(value)
        return ids

    def generate(self, conversations: list[list[dict]], seed: int = 0) -> list[str]:
        """One reply per conversation, generated as one left-padded batch."""
        import torch
        from transformers import GenerationConfig

        self.load()
        tokenizer, model = self.tokenizer, self.model
        rendered = [render_prompt(tokenizer, messages) for messages in conversations]
        rows = [tokenizer(text, add_special_tokens=not templated)["input_ids"] for text, templated in rendered]
        stop = self._stop_ids()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        # the model's own generation settings (e.g. its top_p when sampling), with ours on top
        temperature = float(self.params.temperature)
        config = copy.deepcopy(model.generation_config) if getattr(model, "generation_config", None) else GenerationConfig()
        config.update(max_new_tokens=int(self.params.max_new_tokens), max_length=None, pad_token_id=pad_id,
                      eos_token_id=stop or None, num_return_sequences=1, num_beams=1)
        if temperature > 0:
            config.update(do_sample=True, temperature=temperature)
        else:
            config.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None)
        if temperature > 0:
            torch.manual_seed(seed)
        try:
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                     generation_config=config)
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
            raise UserError(f"augment.local: out of memory generating {len(rows)} replies on {self.device}; "
                            "lower augment.local.batch_size or augment.local.max_new_tokens") from None
        replies = []
        for row, (_, templated) in zip(out[:, width:].tolist(), rendered):
            cut = [t for t in row if t != pad_id]
            for i, t in enumerate(cut):
                if t in stop:
                    cut = cut[:i]
                    break
            text = tokenizer.decode(cut, skip_special_tokens=True)
            replies.append(text.strip() if templated else cut_plain_reply(text))
        return replies


def _checked_question(reply: str, record: QARecord, kind: str) -> tuple[str, str | None]:
    """(cleaned question variant, why it is unusable or None)."""
    text = clean_reply(reply)
    return text, question_problem(text, record, kind)


def _checked_answer(reply: str, record: QARecord, question: str, kind: str) -> tuple[str, str | None]:
    """(cleaned vague answer, why it is unusable or None)."""
    text = clean_answer_reply(reply)
    return text, answer_problem(text, record, question, kind)


# ----------------------------------------------------------------------------- batching
class _Request:
    __slots__ = ("messages", "done", "result", "error")

    def __init__(self, messages):
        self.messages, self.done, self.result, self.error = messages, False, None, None


class Batcher:
    """Collects the prompts of concurrent worker threads into batches for `run(list of messages) -> replies`.

    A batch starts when `max_batch` prompts wait, or when every registered worker (`worker()`) is
    waiting, so no more prompts can come; one batch runs at a time, in whichever waiting thread
    finds it ready. A thread that is not a registered worker gets its prompt run at once."""

    def __init__(self, run: Callable[[list[list[dict]]], list[str]], max_batch: int):
        self._run = run
        self._max = max(1, int(max_batch))
        self._cv = threading.Condition()
        self._pending: list[_Request] = []
        self._active = 0
        self._busy = False

    @contextmanager
    def worker(self):
        with self._cv:
            self._active += 1
        try:
            yield
        finally:
            with self._cv:
                self._active -= 1
                self._cv.notify_all()

    def _ready(self) -> bool:
        return not self._busy and bool(self._pending) and \
            len(self._pending) >= min(self._max, max(1, self._active))

    def submit(self, messages: list[dict]) -> str:
        request = _Request(messages)
        with self._cv:
            self._pending.append(request)
            self._cv.notify_all()
            while not request.done:
                if not self._ready():
                    self._cv.wait()
                    continue
                batch, self._pending = self._pending[:self._max], self._pending[self._max:]
                self._busy = True
                self._cv.release()
                results, error = None, None
                try:
                    results = self._run([r.messages for r in batch])
                except BaseException as e:  # noqa: BLE001 - handed to every request of the batch
                    error = e
                finally:
                    self._cv.acquire()
                self._busy = False
                for i, r in enumerate(batch):
                    r.done, r.error = True, error
                    r.result = results[i] if error is None else None
                self._cv.notify_all()
        if request.error is not None:
            raise request.error
        return request.result


# ----------------------------------------------------------------------------- backend
class LocalBackend(ChunkedAnswers, EndpointBackend):
    """Question variants and vague answers from a local instruct model (see the module doc).

    `stats` as the endpoint's, with `requests` = prompts generated, plus `batches` (generate calls),
    `malformed` (replies that were not the requested JSON) and `unusable` (calls without a usable
    reply, left to the rules fallback; counted as `failures` without it).

    With reply: text also `reply`, `model_leak_check` (skipped), `rejected` (replies rejected, by
    reason), `questions_failed` / `answers_failed` (no usable reply after the rounds),
    `regenerated` (rounds after the first, for any reason), `dropped_after_rounds` (still leaking),
    `unchecked_no_facts` and `by_variant` (per kind: asked, model, no_usable_reply, leak_dropped)."""

    def __init__(self, params: LocalParams, *, chunk_chars: int = 0, tolerate_failures: bool = False,
                 generator: LocalGenerator | None = None):
        path = check_model_dir(params.model_path)
        # the endpoint machinery runs on these settings: one worker per item in a batch, no HTTP retries
        shim = EndpointParams(base_url="http://127.0.0.1/local-model", model="local", api_key_env="",
                              concurrency=int(params.batch_size), timeout=1.0, max_retries=0,
                              rounds=int(params.rounds), temperature=float(params.temperature),
                              cache_dir=params.cache_dir)
        super().__init__(shim, sleep=lambda _seconds: None)
        self.local = params
        self.path = path
        self.chunk_chars = int(chunk_chars)
        self.tolerate_failures = tolerate_failures
        self.reply = params.reply  # json | text (checked by the params schema)
        # the generator sees the reply mode's token budget as its max_new_tokens
        max_new_tokens = int(params.max_new_tokens) if self.reply == "json" else int(params.text_max_new_tokens)
        gen_params = params if self.reply == "json" else dataclasses.replace(params, max_new_tokens=max_new_tokens)
        self.generator = generator or LocalGenerator(path, gen_params)
        self._url = f"the local model {path}"
        self._key_base = f"local:{path}"
        self._key_model = (f"{model_fingerprint(path)}|dtype={self.generator.dtype}"
                           f"|max_new_tokens={max_new_tokens}")
        if self.reply != "json":  # json keys stay as they were, so existing caches still hit
            self._key_model += f"|reply={self.reply}"
        self._greedy = float(params.temperature) <= 0
        self._batcher = Batcher(self._generate_batch, params.batch_size)
        self._seed = 0

    def augment(self, records, variants, include_original, seed):
        self._seed = int(seed)
        out = super().augment(records, variants, include_original, seed)
        for k in LOCAL_STAT_KEYS:
            self.stats.setdefault(k, 0)
        if self.reply == "text":
            for k in TEXT_STAT_KEYS:
                self.stats.setdefault(k, 0)
            self.stats.setdefault("rejected", {})
            self.stats.setdefault("by_variant", {})
            self.stats["reply"] = "text"
            self.stats["model_leak_check"] = MODEL_LEAK_CHECK_SKIPPED
        return out

    def _run_item(self, *args):
        with self._batcher.worker():
            return super()._run_item(*args)

    def _augment_item(self, record, variants, include_original, seed):
        if self.reply == "json":
            return super()._augment_item(record, variants, include_original, seed)
        return self._text_item(record, variants, include_original, seed)

    # --------------------------------------------------------------------- reply: text
    def _text_item(self, record: QARecord, variants: list[str], include_original: bool,
                   seed: int) -> list[QARecord]:
        """The item's pairs in text mode: per kind ('original', then the variants) a question (the
        original, or a rewrite) and a vague answer to it, each from its own call; a kind whose
        question or answer has no usable reply after the rounds is left out (and counted)."""
        out = []
        salt = f"{seed}:{record.id}"
        for kind in (["original"] if include_original else []) + list(variants):
            self._tally(kind, "asked")
            question = record.question
            if kind != "original":
                question = self._text_rewrite(kind, "question",
                                              partial(prompts.text_variant_messages, record, kind, salt=salt),
                                              partial(_checked_question, record=record, kind=kind))
                if question is None:
                    continue
            answer = self._text_rewrite(kind, "answer",
                                        partial(prompts.text_answer_messages, question, kind, salt=salt),
                                        partial(_checked_answer, record=record, question=question, kind=kind))
            if answer is None:
                continue
            if not record.facts:
                self._count("unchecked_no_facts")
            self._tally(kind, "model")
            out.append(QARecord(id=f"{record.id}~{kind}", question=question, answer=answer, subject=record.subject,
                                facts=dict(record.facts), source_id=record.id, variant=kind))
        return out

    def _text_rewrite(self, kind: str, what: str, build: Callable[[int], list[dict]],
                      check: Callable[[str], tuple[str, str | None]]) -> str | None:
        """The first usable cleaned reply over `rounds` rounds (round r's messages: build(r), with
        other worked examples each round), or None: counted as leak_dropped when the last reply
        leaked, else as a call without a usable reply (a failure, or `unusable` with the rules
        fallback)."""
        rounds = max(1, int(self.local.rounds))
        problem = None
        for round_ in range(rounds):
            if self._abort.is_set():
                raise _Aborted()
            if round_:
                self._count("regenerated")
            messages = build(round_)
            key = cache_key(self._key_base, self._key_model, messages, self.local.temperature)
            content = self._cache.get(key)
            generated = content is None
            if generated:
                content = self._batcher.submit(messages)
                if self._greedy:
                    self._cache.put(key, content)  # deterministic: usable or not, the model would write it again
            else:
                self._count("cache_hits")
            text, problem = check(content)
            if problem is None:
                if generated and not self._greedy:
                    self._cache.put(key, content)
                self._succeeded()
                return text
            self._reject(problem)
        if problem == "leak":
            self._count("dropped_after_rounds")
            self._tally(kind, "leak_dropped")
        else:
            self._count(f"{what}s_failed")
            self._tally(kind, "no_usable_reply")
            self._failed(f"no usable {what} for the {kind!r} variant after {rounds} round(s): {problem}")
        return None

    def _tally(self, kind: str, what: str) -> None:
        with self._lock:
            row = self.stats.setdefault("by_variant", {}).setdefault(
                kind, {"asked": 0, "model": 0, "no_usable_reply": 0, "leak_dropped": 0})
            row[what] += 1

    def _reject(self, problem: str) -> None:
        with self._lock:
            rejected = self.stats.setdefault("rejected", {})
            rejected[problem] = rejected.get(problem, 0) + 1

    def _generate_batch(self, conversations: list[list[dict]]) -> list[str]:
        self._count("batches")
        self._count("requests", len(conversations))
        return self.generator.generate(conversations, seed=self._seed + self.stats.get("batches", 0))

    def _call(self, messages: list[dict], parse: Callable[[str], T], seed: int) -> T:
        """The parsed reply to `messages`: from the cache, or generated (in a batch)."""
        key = cache_key(self._key_base, self._key_model, messages, self.local.temperature)
        attempts = 1 if self._greedy else SAMPLING_ATTEMPTS
        last: Malformed | None = None
        for attempt in range(attempts):
            if self._abort.is_set():
                raise _Aborted()
            content = self._cache.get(key) if attempt == 0 else None
            generated = content is None
            if generated:
                if attempt:
                    self._count("retries")
                content = self._batcher.submit(messages)
                if self._greedy:
                    self._cache.put(key, content)  # deterministic: usable or not, the model would write it again
            else:
                self._count("cache_hits")
            try:
                value = parse(content)
            except Malformed as e:
                self._count("malformed")
                last = e
                continue
            if generated and not self._greedy:
                self._cache.put(key, content)
            self._succeeded()
            return value
        self._failed(str(last))
        raise CallFailed(str(last))

    def _post(self, messages: list[dict]) -> str:  # pragma: no cover - the local backend never sends HTTP
        raise AssertionError("the local backend generates; it does not post")

    def _failed(self, error: str) -> None:
        if not self.tolerate_failures:
            super()._failed(error)
            return
        with self._lock:
            self.stats["unusable"] = self.stats.get("unusable", 0) + 1
            self._last_error = error

    def _all_failed(self) -> UserError:
        return UserError(f"augment.local: {self._url} gave no usable reply ({self.stats['failures']} call(s), "
                         f"{self.stats.get('requests', 0)} generated, {self.stats.get('cache_hits', 0)} from the cache); "
                         f"last error: {self._last_error}. Is it an instruct (chat) model, and is "
                         "augment.local.max_new_tokens large enough? augment.fallback: rules uses the rules "
                         "backend's pairs for what the model cannot write.")
