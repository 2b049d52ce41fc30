"""Build the augmented forget training set from forget items (and general QA to mix in)."""
from __future__ import annotations

import dataclasses
import random
from collections import Counter

from relearn.augment import leak, rules
from relearn.evaluation.keyfacts import extract_key_facts
from relearn.params import AugmentParams
from relearn.records import QARecord


def with_key_facts(record: QARecord) -> QARecord:
    """A free-text record (no `facts`) gets its answer's key facts as facts, so that the leak check
    and the evaluation of its variants know what must not be said."""
    if record.facts:
        return record
    found = extract_key_facts(record.answer, f"{record.question} {record.subject}")
    return dataclasses.replace(record, facts={f"key{i}": fact for i, fact in enumerate(found)})


def build_training_set(forget: list[QARecord], general: list[QARecord], params: AugmentParams,
                       seed: int) -> tuple[list[QARecord], list[QARecord], dict]:
    """Returns (augmented forget pairs that passed the leak check, general pairs to mix in, report)."""
    forget = [with_key_facts(r) for r in forget]
    backend_stats: dict = {}
    if params.backend == "rules":
        candidates = [c for record in forget
                      for c in rules.augment_item(record, list(params.variants), params.include_original, seed)]
    elif params.backend == "endpoint":
        from relearn.augment.endpoint import EndpointBackend

        backend = EndpointBackend(params.endpoint)
        candidates = backend.augment(forget, list(params.variants), params.include_original, seed)
        backend_stats = dict(backend.stats)
    else:
        raise ValueError(f"unknown augmentation backend {params.backend!r}")
    made: Counter = Counter()
    dropped: Counter = Counter()
    kept: list[QARecord] = []
    for candidate in candidates:
        made[candidate.variant] += 1
        if leak.passes(candidate):
            kept.append(candidate)
        else:
            dropped[candidate.variant] += 1

    mixed: list[QARecord] = []
    n_general = round(params.general_ratio * len(kept)) if general else 0
    rng = random.Random(seed)
    order: list[QARecord] = []
    while len(mixed) < n_general:
        if not order:
            order = list(general)
            rng.shuffle(order)
        g = order.pop()
        mixed.append(QARecord(id=f"{g.id}#mix{len(mixed)}", question=g.question, answer=g.answer,
                              facts=dict(g.facts), source_id=g.id, variant="original"))

    report = {
        "forget_items": len(forget),
        "made": sum(made.values()),
        "kept": len(kept),
        "dropped": sum(dropped.values()),
        "by_variant": {k: {"made": made[k], "kept": made[k] - dropped[k], "dropped": dropped[k]} for k in sorted(made)},
        "general_mixed": len(mixed),
        "backend": params.backend,
        "backend_stats": backend_stats,  # e.g. requests, cache hits, answers dropped inside the backend
    }
    return kept, mixed, report
