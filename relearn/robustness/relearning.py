"""Relearning attack: do some fine-tuning steps on part of the forget set bring the rest back?

An unlearned model that only hides knowledge (instead of removing it) recovers facts it was never
fine-tuned on again: a handful of steps on some forget items "re-opens" the others. The attack is
the literature's retrain-on-T protocol, swept over the attacker's settings, with the worst case
reported:

1. Split the forget set into folds. The unit is a *group* of records, never a single record, so
   that no fact is on both sides: group_by="fact" (default) groups records that share subject and
   facts (the phrasings of one fact, which is also how a forget_eval question is tied to its forget
   items); group_by="subject" groups by person (the held fold then asks about people the attack
   never saw). A record without facts is its own group. With `folds` k >= 2 the groups are dealt,
   seeded, into k folds; each fold is held out once while the attacker fine-tunes on the others,
   so every fact is measured once. With k = 1 there is one seeded split: a `fraction` of the groups
   is fine-tuned on and the rest held (the cheap variant, for demos).
2. For each learning rate of `lrs` and each fold: copy the model in memory (an adapter merged into
   the base weights first) and fine-tune it on the fine-tune part's original (question, answer)
   pairs for max(`steps`) optimiser steps, reading recovery after each step count of `steps` along
   that one run. The attacker is "full" (every weight) or "lora" (a fresh LoRA of rank `lora_r`,
   alpha 2r, on every linear layer but the output head: the attacker of a fine-tuning API). The
   learning rate is constant (AdamW, no decay), so the reading after n steps is what an attack of
   exactly n steps gets, not a slice of a longer schedule. The attacker's `precision` bounds its
   memory (attacker_memory): "float32" keeps fp32 weights, gradients and AdamW moments (16 bytes a
   weight for "full"); "bfloat16" keeps all of them in bf16 with stochastically rounded updates
   (relearn.training.optim.BF16AdamW, 8 bytes a weight), with gradient checkpointing where the model has it,
   so that a full fine-tune of a 7B model (56 GB) fits on one 80 GB GPU; a LoRA attacker holds the
   base weights frozen in that precision and trains an fp32 adapter.
3. Recovery = KFR before - KFR after on the held fold's forget_eval questions (positive: forgotten
   knowledge came back); a setting's recovery is the mean over folds. The worst case is the setting
   with the largest recovery. Nothing is written to disk.

Run it on the unlearned model and on a retain-only control with the same settings: a control never
knew the held facts, so its recovery at a setting is what fine-tuning alone explains (facts guessed
from the fine-tune part, a model pushed towards the forget set's style); the unlearned model's
recovery beyond the control's at the same setting is knowledge that was hidden, not gone.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from relearn.errors import UserError
from relearn.records import QARecord
from relearn.robustness.common import VERDICT, answer_and_score, load_merged, timed

GROUP_BY = ("fact", "subject")
ATTACKERS = ("full", "lora")
PRECISIONS = ("float32", "bfloat16")
GiB = 1024 ** 3


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


def fold_forget(forget: list[QARecord], forget_eval: list[QARecord], folds: int, seed: int = 0,
                group_by: str = "fact") -> list[dict[str, list]]:
    """k-fold retrain-on-T splits: the groups of `forget` and `forget_eval` are shuffled with `seed`
    and dealt round-robin into `folds` folds (sizes differ by at most one). One dict per fold, in
    fold order, shaped as split_forget's with the fold held out and every other fold fine-tuned on,
    plus 'held_groups' (the fold's group keys, sorted). Every group is held out exactly once.

    The groups of forget_eval count too, so that a question whose fact has no forget record is
    still measured (it is simply never fine-tuned on)."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (1 is split_forget's single split), got {folds}")
    groups = sorted({group_key(r, group_by) for r in forget} | {group_key(r, group_by) for r in forget_eval})
    if len(groups) < folds:
        raise UserError(f"robustness.relearn_folds: {folds} folds need at least {folds} groups of forget records, "
                        f"got {len(groups)}")
    random.Random(seed).shuffle(groups)
    out = []
    for k in range(folds):
        held = set(groups[k::folds])
        out.append({"finetune": [r for r in forget if group_key(r, group_by) not in held],
                    "finetune_eval": [r for r in forget_eval if group_key(r, group_by) not in held],
                    "held_eval": [r for r in forget_eval if group_key(r, group_by) in held],
                    "held_groups": sorted(held)})
    return out


