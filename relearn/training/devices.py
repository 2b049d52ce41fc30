"""Where the stages run: the `device` param, and which process of a multi-process launch writes.

`device: auto` is CUDA when torch sees a GPU, else the CPU. Under `accelerate launch` or `torchrun`
each process gets its own GPU from its LOCAL_RANK (accelerate does that), and on CPUs the processes
talk over gloo; the Accelerator must be told `cpu=True` for that, which `accelerator_kwargs` does.
Only the main process writes models, reports and plots (`is_main_process`); the others train their
shard and exit.

Sharded launches (`accelerate launch` with an FSDP config: `sharding()`) split the weights
themselves over the processes (FSDP2: each parameter a DTensor holding this process's shard). Then
every process must run the same forward passes, so generation and scoring with such a model are not
split by question: every process answers every question, generation kept in step across them
(`weight_sharded`, relearn.modeling.generation). Before the main process writes, the weights are gathered
on every process (`gather_trainable` for a LoRA adapter, `gather_state` for a whole model). The
distill stage and the split-gradient hardening refuse a sharded launch (`refuse_sharding`), as do a
LoRA-fine-tuned target (merged after training) and DeepSpeed.
"""
from __future__ import annotations

import re

import torch

from relearn.errors import UserError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch.device; a GPU that is not there is a user error."""
    if not DEVICE_PATTERN.fullmatch(spec or ""):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device: {spec!r}, but torch sees no CUDA GPU (a CPU-only torch build, or no driver); "
                            "use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device: {spec!r}, but there are {torch.cuda.device_count()} GPUs")
    return device


def accelerator_kwargs(spec: str = "auto") -> dict:
    """Accelerator arguments for the device: cpu=True on a CPU (also what makes several CPU
    processes use gloo), and the chosen GPU made current for a one-process run on cuda:N."""
    device = resolve_device(spec)
    if device.type == "cpu":
        return {"cpu": True}
    if device.index is not None:
        torch.cuda.set_device(device.index)
    return {}


def init_processes(spec: str = "auto"):
    """The process group of a multi-process launch (a no-op for one process), and this process's
    device: its own GPU under accelerate launch / torchrun, else `spec`. Stages that do not train
    (evaluate) call it before loading models."""
    from accelerate import PartialState

    return PartialState(**accelerator_kwargs(spec)).device


def shard_map(fn, items: list) -> list:
    """fn(items) computed in shards, one contiguous shard per process, and gathered back in order
    on every process; fn(items) itself in a one-process run. fn must return one result per item.
    (Greedy generation and scoring give the same results; sampled generation draws per shard.)"""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn(items)
    world, rank = dist.get_world_size(), dist.get_rank()
    per = -(-len(items) // world)
    mine = fn(items[rank * per:(rank + 1) * per]) if items[rank * per:(rank + 1) * per] else []
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return [x for part in gathered for x in part]


def sharding() -> str | None:
    """'fsdp' or 'deepspeed' when `accelerate launch` was given such a config (it tells the processes
    through ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED), else None."""
    import os

    for name, var in (("fsdp", "ACCELERATE_USE_FSDP"), ("deepspeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(var, "false").lower() in ("1", "true"):
            return name
    return None


def refuse_sharding(stage: str, why: str = "",
                    instead: str = "configs/accelerate/ddp.yaml or on one process") -> None:
    """A user error when a stage that cannot run with sharded weights is launched with them."""
    kind = sharding()
    if kind:
        raise UserError(f"{stage}: launched with {'FSDP' if kind == 'fsdp' else 'DeepSpeed'} "
                        f"({'ACCELERATE_USE_FSDP' if kind == 'fsdp' else 'ACCELERATE_USE_DEEPSPEED'} is set), "
                        f"which this stage does not support{': ' + why if why else ''}; launch it with {instead}")


def refuse_deepspeed(stage: str) -> None:
    """The stages gather sharded weights from FSDP2 DTensors only: a DeepSpeed launch is a user error."""
    if sharding() == "deepspeed":
        refuse_sharding(stage, "its weights are gathered from FSDP shards", instead="configs/accelerate/fsdp.yaml")


def gather_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: full tensor on the CPU} for every trainable parameter of `model` (the unwrapped model).
    Under FSDP2 a parameter is a DTensor holding this process's shard, and `full_tensor()` gathers it:
    a collective, so every process calls this, in the same order. Elsewhere the tensors are whole
    already and are only copied to the CPU."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            tensor = param.detach()
            if hasattr(tensor, "full_tensor"):  # torch.distributed.tensor.DTensor
                tensor = tensor.full_tensor()
            out[name] = tensor.to("cpu")
    return out


def weight_sharded(model) -> bool:
    """Whether `model`'s weights are split over the processes (FSDP2 DTensors): then each process
    must take part in every forward pass (no splitting of the questions)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or not hasattr(model, "parameters"):
        return False
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def gather_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole state dict of a weight-sharded model, gathered to the CPU of the main process (the
    others get {}): a collective, every process calls it. None for a model that is whole already
    (save_pretrained then reads the model itself)."""
    if not weight_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def is_main_process() -> bool:
    """True in a one-process run, and on rank 0 of `accelerate launch` / `torchrun`."""
    from accelerate import PartialState

    return PartialState().is_main_process


def finish() -> None:
    """End a stage's distributed run cleanly: this process's side of the process group is torn down
    (without it gloo aborts the processes at exit). No barrier: the other processes have left their
    last collective already, and a barrier would make them wait on the main process's writes (a
    large model's can outlast NCCL's 10-minute collective timeout). A no-op in a one-process run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
