"""Training loops on `accelerate`: the target model (plain fine-tuning) and unlearning (LoRA).

Both run unchanged on one CPU, one GPU, or several GPUs under `accelerate launch` / `torchrun`
(the Accelerator reads the launcher's environment). Seeds are fixed: the same params give the
same weights on the same hardware.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from relearn.modeling.encoding import PairDataset, collate
from relearn.training.progress import Progress


@dataclass(frozen=True)
class TrainSpec:
    """One training run's settings, as the loops take them: what the pairs are encoded with (prompt
    template, max_length), the schedule, the seed, where it runs, and where it keeps checkpoints.
    `TrainSpec.of(params, params.target)` reads them from the pipeline's Params."""
    epochs: int
    batch_size: int
    lr: float
    template: str
    max_length: int
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0

    @classmethod
    def of(cls, params, section, stage: str | None = None, **changes) -> "TrainSpec":
        """From the pipeline's Params: the schedule of one section (target, unlearn or distill: epochs,
        batch_size, lr, warmup_ratio, weight_decay, grad_clip), the model's prompt and max_length,
        the seed, dtype and device; checkpoints under the stage's name when `stage` is given.
        `changes` replace any of them (for example the epochs of an incremental run)."""
        spec = dict(epochs=section.epochs, batch_size=section.batch_size, lr=section.lr,
                    warmup_ratio=section.warmup_ratio, weight_decay=section.weight_decay,
                    grad_clip=section.grad_clip, template=params.model.prompt, max_length=params.model.max_length,
                    seed=params.seed, dtype=params.dtype(), device=params.device,
                    **(params.checkpoints(stage) if stage else {}))
        return cls(**{**spec, **changes})

    def checkpointing(self) -> bool:
        return bool(self.checkpoint_dir) and self.checkpoint_every > 0

    def decides_weights(self) -> dict:
        """What a checkpoint's fingerprint is made of: every setting that changes the trained weights
        (not the device, nor where and how often checkpoints are kept)."""
        return dict(template=self.template, max_length=self.max_length, epochs=self.epochs,
                    batch_size=self.batch_size, lr=self.lr, warmup_ratio=self.warmup_ratio,
                    weight_decay=self.weight_decay, grad_clip=self.grad_clip, seed=self.seed, dtype=self.dtype)


@dataclass
class History:
    """Loss per optimisation step (what the DVC loss plots show)."""
    rows: list[dict] = field(default_factory=list)

    def add(self, **row) -> None:
        self.rows.append(row)

    def to_csv(self) -> str:
        if not self.rows:
            return ""
        keys = list(self.rows[0])
        cell = lambda v: f"{v:.6f}" if isinstance(v, float) else str(v)  # noqa: E731
        return "\n".join([",".join(keys)] + [",".join(cell(r[k]) for k in keys) for r in self.rows]) + "\n"


def make_accelerator(dtype: str, device: str = "auto") -> Accelerator:
    """bf16 (and fp16) as autocast mixed precision; bf16 on a CPU too (fp16 autocast is GPU-only).
    `device` is the `device` param (relearn.training.devices): on a CPU the Accelerator is told so, which is
    also what makes several CPU processes (accelerate launch, torchrun) use gloo."""
    from relearn.training.devices import accelerator_kwargs

    kwargs = accelerator_kwargs(device)
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")
    if (kwargs.get("cpu") or not torch.cuda.is_available()) and mixed == "fp16":
        mixed = "no"  # no fp16 autocast on a CPU: train in fp32
    return Accelerator(mixed_precision=mixed, **kwargs)


def schedule_steps(n_examples: int, batch_size: int, epochs: int, num_processes: int) -> tuple[int, int]:
    """(optimizer steps, scheduler length). With several processes each step takes one batch per
    process, and accelerate's prepared scheduler advances `num_processes` times per step (it assumes
    a schedule written for one process), so the schedule is as long as the steps times the processes:
    warm-up and decay then end where they do in a one-process run."""
    steps = epochs * math.ceil(n_examples / (batch_size * num_processes))
    return steps, steps * num_processes


def make_loader(tokenizer, pairs: list[tuple[str, ...]], template: str, max_length: int,
                batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    dataset = PairDataset(tokenizer, pairs, template, max_length)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=lambda ex: collate(ex, tokenizer.pad_token_id))