def attack_parts(forget: list[QARecord], forget_eval: list[QARecord], folds: int = 2, fraction: float = 0.5,
                 seed: int = 0, group_by: str = "fact") -> list[dict[str, list]]:
    """The attack's (fine-tune, held) parts: fold_forget's k folds, or with folds=1 split_forget's
    one seeded split at `fraction`."""
    if folds == 1:
        return [split_forget(forget, forget_eval, fraction, seed, group_by)]
    return fold_forget(forget, forget_eval, folds, seed, group_by)


def relearning_attack(base_dir: str | Path, adapter_dir: Optional[str | Path], forget: list[QARecord],
                      forget_eval: list[QARecord], *, template: str, max_new_tokens: int, max_length: int = 128,
                      steps: Sequence[int] = (10, 50, 100), lrs: Sequence[float] = (1e-5, 3e-5, 1e-4),
                      attacker: str = "full", lora_r: int = 8, folds: int = 2, batch_size: int = 8,
                      fraction: float = 0.5, group_by: str = "fact", seed: int = 0,
                      retain_eval: Optional[list[QARecord]] = None, eval_batch_size: int = 32,
                      device: str = "auto", dtype: str = "float32", precision: str = "float32") -> tuple[dict, dict]:
    """Fine-tune copies of the model on folds of `forget`, for every learning rate in `lrs`, and
    measure what comes back on the held fold after each step count in `steps`.

    The defaults (lrs 1e-5..1e-4, two folds) suit a pretrained model; the demo's from-scratch model,
    trained at lr 3e-3, needs about 1e-4..2e-3 (params.yaml). Cost: len(lrs) x folds runs of
    max(steps) steps, and one generation pass over forget_eval and retain_eval per run and step
    count (plus one before).

    The model is `base_dir` with `adapter_dir` merged in (or `base_dir` alone); a LoRA attacker is a
    fresh adapter on top of that merged model. Training runs on `device` (the `device` param: a GPU
    when there is one), with the weights in `precision` (module docstring; `dtype` is the run's
    autocast precision, which accelerate allows once per process), seeded: every run sees the same
    batches in the same order, so runs differ only in their learning rate, and the same inputs give
    the same result on the same hardware. Returns

        aggregate: {"recovery",                      # the worst case: the largest recovery of any setting
                    "worst": {"lr", "steps", "recovery"},  # on a tie the weakest such attack: smallest lr,
                                                           # then fewest steps
                    "settings": [{"lr", "steps", "recovery", "kfr_before", "kfr_after",  # means over folds
                                  "finetuned_kfr_after", "krr_after" (with retain_eval), "loss",
                                  "per_fold": [{"kfr_before", "kfr_after", "recovery"}],
                                  "held_forgotten_after": {id: verdict}}],  # lrs x steps
                    "kfr_before", "kfr_after",       # the worst setting's, as "recovery"
                    "finetuned": {"kfr_before", "kfr_after", "recovery"},  # the fine-tuned facts' own
                                                                           # eval items, worst setting
                    "krr_before", "krr_after",       # only with retain_eval (after: worst setting)
                    "loss_first", "loss_last",       # the worst setting's runs (mean over folds)
                    "loss_curve",                    # the worst lr's loss at every step (mean over folds)
                    "attacker", "lora_r" (lora only), "precision", "optimizer", "gradient_checkpointing",
                    "memory": {"estimate_bytes", "weights_bytes", "trained_parameters",  # attacker_memory
                               "device_free_bytes", "needed_bytes", "device_peak_bytes"},  # on a GPU only
                                                                                           # (None or absent)
                    "folds", "lrs", "steps" (both sorted),
                    "schedule": "constant", "batch_size", "fraction" (folds 1 only), "group_by", "seed",
                    "n": {"groups", "forget_eval", "per_fold": [{"finetune_pairs", "finetune_groups",
                          "held_groups", "held_eval", "finetune_eval"}]},
                    "seconds": {"load", "before", "finetune", "after", "total"}}
        per_item:  the worst setting only (every setting's would repeat the item lists lrs x steps x
                   folds times):
                   {"setting": {"lr", "steps"},
                    "forget": {id: {"part": "held" | "finetune", "fold", "before": {...}, "after": {...}}},
                    "retain": {id: {"before": {...}, "after": [{...} per fold]}}}
                   each {...}: question, answer, share, verdict. A forget item appears as "held" in
                   the fold that holds it out; with folds 1 the fine-tuned facts' items appear too
                   ("finetune"), with more folds every item is held once and fine-tuned on elsewhere.
    """
    import torch
    from accelerate.utils import set_seed
    from transformers import get_constant_schedule

    from relearn.methods.losses import answer_ce
    from relearn.training.loop import make_accelerator, make_loader, optimizer_step

    steps = sorted({int(s) for s in steps})
    lrs = sorted({float(lr) for lr in lrs})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be step counts >= 1, got {steps}")
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"lrs must be learning rates > 0, got {lrs}")
    if attacker not in ATTACKERS:
        raise ValueError(f"attacker must be one of {ATTACKERS}, got {attacker!r}")
    if attacker == "lora" and lora_r < 1:
        raise ValueError(f"lora_r must be >= 1, got {lora_r}")
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    parts = attack_parts(forget, forget_eval, folds, fraction, seed, group_by)
    for k, part in enumerate(parts):
        if not part["finetune"] or not part["held_eval"]:
            raise UserError(f"robustness.relearn_folds / relearn_fraction: the relearning attack needs forget records "
                            f"to fine-tune on and held eval questions; fold {k} has {len(part['finetune'])} and "
                            f"{len(part['held_eval'])}")
    retain_eval = retain_eval or []
    seconds = {"load": 0.0, "before": 0.0, "finetune": 0.0, "after": 0.0}
    gen = dict(template=template, max_new_tokens=max_new_tokens, batch_size=eval_batch_size)

    def answer(model, when: str) -> dict:
        # every forget_eval item at once (each fold's held and fine-tuned items are subsets of it)
        out = {"forget": answer_and_score(model, tokenizer, forget_eval, "forget", desc=f"relearning {when}", **gen)[1]}
        if retain_eval:
            out["retain"] = answer_and_score(model, tokenizer, retain_eval, "retain", desc=f"relearning {when} retain",
                                             **gen)[1]
        return out

    with timed(seconds, "load"):
        set_seed(seed)
        # the process's autocast precision: accelerate allows one per process (a stage that trained in
        # bf16 attacks under bf16 autocast too); the weights themselves are in `precision`
        accelerator = make_accelerator(dtype, device)
        model, tokenizer = load_merged(base_dir, adapter_dir, precision)  # on the CPU, for the estimate
        memory = attacker_memory(model, attacker, lora_r)
        _check_fits(memory, accelerator.device, attacker, precision, autocast=dtype in ("bfloat16", "float16"))
        model.to(accelerator.device)
        checkpointing = bound_activations(model, precision)
        # a full attacker's untouched weights, restored before every run (on the CPU: no second copy
        # on the GPU); a LoRA attacker never changes them (its layers are unloaded after each run)
        pristine = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    if attacker == "full" else None)
        if accelerator.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(accelerator.device)
    with timed(seconds, "before"):
        before = answer(model, "before")

    # (fold, lr, steps) -> the answers after that many steps; (fold, lr) -> the run's losses
    after: dict[tuple[int, float, int], dict] = {}
    losses: dict[tuple[int, float], list[float]] = {}
    for k, part in enumerate(parts):
        pairs = [(r.question, r.answer) for r in part["finetune"]]
        for lr in lrs:
            start = time.monotonic()
            if pristine is not None:
                model.load_state_dict(pristine)
            set_seed(seed)
            attached, optimizer = attacker_setup(model, attacker, lora_r, lr, seed)
            loader = make_loader(tokenizer, pairs, template, max_length, batch_size, seed)
            scheduler = get_constant_schedule(optimizer)
            trained, optimizer, loader, scheduler = accelerator.prepare(attached, optimizer, loader, scheduler)
            run_losses = losses[(k, lr)] = []
            batches = _endless(loader)
            eval_seconds = 0.0
            for step in range(1, steps[-1] + 1):
                trained.train()
                batch = next(batches)
                logits = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
                loss = answer_ce(logits, batch["labels"])
                optimizer_step(accelerator, trained, optimizer, scheduler, loss, grad_clip=1.0)
                run_losses.append(loss.item())
                if step in steps:
                    t = time.monotonic()
                    # the plain model object carries the attacker's LoRA layers too: generate on it
                    after[(k, lr, step)] = answer(model, f"fold {k} lr {lr:g} step {step}")
                    eval_seconds += time.monotonic() - t
            accelerator.free_memory(trained, optimizer, loader, scheduler)
            del trained, optimizer, loader, scheduler
            if attached is not model:
                attached.unload()  # the LoRA layers out again: the next run starts from the plain model
                if checkpointing and hasattr(model, "_require_grads_hook"):
                    model.disable_input_require_grads()  # peft's hook for checkpointing, else one more per run
            del attached
            seconds["after"] += eval_seconds
            seconds["finetune"] += time.monotonic() - start - eval_seconds
            held = [r.id for r in part["held_eval"]]
            print(f"[relearning] {attacker} fold {k + 1}/{len(parts)} lr {lr:g}: held KFR "
                  f"{_rate(before['forget'], held, 'forget'):.3f} -> "
                  + ", ".join(f"{_rate(after[(k, lr, n)]['forget'], held, 'forget'):.3f}" for n in steps)
                  + f" after {'/'.join(map(str, steps))} steps on {len(pairs)} pairs; loss {run_losses[0]:.3f} -> "
                  f"{run_losses[-1]:.3f}", flush=True)
    if accelerator.device.type == "cuda":
        memory["device_peak_bytes"] = int(torch.cuda.max_memory_allocated(accelerator.device))
    del model
    seconds = {k: round(v, 3) for k, v in seconds.items()}
    seconds["total"] = round(sum(seconds.values()), 3)

    settings = [_setting(parts, before, after, losses, lr, n, bool(retain_eval)) for lr in lrs for n in steps]
    worst = max(settings, key=lambda s: -math.inf if math.isnan(s["recovery"]) else s["recovery"])
    lr, n = worst["lr"], worst["steps"]
    finetuned = _means([_fold_rates(before, after[(k, lr, n)], part["finetune_eval"]) for k, part in enumerate(parts)
                        if part["finetune_eval"]])
    aggregate = {
        "recovery": worst["recovery"],
        "worst": {"lr": lr, "steps": n, "recovery": worst["recovery"]},
        "settings": settings,
        "kfr_before": worst["kfr_before"], "kfr_after": worst["kfr_after"],
        "held_forgotten_before": {r.id: before["forget"][r.id].get(VERDICT["forget"]) for part in parts
                                  for r in part["held_eval"]},
        "finetuned": finetuned or None,
        "loss_first": statistics.fmean(losses[(k, lr)][0] for k in range(len(parts))),
        "loss_last": worst["loss"],
        # the worst lr's training loss at every step (mean over folds): the whole run, not one point
        "loss_curve": [statistics.fmean(losses[(k, lr)][i] for k in range(len(parts))) for i in range(steps[-1])],
        "attacker": attacker, **({"lora_r": lora_r} if attacker == "lora" else {}),
        "precision": precision, "optimizer": memory.pop("optimizer"), "gradient_checkpointing": checkpointing,
        "memory": memory,
        "folds": folds, "lrs": lrs, "steps": steps, "schedule": "constant", "batch_size": batch_size,
        **({"fraction": fraction} if folds == 1 else {}), "group_by": group_by, "seed": seed,
        "n": {"groups": len({group_key(r, group_by) for r in forget + (forget_eval if folds > 1 else [])}),
              "forget_eval": len(forget_eval),
              "per_fold": [{"finetune_pairs": len(part["finetune"]),
                            "finetune_groups": len({group_key(r, group_by) for r in part["finetune"]}),
                            "held_groups": len({group_key(r, group_by) for r in part["held_eval"]}),
                            "held_eval": len(part["held_eval"]), "finetune_eval": len(part["finetune_eval"])}
                           for part in parts]},
        "seconds": seconds,
    }
    if retain_eval:
        ids = [r.id for r in retain_eval]
        aggregate.update(krr_before=_rate(before["retain"], ids, "retain"), krr_after=worst["krr_after"])
    per_item: dict = {"setting": {"lr": lr, "steps": n}, "forget": {}, "retain": {}}
    for k, part in enumerate(parts):
        answers = after[(k, lr, n)]
        tagged = [("held", part["held_eval"])] + ([("finetune", part["finetune_eval"])] if len(parts) == 1 else [])
        for name, records in tagged:
            for r in records:
                per_item["forget"][r.id] = {"part": name, "fold": k, "before": before["forget"][r.id],
                                            "after": answers["forget"][r.id]}
    for r in retain_eval:
        per_item["retain"][r.id] = {"before": before["retain"][r.id],
                                    "after": [after[(k, lr, n)]["retain"][r.id] for k in range(len(parts))]}
    print(f"[relearning] worst case: lr {lr:g}, {n} steps: held KFR {aggregate['kfr_before']:.3f} -> "
          f"{aggregate['kfr_after']:.3f} (recovery {aggregate['recovery']:+.3f}) over {len(parts)} fold(s); "
          f"{seconds['total']:.1f} s", flush=True)
    return aggregate, per_item


