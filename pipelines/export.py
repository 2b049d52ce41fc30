"""DVC stage `export`: merge the adapter, export ONNX, quantize, check parity and forgetting, pick the deployable.

With export.quantize: auto every precision of export.candidates is built beside fp32 ONNX, timed per
token, and scored (token agreement with fp32, KFR, KRR); the fastest that passes the deployable gates
ships (relearn.export.onnx.choose_deployable), fp32 ONNX when none does. The `register` stage
attaches the deployable (the shipped ONNX model with its tokenizer) to the model version, and its
numbers count among the version's metrics and gates, as `export.<key>`:
`export.token_agreement` (the deployable's greedy tokens against fp32 ONNX, or fp32 ONNX against
PyTorch without quantization) and `export.deployable_krr_drop` (fp32 KRR - the shipped model's KRR)
among them. Each ONNX directory gets prompt_format.json: the PromptFormat (chat template or plain
template, system message) the model must be prompted with.
"""
from pathlib import Path

from relearn.data.splits import read_splits
from relearn.errors import main_guard
from relearn.evaluation.evaluate import knowledge_rates
from relearn.training.devices import resolve_device
from relearn.export.onnx import PROMPT_FORMAT_FILE, choose_deployable, load_onnx, load_tokenizer, pick_provider, run_export
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
    x = p.export
    report = run_export(*unlearned_model(p), "export", questions, p.model.prompt, x.max_new_tokens, x.quantize,
                        int8_block_size=x.int8_block_size, int8_keep_float=x.int8_keep_float,
                        int8_accuracy_level=x.int8_accuracy_level, candidates=x.candidates,
                        int4_block_size=x.int4_block_size,
                        latency_questions=x.latency_questions if x.quantize == "auto" else 0,
                        device=str(device), provider=provider)
    for key in ("answers_int8", "answers_fp32"):  # generated text about forget-set people stays out of reports
        report.pop(key, None)
    candidates = report["candidates"]
    for name, c in candidates.items():  # forgetting must survive quantization, and quantization must not pass for it
        c |= knowledge_rates(load_onnx(c["dir"], file_name=c["file"], provider=provider), load_tokenizer(c["dir"]),
                             splits["forget_eval"], splits["retain_eval"], p, label=name)
    report |= {"fp32_kfr": candidates["fp32"]["kfr"], "fp32_krr": candidates["fp32"]["krr"]}
    if "int8" in candidates:  # the keys every version so far has carried
        report |= {"int8_kfr": candidates["int8"]["kfr"], "int8_krr": candidates["int8"]["krr"],
                   "int8_kfr_drop": candidates["fp32"]["kfr"] - candidates["int8"]["kfr"],
                   "int8_krr_drop": candidates["fp32"]["krr"] - candidates["int8"]["krr"]}
    gates = p.gates()
    agreement, krr_drop = gates.get("deployable_agreement"), gates.get("deployable_krr")
    if x.quantize == "auto":  # the fastest that passes the deployable gates (a gate not set passes all)
        shipped = choose_deployable(candidates, agreement.min if agreement and agreement.min is not None else 0.0,
                                    krr_drop.max if krr_drop and krr_drop.max is not None else 1.0)
    else:
        shipped = "fp32" if x.quantize == "none" else x.quantize
    report["shipped"] = shipped
    report["deployable"] = f"export/onnx-{shipped}"
    report["token_agreement"] = candidates[shipped]["token_agreement"]
    # what quantization costs the shipped model's retention (0 when fp32 ships)
    report["deployable_krr_drop"] = candidates["fp32"]["krr"] - candidates[shipped]["krr"]
    for c in candidates.values():  # how to prompt each deployable: the encoding it was trained with
        write_json(Path(c["dir"]) / PROMPT_FORMAT_FILE, p.model.prompt.to_dict())
    write_json("reports/export.json", report)
    flat = {k: v for k, v in flatten(report).items() if not k.startswith("seconds.")}
    print(f"[export] shipping {report['deployable']}: " + "; ".join(_describe(n, c) for n, c in candidates.items()),
          flush=True)
    print("[export] " + ", ".join(f"{k} {v:.4g}" for k, v in flat.items()), flush=True)


def _describe(name: str, c: dict) -> str:
    speed = "" if c.get("ms_per_token") is None else f", {c['ms_per_token']:.1f} ms/token"
    verdict = "" if c.get("passes", True) else ", fails the deployable gates"
    return f"{name} {c['mb']:.1f} MiB{speed}, tokens {c['token_agreement']:.3f}, KFR {c['kfr']:.3f}, KRR {c['krr']:.3f}{verdict}"


if __name__ == "__main__":
    main()
