"""DVC stage `register`: log the run to MLflow, register the adapter as a model version, apply gates.

Only counts, hashes, params and metrics go to MLflow: no forget-set text.
"""
import subprocess

from relearn.data.splits import SPLITS
from relearn.errors import main_guard
from relearn.io import read_json, write_json
from relearn.params import load_params
from relearn.registry.versions import file_md5, register_version


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    datasets = {name: f"data/splits/{name}.jsonl" for name in SPLITS}
    datasets |= {"forget_variants": "data/augmented/forget_variants.jsonl",
                 "general_mix": "data/augmented/general_mix.jsonl"}
    result = register_version(
        model_name=p.register.model_name, experiment=p.register.experiment, params=p,
        metrics=read_json("reports/evaluation.json"), base_model_dir="models/target", adapter_dir="models/adapter",
        generation={"prompt_template": p.model.prompt_template, "max_new_tokens": p.evaluate.max_new_tokens,
                    "batch_size": p.evaluate.batch_size},
        dataset_hashes={name: file_md5(path) for name, path in datasets.items()},
        counts={name: count_lines(path) for name, path in datasets.items()},
        git_commit=git_commit(),
        extra_tags={"method": p.unlearn.method},
    )
    write_json("reports/registration.json", result)
    print(f"[register] {p.register.model_name} version {result['version']}: gates {result['gate_status']}", flush=True)
    for g in result["gates"]:
        print(f"[register]   gate {g['name']}: {g['metric']} = {g['value']} -> {'passed' if g['passed'] else 'FAILED'}", flush=True)


if __name__ == "__main__":
    main()
