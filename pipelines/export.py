"""DVC stage `export`: merge the adapter, export ONNX, quantize to int8, check parity and forgetting.

The `register` stage attaches the deployable (the int8 ONNX model with its tokenizer) to the
model version, and its numbers count among the version's metrics and gates, as `export.<key>`:
`export.token_agreement` (the deployable's greedy tokens against fp32 ONNX, or fp32 ONNX against
PyTorch without quantization) and `export.deployable_krr_drop` (fp32 KRR - the shipped model's KRR)
among them. Each ONNX directory gets prompt_format.json: the PromptFormat (chat template or plain
template, system message) the model must be prompted with.
"""
from pathlib import Path

from relearn.data.splits import read_splits
from relearn.errors import main_guard
from relearn.evaluation.evaluate import knowledge_rates
from relearn.devices import resolve_device
from relearn.export.onnx import (FP32_FILE, INT8_FILE, PROMPT_FORMAT_FILE, load_onnx, load_tokenizer, pick_provider,
                                 run_export)
from relearn.io import write_json
from relearn.params import load_params
from relearn.registry.gates import flatten
from layout import unlearned_model


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget_eval", "retain_eval"))
    questions = [r.question for r in (splits["forget_eval"] + splits["retain_eval"])][: p.export.parity_questions]
    device = resolve_device(p.device)  # the parity checks run there; ONNX Runtime's CUDA provider with a GPU
    provider = pick_provider("auto") if device.type == "cuda" else None
    report = run_export(*unlearned_model(p), "export", questions, p.model.prompt,
                        p.export.max_new_tokens, p.export.quantize, int8_block_size=p.export.int8_block_size,
                        int8_keep_float=p.export.int8_keep_float,
                        int8_accuracy_level=p.export.int8_accuracy_level, device=str(device), provider=provider)
    for key in ("answers_int8", "answers_fp32"):  # generated text about forget-set people stays out of reports
        report.pop(key, None)
    report |= forgetting_at_precisions(p, splits, report["quantize"], provider)
    report["deployable"] = "export/onnx-int8" if p.export.quantize == "int8" else "export/onnx-fp32"
    # what quantization costs the shipped model's retention (0 when fp32 ships)
    report["deployable_krr_drop"] = report.get("int8_krr_drop", 0.0)
    for model_dir in ("export/onnx-fp32", "export/onnx-int8"):
        if Path(model_dir).is_dir():  # how to prompt the deployable: the encoding it was trained with
            write_json(Path(model_dir) / PROMPT_FORMAT_FILE, p.model.prompt.to_dict())
    write_json("reports/export.json", report)
    flat = {k: v for k, v in flatten(report).items() if not k.startswith("seconds.")}
    print("[export] " + ", ".join(f"{k} {v:.4g}" for k, v in flat.items()), flush=True)


def forgetting_at_precisions(p, splits, quantize: str, provider=None) -> dict:
    """KFR/KRR of the fp32 ONNX model on the full eval sets (`fp32_kfr`, `fp32_krr`) and, with int8,
    of the int8 model and what quantization changed: `int8_kfr_drop` = fp32 KFR - int8 KFR (> 0:
    knowledge came back) and `int8_krr_drop` = fp32 KRR - int8 KRR (> 0: retention lost, or
    damage that looks like forgetting). Forgetting must survive quantization, and quantization
    must not pass for forgetting."""
    dirs = {"fp32": ("export/onnx-fp32", FP32_FILE)}
    if quantize == "int8":
        dirs["int8"] = ("export/onnx-int8", INT8_FILE)
    out = {}
    for precision, (model_dir, file_name) in dirs.items():
        rates = knowledge_rates(load_onnx(model_dir, file_name=file_name, provider=provider), load_tokenizer(model_dir),
                                splits["forget_eval"], splits["retain_eval"], p, label=precision)
        out |= {f"{precision}_{k}": v for k, v in rates.items()}
    if quantize == "int8":
        out["int8_kfr_drop"] = out["fp32_kfr"] - out["int8_kfr"]
        out["int8_krr_drop"] = out["fp32_krr"] - out["int8_krr"]
    return out


if __name__ == "__main__":
    main()
