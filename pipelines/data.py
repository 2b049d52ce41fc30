"""DVC stage `data`: write the configured source's splits to data/splits/.

For a source outside the repo (data.path), DVC does not see the input files change: after editing
them, run `dvc repro -f data`. reports/data.json records their md5s.
"""
from pathlib import Path

from relearn.data.sources import load_source
from relearn.data.splits import write_splits
from relearn.errors import main_guard
from relearn.io import write_json
from relearn.params import load_params
from relearn.registry.versions import file_md5


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    counts = write_splits("data/splits", load_source(p.data, p.seed))
    inputs = [Path(p.data.path)] if p.data.path and p.data.source != "builtin" else []
    inputs += [Path(f) for f in p.data.general_files]
    write_json("reports/data.json", {"source": p.data.source, "counts": counts,
                                     "inputs_md5": {str(f): file_md5(f) for f in inputs}})
    print(f"[data] {p.data.source}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)


if __name__ == "__main__":
    main()
