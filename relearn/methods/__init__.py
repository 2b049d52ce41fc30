"""Unlearning methods: one file per method, each a loss over a forget batch and a retain batch.

A method is a function

    loss(model, forget_batch, retain_batch, reference, weights) -> (loss, {part name: float})

where `reference(batch)` returns the logits of the frozen target model (for LoRA: the same
weights with the adapter disabled) and `weights` holds the method's loss weights.
"""
from relearn.methods import relearn

METHODS = {"relearn": relearn.loss}
