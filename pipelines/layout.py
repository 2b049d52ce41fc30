"""Where the stages find the unlearned model: the target with the unlearning adapter, or the
distilled student when the distill stage is on (distill.enabled). Every stage after `unlearn`
reads it from here, so turning distillation on changes what they all see."""
from typing import Optional

TARGET, ADAPTER, DISTILLED = "models/target", "models/adapter", "models/distilled"


def unlearned_model(params) -> tuple[str, Optional[str]]:
    """(model directory, adapter directory or None)."""
    return (DISTILLED, None) if params.distill.enabled else (TARGET, ADAPTER)
