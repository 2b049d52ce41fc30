"""Export: merge the adapter, export to ONNX, quantize to int8 (weight-only), and check greedy-token parity.

Everything runs on a tiny Llama (hidden 64, 2 layers, vocab 300) built here, with a LoRA adapter
whose B matrices are made non-zero so that merging changes the model.
"""
from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import onnx
import pytest
import torch

from relearn.export.onnx import (CPU, FP16_FILE, INT4_FILE, INT8_FILE, choose_deployable, export_onnx, float_nodes, load_onnx,
                                 load_tokenizer, merge_adapter, onnx_size_bytes, output_head_nodes, pick_provider,
                                 quantize_int8, run_export, token_parity)
from relearn.modeling.model import load_pretrained, load_with_adapter
from tiny import save_base_and_adapter

TEMPLATE = "Question: {question}\nAnswer:"
QUESTIONS = ["Where does Alice live?", "What does Bob do?", "When was Carol born?",
             "Who lives in Oslo?", "Tell me about Eve.", "Where does Judy work?"]
NAMES = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Quito"]
JOBS = ["baker", "pilot", "nurse", "lawyer"]


def _sentences(n: int = 200) -> list[str]:
    """Short QA-ish lines for the tokenizer."""
    out = []
    for i in range(n):
        name, city, job = NAMES[i % len(NAMES)], CITIES[i % len(CITIES)], JOBS[i % len(JOBS)]
        out.append(TEMPLATE.format(question=f"Where does {name} live?") + f" {name} lives in {city}, works as a {job}"
                   f" and was born in {1940 + i}.")
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny base model and a saved LoRA adapter with non-zero B weights."""
    root = tmp_path_factory.mktemp("export")
    return save_base_and_adapter(root, _sentences())


@pytest.fixture(scope="session")
def exported(tiny) -> tuple[dict, Path]:
    out = tiny["root"] / "out"
    report = run_export(tiny["base"], tiny["adapter"], out, QUESTIONS, TEMPLATE, max_new_tokens=12)
    return report, out


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_merged_model_matches_peft_model(tiny, tmp_path):
    merged_dir = merge_adapter(tiny["base"], tiny["adapter"], tmp_path / "merged")
    assert (merged_dir / "model.safetensors").exists() and (merged_dir / "tokenizer.json").exists()
    peft, tok = load_with_adapter(tiny["base"], tiny["adapter"])
    merged, _ = load_pretrained(merged_dir)
    base, _ = load_pretrained(tiny["base"])
    ids = torch.tensor([tok("Question: Where does Alice live?\nAnswer:")["input_ids"]])
    expected = _logits(peft, ids)
    assert torch.allclose(_logits(merged, ids), expected, atol=1e-4)
    assert not torch.allclose(_logits(base, ids), expected, atol=1e-3), "the adapter should change the model"
    assert next(merged.parameters()).dtype == torch.float32


def test_run_export_writes_loadable_dirs(exported):
    _, out = exported
    assert (out / "merged" / "model.safetensors").exists()
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (out / "onnx-fp32" / name).exists(), name
        assert (out / "onnx-int8" / name).exists(), name
    assert (out / "onnx-fp32" / "model.onnx").exists()
    assert (out / "onnx-int8" / INT8_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary directories left behind"


def test_fp32_onnx_generates_the_torch_tokens(exported):
    report, _ = exported
    assert report["parity_fp32_vs_torch"] == {"exact_match": 1.0, "token_agreement": 1.0, "n": len(QUESTIONS)}


def test_int8_is_smaller_and_generates(exported):
    report, _ = exported
    assert 0 < report["int8_mb"] < report["fp32_mb"]
    assert report["int8_ratio"] == pytest.approx(report["int8_mb"] / report["fp32_mb"], rel=1e-2)
    assert report["parity_int8_vs_fp32"]["n"] == len(QUESTIONS)
    assert len(report["answers_int8"]) == len(QUESTIONS)
    assert all(isinstance(a, str) for a in report["answers_int8"])
    assert set(report["seconds"]) >= {"merge adapter", "export fp32 onnx", "quantize int8", "total"}


def _weights(model) -> dict[str, int]:
    """Initializer name -> ONNX data type, for 2-D initializers (the weight matrices)."""
    return {t.name: t.data_type for t in model.graph.initializer if len(t.dims) == 2}


def test_int8_is_weight_only_with_head_and_embedding_in_fp32(exported):
    report, _ = exported
    fp32 = onnx.load(report["paths"]["fp32"])
    int8 = onnx.load(report["paths"]["int8"])
    ops = [n.op_type for n in int8.graph.node]
    # weights only: no run-time activation quantization
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops
    nbits = [n for n in int8.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(next(a.i for a in n.attribute if a.name == "bits") == 8 for n in nbits)
    # every projection with a constant weight is quantized, except the output head
    constant = set(_weights(fp32))
    projections = [n.name for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in constant]
    head = output_head_nodes(fp32)
    assert len(head) == 1 and "lm_head" in head[0]
    assert len(nbits) == len(projections) - 1
    head_weight = next(n.input[1] for n in int8.graph.node if n.name == head[0])
    assert _weights(int8)[head_weight] == onnx.TensorProto.FLOAT
    assert _weights(int8)["model.embed_tokens.weight"] == onnx.TensorProto.FLOAT
    assert report["token_agreement"] == report["parity_int8_vs_fp32"]["token_agreement"]


def test_int8_keep_float_choices(exported, tmp_path):
    report, out = exported
    fp32 = onnx.load(report["paths"]["fp32"])
    assert float_nodes(fp32, ()) == []
    downs = float_nodes(fp32, ("down_proj",))
    assert len(downs) == 2 and all("down_proj" in n for n in downs)  # one per layer
    with pytest.raises(ValueError, match="no MatMul"):
        float_nodes(fp32, ("no_such_layer",))
    path = quantize_int8(out / "onnx-fp32", tmp_path / "all", keep_float=())
    nodes = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    assert output_head_nodes(fp32)[0] not in nodes and "MatMulNBits" in nodes.values()  # the head too
    assert onnx_size_bytes(path) < report["int8_mb"] * 2**20
    ids = load_tokenizer(path.parent)("Where does Alice live?", return_tensors="pt")["input_ids"]
    assert load_onnx(path.parent, file_name=path.name).generate(input_ids=ids, max_new_tokens=3).shape[1] > ids.shape[1]


def test_int8_copies_the_chat_template(exported, tmp_path):
    _, out = exported
    src = tmp_path / "fp32"
    shutil.copytree(out / "onnx-fp32", src)
    (src / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    path = quantize_int8(src, tmp_path / "int8")
    assert (path.parent / "chat_template.jinja").read_text() == (src / "chat_template.jinja").read_text()
    assert load_tokenizer(path.parent).chat_template


def test_without_quantization_the_agreement_is_fp32_onnx_vs_torch(tiny, tmp_path):
    report = run_export(tiny["base"], tiny["adapter"], tmp_path, QUESTIONS[:2], TEMPLATE, 4, quantize="none")
    assert report["token_agreement"] == report["parity_fp32_vs_torch"]["token_agreement"]
    assert report["int8_mb"] is None and not (tmp_path / "onnx-int8").exists()


def test_onnx_size_counts_external_data(exported, tmp_path):
    report, _ = exported
    fp32 = Path(report["paths"]["fp32"])
    model = onnx.load(str(fp32))
    split = tmp_path / "split.onnx"
    onnx.save_model(model, str(split), save_as_external_data=True, location="split.onnx_data", size_threshold=0)
    assert onnx_size_bytes(split) == split.stat().st_size + (tmp_path / "split.onnx_data").stat().st_size
    assert onnx_size_bytes(split) > 0.9 * onnx_size_bytes(fp32)
    assert onnx_size_bytes(fp32) == fp32.stat().st_size


def test_failed_export_leaves_nothing(tmp_path):
    with pytest.raises((OSError, ValueError)):  # not a directory, so not a valid hub id either
        export_onnx(tmp_path / "missing-model", tmp_path / "onnx-fp32")
    assert list(tmp_path.iterdir()) == []


def test_run_export_rejects_unknown_quantization(tiny, tmp_path):
    with pytest.raises(ValueError, match="quantize"):
        run_export(tiny["base"], tiny["adapter"], tmp_path, QUESTIONS, TEMPLATE, 4, quantize="int3")
    with pytest.raises(ValueError, match="candidates"):
        run_export(tiny["base"], tiny["adapter"], tmp_path, QUESTIONS, TEMPLATE, 4, quantize="auto",
                   candidates=["int8", "bf16"])


def test_auto_builds_and_times_every_candidate(tiny, tmp_path):
    report = run_export(tiny["base"], tiny["adapter"], tmp_path, QUESTIONS[:3], TEMPLATE, 4, quantize="auto",
                        candidates=["int8", "int4"], latency_questions=2)
    c = report["candidates"]
    assert set(c) == {"fp32", "int8", "int4"}
    assert (tmp_path / "onnx-int8" / INT8_FILE).is_file() and (tmp_path / "onnx-int4" / INT4_FILE).is_file()
    assert c["int4"]["mb"] < c["int8"]["mb"] < c["fp32"]["mb"] and c["fp32"]["ratio"] == 1.0
    assert all(x["ms_per_token"] > 0 and 0 <= x["token_agreement"] <= 1 for x in c.values())
    assert report["parity_int8_vs_fp32"]["token_agreement"] == c["int8"]["token_agreement"] == report["token_agreement"]


def test_fp16_halves_the_weights_keeps_fp32_inputs_and_outputs_and_generates_the_fp32_tokens(tiny, tmp_path):
    """The GPU candidate (CUDA provider), built and checked on the CPU: every weight matrix in fp16, the
    graph's inputs and outputs (KV cache, logits) still fp32 so the engines feed it unchanged."""
    report = run_export(tiny["base"], tiny["adapter"], tmp_path, QUESTIONS, TEMPLATE, 12, quantize="auto",
                        candidates=["fp16"], latency_questions=1)
    c = report["candidates"]["fp16"]
    assert (tmp_path / "onnx-fp16" / FP16_FILE).is_file() and (tmp_path / "onnx-fp16" / "tokenizer.json").is_file()
    assert 0.45 < c["ratio"] < 0.7 and c["ms_per_token"] > 0  # (the tiny graph: 0.62; SmolLM2: see docs)
    assert c["token_agreement"] >= 0.9  # half precision flips only near-tied greedy tokens
    graph = onnx.load(str(tmp_path / "onnx-fp16" / FP16_FILE))
    assert set(_weights(graph).values()) == {onnx.TensorProto.FLOAT16}
    fp32 = onnx.load(str(tmp_path / "onnx-fp32" / "model.onnx"), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.graph.input) + list(graph.graph.output)}
    assert types == {v.name: v.type.tensor_type.elem_type for v in list(fp32.graph.input) + list(fp32.graph.output)}
    tokenizer = load_tokenizer(tmp_path / "onnx-fp16")
    tokenizer.padding_side = "left"  # a padded batch: the mask's large negatives must not overflow fp16
    ids = tokenizer(["Hi?", QUESTIONS[4] + " " + QUESTIONS[0]], return_tensors="pt", padding=True)
    assert ids["attention_mask"][0, 0] == 0
    logits = load_onnx(tmp_path / "onnx-fp16", file_name=FP16_FILE)(**ids).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits[:, -1]).all()
    assert report["token_agreement"] == c["token_agreement"]


