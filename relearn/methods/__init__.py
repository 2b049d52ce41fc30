"""Unlearning methods: one file per method, each a loss over a forget batch and a retain batch.

A method is a function

    loss(model, forget_batch, retain_batch, reference, weights) -> (loss, {part name: float})

where `reference(batch)` returns the logits of the frozen target model (for LoRA: the same
weights with the adapter disabled) and `weights` is the UnlearnParams (forget_weight,
retain_weight, kl_weight, npo_beta). The parts are the unweighted terms, named forget_ce,
forget_npo, retain_ce, retain_kl; methods assemble them from `_parts.Terms`.

    relearn   w_f CE(augmented forget) + w_r CE(retain) + w_kl KL(retain)     ReLearn
    ga        -w_f CE(forget)                                                 gradient ascent
    gd        -w_f CE(forget) + w_r CE(retain)                                GA+GDR
    ga_klr    -w_f CE(forget) + w_kl KL(retain)                               GA+KLR
    npo       w_f NPO(forget)                                                 NPO (beta = npo_beta)
    npo_gd    w_f NPO(forget) + w_r CE(retain)                                NPO+GDR
    npo_klr   w_f NPO(forget) + w_kl KL(retain)                               NPO+KLR

The baselines train on the original forget set, pushing its answers down (REVERSE_METHODS);
ReLearn trains on the augmented forget set, pulling vague answers up. A baseline always uses
exactly the terms in its name: gd ignores kl_weight, ga_klr ignores retain_weight.
"""
from relearn.methods import ga, ga_klr, gd, npo, npo_gd, npo_klr, relearn

METHODS = {
    "relearn": relearn.loss,
    "ga": ga.loss,
    "gd": gd.loss,
    "ga_klr": ga_klr.loss,
    "npo": npo.loss,
    "npo_gd": npo_gd.loss,
    "npo_klr": npo_klr.loss,
}

REVERSE_METHODS = frozenset({"ga", "gd", "ga_klr", "npo", "npo_gd", "npo_klr"})
"""Methods that train on the ORIGINAL forget set (not the augmented one); the pipeline picks the
forget data by this."""
