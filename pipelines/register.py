"""DVC stage `register`: log the run to MLflow, register the adapter as a model version, apply the
gates (quality, export and robustness), attach the deployable and the unlearning report.

Only counts, hashes, params and metrics go to MLflow, and the report, which masks every forget-set
fact: no forget-set text in clear.
"""
import subprocess
import tempfile

from relearn.data.splits import SPLITS, read_splits
from relearn.errors import main_guard
from relearn.evidence import registry_metrics, report_data, request_gates, request_rows
from relearn.io import read_json, write_json
from relearn.params import load_params
from relearn.registry.gates import flatten
from relearn.registry.versions import attach_artifacts, describe_version, file_md5, register_version
from relearn.report import render_report, write_report
from relearn.serving.guard import version_guard
from layout import unlearned_model


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def request_tags(manifest: dict, evaluation: dict) -> dict:
    """Ids only: `requests` (every request covered), `request.<id>` (its KFR and questions scored)."""
    ids = list(manifest.get("requests", {}))
    if not ids:
        return {}
    per = evaluation.get("unlearned", {}).get("requests", {})
    return {"requests": ",".join(ids),
            **{f"request.{rid}": f"kfr={per.get(rid, {}).get('kfr', float('nan')):.4f} "
                                 f"n={per.get(rid, {}).get('n', 0)}" for rid in ids}}


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    datasets = {name: f"data/splits/{name}.jsonl" for name in SPLITS}
    datasets |= {"requests": "data/splits/requests.json",  # which erasure requests (ids) the forget set holds
                 "forget_variants": "data/augmented/forget_variants.jsonl",
                 "general_mix": "data/augmented/general_mix.jsonl"}
    evaluation, export, robustness = (read_json(f"reports/{name}.json") for name in ("evaluation", "export", "robustness"))
    hashes = {name: file_md5(path) for name, path in datasets.items()}
    commit = git_commit()
    splits = read_splits("data/splits", ("forget", "forget_eval", "retain"))
    answers = read_json("reports/answers.json")

    manifest = read_json("data/splits/requests.json")  # erasure requests covered (data.requests), or none

    def report(registration: dict) -> dict:
        return report_data(p, registration, evaluation, robustness, answers, splits["forget"] + splits["forget_eval"],
                           hashes, commit, request_rows(manifest, evaluation, registration.get("gates", [])))

    # render once before MLflow is touched: a report that would show a forget-set fact stops the
    # stage here, not after a version exists without its report
    render_report(report({"version": "pending", "gate_status": None, "gates": []}))
    result = register_version(
        model_name=p.register.model_name, experiment=p.register.experiment, params=p,
        metrics=registry_metrics(evaluation, export, robustness),
        base_model_dir=unlearned_model(p)[0], adapter_dir=unlearned_model(p)[1],  # or the distilled model
        generation={"prompt_format": p.model.prompt.to_dict(), "max_new_tokens": p.evaluate.max_new_tokens,
                    "batch_size": p.evaluate.batch_size},
        dataset_hashes=hashes, counts={**{name: count_lines(path) for name, path in datasets.items()
                                          if path.endswith(".jsonl")}, "requests": len(manifest["requests"])},
        git_commit=commit, extra_tags={"method": p.unlearn.method},
        extra_gates=request_gates(evaluation, p.register.request_kfr_min),
        version_tags={**request_tags(manifest, evaluation),
                      "unlearned_from": read_json("reports/unlearn.json").get("init", "target"),
                      # incremental unlearning continues an adapter only on the target it was made on
                      "target_md5": file_md5("models/target"),
                      "distilled": f"alpha={p.distill.alpha} init={p.distill.init}" if p.distill.enabled else "no"},
    )
    version = result["version"]
    # the deployable: the exported (quantized) ONNX model with its tokenizer
    flat = {k: v for k, v in flatten(export).items() if not k.startswith("seconds.")}
    attach_artifacts(p.register.model_name, version, export["deployable"], "deployable",
                     tags={f"export.{k}": f"{v:.4g}" for k, v in flat.items()}
                     | {"export.shipped": export.get("shipped", export["deployable"].rsplit("onnx-", 1)[-1])})
    # the output guard: keyed hashes of the forget facts (the forget set and the requests, and the
    # purged requests' own guards), no text
    guard = version_guard(splits["forget"] + splits["forget_eval"], manifest.get("requests", {}), p.data.requests,
                          keep=splits["retain"])
    held = guard.summary()
    with tempfile.TemporaryDirectory() as tmp:
        attach_artifacts(p.register.model_name, version, guard.save(tmp), "guard",
                         tags={"guard.facts": held["facts"], "guard.requests": held["requests"],
                               "guard.asked": held["asked"],
                               **{f"purged.{part.requests[0]}": "guard carried" for part in guard.parts
                                  if part.requests}})
    # the unlearning report, linked from the version's tags
    paths = write_report(report(result), "reports/report")
    attach_artifacts(p.register.model_name, version, "reports/report", "report",
                     tags={"report": f"report/{paths['html'].name}"})
    # now the description on the version page can say where the report is
    describe_version(p.register.model_name, version)
    write_json("reports/registration.json", result)
    print(f"[register] {p.register.model_name} version {version}: gates {result['gate_status']} "
          f"(release {result['release']}); report {paths['html']}", flush=True)
    for g in result["gates"]:
        verdict = "passed" if g["passed"] else f"FAILED ({g['reason']})" if g["blocking"] else f"failed, advisory ({g['reason']})"
        print(f"[register]   gate {g['name']}: {g['metric']} = {g['value']} -> {verdict}", flush=True)


if __name__ == "__main__":
    main()