def _setting(parts: list[dict], before: dict, after: dict, losses: dict, lr: float, n: int, retain: bool) -> dict:
    """One (lr, steps) setting: the held folds' rates, each a mean over folds."""
    per_fold = [_fold_rates(before, after[(k, lr, n)], part["held_eval"]) for k, part in enumerate(parts)]
    out = {"lr": lr, "steps": n, **_means(per_fold)}
    tuned = [_fold_rates(before, after[(k, lr, n)], part["finetune_eval"]) for k, part in enumerate(parts)
             if part["finetune_eval"]]
    out["finetuned_kfr_after"] = _means(tuned)["kfr_after"] if tuned else None
    if retain:
        out["krr_after"] = statistics.fmean(
            _rate(after[(k, lr, n)]["retain"], list(after[(k, lr, n)]["retain"]), "retain") for k in range(len(parts)))
    out["loss"] = statistics.fmean(losses[(k, lr)][n - 1] for k in range(len(parts)))
    if len(parts) > 1:
        out["per_fold"] = per_fold
    # each held item's verdict after the attack (None: not scorable), so that recovery and its excess
    # over the control get an interval over items (relearn.evaluation.intervals.robustness_intervals)
    out["held_forgotten_after"] = {r.id: after[(k, lr, n)]["forget"][r.id].get(VERDICT["forget"])
                                   for k, part in enumerate(parts) for r in part["held_eval"]}
    return out


