"""Checkpoints of a training loop, so that a stage killed mid-training resumes instead of starting over.

Every `every` optimizer steps the loop's full state goes to `<directory>/latest`: the model's
trainable parameters, optimizer and scheduler and every process's RNG states (`Accelerator.save_state`),
and `meta.json`
with the step, the loss history so far and a fingerprint of the run (its settings, its data and the
weights it started from). It is written beside the old one and swapped in by rename, so a kill
during a save leaves the previous checkpoint whole. A run with the same fingerprint restores it and
replays its data loaders up to that step without computing anything (every loader has its own
seeded generator, so the replay reaches the same batches); a run with another fingerprint ignores
it. The stage removes it (`clear_checkpoints`) once its output is written.

Only what training changes is kept: a LoRA stage's checkpoint is its adapter (megabytes), not the
frozen base model (14 GB for a 7B model in bf16, every `every` steps). The frozen weights are the
ones the run started from, which the fingerprint pins, so a resumed run gets them from its own start.
(Under FSDP, accelerate writes its own sharded checkpoint of the whole model: the frozen weights too.)

    directory/latest/   model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl, meta.json
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch


def fingerprint(model: torch.nn.Module, **settings: Any) -> str:
    """sha256 of the settings (any JSON-able or repr-able values, the data included) and of the
    weights the run starts from."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Checkpoints:
    """Save every `every` steps into `directory`; resume from it when the fingerprint matches.
    With `directory` None or `every` 0 it does nothing."""

    def __init__(self, accelerator, directory: str | os.PathLike | None, every: int, print_prefix: str, key: str):
        self.accelerator = accelerator
        self.directory = Path(directory) if directory and every > 0 else None
        self.every, self.prefix, self.key = every, print_prefix, key
        if self.directory is not None:
            accelerator.register_save_state_pre_hook(_keep_trainable)

    def _complete(self) -> bool:
        """Whether the checkpoint's weights file holds every trainable parameter of the prepared models
        (resume loads it non-strictly, since the frozen ones are not in it)."""
        from accelerate.utils import DistributedType
        from safetensors import safe_open

        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return True  # they write their own sharded model files (the save hook sees no weights)
        for i, model in enumerate(self.accelerator._models):
            path = self.latest / (f"model_{i}.safetensors" if i else "model.safetensors")
            if not path.exists():
                return False
            with safe_open(str(path), "pt") as f:
                if not _trainable_names(model) <= set(f.keys()):
                    return False
        return True

    @property
    def latest(self) -> Path:
        return self.directory / "latest"

    def resume(self) -> tuple[int, list[dict], list]:
        """(steps already done, their history rows, the notes saved with them); (0, [], []) without a
        usable checkpoint."""
        if self.directory is None or not (self.latest / "meta.json").exists():
            return 0, [], []
        meta = json.loads((self.latest / "meta.json").read_text(encoding="utf-8"))
        if meta.get("fingerprint") != self.key:
            print(f"[{self.prefix}] a checkpoint in {self.directory} is from other settings, data or weights: "
                  "starting over", flush=True)
            return 0, [], []
        if not self._complete():
            print(f"[{self.prefix}] the checkpoint in {self.directory} lacks trainable weights of this run: "
                  "starting over", flush=True)
            return 0, [], []
        self.accelerator.load_state(str(self.latest), strict=False)  # the frozen weights are not in it
        print(f"[{self.prefix}] resuming from the checkpoint at step {meta['step']} ({self.latest})", flush=True)
        return int(meta["step"]), list(meta["history"]), list(meta.get("notes", []))

    def maybe_save(self, step: int, history_rows: list[dict], notes: list | None = None) -> None:
        """Save at every `every`-th step. `notes`: anything else the run must get back on resuming
        (JSON-able), such as what its between-epoch checks found."""
        if self.directory is None or step % self.every:
            return
        tmp = self.directory / f".latest.{step}.tmp"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))              # every rank writes its RNG state there
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (tmp / "meta.json").write_text(json.dumps({"fingerprint": self.key, "step": step,
                                                       "history": history_rows,
                                                       "notes": list(notes or [])}), encoding="utf-8")
            old = self.directory / ".latest.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.latest.exists():
                os.replace(self.latest, old)
            os.replace(tmp, self.latest)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _keep_trainable(models: list, weights: list[dict], output_dir) -> None:
    """Accelerator save-state hook: each model's state dict cut down to its trainable parameters
    (the names match: both come from the prepared model)."""
    for i, model in enumerate(models[:len(weights)]):
        keep = _trainable_names(model)
        # an OrderedDict, as accelerate's save expects (it drops aliased tensors from those only)
        weights[i] = OrderedDict((k, v) for k, v in weights[i].items() if k in keep)


def clear_checkpoints(directory: str | os.PathLike) -> None:
    """Remove a stage's checkpoints once its output is written (main process only): kept until then,
    a kill after training but before the write still resumes at the last checkpoint."""
    shutil.rmtree(directory, ignore_errors=True)
