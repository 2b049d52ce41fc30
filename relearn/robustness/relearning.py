"""Relearning attack: do a few fine-tuning steps on part of the forget set bring the rest back?

An unlearned model that only hides knowledge (instead of removing it) recovers facts it was never
fine-tuned on again: a handful of steps on some forget items "re-opens" the others. The attack:

1. Split the forget set, with a fixed seed, into a fine-tune part and a held part. The unit is a
   *group* of records, never a single record, so that no fact is on both sides: group_by="fact"
   (default) groups records that share subject and facts (the phrasings of one fact, which is
   also how a forget_eval question is tied to its forget items); group_by="subject" groups by
   person (the held part then asks about people the attack never saw). A record without facts is
   its own group.
2. Copy the model in memory (the adapter merged into the base weights) and fine-tune it for
   `steps` optimiser steps on the fine-tune part's original (question, answer) pairs: full
   fine-tuning of every weight, answer-token cross-entropy, AdamW with linear decay, the
   project's own training pieces (relearn.training). Full fine-tuning is the stronger and simpler
   attacker: it needs no choice of LoRA rank or targets, and it reaches weights a LoRA would not.
3. Measure KFR on the held part's forget_eval questions before and after; recovery = KFR_before -
   KFR_after (positive: forgotten knowledge came back). Nothing is written to disk.

Run it on the unlearned model and on a retain-only control: a control never knew the held facts,
so its recovery is what fine-tuning alone explains (for instance facts guessed from the
fine-tune part); the unlearned model's recovery beyond that is knowledge that was hidden, not gone.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator, Optional

from relearn.records import QARecord
from relearn.robustness.common import answer_and_score, load_merged, timed

GROUP_BY = ("fact", "subject")


def group_key(record: QARecord, group_by: str = "fact") -> str:
    """The split unit of a record: its subject and facts ('fact'), its subject ('subject'), or its
    id when it has neither facts (for 'fact') nor a subject (for 'subject')."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    if group_by == "subject" and record.subject:
        return f"subject:{record.subject}"
    if group_by == "fact" and record.facts:
        facts = "|".join(f"{k}={v}" for k, v in sorted(record.facts.items()))
        return f"fact:{record.subject}|{facts}"
    return f"id:{record.id}"