def _fold_rates(before: dict, after: dict, records: list[QARecord]) -> dict:
    ids = [r.id for r in records]
    b, a = _rate(before["forget"], ids, "forget"), _rate(after["forget"], ids, "forget")
    return {"kfr_before": b, "kfr_after": a, "recovery": b - a}


def _means(rows: list[dict]) -> dict:
    """The key-wise mean of rate dicts (NaN stays NaN: a fold with nothing scorable is not hidden)."""
    return {key: statistics.fmean(row[key] for row in rows) for key in rows[0]} if rows else {}


def _rate(items: dict[str, dict], ids: list[str], kind: str) -> float:
    """KFR or KRR of the scored items among `ids` (the rule knowledge_scores applies: items it could not
    score have verdict None and do not count; NaN when none was scored)."""
    verdicts = [items[i][VERDICT[kind]] for i in ids if items[i][VERDICT[kind]] is not None]
    return sum(verdicts) / len(verdicts) if verdicts else float("nan")


def _attach(model, attacker: str, lora_r: int):
    """The module to train: the model itself with every weight trainable ("full"), or the model wrapped
    in a fresh LoRA attacker of rank `lora_r`, alpha 2r, on every linear layer but the output head
    (peft's "all-linear"), whatever the architecture calls them."""
    if attacker == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def attacker_memory(model, attacker: str, lora_r: int = 8) -> dict:
    """What the attack keeps on the device besides activations and the generation cache, from the
    loaded model (before any adapter is attached): its weights, the gradients and the optimizer's two
    moments of what it trains. bf16 weights trained in full take relearn.training.optim.BF16AdamW (bf16
    gradients and moments: 8 bytes a weight); anything else AdamW in the weights' dtype (fp32: 16
    bytes). A LoRA attacker trains an fp32 adapter (peft keeps adapters of a bf16 model in fp32)
    of rank r on every linear layer but the output head, over frozen weights.

    {"estimate_bytes", "weights_bytes", "trained_parameters", "optimizer", "device_free_bytes": None,
    "device_peak_bytes": None}"""
    import torch

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if attacker == "full":
        trained = sum(p.numel() for p in model.parameters())
        bf16 = all(p.dtype == torch.bfloat16 for p in model.parameters())
        per = 2 + 2 + 2 if bf16 else 3 * next(model.parameters()).element_size()
        optimizer = "bf16-adamw-stochastic-rounding" if bf16 else "adamw"
        extra = trained * per  # gradients + two moments
    else:
        head = model.get_output_embeddings()
        trained = sum(lora_r * (m.in_features + m.out_features) for m in model.modules()
                      if isinstance(m, torch.nn.Linear) and m is not head)
        optimizer = "adamw"
        extra = trained * (4 + 4 + 4 + 4)  # fp32 adapter weights, gradients, two moments
    return {"estimate_bytes": weights + extra, "weights_bytes": weights, "trained_parameters": trained,
            "optimizer": optimizer, "device_free_bytes": None, "device_peak_bytes": None}


