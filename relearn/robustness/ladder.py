"""Precision ladder: does forgetting survive lower precision?

Unlearning that moves weights only a little can be undone by rounding (Zhang et al., ICLR 2025:
forgotten knowledge came back after 4-bit quantization, while 8-bit was nearly harmless). So KFR
and KRR are measured on the same model at every rung of a ladder of precisions:

    torch-fp32   the model (adapter merged) in PyTorch, fp32: the reference rung
    torch-bf16   the same weights cast to bfloat16 in PyTorch
    onnx-fp32    exported to ONNX (relearn.export.onnx.export_onnx), onnxruntime
    onnx-int8    weight-only int8 (quantize_int8 with the export stage's settings), the project's deployable
    onnx-int4    weight-only 4-bit, MatMulNBits (quantize_int4)

Every rung answers through relearn.modeling.generation.generate_answers, as the export stage does, with
greedy decoding. Run the same ladder on the target model: a rung where the unlearned model's KFR
drops but the target's KRR holds is knowledge that quantization brought back.

Written under `work_dir`: merged/ (only with an adapter), onnx-fp32/, onnx-int8/, onnx-int4/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from relearn.records import QARecord
from relearn.robustness.common import answer_and_score, load_merged, timed

RUNGS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int4")
TORCH_DTYPES = {"torch-fp32": "float32", "torch-bf16": "bfloat16"}


def precision_ladder(base_dir: str | Path, adapter_dir: Optional[str | Path], work_dir: str | Path,
                     forget_eval: list[QARecord], retain_eval: list[QARecord], *, template: str,
                     max_new_tokens: int, batch_size: int = 32, rungs: Sequence[str] = RUNGS,
                     int4_block_size: int = 32, int8_block_size: int = 32,
                     int8_keep_float: Sequence[str] = ("lm_head",), int8_accuracy_level: Optional[int] = 4,
                     device: str = "cpu",
                     provider: Optional[str] = None) -> tuple[dict, dict]:
    """KFR (forget_eval) and KRR (retain_eval) of one model at each rung.

    The model is `base_dir` with `adapter_dir` merged in (or `base_dir` alone when adapter_dir is
    None); nothing is written outside `work_dir`. `device` runs the torch rungs, `provider` the
    ONNX ones (relearn.export.onnx.pick_provider; CPU by default). Returns

        aggregate: {"rungs": {rung: {"kfr", "krr", "same_answers", "mb", "seconds"}},
                    "reference": the first of torch-fp32 / the first rung,
                    "kfr_drop": {rung: kfr[reference] - kfr[rung]},   # > 0: knowledge came back
                    "krr_drop": {rung: krr[reference] - krr[rung]},   # > 0: retention lost
                    "worst": {"rung", "kfr_drop"},                     # largest KFR drop
                    "int4_block_size": int, "n": {"forget", "retain"},
                    "seconds": {build step or rung: s, "total": s}}
        per_item:  {"forget": {id: {rung: {"answer", "share", "forgotten"}}},
                    "retain": {id: {rung: {"answer", "share", "retained"}}}}

    "same_answers" is the share of answers (both sets) identical to the reference rung's answers.
    "mb" is the weight size in MiB: parameter bytes for torch rungs, the .onnx file (with any
    external data) for ONNX rungs.
    """
    from relearn.export.onnx import (FP32_FILE, INT4_FILE, INT8_FILE, export_onnx, load_onnx, load_tokenizer,
                                     merge_adapter, onnx_size_bytes, quantize_int4, quantize_int8)

    rungs = list(rungs)
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown or not rungs or len(set(rungs)) != len(rungs):
        raise ValueError(f"rungs must be distinct names from {RUNGS}, got {rungs}")
    work_dir = Path(work_dir)
    seconds: dict[str, float] = {}
    onnx_files = {"onnx-fp32": ("onnx-fp32", FP32_FILE), "onnx-int8": ("onnx-int8", INT8_FILE),
                  "onnx-int4": ("onnx-int4", INT4_FILE)}

    # ---- build what the rungs need: merged weights, fp32 ONNX, the quantized graphs
    model_dir = Path(base_dir)
    if adapter_dir is not None:
        with timed(seconds, "merge"):
            model_dir = merge_adapter(base_dir, adapter_dir, work_dir / "merged")
    if any(r.startswith("onnx-") for r in rungs):
        with timed(seconds, "export onnx-fp32"):
            export_onnx(model_dir, work_dir / "onnx-fp32")
    if "onnx-int8" in rungs:
        with timed(seconds, "quantize onnx-int8"):
            quantize_int8(work_dir / "onnx-fp32", work_dir / "onnx-int8", block_size=int8_block_size,
                          keep_float=int8_keep_float, accuracy_level=int8_accuracy_level)
    if "onnx-int4" in rungs:
        with timed(seconds, "quantize onnx-int4"):
            quantize_int4(work_dir / "onnx-fp32", work_dir / "onnx-int4", block_size=int4_block_size)

    # ---- answer and score both sets at every rung
    results: dict[str, dict] = {}
    per_item: dict[str, dict] = {"forget": {r.id: {} for r in forget_eval}, "retain": {r.id: {} for r in retain_eval}}
    for rung in rungs:
        with timed(seconds, rung):
            if rung in TORCH_DTYPES:
                model, tokenizer = load_merged(model_dir, dtype=TORCH_DTYPES[rung], device=device)
                mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            else:
                sub, file_name = onnx_files[rung]
                model = load_onnx(work_dir / sub, file_name=file_name, provider=provider)
                tokenizer = load_tokenizer(work_dir / sub)
                mb = onnx_size_bytes(work_dir / sub / file_name) / 2**20
            rates = {}
            for kind, records in (("forget", forget_eval), ("retain", retain_eval)):
                rate, items = answer_and_score(model, tokenizer, records, kind, template=template,
                                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                                               desc=f"{rung} {kind}")
                rates["kfr" if kind == "forget" else "krr"] = rate
                for rid, item in items.items():
                    item.pop("question")
                    per_item[kind][rid][rung] = item
            del model
        results[rung] = {**rates, "mb": round(mb, 3), "seconds": seconds[rung]}
        print(f"[ladder] {rung}: KFR {rates['kfr']:.3f}  KRR {rates['krr']:.3f}  ({mb:.2f} MiB, "
              f"{seconds[rung]:.1f}s)", flush=True)

    reference = "torch-fp32" if "torch-fp32" in rungs else rungs[0]
    for rung, result in results.items():  # answers word for word the same as the reference rung's
        same = [by_rung[rung]["answer"] == by_rung[reference]["answer"]
                for kind in per_item for by_rung in per_item[kind].values()]
        result["same_answers"] = sum(same) / len(same) if same else 1.0
    kfr_drop = {r: results[reference]["kfr"] - v["kfr"] for r, v in results.items()}
    krr_drop = {r: results[reference]["krr"] - v["krr"] for r, v in results.items()}
    worst = max(rungs, key=lambda r: (kfr_drop[r] if kfr_drop[r] == kfr_drop[r] else float("-inf")))
    seconds["total"] = round(sum(seconds.values()), 3)
    aggregate = {"rungs": results, "reference": reference, "kfr_drop": kfr_drop, "krr_drop": krr_drop,
                 "worst": {"rung": worst, "kfr_drop": kfr_drop[worst]}, "int4_block_size": int4_block_size,
                 "n": {"forget": len(forget_eval), "retain": len(retain_eval)}, "seconds": seconds}
    return aggregate, per_item
