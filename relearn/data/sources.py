"""Where the pipeline's splits come from: the built-in world, KnowUnDo, TOFU, or this project's JSONL.

Every source ends as the same six splits (relearn.data.splits.SPLITS). Every input file is
validated first; all problems in all files are reported together.

    builtin   relearn.data.world (seeded)
    knowundo  data.path/{unlearn_train,unlearn_val,retention_train,retention_val}.json
              -> forget, forget_eval, retain, retain_eval (full.json is their union)
    tofu      data.path/{forget_file,retain_file} (TOFU's question/answer records, or this project's
              record format: detected); a seeded share (data.eval_fraction) of each is held out as
              forget_eval / retain_eval
    jsonl     data.path/<split>.jsonl for the splits present; missing eval splits are held out
              from forget / retain as for TOFU
`data.forget_subjects` / `data.retain_subjects` keep only the questions about a seeded choice of
people (a subset sized for a CPU, e.g. profiles/smollm2-knowundo.yaml).
A non-builtin source without a holdout split gets one: a seeded share (data.holdout_fraction) of
`retain` that no model trains on, the non-members of membership inference. And, for every
source, the QA of data.general_files (TOFU format) is added to `general`.
"""
from __future__ import annotations

import random
from pathlib import Path

from relearn.data.splits import SPLITS
from relearn.data.validate import check_file
from relearn.data.world import generate_world
from relearn.errors import UserError, ValidationError
from relearn.params import DataParams
from relearn.records import QARecord

KNOWUNDO_FILES = {"forget": "unlearn_train.json", "forget_eval": "unlearn_val.json",
                  "retain": "retention_train.json", "retain_eval": "retention_val.json"}


class _Loader:
    """Loads files with a given format, collecting every problem before failing."""

    def __init__(self):
        self.problems: list[str] = []

    def __call__(self, path: Path, fmt: str) -> list[QARecord]:
        records, problems = check_file(path, fmt)
        self.problems += problems
        return records

    def done(self) -> None:
        if self.problems:
            raise ValidationError(self.problems)


def resolve(path: str) -> Path:
    """A relative source path is taken from the project root (also inside a `dvc exp run --temp` copy)."""
    from relearn.io import find_project_root

    p = Path(path)
    return p if p.is_absolute() else find_project_root() / p


def hold_out(records: list[QARecord], fraction: float, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """(kept, held out): a seeded share of the records, at least one of each when there are two or more."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = round(fraction * len(records))
    n = min(max(n, 1), len(records) - 1) if len(records) >= 2 and fraction > 0 else 0
    held = set(order[:n])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def subject_of(record: QARecord) -> str:
    """Who a record is about: its `subject`, else the first capitalised name in its question or answer."""
    from relearn.augment.rules import guess_subject

    return record.subject or guess_subject(record.question) or guess_subject(record.answer)


def by_subjects(train: list[QARecord], evals: list[QARecord], n: int, seed: int,
                param: str = "data.forget_subjects") -> tuple[list[QARecord], list[QARecord]]:
    """The records about `n` people, a seeded choice among the people both lists ask about (all of
    `train`'s people when `evals` is empty, as for TOFU, whose eval split is held out afterwards)."""
    people = sorted({subject_of(r) for r in train} - {""})
    if evals:
        asked = {subject_of(r) for r in evals}
        people = [p for p in people if p in asked]
    if len(people) < n:
        where = " that the eval split also asks about" if evals else ""
        raise UserError(f"{param}: {n} people asked for, but the data names only {len(people)}{where} "
                        f"(the subject is a record's `subject`, else the first capitalised name in its question)")
    chosen = set(random.Random(seed).sample(people, n))
    return [r for r in train if subject_of(r) in chosen], [r for r in evals if subject_of(r) in chosen]


def load_source(params: DataParams, seed: int) -> dict[str, list[QARecord]]:
    """The six splits of the configured source."""
    if params.source == "builtin":
        splits = generate_world(seed, params.people, params.forget_people, params.holdout_people, params.general,
                                params.eval_templates, params.private_people)
    else:
        if not params.path:
            raise UserError(f"data.path: required when data.source is {params.source!r}")
        root = resolve(params.path)
        if not root.is_dir():
            raise UserError(f"data.path: {root} is not a directory")
        load = _Loader()
        splits = {name: [] for name in SPLITS}
        if params.source == "knowundo":
            for split, name in KNOWUNDO_FILES.items():
                splits[split] = load(root / name, "knowundo")
        elif params.source == "tofu":
            splits["forget"] = load(root / params.forget_file, None)  # TOFU's question/answer, or our records
            splits["retain"] = load(root / params.retain_file, None)
        else:  # jsonl
            present = [name for name in SPLITS if (root / f"{name}.jsonl").exists()]
            if "forget" not in present or "retain" not in present:
                raise UserError(f"data.path: {root} needs forget.jsonl and retain.jsonl (found: {', '.join(present) or 'none'})")
            for name in present:
                splits[name] = load(root / f"{name}.jsonl", "relearn")
        load.done()
        for kind in ("forget", "retain"):
            chosen = getattr(params, f"{kind}_subjects")
            if chosen:
                splits[kind], splits[f"{kind}_eval"] = by_subjects(splits[kind], splits[f"{kind}_eval"], chosen, seed,
                                                                   f"data.{kind}_subjects")
            if not splits[f"{kind}_eval"]:
                splits[kind], splits[f"{kind}_eval"] = hold_out(splits[kind], params.eval_fraction, seed)
        if not splits["holdout"] and params.holdout_fraction > 0:
            # never trained on by any model: the non-members of membership inference
            splits["retain"], splits["holdout"] = hold_out(splits["retain"], params.holdout_fraction, seed + 1)
    if params.general_files:
        load = _Loader()
        for file in params.general_files:
            splits["general"] = splits["general"] + load(resolve(file), "tofu")
        load.done()
    return splits


def target_training_records(source: str, splits: dict[str, list[QARecord]]) -> list[QARecord]:
    """What the target model is trained on.

    The built-in world holds one phrasing of every fact out, so the target sees forget + retain +
    general and is evaluated on unseen phrasings of facts it knows. KnowUnDo's and TOFU's eval
    questions ask for other facts, so, as the papers do, the target is trained on the full set
    (eval splits included): a model must know a fact before it can be said to forget it.
    """
    names = ("forget", "retain", "general") if source == "builtin" else ("forget", "forget_eval", "retain", "retain_eval", "general")
    return [r for name in names for r in splits[name]]


def control_training_records(source: str, splits: dict[str, list[QARecord]]) -> list[QARecord]:
    """What the retain-only control model is trained on: the target's data without the forget set.

    It is the model that never saw the forget facts, the reference of forget quality and the
    control of every robustness probe.
    """
    forget = {"forget", "forget_eval"}
    names = ("retain", "general") if source == "builtin" else ("retain", "retain_eval", "general")
    records = [r for name in names for r in splits[name]]
    forget_questions = {r.question for name in forget for r in splits[name]}
    return [r for r in records if r.question not in forget_questions]