def _check_fits(memory: dict, device, attacker: str, precision: str, autocast: bool = False) -> None:
    """On a GPU: refuse an attack whose weights, gradients and optimizer state pass the free memory
    before anything is moved there. Counted on top of attacker_memory's estimate: torch AdamW's
    full-size temporaries on a GPU (foreach: 4 bytes a trained weight), and under bf16/fp16 autocast
    (`autocast`) the half-precision copies it caches of fp32 weights (2 bytes a weight); activations
    come on top of that still. Records "device_free_bytes" and "needed_bytes" in `memory`."""
    if device.type != "cuda":
        return
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    needed = memory["estimate_bytes"]
    if memory.get("optimizer") == "adamw":
        needed += 4 * memory.get("trained_parameters", 0)
    if autocast and precision == "float32":
        needed += memory.get("weights_bytes", 0) // 2
    memory.update(device_free_bytes=int(free), needed_bytes=int(needed))
    if needed > free:
        hints = (["robustness.relearn_precision: bfloat16 (half the bytes)"] if precision == "float32" else []) + \
            (["robustness.relearn_attacker: lora (the weights frozen)"] if attacker == "full" else [])
        hint = (" or ".join(hints) if hints else
                f"a GPU with more free memory (the frozen weights alone take {memory.get('weights_bytes', 0) / GiB:.1f} GiB)")
        raise UserError(f"robustness.relearn_attacker: a {attacker} attacker in {precision} needs {needed / GiB:.1f} GiB "
                        f"for its weights, gradients and optimizer state (activations not counted), and {device} has "
                        f"{free / GiB:.1f} GiB free; use {hint}")


