"""Models and tokenizers: build a small Llama from scratch, or load an existing Hugging Face model.

The from-scratch path exists so that the whole lifecycle runs offline on a CPU: a BPE tokenizer is
trained on the pipeline's own text and a Llama-architecture model is initialised from a config.
Everything downstream (unlearning, evaluation, export) treats both paths the same: a directory
that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` can read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from relearn.params import ModelParams

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.model_input_names = ["input_ids", "attention_mask"]  # no token_type_ids (generate rejects them)
    return fast


def build_scratch_model(params: ModelParams, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A small Llama initialised from a config, sized by `params`."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.heads,
        max_position_embeddings=max(params.max_length, 128),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def load_pretrained(path: str | Path, dtype: str = "float32", device: str | torch.device | None = None):
    """Load a model directory or hub id and its tokenizer; make sure padding is defined. `device`:
    where the weights go (None: the CPU, where from_pretrained puts them)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer


def load_with_adapter(base_dir: str | Path, adapter_dir: str | Path | None, dtype: str = "float32",
                      device: str | torch.device | None = None):
    """The target model with a LoRA adapter on top (a PeftModel), and its tokenizer; with
    adapter_dir None (a distilled model, which has no adapter), the model alone."""
    from peft import PeftModel

    base, tokenizer = load_pretrained(base_dir, dtype, device)
    if adapter_dir is None:
        base.eval()
        return base, tokenizer
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return model, tokenizer


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
