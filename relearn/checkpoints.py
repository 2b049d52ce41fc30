"""Checkpoints of a training loop, so that a stage killed mid-training resumes instead of starting over.

Every `every` optimizer steps the loop's full state goes to `<directory>/latest`: the model,
optimizer and scheduler and every process's RNG states (`Accelerator.save_state`), and `meta.json`
with the step, the loss history so far and a fingerprint of the run (its settings, its data and the
weights it started from). It is written beside the old one and swapped in by rename, so a kill
during a save leaves the previous checkpoint whole. A run with the same fingerprint restores it and
replays its data loaders up to that step without computing anything (every loader has its own
seeded generator, so the replay reaches the same batches); a run with another fingerprint ignores
it. The stage removes it (`clear_checkpoints`) once its output is written.

    directory/latest/   model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl, meta.json
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
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

    @property
    def latest(self) -> Path:
        return self.directory / "latest"

    def resume(self) -> tuple[int, list[dict]]:
        """(steps already done, their history rows); (0, []) without a usable checkpoint."""
        if self.directory is None or not (self.latest / "meta.json").exists():
            return 0, []
        meta = json.loads((self.latest / "meta.json").read_text(encoding="utf-8"))
        if meta.get("fingerprint") != self.key:
            print(f"[{self.prefix}] a checkpoint in {self.directory} is from other settings, data or weights: "
                  "starting over", flush=True)
            return 0, []
        self.accelerator.load_state(str(self.latest))
        print(f"[{self.prefix}] resuming from the checkpoint at step {meta['step']} ({self.latest})", flush=True)
        return int(meta["step"]), list(meta["history"])

    def maybe_save(self, step: int, history_rows: list[dict]) -> None:
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
                                                       "history": history_rows}), encoding="utf-8")
            old = self.directory / ".latest.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.latest.exists():
                os.replace(self.latest, old)
            os.replace(tmp, self.latest)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()



def clear_checkpoints(directory: str | os.PathLike) -> None:
    """Remove a stage's checkpoints once its output is written (main process only): kept until then,
    a kill after training but before the write still resumes at the last checkpoint."""
    shutil.rmtree(directory, ignore_errors=True)