def bound_activations(model, precision: str) -> bool:
    """With precision bfloat16 (the bounded-memory attacker), gradient checkpointing where the model has
    it: activations recomputed in backward, so they no longer grow with the layer count. Whether it is on."""
    on = precision == "bfloat16" and bool(getattr(model, "supports_gradient_checkpointing", False))
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return on


def attacker_setup(model, attacker: str, lora_r: int, lr: float, seed: int):
    """(the module to train, its optimizer): `model` made trainable or wrapped in a fresh LoRA
    attacker (_attach), and AdamW of lr (BF16AdamW over bf16 weights: _optimizer), no weight decay."""
    attached = _attach(model, attacker, lora_r)
    return attached, _optimizer([p for p in attached.parameters() if p.requires_grad], lr, seed)


def _optimizer(params: list, lr: float, seed: int):
    """BF16AdamW when the trained weights are bf16 (attacker_memory's accounting), else torch's AdamW."""
    import torch

    from relearn.training.optim import BF16AdamW

    if params and all(p.dtype == torch.bfloat16 for p in params):
        return BF16AdamW(params, lr=lr, weight_decay=0.0, seed=seed)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _endless(loader) -> Iterator[dict]:
    """Batches from `loader`, pass after pass (each pass reshuffled by the loader's own generator)."""
    while True:
        yield from loader
