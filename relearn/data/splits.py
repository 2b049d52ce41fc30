"""The named data splits the pipeline passes between stages, one JSONL file each."""
from __future__ import annotations

from pathlib import Path

from relearn.records import QARecord, save_records

SPLITS = ("forget", "retain", "forget_eval", "retain_eval", "holdout", "general")


def write_splits(directory: str | Path, splits: dict[str, list[QARecord]]) -> dict[str, int]:
    directory = Path(directory)
    return {name: save_records(directory / f"{name}.jsonl", splits[name]) for name in SPLITS}


def read_splits(directory: str | Path, names=SPLITS) -> dict[str, list[QARecord]]:
    """Load and validate each split; every problem in every file is reported at once."""
    from relearn.data.validate import check_file
    from relearn.errors import ValidationError

    out, problems = {}, []
    for name in names:
        path = Path(directory) / f"{name}.jsonl"
        if path.is_file() and path.stat().st_size == 0:  # a split a source does not have (e.g. KnowUnDo's holdout)
            out[name] = []
            continue
        records, file_problems = check_file(path, "relearn")
        out[name] = records
        problems += file_problems
    if problems:
        raise ValidationError(problems)
    return out
