"""The erasure-request ledger: which requests exist, their records, and which are withdrawn.

A ledger is a directory (params: data.requests; `requests/` in this project, git-ignored and
versioned with `dvc add requests`, because it holds personal data):

    requests/ledger.jsonl        one event per line, never rewritten in place:
        {"event": "add", "id": "R-2026-0042", "kind": "privacy", "subject": "...", "file": "R-2026-0042.jsonl",
         "records": 7, "sha256": "...", "at": "2026-11-30T10:00:00+00:00"}
        {"event": "withdraw", "id": "R-2026-0042", "reason": "...", "at": "..."}
        {"event": "purge", "id": "R-2026-0042", "version": "7", "kfr": 1.0, "at": "..."}
    requests/records/R-2026-0042.jsonl   the request's records, in this project's record format
    requests/purged/R-2026-0042/         after a purge: the output guard of its facts (keyed hashes
                                         and their key, relearn.serving.guard), never text

A request is active from its `add` until its `withdraw`; the forget set is the records of the
active requests (`forget_split`). Withdrawn requests keep their history.

Storage limitation: `purge` deletes a request's records once they are no longer needed (it is
honoured in production, or withdrawn), keeping what proves it: the id, kind, dates, record count
and sha256 in the ledger, the version that honoured it and its KFR, and the guard's keyed hashes of
its facts under `purged/`. Later versions keep covering a purged request without its records:
incremental unlearning (unlearn.init: production) continues the adapter that forgot it, and every
version's output guard carries the purged requests' hashes (`purged_guards`). A version trained
afresh from the target could not forget it again, so the unlearn stage refuses one. Every write goes to a
temporary file renamed into place, under a lock file, so an interrupted or concurrent command
leaves the ledger whole.

A team keeps the ledger in a shared database instead (data.requests: a `postgresql://...` or
`sqlite:///...` URL; relearn.ledger.database): the same events, records and purged guards, in tables, with one
database transaction per command instead of the lock file, so two people filing at once can neither
lose nor duplicate a request.
"""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from relearn.errors import UserError, ValidationError
from relearn.records import QARecord

LEDGER_FILE = "ledger.jsonl"
RECORDS_DIR = "records"
PURGED_DIR = "purged"
EVENTS = ("add", "withdraw", "purge")
KINDS = ("privacy", "copyright", "licence", "other")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RECEIVED, IN_VERSION, IN_PRODUCTION, WITHDRAWN, PURGED = ("received", "in a version", "in production", "withdrawn",
                                                        "purged")


@dataclass
class Request:
    id: str
    kind: str
    subject: str
    file: str
    records: int
    sha256: str
    received: str
    withdrawn: Optional[str] = None
    withdraw_reason: str = ""
    purged: Optional[str] = None          # when its records were deleted
    purged_version: Optional[str] = None  # the production version that honoured it then (None: withdrawn)
    purged_kfr: Optional[float] = None

    @property
    def active(self) -> bool:
        return self.withdrawn is None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_events(rows) -> list[dict]:
    """Ledger events from (where, JSON text) rows, each with its `_where`; every bad row is a problem
    of one ValidationError (a directory's lines and a database's rows alike)."""
    events, problems = [], []
    for where, text in rows:
        try:
            event = json.loads(text)
        except ValueError as e:
            problems.append(f"{where}: not valid JSON ({e.msg})")
            continue
        if not isinstance(event, dict) or event.get("event") not in EVENTS or "id" not in event:
            problems.append(f"{where}: event: expected an object with event add|withdraw|purge and an id")
            continue
        events.append({**event, "_where": where})
    if problems:
        raise ValidationError(problems)
    return events


def is_database_url(location) -> bool:
    """Whether data.requests names a database (postgresql://..., sqlite:///...) rather than a directory."""
    return isinstance(location, str) and re.match(r"^(postgres|postgresql|sqlite)(\+\w+)?://", location) is not None


