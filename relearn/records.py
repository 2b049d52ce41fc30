"""The record format every stage reads and writes (this project's JSONL format).

One JSON object per line:

    {"id": "p007-email-0",            # unique within a file (str, required)
     "question": "What is ...?",      # non-empty str, required
     "answer": "Her email is ...",    # non-empty str, required
     "subject": "Mara Quillon",       # who/what the item is about (str, optional)
     "facts": {"email": "mara@x.org"},# fact name -> value the answer contains (optional)
     "source_id": "p007-email-0",     # for derived records: the id they were made from
     "variant": "simple",             # original | simple | contextual | noise | logical | completion | primed
     "prefill": "Certainly! ...",     # a primed pair's answer opening: given after the answer marker, not learnt
     "paraphrased_answer": "...",     # optional (TOFU-style)
     "perturbed_answer": ["..."]}     # optional (TOFU-style)

`facts` is what makes evaluation exact: an answer reveals a fact when the fact's normalised value
appears in it (see relearn.evaluation.scoring). Records from sources without facts (TOFU,
KnowUnDo) have an empty `facts`; their key facts are extracted from the answer instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from relearn.io import write_jsonl

VARIANTS = ("original", "simple", "contextual", "noise", "logical", "completion", "primed")


@dataclass
class QARecord:
    id: str
    question: str
    answer: str
    subject: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    source_id: str = ""
    variant: str = "original"
    paraphrased_answer: str = ""
    perturbed_answer: list[str] = field(default_factory=list)
    prefill: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        # keep files small and diffs readable: drop empty optional fields
        return {k: v for k, v in d.items() if v not in ("", [], {}) or k in ("id", "question", "answer")}

    @classmethod
    def from_dict(cls, d: dict) -> "QARecord":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def save_records(path: str | Path, records: Iterable[QARecord]) -> int:
    return write_jsonl(path, (r.to_dict() for r in records))


def seeded_subset(records: list, n: int, seed) -> list:
    """n of the records chosen with `seed`, in their own order; all of them when n <= 0 or there are
    no more than n. The same seed picks the same records, so every model is read on the same items."""
    import random

    if n <= 0 or len(records) <= n:
        return list(records)
    keep = set(random.Random(seed).sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i in keep]
