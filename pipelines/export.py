"""DVC stage `export`: merge the adapter, export ONNX, quantize to int8, check parity and forgetting.

The `register` stage attaches the deployable (the int8 ONNX model with its tokenizer) to the
model version, and its numbers count among the version's metrics and gates.
"""
from relearn.data.splits import read_splits
from relearn.errors import main_guard
from relearn.evaluation.evaluate import knowledge_rates
from relearn.export.onnx import INT8_FILE, load_onnx, load_tokenizer, run_export
from relearn.io import write_json
from relearn.params import load_params
from relearn.registry.gates import flatten


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget_eval", "retain_eval"))
    questions = [r.question for r in (splits["forget_eval"] + splits["retain_eval"])][: p.export.parity_questions]
    report = run_export("models/target", "models/adapter", "export", questions, p.model.prompt,
                        p.export.max_new_tokens, p.export.quantize)
    for key in ("answers_int8", "answers_fp32"):  # generated text about forget-set people stays out of reports
        report.pop(key, None)
    deployable = "export/onnx-fp32"
    if p.export.quantize == "int8":
        # forgetting must survive quantization: KFR/KRR of the int8 model on the full eval sets
        deployable = "export/onnx-int8"
        rates = knowledge_rates(load_onnx(deployable, file_name=INT8_FILE), load_tokenizer(deployable),
                                splits["forget_eval"], splits["retain_eval"], p, label="int8")
        report |= {f"int8_{k}": v for k, v in rates.items()}
    report["deployable"] = deployable
    write_json("reports/export.json", report)
    flat = {k: v for k, v in flatten(report).items() if not k.startswith("seconds.")}
    print("[export] " + ", ".join(f"{k} {v:.4g}" for k, v in flat.items()), flush=True)


if __name__ == "__main__":
    main()
