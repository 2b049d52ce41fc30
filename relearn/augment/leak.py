"""The deterministic leak check: an augmented answer must not contain any fact value of its item.

Uses the same matcher as evaluation (relearn.evaluation.scoring.fact_revealed), so an answer that
passes here can never count as revealing the fact when it is generated later.
"""
from __future__ import annotations

from relearn.evaluation.scoring import fact_revealed
from relearn.records import QARecord


def leaked_facts(answer: str, facts: dict[str, str]) -> list[str]:
    """Names of the facts whose value appears in `answer`."""
    return [name for name, value in facts.items() if fact_revealed(answer, value)]


def passes(record: QARecord) -> bool:
    return not leaked_facts(record.answer, record.facts)
