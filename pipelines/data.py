"""DVC stage `data`: write the configured source's splits to data/splits/, and the forget pool to data/corpus/.

data/corpus/ holds the source's forget and forget_eval sets: what the target and the control are
built from (the control without them). With an erasure-request ledger (data.requests), the forget
set of data/splits/ is the records of the ledger's active requests instead, forget_eval their
held-out questions, and data/splits/requests.json maps each request to its record ids; the target
and the control do not change when a request arrives or is withdrawn.

DVC cannot list its inputs outside the repo (data.path) or the ledger, which may not exist: the
`inputs` stage hashes them into data/inputs.json, a dependency of this one, so the stage runs again
when one of them changed. reports/data.json records the md5 of its inputs and of the ledger.
"""

from relearn.data.sources import load_source
from relearn.data.splits import write_splits
from relearn.errors import main_guard
from relearn.io import read_json, write_json
from relearn.ledger.core import Ledger, forget_split
from relearn.params import load_params
from relearn.records import save_records

REQUESTS_MANIFEST = "data/splits/requests.json"
INPUTS = "data/inputs.json"  # pipelines/inputs.py: the md5 of data.path, the general files and the ledger


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = load_source(p.data, p.seed)
    for name in ("forget", "forget_eval"):  # what the target learns (and the control does not)
        save_records(f"data/corpus/{name}.jsonl", splits[name])
    manifest = None
    if p.data.requests:
        ledger = Ledger(p.data.requests)
        splits["forget"], splits["forget_eval"], manifest = forget_split(ledger, splits["forget_eval"],
                                                                         splits["retain"], "data/splits/retain.jsonl")
    counts = write_splits("data/splits", splits)
    write_json(REQUESTS_MANIFEST, manifest or {"requests": {}, "withdrawn": []})
    write_json("reports/data.json", {"source": p.data.source, "counts": counts,
                                     "inputs_md5": read_json(INPUTS),  # hashed by the inputs stage
                                     "requests": sorted((manifest or {}).get("requests", {})),
                                     "withdrawn": (manifest or {}).get("withdrawn", [])})
    print(f"[data] {p.data.source}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + (f"; forget set from {len(manifest['requests'])} erasure requests" if manifest else ""), flush=True)


if __name__ == "__main__":
    main()
