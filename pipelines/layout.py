"""Where the stages find the unlearned model: the target with the unlearning adapter, or the
distilled student when the distill stage is on (distill.enabled). Every stage after `unlearn`
reads it from here, so turning distillation on changes what they all see. And what both
evaluation stages (evaluate_references, evaluate) read."""
from typing import Optional

TARGET, ADAPTER, DISTILLED = "models/target", "models/adapter", "models/distilled"


def unlearned_model(params) -> tuple[str, Optional[str]]:
    """(model directory, adapter directory or None)."""
    return (DISTILLED, None) if params.distill.enabled else (TARGET, ADAPTER)


def evaluation_inputs(params):
    """(splits, forget variants, this process's device) for an evaluation stage. Generation and scoring
    run where the model is; under accelerate launch / torchrun every process takes its own device and
    a shard of every question set (relearn.training.devices.shard_map)."""
    from relearn.data.splits import read_splits
    from relearn.data.validate import load_validated
    from relearn.training.devices import init_processes

    splits = read_splits("data/splits", ("forget", "forget_eval", "retain_eval", "holdout", "general"))
    variants = load_validated("data/augmented/forget_variants.jsonl")
    return splits, variants, init_processes(params.device)
