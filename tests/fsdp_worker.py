"""A LoRA model trained one step under FSDP2 on CPU processes (gloo), its adapter gathered with
relearn.devices.gather_trainable and written by rank 0: what the unlearn stage does under
configs/accelerate/fsdp.yaml, where accelerate itself only shards on GPUs. Run by
tests/test_distributed.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py OUT_DIR

`build` and `train_step` are also what the test runs in one unsharded process to compare.
"""
from __future__ import annotations

import sys

import torch


def build():
    """A seeded tiny Llama with a LoRA adapter whose B is not zero (so both factors get gradients)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                            lora_dropout=0.0))


def train_step(model) -> None:
    """One AdamW step on a fixed batch (every process sees the same batch, so the averaged gradient
    is the one-process gradient)."""
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def main(out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from relearn.devices import gather_trainable

    dist.init_process_group("gloo")
    model = build()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.base_model.model.model.layers:  # what accelerate's TRANSFORMER_BASED_WRAP wraps
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    train_step(model)
    sharded = [n for n, p in model.named_parameters() if p.requires_grad and hasattr(p, "full_tensor")]
    adapter = gather_trainable(model)  # every rank: a collective
    if dist.get_rank() == 0:
        assert sharded, "the adapter's parameters should be FSDP shards (DTensors)"
        model.save_pretrained(out, state_dict=adapter)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
