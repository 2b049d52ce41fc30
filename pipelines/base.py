"""DVC stage `base`: make models/base from params.yaml `model.base`, converted once and cached.

model.base may be a .gguf file, a Hugging Face model directory (relative paths are relative to the
project root, where DVC runs the stage) or a hub id; null leaves only a SCRATCH note in models/base and the target
stage builds the small from-scratch model. The conversion is cached in .cache/base by the source's
sha256, so a repeated run only links the cached files into place.
"""
from relearn.modeling.base_model import prepare_base
from relearn.errors import main_guard
from relearn.io import write_json
from relearn.params import load_params


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    report = prepare_base(p.model.base, "models/base")
    write_json("reports/base.json", report)
    if report["kind"] == "scratch":
        print("[base] model.base is null: the target stage builds a model from scratch", flush=True)
    else:
        print(f"[base] {report['source']} ({report['kind']}): {report['parameters']:,} parameters, {report['dtype']}, "
              f"{'cached' if report['cached'] else 'converted'} in {report['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