def test_the_fastest_candidate_that_passes_ships_and_near_ties_go_to_the_smallest():
    def cands(**over):
        base = {"fp32": dict(mb=500, ms_per_token=40.0, token_agreement=1.0, kfr=0.90, krr=0.85),
                "int8": dict(mb=226, ms_per_token=25.0, token_agreement=1.0, kfr=0.93, krr=0.85),
                "int4": dict(mb=174, ms_per_token=24.0, token_agreement=0.73, kfr=0.93, krr=0.78)}
        for name, changes in over.items():
            base[name] |= changes
        return base

    c = cands()
    assert choose_deployable(c, agreement_min=0.8, krr_drop_max=0.03) == "int8"  # int4 fails agreement and KRR
    assert c["int8"]["passes"] and c["fp32"]["passes"] and not c["int4"]["passes"]
    # int4 passing and within 10% of int8's time: the smaller wins; 20% slower, the faster does
    assert choose_deployable(cands(int4=dict(token_agreement=0.95, krr=0.85)), 0.8, 0.03) == "int4"
    assert choose_deployable(cands(int4=dict(token_agreement=0.95, krr=0.85, ms_per_token=30.0)), 0.8, 0.03) == "int8"
    # quantization that brings knowledge back (KFR below fp32's) does not ship, nor one that costs retention
    assert choose_deployable(cands(int8=dict(kfr=0.88)), 0.8, 0.03) == "fp32"
    assert choose_deployable(cands(int8=dict(krr=0.80)), 0.8, 0.03) == "fp32"
    # int8 slower than fp32 (fp32 compute in the kernel): fp32 ships
    assert choose_deployable(cands(int8=dict(ms_per_token=222.0)), 0.8, 0.03) == "fp32"
    # no timings: the smallest that passes
    untimed = {n: {k: v for k, v in x.items() if k != "ms_per_token"} for n, x in cands().items()}
    assert choose_deployable(untimed, 0.8, 0.03) == "int8"


