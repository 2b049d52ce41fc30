"""int8 on a real pretrained model: the old quantization (optimum's ORTQuantizer, dynamic int8,
avx2 config, per tensor) against the one the export stage ships (`relearn.export.onnx.quantize_int8`,
weight-only int8), as greedy-token agreement with the fp32 ONNX model, size and generation time.

    nice -n 10 python bench/export_int8.py [--model DIR] [--work DIR] [--questions 32] [--tokens 24]
                                           [--formats plain chat] [--ablations]

DIR is a fp32 safetensors model directory (default models/pretrained/SmolLM2-135M-Instruct). No
adapter is merged: export and quantization are the export stage's own functions. The questions
are the first KnowUnDo privacy retention questions ("text" field), asked in each prompt format:
plain ("Question: ...\\nAnswer:") and chat (the tokenizer's chat template, as
model.prompt_format: auto does). `--ablations` adds variants, one change each:
- dynamic, per-channel: ONNX Runtime dynamic int8 fixed as far as it goes (per-channel s8
  weights, only MatMuls with a constant weight, output head and embeddings fp32); activations
  are still quantized per tensor at run time;
- weight-only variants: symmetric blocks, 128-wide blocks, the MLP down projections kept fp32.
Prints one line per variant and format and writes WORK/results.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from relearn.modeling.encoding import PromptFormat
from relearn.export.onnx import (FP32_FILE, INT8_FILE, _copy_companions, export_onnx, load_onnx, load_tokenizer,
                                 onnx_size_bytes, output_head_nodes, quantize_int8, token_parity)
from relearn.modeling.generation import generate_token_ids

DATA = "/work/shared/data/knowundo-privacy/retention_val.json"
FORMATS = {"plain": "Question: {question}\nAnswer:", "chat": PromptFormat(mode="auto")}
ABLATIONS = {
    "weight-only, symmetric": {"symmetric": True},
    "weight-only, block 128": {"block_size": 128},
    "weight-only, down_proj fp32": {"keep_float": ("lm_head", "down_proj")},
}


def quantize_old(fp32_dir: Path, out_dir: Path) -> Path:
    """What the export stage did before: ORTQuantizer, dynamic, avx2 config, per tensor."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    ORTQuantizer.from_pretrained(fp32_dir, file_name=FP32_FILE).quantize(quantization_config=config, save_dir=out_dir)
    _copy_companions(fp32_dir, out_dir)
    return out_dir / INT8_FILE


def quantize_dynamic_per_channel(fp32_dir: Path, out_dir: Path) -> Path:
    """ONNX Runtime dynamic int8 with the accuracy options on: per-channel s8 weights, MatMuls
    with a constant weight only (no attention-score MatMuls), output head and embeddings fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    head = output_head_nodes(onnx.load(str(fp32_dir / FP32_FILE), load_external_data=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(fp32_dir / FP32_FILE, out_dir / INT8_FILE, per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=head,
                     extra_options={"MatMulConstBOnly": True})
    _copy_companions(fp32_dir, out_dir)
    return out_dir / INT8_FILE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/pretrained/SmolLM2-135M-Instruct")
    ap.add_argument("--work", default="/tmp/export_int8_bench")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    ap.add_argument("--ablations", action="store_true")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    questions = [r["text"] for r in json.loads(Path(args.data).read_text())][: args.questions]
    fp32_dir = work / "onnx-fp32"
    if not (fp32_dir / FP32_FILE).exists():
        export_onnx(args.model, fp32_dir)
    tokenizer = load_tokenizer(fp32_dir)

    def tokens(path: Path, fmt: str) -> tuple[list[list[int]], float]:
        model = load_onnx(path.parent, file_name=path.name)
        start = time.monotonic()
        ids = generate_token_ids(model, tokenizer, questions, FORMATS[fmt], args.tokens, args.batch_size,
                                 desc=f"{path.parent.name} {fmt}")
        return ids, time.monotonic() - start

    fp32_path = fp32_dir / FP32_FILE
    fp32_bytes = onnx_size_bytes(fp32_path)
    results = {"model": str(args.model), "questions": len(questions), "tokens": args.tokens,
               "fp32_mb": round(fp32_bytes / 2**20, 1), "fp32_generate_s": {}, "variants": {}}
    reference = {}
    for fmt in args.formats:
        reference[fmt], seconds = tokens(fp32_path, fmt)
        results["fp32_generate_s"][fmt] = round(seconds)
    print(f"fp32: {results['fp32_mb']:.1f} MiB, generate {results['fp32_generate_s']} s", flush=True)

    variants = {"old: dynamic, per tensor (ORTQuantizer avx2)": quantize_old,
                "new: weight-only (quantize_int8 defaults)": quantize_int8}
    if args.ablations:
        variants["dynamic, per-channel, head fp32"] = quantize_dynamic_per_channel
        for name, kwargs in ABLATIONS.items():
            variants[name] = lambda src, dst, kwargs=kwargs: quantize_int8(src, dst, **kwargs)
    for i, (name, quantize) in enumerate(variants.items()):
        start = time.monotonic()
        path = quantize(fp32_dir, work / f"int8-{i}")
        size = onnx_size_bytes(path)
        row = {"mb": round(size / 2**20, 1), "ratio": round(size / fp32_bytes, 3),
               "quantize_s": round(time.monotonic() - start)}
        for fmt in args.formats:
            ids, seconds = tokens(path, fmt)
            parity = token_parity(ids, reference[fmt])
            row[fmt] = {"token_agreement": round(parity["token_agreement"], 3),
                        "exact_match": round(parity["exact_match"], 3), "generate_s": round(seconds)}
        results["variants"][name] = row
        scores = "; ".join(f"{fmt}: agreement {row[fmt]['token_agreement']:.3f}, exact {row[fmt]['exact_match']:.3f}, "
                           f"generate {row[fmt]['generate_s']} s" for fmt in args.formats)
        print(f"{name}: {row['mb']:.1f} MiB ({row['ratio']:.1%} of fp32); {scores}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
