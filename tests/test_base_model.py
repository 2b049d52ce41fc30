"""prepare_base: a tiny GGUF file and tiny Hugging Face directories become cached safetensors models."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from relearn.modeling import base_model
from relearn.modeling.base_model import prepare_base
from relearn.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "who wrote the book about the sea?"] * 4
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
PROMPT = "the dog sat in the park"


def tiny_llama(tok):
    """Two layers, grouped-query attention (4 heads, 2 key/value heads), untied output head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def write_gguf(path: Path, model, tok) -> None:
    """The model and tokenizer as llama.cpp writes them: F32 tensors under llama.cpp's names, with
    the query and key rows in llama.cpp's rotary order; a gpt2-style BPE vocabulary."""
    import gguf

    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    def rotary_order(w: np.ndarray, heads: int) -> np.ndarray:
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(len(tok))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    writer.add_token_list(tokens)
    special = set(tok.all_special_tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)  # no padding id: the prepared tokenizer pads with eos
    writer.add_unk_token_id(tok.unk_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, weight in model.state_dict().items():
        w = weight.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            gguf_name = f"blk.{layer}.{names[rest.removesuffix('.weight')]}.weight"
            if rest.startswith("self_attn.q_proj"):
                w = rotary_order(w, cfg.num_attention_heads)
            elif rest.startswith("self_attn.k_proj"):
                w = rotary_order(w, cfg.num_key_value_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The original tokenizer and model, a GGUF file of them, and a saved HF directory of them."""
    from relearn.modeling.model import train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tok.chat_template = CHAT_TEMPLATE
    model = tiny_llama(tok)
    write_gguf(root / "tiny.gguf", model, tok)
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    return {"tok": tok, "model": model, "gguf": root / "tiny.gguf", "hf": root / "hf"}


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_gguf_becomes_a_cached_safetensors_directory(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, out = tmp_path / "cache", tmp_path / "models" / "base"
    report = prepare_base(str(tiny["gguf"]), out, cache_dir=cache)
    assert report["kind"] == "gguf" and report["cached"] is False
    assert report["parameters"] == tiny["model"].num_parameters() and report["dtype"] == "float32"
    assert report["chat_template"] and report["eos_token"] == "</s>" and report["pad_token"] == "</s>"
    assert (out / "model.safetensors").is_file() and report["sha256"] in os.listdir(cache)

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(PROMPT).input_ids
    assert ids == tiny["tok"](PROMPT).input_ids  # same tokens as the original, and no bos added
    assert tok.chat_template == CHAT_TEMPLATE and tok.eos_token == "</s>" and tok.pad_token == "</s>"
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    direct = AutoModelForCausalLM.from_pretrained(str(tiny["gguf"].parent), gguf_file=tiny["gguf"].name,
                                                  dtype=torch.float32).eval()
    torch.testing.assert_close(logits(model, ids), logits(direct, ids), rtol=0, atol=0)
    torch.testing.assert_close(logits(model, ids), logits(tiny["model"], ids), rtol=1e-4, atol=1e-5)

    start = time.perf_counter()
    again = prepare_base(str(tiny["gguf"]), out, cache_dir=cache)
    assert again["cached"] is True and time.perf_counter() - start < 5
    assert {k: v for k, v in again.items() if k not in ("cached", "seconds")} == \
           {k: v for k, v in report.items() if k not in ("cached", "seconds")}
    weights = out / "model.safetensors"
    assert weights.stat().st_ino == (cache / report["sha256"] / "model.safetensors").stat().st_ino  # a hard link


def test_directory_sources_safetensors_and_bin(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = prepare_base(str(tiny["hf"]), tmp_path / "a", cache_dir=tmp_path / "cache")
    assert report["kind"] == "directory" and report["parameters"] == tiny["model"].num_parameters()
    assert report["pad_token"] == "<pad>" and report["chat_template"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tiny["hf"] / "model.safetensors").read_bytes()

    bin_dir = tmp_path / "bin"
    tiny["model"].save_pretrained(bin_dir, safe_serialization=False)
    tok = AutoTokenizer.from_pretrained(tiny["hf"])
    tok.pad_token = None  # a tokenizer without padding gets eos as its pad token
    tok.save_pretrained(bin_dir)
    report = prepare_base(str(bin_dir), tmp_path / "b", cache_dir=tmp_path / "cache")
    assert report["pad_token"] == "</s>" and report["dtype"] == "float32"
    assert sorted(p.name for p in (tmp_path / "b").glob("*model*")) == ["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
    ids = tok(PROMPT).input_ids
    torch.testing.assert_close(logits(model, ids), logits(tiny["model"], ids), rtol=0, atol=0)


def test_a_failure_leaves_the_previous_out_dir(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_base(str(tiny["hf"]), out, cache_dir=tmp_path / "cache")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_link(src, dst):
        calls.append(src)
        if len(calls) > 2:
            raise OSError("disk full")
        dst.write_bytes(b"partial")

    monkeypatch.setattr(base_model, "_link_or_copy", failing_link)
    with pytest.raises(OSError, match="disk full"):
        prepare_base(str(tiny["hf"]), out, cache_dir=tmp_path / "cache")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]  # no temporary directory left


def test_scratch_and_user_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "stale").write_text("x")
    assert prepare_base(None, "models/base") == {"source": None, "kind": "scratch"}
    assert [p.name for p in (tmp_path / "models" / "base").iterdir()] == ["SCRATCH"]  # the stale file is gone

    with pytest.raises(UserError) as e:
        prepare_base("models/pretrained/SmolLM2-135M-Instruct", "models/base")
    assert "model.base" in str(e.value) and "models/pretrained/SmolLM2-135M-Instruct" in str(e.value)
    assert "relearn model get smollm2" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="model.base: models/other: no such file"):
        prepare_base("models/other", "models/base")
    with pytest.raises(UserError, match="model.base: weights.gguf: no such file"):
        prepare_base("weights.gguf", "models/base")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        prepare_base("empty", "models/base")

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(UserError) as e:
        prepare_base("relearn-tests/no-such-model", "models/base")
    assert str(e.value).startswith("model.base: relearn-tests/no-such-model:") and "HF_HUB_OFFLINE" in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_model_get_and_info(tiny, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from relearn.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(base_model, "smollm2_gguf", lambda wheel=None: tiny["gguf"])
    result = CliRunner().invoke(main, ["model", "get", "smollm2", "--out", "models/pretrained/tiny"])
    assert result.exit_code == 0, result.output
    assert "model.base: models/pretrained/tiny" in result.output
    assert (tmp_path / "models" / "pretrained" / "tiny" / "model.safetensors").is_file()
    result = CliRunner().invoke(main, ["model", "info", "models/pretrained/tiny"])
    assert result.exit_code == 0 and "eos_token: </s>" in result.output
    result = CliRunner().invoke(main, ["model", "info", "nowhere"])
    assert result.exit_code == 2
