"""Unlearning a target model with a LoRA adapter (ReLearn pipeline, step 6).

The forget side is the augmented forget set plus the general QA mixed into it; the retain side is
the retain set (with augment.primes, each item also primed: `retain_side`). The method
(relearn.methods) decides what loss the two batches give.
"""
from __future__ import annotations

import dataclasses
import time

from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model

from relearn.augment.build import opening_for
from relearn.methods import METHODS
from relearn.modeling.model import count_parameters, load_pretrained
from relearn.params import Params
from relearn.records import QARecord
from relearn.training.loop import TrainSpec, unlearn


def lora_config(params: Params) -> LoraConfig:
    lora = params.unlearn.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def training_pair(record: QARecord) -> tuple[str, ...]:
    """(question, answer), and the answer's given opening when the record has one (a primed pair)."""
    return (record.question, record.answer, record.prefill) if record.prefill else (record.question, record.answer)


def retain_side(retain: list[QARecord], primes: list[str], seed: int) -> list[QARecord]:
    """The retain set, and with augment.primes each item's primed copy after it: its own question, a seeded
    opening as the answer's given start (`prefill`), its own answer after it. The forget side's primed
    pairs teach the adapter to stay vague when a prompt starts the answer for it; these teach it to go on
    answering what it should after the same openings, so that an opening alone does not come to mean
    "be vague" (SmolLM2 KnowUnDo with forget-side primes only: retain KRR under the priming-sure jailbreak
    fell from 0.805 to 0.415)."""
    if not primes:
        return list(retain)
    out: list[QARecord] = []
    for record in retain:
        out += [record, dataclasses.replace(record, id=f"{record.id}~primed", variant="primed",
                                            prefill=opening_for(record.id, primes, seed))]
    return out


def make_adapter(params: Params, target_dir, forget_side: list[QARecord], retain: list[QARecord],
                 init_adapter=None, negatives: list[tuple[str, str, str]] | None = None,
                 checkpoint_stage: str = "unlearn"):
    """Returns (PeftModel with the trained adapter, its tokenizer, loss history, report).

    init_adapter: an adapter directory to continue training (incremental unlearning: the adapter of
    the version in production, which already forgets the earlier requests), instead of a fresh one.
    negatives: (question, vague answer, original answer) triples for unlearn.harden.negative
    (relearn.training.hardening.negative_triples); unused when it is 'none'. checkpoint_stage: the
    directory under checkpoint_dir (each compared method has its own).
    """
    from peft import PeftModel

    if params.unlearn.harden.negative != "none" and not negatives:
        from relearn.errors import UserError
        raise UserError("unlearn.harden.negative: no (question, vague answer, original answer) triples: the augmented "
                        "forget pairs name no source record of the forget split (source_id)")
    retain = retain_side(retain, list(params.augment.primes), params.seed)
    base, tokenizer = load_pretrained(target_dir, params.dtype())
    set_seed(params.seed)  # LoRA A is initialised at random: seed it, or two runs of one config differ
    if init_adapter is not None:
        model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(params))
    u = params.unlearn
    epochs = u.incremental_epochs if init_adapter is not None and u.incremental_epochs > 0 else u.epochs
    print(f"[unlearn] method {u.method}: {count_parameters(model, trainable_only=True):,} trainable parameters, "
          f"{len(forget_side)} forget-side pairs, {len(retain)} retain pairs", flush=True)
    start = time.monotonic()
    model, history = unlearn(
        model, tokenizer, [training_pair(r) for r in forget_side], [training_pair(r) for r in retain],
        TrainSpec.of(params, u, checkpoint_stage, epochs=epochs), loss_fn=METHODS[u.method], weights=u,
        desc=f"unlearn:{u.method}", negatives=negatives if u.harden.negative != "none" else None)
    report = {
        "method": u.method,
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "forget_side_pairs": len(forget_side),
        "retain_pairs": len(retain),
        "epochs": epochs,
        "lr": u.lr,
        "harden": {k: v for k, v in dataclasses.asdict(u.harden).items()},
        "lora_r": u.lora.r,
        "steps": len(history.rows),
        "final_loss": round(history.rows[-1]["loss"], 4) if history.rows else None,
        "train_seconds": round(time.monotonic() - start, 1),
    }
    return model, tokenizer, history, report
