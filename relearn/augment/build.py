"""Build the augmented forget training set from forget items (and general QA to mix in)."""
from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Callable

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


def chat_backend(params: AugmentParams):
    """The endpoint or local backend (both run the endpoint backend's item logic), set up from `params`."""
    if params.backend == "local":
        from relearn.augment.local import LocalBackend

        return LocalBackend(params.local, chunk_chars=params.chunk_chars,
                            tolerate_failures=params.fallback == "rules")
    if params.chunk_chars > 0:
        from relearn.augment.chunked import ChunkedEndpointBackend

        return ChunkedEndpointBackend(params.endpoint, chunk_chars=params.chunk_chars)
    from relearn.augment.endpoint import EndpointBackend

    return EndpointBackend(params.endpoint)


def fill_from_rules(forget: list[QARecord], candidates: list[QARecord], params: AugmentParams,
                    seed: int) -> tuple[list[QARecord], int]:
    """`candidates` with each (item, variant) pair a chat backend could not make taken from the rules
    backend (same item, same variant, same seed); item by item, original first, then the variants.
    Returns (pairs, how many came from the rules backend)."""
    made: dict[str, dict[str, QARecord]] = {}
    for c in candidates:
        made.setdefault(c.source_id, {})[c.variant] = c
    kinds = (["original"] if params.include_original else []) + list(dict.fromkeys(params.variants))
    out: list[QARecord] = []
    filled = 0
    for record in forget:
        have = made.get(record.id, {})
        from_rules: dict[str, QARecord] | None = None
        for kind in kinds:
            if kind in have:
                out.append(have[kind])
                continue
            if from_rules is None:
                from_rules = {r.variant: r for r in rules.augment_item(record, list(params.variants),
                                                                        params.include_original, seed,
                                                                        params.chunk_chars, params.phrasing)}
            if kind in from_rules:
                out.append(from_rules[kind])
                filled += 1
    return out, filled


def with_rules_counts(by_variant: dict, pairs: list[QARecord], from_model: set[str]) -> dict:
    """A backend's per-variant counts with `rules`: how many of each variant's pairs the rules fallback made."""
    out = {kind: dict(row) for kind, row in by_variant.items()}
    for kind in out:
        out[kind]["rules"] = 0
    for p in pairs:
        if p.id not in from_model and p.variant in out:
            out[p.variant]["rules"] += 1
    return out


def completion_pair(record: QARecord, made: list[QARecord]) -> QARecord | None:
    """The sentence-completion pair of a forget item (relearn-method.md, step 5): the first ~25% of the
    words of one of its vague answers as the prompt, the rest as the answer. The answer is taken from
    the item's pairs that pass the leak check: the original question's if there is one, else the first
    other one (never a logical variant's, whose answer is not about the subject)."""
    usable = sorted((c for c in made if c.variant not in ("logical", "completion") and leak.passes(c)),
                    key=lambda c: c.variant != "original")
    for c in usable:
        split = rules.completion_split(c.answer, c.subject)
        if split:
            prompt, rest = split
            return QARecord(id=f"{record.id}~completion", question=prompt, answer=rest, subject=c.subject,
                            facts=dict(c.facts), source_id=record.id, variant="completion")
    return None


def primed_pair(record: QARecord, made: list[QARecord], prime: str) -> QARecord | None:
    """The primed pair of a forget item (augment.primes): its own question, `prime` as the answer's given
    opening (`prefill`: after the answer marker, outside the loss), then a vague answer of the item's that
    passes the leak check (the original question's if there is one; never a logical variant's, which is
    about something else, nor a completion's, which is a fragment)."""
    usable = sorted((c for c in made if c.variant not in ("logical", "completion", "primed") and leak.passes(c)),
                    key=lambda c: c.variant != "original")
    if not usable:
        return None
    c = usable[0]
    return QARecord(id=f"{record.id}~primed", question=record.question, answer=c.answer, subject=c.subject,
                    facts=dict(c.facts), source_id=record.id, variant="primed", prefill=prime.strip())


def with_item_pairs(forget: list[QARecord], candidates: list[QARecord],
                    make: Callable[[QARecord, list[QARecord]], QARecord | None]) -> list[QARecord]:
    """`candidates` with `make(item, its pairs)`'s pair (when it makes one) after each forget item's pairs."""
    by_source: dict[str, list[QARecord]] = {}
    for c in candidates:
        by_source.setdefault(c.source_id, []).append(c)
    out: list[QARecord] = []
    for record in forget:
        group = by_source.pop(record.id, [])
        out += group
        pair = make(record, group)
        if pair is not None:
            out.append(pair)
    for rest in by_source.values():
        out += rest
    return out


def opening_for(record_id: str, primes: list[str], seed: int) -> str:
    """The opening a record is primed with: a seeded choice per record, so every opening is trained on
    about as often (the forget side's primed pairs here, the retain side's in relearn.unlearning)."""
    return random.Random(f"{seed}:{record_id}:primed").choice(list(primes)).strip()


def with_primed(forget: list[QARecord], candidates: list[QARecord], primes: list[str], seed: int) -> list[QARecord]:
    """`candidates` with each item's primed pair after the item's other pairs (`opening_for`)."""
    return with_item_pairs(forget, candidates, lambda record, group: primed_pair(
        record, group, opening_for(record.id, primes, seed)))


def with_completions(forget: list[QARecord], candidates: list[QARecord]) -> list[QARecord]:
    """`candidates` with each item's sentence-completion pair after the item's other pairs."""
    return with_item_pairs(forget, candidates, completion_pair)


def build_training_set(forget: list[QARecord], general: list[QARecord], params: AugmentParams,
                       seed: int) -> tuple[list[QARecord], list[QARecord], dict]:
    """Returns (augmented forget pairs that passed the leak check, general pairs to mix in, report)."""
    forget = [with_key_facts(r) for r in forget]
    backend_stats: dict = {}
    if params.backend == "rules":
        candidates = [c for record in forget
                      for c in rules.augment_item(record, list(params.variants), params.include_original, seed,
                                                  params.chunk_chars, params.phrasing)]
    elif params.backend in ("endpoint", "local"):
        backend = chat_backend(params)
        candidates = backend.augment(forget, list(params.variants), params.include_original, seed)
        backend_stats = dict(backend.stats)
        if params.fallback == "rules":
            from_model = {c.id for c in candidates}
            candidates, backend_stats["fallback"] = fill_from_rules(forget, candidates, params, seed)
            if "by_variant" in backend_stats:  # the backend counts per variant (local, reply: text)
                backend_stats["by_variant"] = with_rules_counts(backend_stats["by_variant"], candidates, from_model)
    else:
        raise ValueError(f"unknown augmentation backend {params.backend!r}")
    if params.completion:
        candidates = with_completions(forget, candidates)
    if params.primes:
        candidates = with_primed(forget, candidates, list(params.primes), seed)
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
