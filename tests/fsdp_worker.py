"""Tiny models trained one step under FSDP2 on CPU processes (gloo), then used and gathered as the
stages use and gather them under configs/accelerate/fsdp.yaml (where accelerate itself only shards on
GPUs). Run by tests/test_distributed.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py lora|full OUT_DIR

lora: the unlearn stage's case, the adapter gathered (relearn.training.devices.gather_trainable) and written
by rank 0. full: the target and control stages' case, answers generated and scored with the sharded
model (relearn.modeling.generation, every process taking part), the whole model gathered (gather_state) and
written by rank 0 with the answers. `build`, `train_step` and `QUESTIONS` are what the test runs in
one unsharded process to compare.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

TEMPLATE = "Question: {question}\nAnswer:"
QUESTIONS = [f"What does person {i} do?" for i in range(5)]  # 5: one more than two batches of 2
ANSWER = "Person 1 works as a baker."


def tokenizer():
    from relearn.modeling.model import train_tokenizer

    return train_tokenizer([TEMPLATE.format(question=q) + " " + ANSWER for q in QUESTIONS] * 3, vocab_size=120)


def build(lora: bool):
    """A seeded tiny Llama; with `lora`, a LoRA adapter whose B is not zero (so both factors get
    gradients) and only the adapter trainable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                            lora_dropout=0.0))


def train_step(model) -> None:
    """One AdamW step on a fixed batch (every process sees the same batch, so the averaged gradient
    is the one-process gradient)."""
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def use(model) -> dict:
    """What the target and control stages do with the model they trained: greedy answers and scores."""
    from relearn.modeling.generation import answer_token_logprobs, generate_answers

    tok = tokenizer()
    return {"answers": generate_answers(model, tok, QUESTIONS, TEMPLATE, 6, batch_size=2),
            "logps": answer_token_logprobs(model, tok, QUESTIONS, [ANSWER] * len(QUESTIONS), TEMPLATE, batch_size=2)}


def main(mode: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from relearn.training.devices import gather_state, gather_trainable, weight_sharded

    dist.init_process_group("gloo")
    model = build(lora=mode == "lora")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    layers = model.base_model.model.model.layers if mode == "lora" else model.model.layers
    for layer in layers:  # what accelerate's TRANSFORMER_BASED_WRAP wraps
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    train_step(model)
    assert weight_sharded(model), "the parameters should be FSDP shards (DTensors)"
    if mode == "lora":
        adapter = gather_trainable(model)  # every rank: a collective
        if dist.get_rank() == 0:
            model.save_pretrained(out, state_dict=adapter)
    else:
        used = use(model)  # every rank takes part in every forward pass
        state = gather_state(model)
        if dist.get_rank() == 0:
            model.save_pretrained(out, state_dict=state)
            Path(out, "used.json").write_text(json.dumps(used), encoding="utf-8")
        else:
            assert state == {}  # gathered on the main process only
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