def test_pick_provider_defaults_to_cpu():
    import onnxruntime

    assert pick_provider() == CPU
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert pick_provider("CUDAExecutionProvider") == ("CUDAExecutionProvider" if cuda else CPU)
    assert pick_provider("auto") == ("CUDAExecutionProvider" if cuda else CPU)


@pytest.mark.parametrize("a, b, expected", [
    ([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]], {"exact_match": 1.0, "token_agreement": 1.0, "n": 2}),
    # row 0 diverges at position 1 (later re-agreement does not count): 1 of 3; row 1: 2 of 2
    ([[1, 9, 3], [4, 5]], [[1, 2, 3], [4, 5]], {"exact_match": 0.5, "token_agreement": 3 / 5, "n": 2}),
    # one side stops early: the prefix agrees on 2 of max(2, 4) positions
    ([[1, 2]], [[1, 2, 3, 4]], {"exact_match": 0.0, "token_agreement": 0.5, "n": 1}),
    ([[], [7]], [[], [8]], {"exact_match": 0.5, "token_agreement": 0.0, "n": 2}),
    ([[]], [[]], {"exact_match": 1.0, "token_agreement": 1.0, "n": 1}),
    ([], [], {"exact_match": 1.0, "token_agreement": 1.0, "n": 0}),
])
def test_token_parity(a, b, expected):
    assert token_parity(a, b) == pytest.approx(expected)


def test_token_parity_needs_equal_row_counts():
    with pytest.raises(ValueError):
        token_parity([[1]], [[1], [2]])
