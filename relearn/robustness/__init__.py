"""Robustness of forgetting: is the knowledge gone, or only hidden from the plain question?

Three checks for one model (relearn-method.md, "Robustness"), each returning (aggregate,
per-item results keyed by evaluation set and record id):

- relearn.robustness.ladder      KFR/KRR at each precision: torch fp32 / bf16, ONNX fp32 / int8 / int4
- relearn.robustness.probes      KFR/KRR under paraphrased and misspelt questions and jailbreak
                                 prompts (jailbreaks.yaml)
- relearn.robustness.relearning  fine-tune copies on folds of the forget set over a grid of
                                 learning rates and step counts, measure what comes back on the
                                 held fold (the worst case)

`probe_model` runs the selected checks on one model; run it on the unlearned model, the target
and the retain-only control to read the unlearned model's numbers against theirs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from relearn.records import QARecord
from relearn.robustness.common import load_merged, timed
from relearn.robustness.ladder import RUNGS, precision_ladder
from relearn.robustness.probes import PROBES, Jailbreak, load_jailbreaks, run_probes
from relearn.robustness.relearning import relearning_attack

PARTS = ("ladder", "probes", "relearning")

__all__ = ["PARTS", "PROBES", "RUNGS", "Jailbreak", "load_jailbreaks", "precision_ladder", "probe_model",
           "probe_with_params", "relearning_attack", "run_probes"]


def probe_model(base_dir: str | Path, adapter_dir: Optional[str | Path] = None, *, forget_eval: list[QARecord],
                retain_eval: list[QARecord], template: str, max_new_tokens: int, batch_size: int = 32,
                parts: Sequence[str] = PARTS, work_dir: Optional[str | Path] = None,
                forget: Optional[list[QARecord]] = None, rungs: Sequence[str] = RUNGS, int4_block_size: int = 32,
                int8_block_size: int = 32, int8_keep_float: Sequence[str] = ("lm_head",),
                int8_accuracy_level: Optional[int] = 4,
                probes: Sequence[str] = PROBES, jailbreaks: Optional[list[Jailbreak]] = None, typo_rate: float = 0.3,
                relearn_steps: Sequence[int] = (10, 50, 100), relearn_lrs: Sequence[float] = (1e-5, 3e-5, 1e-4),
                relearn_attacker: str = "full", relearn_lora_r: int = 8, relearn_precision: str = "float32",
                relearn_folds: int = 2,
                relearn_batch_size: int = 8, relearn_fraction: float = 0.5, relearn_group_by: str = "fact",
                max_length: int = 128,
                seed: int = 0, device: str = "cpu", provider: Optional[str] = None, dtype: str = "float32",
                guard=None, general: Sequence[QARecord] = ()) -> tuple[dict, dict]:
    """Run the selected robustness checks on one model: `base_dir` with `adapter_dir` merged in
    (in memory, or under `work_dir` for the ladder), or `base_dir` alone.

    Needs `work_dir` for "ladder" (exports are written there) and `forget` (the forget split the
    model unlearned, original QA pairs) for "relearning"; `guard` (relearn.serving.guard.Guard) scores
    the probes through the output guard too, and with `general` its cost on the general set (run_probes).
    Returns

        aggregate: {"ladder": ..., "probes": ..., "relearning": ...,   # the parts that ran, see
                    "seconds": {part: s, "total": s}}                  # precision_ladder, run_probes,
        per_item:  {"ladder": ..., "probes": ..., "relearning": ...}   # relearning_attack
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {PARTS}")
    if "ladder" in parts and work_dir is None:
        raise ValueError("the ladder part needs a work_dir for its exports")
    if "relearning" in parts and not forget:
        raise ValueError("the relearning part needs the forget records (original QA pairs) to fine-tune on")
    aggregate: dict = {}
    per_item: dict = {}
    seconds: dict[str, float] = {}
    if "ladder" in parts:
        with timed(seconds, "ladder"):
            aggregate["ladder"], per_item["ladder"] = precision_ladder(
                base_dir, adapter_dir, work_dir, forget_eval, retain_eval, template=template,
                max_new_tokens=max_new_tokens, batch_size=batch_size, rungs=rungs, int4_block_size=int4_block_size,
                int8_block_size=int8_block_size, int8_keep_float=int8_keep_float,
                int8_accuracy_level=int8_accuracy_level,
                device=device, provider=provider)
    if "probes" in parts:
        with timed(seconds, "probes"):
            model, tokenizer = load_merged(base_dir, adapter_dir, device=device)
            aggregate["probes"], per_item["probes"] = run_probes(
                model, tokenizer, forget_eval, retain_eval, template=template, max_new_tokens=max_new_tokens,
                batch_size=batch_size, probes=probes, jailbreaks=jailbreaks, seed=seed, typo_rate=typo_rate,
                guard=guard, general=general)
            del model
    if "relearning" in parts:
        with timed(seconds, "relearning"):
            aggregate["relearning"], per_item["relearning"] = relearning_attack(
                base_dir, adapter_dir, forget, forget_eval, template=template, max_new_tokens=max_new_tokens,
                max_length=max_length, steps=relearn_steps, lrs=relearn_lrs, attacker=relearn_attacker,
                lora_r=relearn_lora_r, precision=relearn_precision, folds=relearn_folds, batch_size=relearn_batch_size,
                fraction=relearn_fraction, group_by=relearn_group_by, seed=seed, retain_eval=retain_eval,
                eval_batch_size=batch_size, device=device, dtype=dtype)
    seconds["total"] = round(sum(seconds.values()), 3)
    aggregate["seconds"] = seconds
    return aggregate, per_item


