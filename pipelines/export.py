"""DVC stage `export`: merge the adapter, export ONNX, quantize to int8, check parity and forgetting.

The deployable (the int8 ONNX model with its tokenizer) is attached to the registered version.
"""
from relearn.data.splits import read_splits
from relearn.errors import main_guard
from relearn.evaluation.scoring import knowledge_scores
from relearn.export.onnx import load_onnx, run_export
from relearn.generation import generate_answers
from relearn.io import read_json, write_json
from relearn.params import load_params
from relearn.registry.versions import attach_export


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget_eval", "retain_eval"))
    questions = [r.question for r in (splits["forget_eval"] + splits["retain_eval"])][: p.export.parity_questions]
    report = run_export("models/target", "models/adapter", "export", questions, p.model.prompt_template,
                        p.export.max_new_tokens, p.export.quantize)
    for key in ("answers_int8", "answers_fp32"):  # generated text about forget-set people stays out of reports
        report.pop(key, None)
    if p.export.quantize == "int8":
        # forgetting must survive quantization: KFR/KRR of the int8 model on the full eval sets
        model = load_onnx("export/onnx-int8", file_name="model_quantized.onnx")
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained("export/onnx-int8")
        for kind, split in (("forget", "forget_eval"), ("retain", "retain_eval")):
            records = splits[split]
            answers = generate_answers(model, tokenizer, [r.question for r in records], p.model.prompt_template,
                                       p.evaluate.max_new_tokens, p.evaluate.batch_size, desc=f"int8 {split}")
            rate = "kfr" if kind == "forget" else "krr"
            report[f"int8_{rate}"] = knowledge_scores(answers, records, kind)[rate]
    write_json("reports/export.json", report)
    registration = read_json("reports/registration.json")
    flat = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name in ("parity_fp32_vs_torch", "parity_int8_vs_fp32"):
        for k, v in report.get(name, {}).items():
            if isinstance(v, (int, float)):
                flat[f"{name}.{k}"] = float(v)
    attach_export(p.register.model_name, registration["version"],
                  "export/onnx-int8" if p.export.quantize == "int8" else "export/onnx-fp32",
                  {f"export.{k}": v for k, v in flat.items()},
                  {f"export.{k}": f"{v:.4g}" for k, v in flat.items()})
    print("[export] " + ", ".join(f"{k} {v:.4g}" for k, v in flat.items()), flush=True)


if __name__ == "__main__":
    main()