class FileStore:
    """The ledger as files in a directory (the module docstring): the embedded default."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.path = self.dir / LEDGER_FILE
        self.location = str(self.dir)

    def where(self, name: str) -> str:
        return str(self.dir / name)

    def events(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return parse_events((f"{self.path}:{n}", line) for n, line in enumerate(lines, 1) if line.strip())

    @contextmanager
    def transaction(self):
        """One writer at a time (two `request add` at once must not lose an event)."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, event: dict) -> None:
        from relearn.io import write_text

        old = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        write_text(self.path, old + json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n")

    def write_records(self, name: str, data: bytes) -> None:
        from relearn.io import atomic_path

        with atomic_path(self.dir / name) as tmp:
            tmp.write_bytes(data)

    def read_records(self, name: str) -> Optional[bytes]:
        path = self.dir / name
        return path.read_bytes() if path.is_file() else None

    def delete_records(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    def save_guard(self, request_id: str, guard) -> str:
        from relearn.io import atomic_dir

        with atomic_dir(self.dir / PURGED_DIR / request_id) as out:
            guard.save(out)
        return str(self.dir / PURGED_DIR / request_id)

    def load_guard(self, request_id: str):
        from relearn.serving.guard import Guard

        d = self.dir / PURGED_DIR / request_id
        return Guard.load(d) if d.is_dir() else None

    def fingerprint(self) -> str:
        from relearn.io import file_md5

        return file_md5(self.dir) if self.dir.exists() else "missing"


class Ledger:
    """The requests of one ledger: a directory (FileStore) or a database URL (relearn.ledger.database.SqlStore)."""

    def __init__(self, location: str | Path):
        if is_database_url(location):
            from relearn.ledger.database import SqlStore

            self.store = SqlStore(str(location))
        else:
            self.store = FileStore(location)
        # a directory ledger's paths (None for a database)
        self.dir: Optional[Path] = getattr(self.store, "dir", None)
        self.path: Optional[Path] = getattr(self.store, "path", None)
        self.location: str = self.store.location  # for messages: a database URL without its password

    def where(self, name: str) -> str:
        """Where a request's records (or purged guard) are, for messages."""
        return self.store.where(name)

    # ------------------------------------------------------------------------ reading
    def events(self) -> list[dict]:
        return self.store.events()

    def fingerprint(self) -> str:
        """Changes whenever the ledger does (the inputs stage: the data stage reruns on a change)."""
        return self.store.fingerprint()

    def requests(self) -> dict[str, Request]:
        """Every request ever added, in the order received, with its withdrawal if any."""
        out: dict[str, Request] = {}
        for e in self.events():
            where = e["_where"]
            if e["event"] == "add":
                try:
                    out[e["id"]] = Request(id=e["id"], kind=e["kind"], subject=e.get("subject", ""), file=e["file"],
                                           records=int(e["records"]), sha256=e["sha256"], received=e["at"])
                except (KeyError, TypeError, ValueError) as err:
                    raise UserError(f"{where}: add event lacks or mistypes a field ({err})") from None
            elif e["id"] not in out:
                raise UserError(f"{where}: {e['event']}s {e['id']!r}, which was never added")
            elif e["event"] == "withdraw":
                out[e["id"]].withdrawn = e.get("at", "")
                out[e["id"]].withdraw_reason = e.get("reason", "")
            else:
                r = out[e["id"]]
                r.purged, r.purged_version, r.purged_kfr = e.get("at", ""), e.get("version"), e.get("kfr")
        return out

    def get(self, request_id: str) -> Request:
        found = self.requests()
        if request_id not in found:
            known = ", ".join(found) or "none"
            raise UserError(f"no request {request_id!r} in {self.location} (requests: {known})")
        return found[request_id]

    def active(self) -> list[Request]:
        return [r for r in self.requests().values() if r.active]

    def records(self, request: Request) -> list[QARecord]:
        """The request's records, checked against the hash recorded when it was added."""
        if request.purged:
            raise UserError(f"request {request.id} was purged on {request.purged[:10]}: its records are deleted")
        where = self.where(request.file)
        data = self.store.read_records(request.file)
        if data is None:
            raise UserError(f"{where}: the records of request {request.id} are missing")
        if hashlib.sha256(data).hexdigest() != request.sha256:
            raise UserError(f"{where}: changed since request {request.id} was added (sha256 differs); "
                            "withdraw it and add the new file under a new id")
        if self.dir is not None:
            from relearn.data.validate import load_validated

            return load_validated(self.dir / request.file, "relearn")
        # a database's records were validated when added, and the hash says they are those bytes
        return [QARecord.from_dict(json.loads(line)) for line in data.decode("utf-8").splitlines() if line.strip()]

    # ------------------------------------------------------------------------ writing
    def add(self, request_id: str, kind: str, subject: str, file: str | Path,
            retain: Optional[tuple[list[QARecord], str]] = None) -> Request:
        """File `file`'s records under `request_id`. Refuses a bad id or kind, invalid records, ids
        already used by an active request, and questions that are also in `retain` (records, path)."""
        if not ID_RE.match(request_id or ""):
            raise UserError(f"--id {request_id!r}: letters, digits, '.', '_' and '-' only (at most 64), "
                            "e.g. R-2026-0042")
        if kind not in KINDS:
            raise UserError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
        if not subject.strip():
            raise UserError("--subject is empty: say who or what the request is about")
        with self.store.transaction():
            return self._add(request_id, kind, subject, file, retain)

    def _add(self, request_id: str, kind: str, subject: str, file: str | Path,
             retain: Optional[tuple[list[QARecord], str]]) -> Request:
        from relearn.data.validate import check_file, check_overlap

        existing = self.requests()
        same = [r for r in existing if r.lower() == request_id.lower()]  # one file per id, on any file system
        if same:
            raise UserError(f"request {same[0]} already exists (received {existing[same[0]].received}); "
                            "ids are never reused")
        records, problems = check_file(file, "relearn")
        if problems:
            raise ValidationError(problems)
        if not records:
            raise UserError(f"{file}: no records")
        taken = {}
        for other in self.active():
            taken.update({r.id: other.id for r in self.records(other)})
        clashes = [f"{file}: record id {r.id!r} is already in request {taken[r.id]}" for r in records if r.id in taken]
        if clashes:
            raise UserError(clashes)
        if retain is not None:
            overlap = check_overlap(records, retain[0], file, retain[1])
            if overlap:
                raise UserError([f"request {request_id} refused: its records are in the retain set, which the "
                                 "model must keep knowing"] + overlap)
        name = f"{RECORDS_DIR}/{request_id}.jsonl"
        data = "".join(json.dumps(r.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()
        self.store.write_records(name, data)
        event = {"event": "add", "id": request_id, "kind": kind, "subject": subject.strip(), "file": name,
                 "records": len(records), "sha256": hashlib.sha256(data).hexdigest(), "at": _now()}
        self.store.append(event)
        return self.get(request_id)

    def withdraw(self, request_id: str, reason: str = "") -> Request:
        with self.store.transaction():
            request = self.get(request_id)
            if not request.active:
                raise UserError(f"request {request_id} was already withdrawn on {request.withdrawn}")
            self.store.append({"event": "withdraw", "id": request_id, "reason": reason, "at": _now()})
        return self.get(request_id)


    def purge(self, request_id: str, version: Optional[str] = None, kfr: Optional[float] = None) -> Request:
        """Delete a request's records, keeping the proof (module docstring). `version`/`kfr`: the
        production version that honours it (None for a withdrawn request; the caller checks)."""
        from relearn.serving.guard import build_guard

        with self.store.transaction():
            request = self.get(request_id)
            if request.purged:
                if self.store.read_records(request.file) is not None:  # an earlier purge stopped before deleting
                    self.store.delete_records(request.file)
                raise UserError(f"request {request_id} was already purged on {request.purged[:10]}")
            if request.active and version is None:
                raise UserError(f"request {request_id} is active and honoured by no production version: "
                                "purging it now would lose what it asks to forget")
            records = self.records(request)
            self.store.save_guard(request_id, build_guard(records, [request_id]))
            self.store.append({"event": "purge", "id": request_id, "version": version, "kfr": kfr, "at": _now()})
            self.store.delete_records(request.file)
        return self.get(request_id)

    def purged_guards(self) -> list:
        """The output guards of the purged requests that are still active (relearn.serving.guard.Guard)."""
        guards = [self.store.load_guard(r.id) for r in self.requests().values() if r.purged and r.active]
        return [g for g in guards if g is not None]


def purge_due(rows: list[dict], days: int, now: Optional[datetime] = None) -> list[tuple[str, str]]:
    """(request id, why) of the requests whose records the retention policy says to delete now.

    rows: relearn.registry.coverage's entries. Due: an active request honoured in production
    without a break for at least `days` days (its `since`), and a withdrawn one withdrawn at least
    `days` days ago. Already purged, or honoured for less (or with no known promotion date): not due."""
    now = now or datetime.now(timezone.utc)

    def age(stamp: Optional[str]) -> Optional[float]:
        if not stamp:
            return None
        when = datetime.fromisoformat(stamp)
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        return (now - when).total_seconds() / 86400

    due = []
    for row in rows:
        if row.get("purged"):
            continue
        if row.get("withdrawn"):
            withdrawn = age(row["withdrawn"])
            if withdrawn is not None and withdrawn >= days:
                due.append((row["id"], f"withdrawn {int(withdrawn)} days ago"))
        elif row.get("honoured_in_production"):
            honoured = age(row.get("since"))
            if honoured is not None and honoured >= days:
                due.append((row["id"], f"honoured in production for {int(honoured)} days (since version "
                                       f"{row.get('since_version')})"))
    return due


# ---------------------------------------------------------------------------------- the forget split
def forget_split(ledger: Ledger, forget_pool_eval: list[QARecord], retain: list[QARecord],
                 retain_path: str = "retain") -> tuple[list[QARecord], list[QARecord], dict]:
    """(forget, forget_eval, manifest) from the active requests.

    forget: every record of every active request. forget_eval: the source's held-out forget
    questions (`forget_pool_eval`) about the same subjects (a record's `subject`); a request none of
    whose subjects has held-out questions is evaluated on its own records, and the manifest says so.
    manifest: {request id: {kind, received, forget_ids, eval_ids, eval: held-out|own records}} plus
    `withdrawn`: the ids of withdrawn requests, and `purged`: the active requests whose records are
    purged (covered by the adapter that forgot them and by the output guard). Ids only: no text.
    """
    from relearn.data.validate import check_overlap

    purged = [r.id for r in ledger.active() if r.purged]
    active = [r for r in ledger.active() if not r.purged]
    if not active:
        raise UserError(f"{ledger.location}: no active erasure request" + (f" with records (purged: {', '.join(purged)})"
                                                                         if purged else "")
                        + "; add one with `relearn request add` (or set data.requests: null to use the source's "
                          "forget set)")
    forget: list[QARecord] = []
    forget_eval: list[QARecord] = []
    manifest: dict = {"requests": {}, "withdrawn": [r.id for r in ledger.requests().values() if not r.active],
                      "purged": purged}
    problems = []
    for request in active:
        records = ledger.records(request)
        problems += check_overlap(records, retain, ledger.where(request.file), retain_path)
        subjects = {r.subject for r in records if r.subject}
        held_out = [r for r in forget_pool_eval if r.subject and r.subject in subjects]
        own = not held_out
        evaluation = records if own else held_out
        forget += records
        seen = {r.id for r in forget_eval}
        forget_eval += [r for r in evaluation if r.id not in seen]
        manifest["requests"][request.id] = {
            "kind": request.kind, "received": request.received, "forget_ids": [r.id for r in records],
            "eval_ids": [r.id for r in evaluation], "eval": "own records" if own else "held-out"}
    if problems:
        raise UserError(["active requests overlap the retain set (withdraw them, or take the questions out "
                         "of the retain set)"] + problems)
    return forget, forget_eval, manifest


def request_kfr(manifest: dict, items: dict) -> dict[str, dict]:
    """Per-request KFR from the per-item forget results of one model (`items[id]['forgotten']`):
    {request id: {"kfr": share forgotten, "n": items scored, "ci": {"kfr": Wilson 95% interval}}};
    NaN when none could be scored."""
    from relearn.evaluation.uncertainty import wilson

    out = {}
    for request_id, entry in manifest.get("requests", {}).items():
        verdicts = [items[i]["forgotten"] for i in entry["eval_ids"] if i in items and "forgotten" in items[i]]
        out[request_id] = {"kfr": sum(verdicts) / len(verdicts) if verdicts else float("nan"), "n": len(verdicts),
                           "ci": {"kfr": wilson(sum(verdicts), len(verdicts))}}
    return out
