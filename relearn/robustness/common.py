"""What every robustness check shares: load a model (merged in memory), answer a set, score it."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from relearn.evaluation.scoring import knowledge_scores
from relearn.modeling.generation import generate_answers
from relearn.records import QARecord

RATE = {"forget": "kfr", "retain": "krr"}
VERDICT = {"forget": "forgotten", "retain": "retained"}


def load_merged(base_dir: str | Path, adapter_dir: Optional[str | Path] = None, dtype: str = "float32",
                device: str = "cpu"):
    """(model, tokenizer): the base model, with the LoRA adapter merged in memory when one is given.

    Nothing is written: the directories on disk stay as they are.
    """
    from relearn.modeling.model import load_pretrained, load_with_adapter

    if adapter_dir is None:
        model, tokenizer = load_pretrained(base_dir, dtype)
    else:
        model, tokenizer = load_with_adapter(base_dir, adapter_dir, dtype)
        model = model.merge_and_unload()
    model.eval()
    return model.to(device), tokenizer


def answer_and_score(model, tokenizer, records: list[QARecord], kind: str, *, template: str, max_new_tokens: int,
                     batch_size: int = 32, questions: Optional[list[str]] = None,
                     desc: str = "generate") -> tuple[float, dict[str, dict]]:
    """Greedy answers to `records` (or to `questions`, one per record, when the questions are rewritten)
    scored against the records' facts: (KFR or KRR, {record id: {question, answer, share, verdict}}).

    The rate is NaN when no item could be scored (see relearn.evaluation.scoring.knowledge_scores);
    such items appear with share None.
    """
    if kind not in RATE:
        raise ValueError(f"kind must be 'forget' or 'retain', got {kind!r}")
    questions = [r.question for r in records] if questions is None else questions
    if len(questions) != len(records):
        raise ValueError(f"{len(questions)} questions for {len(records)} records")
    if not records:
        return float("nan"), {}
    answers = generate_answers(model, tokenizer, questions, template, max_new_tokens, batch_size, desc=desc)
    scores = knowledge_scores(answers, records, kind)
    verdict = VERDICT[kind]
    items = {}
    for record, question, answer in zip(records, questions, answers):
        score = scores["by_id"].get(record.id, {})
        items[record.id] = {"question": question, "answer": answer, "share": score.get("share"),
                            verdict: score.get(verdict)}
    return scores[RATE[kind]], items


@contextmanager
def timed(seconds: dict, name: str) -> Iterator[None]:
    """Record how long the block took under seconds[name] (rounded to ms)."""
    start = time.monotonic()
    try:
        yield
    finally:
        seconds[name] = round(time.monotonic() - start, 3)