def split_forget(forget: list[QARecord], forget_eval: list[QARecord], fraction: float = 0.5, seed: int = 0,
                 group_by: str = "fact") -> dict[str, list[QARecord]]:
    """{'finetune': forget records to fine-tune on, 'finetune_eval': the forget_eval records of those
    groups, 'held_eval': every other forget_eval record}. The groups of `forget` are shuffled with
    `seed` and the first round(fraction * n) go to the fine-tune part (at least one, and at least
    one left over, when there are two or more). Deterministic for the same inputs and seed."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups = sorted({group_key(r, group_by) for r in forget})
    random.Random(seed).shuffle(groups)
    n = min(max(round(fraction * len(groups)), 1), len(groups) - 1) if len(groups) >= 2 else len(groups)
    chosen = set(groups[:n])
    return {"finetune": [r for r in forget if group_key(r, group_by) in chosen],
            "finetune_eval": [r for r in forget_eval if group_key(r, group_by) in chosen],
            "held_eval": [r for r in forget_eval if group_key(r, group_by) not in chosen]}


def relearning_attack(base_dir: str | Path, adapter_dir: Optional[str | Path], forget: list[QARecord],
                      forget_eval: list[QARecord], *, template: str, max_new_tokens: int, max_length: int = 128,
                      steps: int = 10, lr: float = 1e-3, batch_size: int = 8, fraction: float = 0.5,
                      group_by: str = "fact", seed: int = 0, retain_eval: Optional[list[QARecord]] = None,
                      eval_batch_size: int = 32) -> tuple[dict, dict]:
    """Fine-tune a copy of the model on part of `forget` and measure what comes back on the rest.

    The defaults (10 steps of 8 pairs at lr 1e-3) suit the demo's from-scratch model, which was
    trained at lr 3e-3; for a pretrained model of billions of parameters use lr near 1e-5.

    The model is `base_dir` with `adapter_dir` merged in (or `base_dir` alone). Training runs on
    the device `accelerate` picks (a GPU when there is one), in fp32, seeded: the same inputs give
    the same result on the same hardware. Returns

        aggregate: {"kfr_before", "kfr_after", "recovery",            # held part: the attack's result
                    "finetuned": {"kfr_before", "kfr_after", "recovery"},  # fine-tuned facts' own eval items
                    "krr_before", "krr_after",                          # only with retain_eval
                    "loss_first", "loss_last", "steps", "lr", "batch_size", "fraction", "group_by", "seed",
                    "n": {"finetune_pairs", "finetune_groups", "held_groups", "held_eval", "finetune_eval"},
                    "seconds": {"load", "before", "finetune", "after", "total"}}
        per_item:  {"forget": {id: {"part": "held" | "finetune", "before": {...}, "after": {...}}},
                    "retain": {id: {"before": {...}, "after": {...}}}}   # each {...}: answer, share, verdict
    """
    from accelerate.utils import set_seed

    from relearn.methods.losses import answer_ce
    from relearn.training import make_accelerator, make_loader, make_optimizer, optimizer_step

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    parts = split_forget(forget, forget_eval, fraction, seed, group_by)
    if not parts["finetune"] or not parts["held_eval"]:
        raise ValueError(f"relearning needs forget records to fine-tune on and held eval questions; got "
                         f"{len(parts['finetune'])} and {len(parts['held_eval'])}")
    retain_eval = retain_eval or []
    seconds: dict[str, float] = {}
    gen = dict(template=template, max_new_tokens=max_new_tokens, batch_size=eval_batch_size)

    def measure(model, tokenizer, when: str) -> dict:
        out = {}
        for name, records, kind in (("held", parts["held_eval"], "forget"),
                                    ("finetuned", parts["finetune_eval"], "forget"),
                                    ("retain", retain_eval, "retain")):
            if records:
                out[name] = answer_and_score(model, tokenizer, records, kind, desc=f"relearning {when} {name}", **gen)
        return out

    with timed(seconds, "load"):
        set_seed(seed)
        accelerator = make_accelerator("float32")
        model, tokenizer = load_merged(base_dir, adapter_dir, "float32", device=str(accelerator.device))
    with timed(seconds, "before"):
        before = measure(model, tokenizer, "before")
    with timed(seconds, "finetune"):
        set_seed(seed)
        pairs = [(r.question, r.answer) for r in parts["finetune"]]
        loader = make_loader(tokenizer, pairs, template, max_length, batch_size, seed)
        for p in model.parameters():
            p.requires_grad_(True)
        optimizer, scheduler = make_optimizer(model, lr, weight_decay=0.0, warmup_ratio=0.0, total_steps=steps)
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        model.train()
        losses = []
        batches = _endless(loader)
        for _ in range(steps):
            batch = next(batches)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = answer_ce(logits, batch["labels"])
            optimizer_step(accelerator, model, optimizer, scheduler, loss, grad_clip=1.0)
            losses.append(loss.item())
        model = accelerator.unwrap_model(model)
        model.eval()
    with timed(seconds, "after"):
        after = measure(model, tokenizer, "after")
    del model, optimizer
    seconds["total"] = round(sum(seconds.values()), 3)

    aggregate = {
        "kfr_before": before["held"][0], "kfr_after": after["held"][0],
        "recovery": before["held"][0] - after["held"][0],
        "finetuned": ({"kfr_before": before["finetuned"][0], "kfr_after": after["finetuned"][0],
                       "recovery": before["finetuned"][0] - after["finetuned"][0]} if "finetuned" in before else None),
        "loss_first": losses[0], "loss_last": losses[-1], "steps": steps, "lr": lr, "batch_size": batch_size,
        "fraction": fraction, "group_by": group_by, "seed": seed,
        "n": {"finetune_pairs": len(pairs),
              "finetune_groups": len({group_key(r, group_by) for r in parts["finetune"]}),
              "held_groups": len({group_key(r, group_by) for r in parts["held_eval"]}),
              "held_eval": len(parts["held_eval"]), "finetune_eval": len(parts["finetune_eval"])},
        "seconds": seconds,
    }
    if retain_eval:
        aggregate.update(krr_before=before["retain"][0], krr_after=after["retain"][0])
    per_item: dict[str, dict] = {"forget": {}, "retain": {}}
    for name, part in (("held", "held"), ("finetuned", "finetune")):
        for rid, item in before.get(name, (None, {}))[1].items():
            per_item["forget"][rid] = {"part": part, "before": item, "after": after[name][1][rid]}
    for rid, item in before.get("retain", (None, {}))[1].items():
        per_item["retain"][rid] = {"before": item, "after": after["retain"][1][rid]}
    print(f"[relearning] held KFR {aggregate['kfr_before']:.3f} -> {aggregate['kfr_after']:.3f} "
          f"(recovery {aggregate['recovery']:+.3f}) after {steps} steps on {len(pairs)} pairs; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    return aggregate, per_item


def _endless(loader) -> Iterator[dict]:
    """Batches from `loader`, pass after pass (each pass reshuffled by the loader's own generator)."""
    while True:
        yield from loader