def make_optimizer(model, lr: float, weight_decay: float, warmup_ratio: float, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def optimizer_step(accelerator: Accelerator, model, optimizer, scheduler, loss: torch.Tensor | None,
                   grad_clip: float) -> None:
    """Backward, optional gradient clipping, one optimiser and scheduler step. loss None: the
    gradients are already in place (the hardened unlearning step sets them by hand)."""
    if loss is not None:
        accelerator.backward(loss)
    if grad_clip:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _resume(accelerator: Accelerator, spec: TrainSpec, desc: str, key: str, total: int):
    """Where a run starts: (its Checkpoints, the steps a checkpoint already holds, the check notes kept
    with it, the loss history so far, the progress line moved past the steps done)."""
    from relearn.training.checkpoints import Checkpoints

    checkpoints = Checkpoints(accelerator, spec.checkpoint_dir, spec.checkpoint_every, desc, key)
    done, rows, notes = checkpoints.resume()
    progress = Progress(desc, total)
    progress.update(done)
    return checkpoints, done, notes, History(rows), progress


def _tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())


def train_causal_lm(model, tokenizer, pairs: list[tuple[str, str]], spec: TrainSpec, *,
                    check: Callable[[object, int], bool] | None = None, check_every: int = 0,
                    desc: str = "target", teacher=None, fingerprint_extra: dict | None = None,
                    check_log: list | None = None) -> tuple[object, History]:
    """Fine-tune on (question, answer) pairs with answer-token CE.

    `check(model, epoch)` runs every `check_every` epochs on every process; returning True stops
    training early (the target stage stops once the model reproduces the forget answers).
    With a `teacher` model (distillation), the loss is KL(teacher || model) over every token of
    the sequences instead: the pairs only supply the text, the teacher the targets.
    With `spec.checkpoint_dir` and `spec.checkpoint_every` > 0, a checkpoint is kept every that many steps and
    a run of the same settings (and `fingerprint_extra`: what else decides the run, such as the
    check's stopping criterion) resumes from it (relearn.training.checkpoints); the caller removes it
    (`clear_checkpoints`) once its output is written. `check_log`: a list the check appends what it
    found to; it is kept in the checkpoints, and a resumed run starts with the entries of the epochs
    it skips.
    """
    from relearn.training.checkpoints import fingerprint
    from relearn.methods.losses import IGNORE, answer_ce, answer_kl

    set_seed(spec.seed)
    accelerator = make_accelerator(spec.dtype, spec.device)
    key = fingerprint(model, desc=desc, pairs=pairs, **spec.decides_weights(), processes=accelerator.num_processes,
                      launch=str(accelerator.distributed_type),
                      teacher=None if teacher is None else fingerprint(teacher), check_every=check_every,
                      **(fingerprint_extra or {})) if spec.checkpointing() else ""
    loader = make_loader(tokenizer, pairs, spec.template, spec.max_length, spec.batch_size, spec.seed)
    total, schedule = schedule_steps(len(loader.dataset), spec.batch_size, spec.epochs, accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, spec.lr, spec.weight_decay, spec.warmup_ratio, schedule)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval()
    checkpoints, done, notes, history, progress = _resume(accelerator, spec, desc, key, total)
    if check_log is not None:
        check_log[:] = notes
    step = 0
    for epoch in range(1, spec.epochs + 1):
        model.train()
        for batch in loader:
            if step < done:  # replayed up to the checkpoint: the loader's generator moves as it did
                step += 1
                continue
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            if teacher is None:
                loss = answer_ce(logits, batch["labels"])
            else:
                with torch.no_grad(), accelerator.autocast():
                    target = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                every_token = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
                loss = answer_kl(logits, target, every_token)
            optimizer_step(accelerator, model, optimizer, scheduler, loss, spec.grad_clip)
            step += 1
            history.add(step=step, epoch=epoch, loss=loss.item())
            progress.update(1, tokens=_tokens(batch) * accelerator.num_processes, epoch=epoch, loss=loss.item())
            checkpoints.maybe_save(step, history.rows, check_log)
        if step < done:  # an epoch finished before the checkpoint: its check ran then
            continue
        if check and check_every and epoch % check_every == 0 and epoch < spec.epochs:
            # every process checks (the check's generation is sharded over them, relearn.training.devices.shard_map)
            stop = torch.tensor(float(bool(check(accelerator.unwrap_model(model), epoch))), device=accelerator.device)
            stop = accelerator.reduce(stop, reduction="sum")
            if stop.item() > 0:
                print(f"[{desc}] stopping after epoch {epoch}: check passed", flush=True)
                break
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(model), history


def _sides(net, loss_fn, forget, retain, negative, reference, weights, harden):
    """sides(with_retain) -> (forget-side loss with the negative term, retain-side loss or None, parts)."""
    from relearn.training.hardening import negative_term

    def sides(with_retain: bool):
        objective = loss_fn(net, forget, retain if with_retain else None, reference, weights)
        f_loss, parts = objective.forget, dict(objective[1])
        if negative is not None:
            n_loss, n_parts = negative_term(net, *negative, reference, harden)
            f_loss = f_loss + harden.negative_weight * n_loss
            parts.update(n_parts)
        return f_loss, objective.retain, parts

    return sides


