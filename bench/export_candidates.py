"""Which deployable to ship: each ONNX candidate of a project's exported model, measured as the export
stage's gates read it, against torch fp32.

    python bench/export_candidates.py [--project DIR] [--candidates fp32 int8 ...] [--latency-questions 8]
                                      [--threads N] [--json FILE]

DIR is a project that has run `dvc repro` up to the export stage (this one by default, or a
`bench/compare_methods.py --keep` copy): export/onnx-fp32 and export/merged are read, each candidate is
quantized from export/onnx-fp32 into a temporary directory with the export stage's own functions. For each:

    size        MiB on disk (external data included)
    ms/token    greedy decoding, one request at a time (batch 1, as a lone client of `relearn serve` sees it),
                the mean over --latency-questions questions after one warm-up, export.max_new_tokens each
    agreement   greedy tokens against fp32 ONNX on the export stage's parity questions (export.parity_questions)
    KFR, KRR    on the full forget-eval and retain-eval sets (relearn.evaluation.evaluate.knowledge_rates),
                with the Wilson 95% interval and n

and whether it passes the params' deployable gates (`export.token_agreement` and `export.deployable_krr_drop`,
read as they are read at registration, plus no KFR lost to quantization). The last line names the candidate
the export stage's rule picks (relearn.export.onnx.choose_deployable: the fastest that passes, near ties to the
smallest); the stage itself builds only export.candidates (int8 at export.int8_accuracy_level, int4).

Candidates (`relearn.export.onnx`): fp32; int8 (weight-only MatMulNBits, the output head kept fp32: what the
export stage ships today); int8-acc4 (the same with accuracy_level 4: int8 activations in the kernel);
int8-head (the head quantized too); int4 and int4-acc4 (4-bit weights, as the robustness ladder's rung);
fp16 (half-precision weights and compute, the GPU candidate: timed here on the CPU provider, where ONNX
Runtime computes it through casts). The embedding stays fp32 in all but fp16.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CANDIDATES = {
    "fp32": None,
    "int8": {"bits": 8, "accuracy_level": None, "keep_float": ("lm_head",)},
    "int8-acc4": {"bits": 8, "accuracy_level": 4, "keep_float": ("lm_head",)},
    "int8-head": {"bits": 8, "accuracy_level": None, "keep_float": ()},
    "int4": {"bits": 4, "accuracy_level": None},
    "int4-acc4": {"bits": 4, "accuracy_level": 4},
    "fp16": {"bits": 16},
}


def build(name: str, fp32_dir: Path, work: Path, block_size: int) -> tuple[Path, str]:
    """(model directory, onnx file name) of candidate `name`."""
    from relearn.export.onnx import FP16_FILE, FP32_FILE, INT4_FILE, INT8_FILE, convert_fp16, quantize_int4, quantize_int8

    spec = CANDIDATES[name]
    if spec is None:
        return fp32_dir, FP32_FILE
    out = work / name
    if spec["bits"] == 16:
        convert_fp16(fp32_dir, out)
        return out, FP16_FILE
    if spec["bits"] == 8:
        quantize_int8(fp32_dir, out, block_size=block_size, keep_float=spec["keep_float"],
                      accuracy_level=spec["accuracy_level"])
        return out, INT8_FILE
    quantize_int4(fp32_dir, out, block_size=block_size, accuracy_level=spec["accuracy_level"])
    return out, INT4_FILE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=str(ROOT))
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--latency-questions", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: theirs)")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    args.candidates = ["fp32"] + [c for c in args.candidates if c != "fp32"]  # the reference, measured first
    project = Path(args.project).resolve()
    os.chdir(project)
    sys.path.insert(0, str(project / "pipelines"))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    from relearn.data.splits import read_splits
    from relearn.evaluation.evaluate import knowledge_rates
    from relearn.evaluation.uncertainty import wilson
    from relearn.export.onnx import choose_deployable, load_onnx, load_tokenizer, ms_per_token, onnx_size_bytes, token_parity
    from relearn.modeling.generation import generate_token_ids
    from relearn.modeling.model import load_pretrained
    from relearn.params import load_params

    if args.threads:
        torch.set_num_threads(args.threads)
    p = load_params("params.yaml")
    fp32_dir, merged = Path("export/onnx-fp32"), Path("export/merged")
    if not fp32_dir.is_dir() or not merged.is_dir():
        raise SystemExit(f"{project}: no export/onnx-fp32 or export/merged: run `dvc repro export` first")
    splits = read_splits("data/splits", ("forget_eval", "retain_eval"))
    questions = [r.question for r in splits["forget_eval"] + splits["retain_eval"]]
    parity_q = questions[:p.export.parity_questions]
    latency_q = splits["retain_eval"][:args.latency_questions]  # retain questions: answers run their full length
    latency_q = [r.question for r in latency_q]
    template, new = p.model.prompt, p.export.max_new_tokens
    gates = p.gates()
    agree_min = gates["deployable_agreement"].min if "deployable_agreement" in gates else 0.8
    krr_max = gates["deployable_krr"].max if "deployable_krr" in gates else 0.03

    model, tokenizer = load_pretrained(merged)
    rows = {"torch-fp32": {"size_mib": None, "ms_per_token": ms_per_token(model, tokenizer, latency_q, template, new)}}
    del model
    print(f"[candidates] torch-fp32: {rows['torch-fp32']['ms_per_token']:.1f} ms/token", flush=True)
    reference = None
    with tempfile.TemporaryDirectory(prefix="relearn-candidates-") as work:
        for name in args.candidates:
            start = time.perf_counter()
            model_dir, file_name = build(name, fp32_dir, Path(work), p.export.int8_block_size)
            model, tok = load_onnx(model_dir, file_name=file_name), load_tokenizer(model_dir)
            ids = generate_token_ids(model, tok, parity_q, template, new, 32)
            reference = reference if reference is not None else (ids if name == "fp32" else None)
            rates = knowledge_rates(model, tok, splits["forget_eval"], splits["retain_eval"], p, label=name)
            row = {"size_mib": onnx_size_bytes(model_dir / file_name) / 2**20,
                   "ms_per_token": ms_per_token(model, tok, latency_q, template, new),
                   "agreement": token_parity(ids, reference)["token_agreement"] if reference is not None else None,
                   "kfr": wilson(round(rates["kfr"] * len(splits["forget_eval"])), len(splits["forget_eval"])),
                   "krr": wilson(round(rates["krr"] * len(splits["retain_eval"])), len(splits["retain_eval"])),
                   "seconds": round(time.perf_counter() - start, 1)}
            rows[name] = row
            del model
            print(f"[candidates] {name}: {row['size_mib']:.1f} MiB, {row['ms_per_token']:.1f} ms/token, agreement "
                  f"{row['agreement']}, KFR {row['kfr']['value']:.3f}, KRR {row['krr']['value']:.3f} ({row['seconds']} s)",
                  flush=True)
    # the export stage's rule (relearn.export.onnx.choose_deployable), on these candidates
    measured = {n: {"mb": r["size_mib"], "ms_per_token": r["ms_per_token"], "token_agreement": r["agreement"],
                    "kfr": r["kfr"]["value"], "krr": r["krr"]["value"]} for n, r in rows.items() if n != "torch-fp32"}
    best = choose_deployable(measured, agree_min, krr_max)
    for name, m in measured.items():
        rows[name]["passes"] = m["passes"]
    def cell(r):
        return f"{r['value']:.3f} [{r['low']:.2f}, {r['high']:.2f}]"

    torch_ms = rows["torch-fp32"]["ms_per_token"]
    print(f"\n{project}: gates token agreement >= {agree_min}, KRR drop <= {krr_max}, no KFR lost; "
          f"latency on {len(latency_q)} questions, batch 1, {new} new tokens; {torch.get_num_threads()} torch threads")
    print("| deployable | size MiB | ms/token | vs torch fp32 | agreement | KFR | KRR | passes |\n|---|---|---|---|---|---|---|---|")
    print(f"| torch-fp32 | - | {torch_ms:.1f} | 1.00x | - | - | - | - |")
    for name, row in rows.items():
        if name == "torch-fp32":
            continue
        agreement = "-" if row["agreement"] is None else f"{row['agreement']:.3f}"
        print(f"| {name} | {row['size_mib']:.1f} | {row['ms_per_token']:.1f} | {row['ms_per_token'] / torch_ms:.2f}x | "
              f"{agreement} | {cell(row['kfr'])} | {cell(row['krr'])} | {'yes' if row.get('passes') else 'no'} |")
    print(f"the export stage's rule ships: {best}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"rows": rows, "best": best, "gates": {"agreement_min": agree_min,
                                                    "krr_drop_max": krr_max}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
