"""DVC stage `inputs`: the md5 of what the data stage reads from outside DVC's view, in data/inputs.json.

The data stage reads `data.path` (often outside the repository), `data.general_files` and the erasure-request
ledger (`data.requests`), none of which DVC can list as dependencies: their paths are params, and the ledger
may not exist yet. This stage always runs (always_changed in dvc.yaml) and only hashes them, without importing
the library's heavy parts, so a `dvc repro` with nothing to do stays quick; the data stage depends on
data/inputs.json and runs again only when one of them changed. A path that does not exist is recorded as
missing: the data stage then says what is wrong with it. A ledger in a database (data.requests: a URL) is
recorded as the digest of its events (relearn.ledger.database), under its URL without a password.
"""
import json
from pathlib import Path

import yaml

from relearn.errors import main_guard
from relearn.io import file_md5, write_text
from relearn.ledger.core import Ledger, is_database_url

OUT = Path("data/inputs.json")


def fingerprint(params: dict) -> dict:
    data = (params or {}).get("data") or {}
    paths = []
    if data.get("path") and data.get("source", "builtin") != "builtin":
        paths.append(data["path"])
    paths += list(data.get("general_files") or [])
    out = {}
    requests = data.get("requests")
    if requests and is_database_url(requests):
        ledger = Ledger(requests)
        out[ledger.location] = ledger.fingerprint()
    elif requests:
        paths.append(requests)
    return {**out, **{str(p): (file_md5(p) if Path(p).exists() else "missing") for p in paths}}


@main_guard
def main() -> None:
    text = json.dumps(fingerprint(yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))), indent=2,
                      sort_keys=True) + "\n"
    if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
        write_text(OUT, text)


if __name__ == "__main__":
    main()