def unlearn(model, tokenizer, forget_pairs: list[tuple[str, ...]], retain_pairs: list[tuple[str, ...]],
            spec: TrainSpec, *, loss_fn, weights, desc: str = "unlearn",
            negatives: list[tuple[str, str, str]] | None = None) -> tuple[object, History]:
    """Run an unlearning method on a PeftModel: every step a forget batch and a retain batch.

    An epoch is one pass over the forget side; the retain loader cycles alongside it. With
    `weights.harden` options on (relearn.training.hardening), the step changes: a negative term on
    `negatives` ((question, vague answer, original answer) triples, cycled like the retain set),
    SAM on the forget side, disruption masking and forget-gradient normalisation.
    Checkpoints and resuming as in `train_causal_lm`.
    """
    from relearn.training.checkpoints import fingerprint
    from relearn.training.hardening import split_gradients

    harden = getattr(weights, "harden", None)
    hardened = harden is not None and harden.active()
    if hardened and harden.negative != "none" and not negatives:
        raise ValueError("unlearn.harden.negative needs (question, vague answer, original answer) triples")
    set_seed(spec.seed)
    accelerator = make_accelerator(spec.dtype, spec.device)
    key = fingerprint(model, desc=desc, forget=forget_pairs, retain=retain_pairs, negatives=negatives,
                      loss=getattr(loss_fn, "__module__", repr(loss_fn)), weights=weights, **spec.decides_weights(),
                      processes=accelerator.num_processes,
                      launch=str(accelerator.distributed_type)) if spec.checkpointing() else ""
    template, max_length, batch_size, seed = spec.template, spec.max_length, spec.batch_size, spec.seed
    forget_loader = make_loader(tokenizer, forget_pairs, template, max_length, batch_size, seed)
    retain_loader = make_loader(tokenizer, retain_pairs, template, max_length, batch_size, seed + 1)
    loaders = [forget_loader, retain_loader]
    if hardened and harden.negative != "none":
        # the same seed, so the same order: row i of a chosen batch and of a rejected batch share a question
        loaders += [make_loader(tokenizer, [(q, c) for q, c, _ in negatives], template, max_length, batch_size, seed + 2),
                    make_loader(tokenizer, [(q, r) for q, _, r in negatives], template, max_length, batch_size, seed + 2)]
    total, schedule = schedule_steps(len(forget_loader.dataset), batch_size, spec.epochs, accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, spec.lr, spec.weight_decay, spec.warmup_ratio, schedule)
    model, optimizer, scheduler, *loaders = accelerator.prepare(model, optimizer, scheduler, *loaders)
    forget_loader, retain_loader = loaders[:2]
    negative_batches = itertools.cycle(zip(loaders[2], loaders[3])) if len(loaders) > 2 else None
    peft_model = accelerator.unwrap_model(model)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]

    @torch.no_grad()
    def reference(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Target-model logits: the same weights with the LoRA adapter switched off."""
        with peft_model.disable_adapter():
            return peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    retain_batches = itertools.cycle(retain_loader)
    checkpoints, done, _, history, progress = _resume(accelerator, spec, desc, key, total)
    step = 0
    for epoch in range(1, spec.epochs + 1):
        model.train()
        for forget in forget_loader:
            retain = next(retain_batches)
            negative = next(negative_batches) if negative_batches is not None else None
            if step < done:  # replayed up to the checkpoint: every loader moves as it did
                step += 1
                continue
            tokens = _tokens(forget) + _tokens(retain) + (sum(map(_tokens, negative)) if negative else 0)
            if not hardened:
                loss, parts = loss_fn(model, forget, retain, reference, weights)
                optimizer_step(accelerator, model, optimizer, scheduler, loss, spec.grad_clip)
                value = loss.item()
            else:
                # the split path runs the unwrapped model: its gradients are averaged by hand
                sides = _sides(peft_model if harden.needs_split() else model, loss_fn, forget, retain, negative,
                               reference, weights, harden)
                if harden.needs_split():
                    value, parts = split_gradients(accelerator, peft_model, trainable, sides, harden)
                    optimizer_step(accelerator, model, optimizer, scheduler, None, spec.grad_clip)
                else:  # only the negative term: one backward as usual
                    f_loss, r_loss, parts = sides(True)
                    loss = f_loss if r_loss is None else f_loss + r_loss
                    optimizer_step(accelerator, model, optimizer, scheduler, loss, spec.grad_clip)
                    value = loss.item()
            step += 1
            history.add(step=step, epoch=epoch, loss=value, **parts)
            progress.update(1, tokens=tokens * accelerator.num_processes, loss=value, **parts)
            checkpoints.maybe_save(step, history.rows)
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(model), history
