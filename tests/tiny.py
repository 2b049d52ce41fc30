"""Tiny models shared by the tests: built in seconds, saved where a test needs files."""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_lora(tok, vocab_size: int = 200):
    """A one-layer from-scratch Llama with a fresh LoRA adapter on q/v (B = 0: it starts as the base)."""
    from peft import LoraConfig, get_peft_model

    from relearn.modeling.model import build_scratch_model
    from relearn.params import ModelParams

    model = build_scratch_model(ModelParams(hidden_size=32, layers=1, heads=2, intermediate_size=64,
                                            vocab_size=vocab_size), tok, seed=0)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))


def save_base_and_adapter(root: Path, texts: list[str]) -> dict[str, Path]:
    """A saved two-layer base model (tokenizer trained on `texts`) and a saved LoRA adapter with
    non-zero B weights, so that merging it changes the model."""
    from peft import LoraConfig, get_peft_model

    from relearn.modeling.model import build_scratch_model, train_tokenizer
    from relearn.params import ModelParams

    tok = train_tokenizer(texts, vocab_size=300)
    params = ModelParams(hidden_size=64, layers=2, heads=2, intermediate_size=128, vocab_size=300)
    model = build_scratch_model(params, tok, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft.save_pretrained(root / "adapter")
    return {"root": root, "base": root / "base", "adapter": root / "adapter"}


def qa_batch(tok, pairs: list[tuple[str, str]], template: str = "Question: {question}\nAnswer:"):
    """One padded training batch of (question, answer) pairs."""
    from relearn.modeling.encoding import collate, encode_pair

    return collate([encode_pair(tok, q, a, template, 64) for q, a in pairs], tok.pad_token_id)


def adapter_off_reference(model):
    """The reference logits of the unlearning losses: the same PeftModel with its adapter switched off."""
    @torch.no_grad()
    def reference(batch):
        with model.disable_adapter():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return reference