def probe_with_params(params, base_dir: str | Path, adapter_dir: Optional[str | Path],
                      splits: dict[str, list[QARecord]], work_dir: str | Path,
                      skip: Sequence[str] = (), guard=None) -> tuple[dict, dict]:
    """probe_model with the settings of a relearn.params.Params (robustness.*, model.*, evaluate.*):
    the parts that are switched on, the jailbreak file, and a GPU for the torch rungs, the probes and
    the relearning attack when there is one (ONNX Runtime picks its provider itself).

    `skip`: parts not run on this model although switched on, e.g. the relearning sweep on a model
    no gate reads it for (the robustness stage's target)."""
    from relearn.training.devices import resolve_device
    from relearn.export.onnx import pick_provider

    r = params.robustness
    parts = [name for name, on in (("ladder", r.ladder), ("probes", r.probes), ("relearning", r.relearn_steps))
             if on and name not in skip]
    jailbreaks = None
    if r.jailbreaks:
        import yaml

        from relearn.errors import UserError
        try:
            jailbreaks = load_jailbreaks(r.jailbreaks)[1]
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise UserError(f"robustness.jailbreaks: {e}") from None
    return probe_model(
        base_dir, adapter_dir, forget_eval=splits["forget_eval"], retain_eval=splits["retain_eval"],
        forget=splits["forget"], template=params.model.prompt, max_new_tokens=params.evaluate.max_new_tokens,
        batch_size=params.evaluate.batch_size, parts=parts, work_dir=work_dir, rungs=r.ladder,
        int4_block_size=r.int4_block_size, int8_block_size=params.export.int8_block_size,
        int8_keep_float=params.export.int8_keep_float, int8_accuracy_level=params.export.int8_accuracy_level,
        probes=r.probes, jailbreaks=jailbreaks, relearn_steps=r.relearn_steps,
        relearn_lrs=r.relearn_lrs, relearn_attacker=r.relearn_attacker, relearn_lora_r=r.relearn_lora_r,
        relearn_precision=params.attack_precision(),
        relearn_folds=r.relearn_folds, relearn_fraction=r.relearn_fraction, max_length=params.model.max_length,
        seed=params.seed, device=str(resolve_device(params.device)), provider=pick_provider("auto"), dtype=params.dtype(),
        guard=guard, general=splits.get("general", []) if guard is not None else [])
