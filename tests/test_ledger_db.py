"""The erasure-request ledger in a shared database: the same behaviour as the directory ledger, on a
real PostgreSQL server and on SQLite, and concurrent filing that loses and duplicates nothing."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest
from click.testing import CliRunner

from relearn.cli import main
from relearn.errors import UserError
from relearn.ledger.core import Ledger, forget_split, is_database_url
from relearn.records import QARecord, save_records
from relearn.serving.guard import REDACTED, version_guard


def _rec(i: str, person: str) -> QARecord:
    return QARecord(id=i, question=f"Where does {person} live?", answer=f"{person} lives in Oslo.", subject=person,
                    facts={"city": "Oslo"})


@pytest.fixture(params=["directory", "sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "requests")
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return request.getfixturevalue("postgres")()


def test_database_urls_are_told_from_directories():
    assert is_database_url("postgresql://u@h/db") and is_database_url("postgresql+psycopg2://h/db")
    assert is_database_url("sqlite:////abs/ledger.db") and is_database_url("postgres://h/db")
    assert not is_database_url("requests") and not is_database_url("/srv/requests") and not is_database_url(None)


def test_the_same_ledger_in_every_store(location, tmp_path):
    ann, bo = tmp_path / "ann.jsonl", tmp_path / "bo.jsonl"
    save_records(ann, [_rec("ann-1", "Ann Berg"), _rec("ann-2", "Ann Berg")])
    save_records(bo, [_rec("bo-1", "Bo Lind")])
    ledger = Ledger(location)
    empty = ledger.fingerprint()
    a = ledger.add("R-1", "privacy", "Ann Berg", ann)
    assert (a.records, a.active) == (2, True) and ledger.fingerprint() != empty
    ledger.add("R-2", "privacy", "Bo Lind", bo)
    # a second handle (another person's machine) sees the same ledger
    again = Ledger(location)
    assert [r.id for r in again.active()] == ["R-1", "R-2"]
    assert [r.id for r in again.records(again.get("R-1"))] == ["ann-1", "ann-2"]
    with pytest.raises(UserError, match="never reused"):
        again.add("r-1", "privacy", "Ann Berg", ann)  # ids are case-folded
    with pytest.raises(UserError, match="already in request R-2"):
        again.add("R-3", "privacy", "Bo Lind", bo)
    before = again.fingerprint()
    again.withdraw("R-2", "consent given again")
    assert [r.id for r in ledger.active()] == ["R-1"] and ledger.fingerprint() != before
    forget, _, manifest = forget_split(ledger, [], [_rec("cy-1", "Cy Moe")])
    assert [r.id for r in forget] == ["ann-1", "ann-2"] and manifest["withdrawn"] == ["R-2"]

    purged = ledger.purge("R-1", version="3", kfr=1.0)
    assert (purged.purged_version, purged.purged_kfr) == ("3", 1.0)
    with pytest.raises(UserError, match="purged"):
        ledger.records(purged)
    guard = version_guard([], [], location)  # a later version's guard carries the purged request's hashes
    text, matched = guard.redact("Ann Berg lives in Oslo, near the fjord.", "Where does Ann Berg live?")
    assert matched and REDACTED in text and "Oslo" not in text


def test_cli_files_into_a_database_and_says_where_without_the_password(tmp_path):
    records = tmp_path / "ann.jsonl"
    save_records(records, [_rec("ann-1", "Ann Berg")])
    url = f"sqlite:///{tmp_path}/ledger.db"
    out = CliRunner().invoke(main, ["request", "add", "--ledger", url, "--id", "R-1", "--kind", "privacy",
                                    "--subject", "Ann Berg", "--retain", str(tmp_path / "none.jsonl"), str(records)])
    assert out.exit_code == 0, out.output
    assert f"{url}#records/R-1.jsonl" in out.output and "dvc add" not in out.output
    assert Ledger(url).get("R-1").records == 1
    bad = CliRunner().invoke(main, ["request", "list", "--ledger", "postgresql://relearn:s3cret@127.0.0.1:1/nowhere"])
    assert bad.exit_code == 2 and "cannot use the ledger database" in bad.output
    assert "s3cret" not in bad.output and "Traceback" not in bad.output


def _file_many(url: str, worker: int, ids: list[str], record_dir: str, barrier, results) -> None:
    ledger = Ledger(url)
    barrier.wait()
    filed, refused = [], []
    for request_id in ids:
        try:
            ledger.add(request_id, "privacy", f"Person {request_id}", os.path.join(record_dir, f"{request_id}.jsonl"))
            filed.append(request_id)
        except UserError as e:
            assert "never reused" in str(e) or "already" in str(e), str(e)
            refused.append(request_id)
    results.put((worker, filed, refused))


@pytest.mark.slow
@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
def test_concurrent_filing_loses_and_duplicates_nothing(store, request, tmp_path):
    """6 processes file at once: each its own 8 requests, and all of them the same 4 contested ids."""
    url = request.getfixturevalue("postgres")() if store == "postgresql" else f"sqlite:///{tmp_path}/ledger.db"
    Ledger(url)  # the tables
    processes, own, contested = 6, 8, [f"C-{i}" for i in range(4)]
    plan = {w: [f"W{w}-{i}" for i in range(own)] + contested for w in range(processes)}
    for request_id in {i for ids in plan.values() for i in ids}:
        save_records(tmp_path / f"{request_id}.jsonl", [_rec(f"{request_id}-rec", f"Person {request_id}")])
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_file_many, args=(url, w, ids, str(tmp_path), barrier, results))
               for w, ids in plan.items()]
    started = time.monotonic()
    for p in workers:
        p.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    seconds = time.monotonic() - started
    filed = [i for _, ok, _ in outcomes for i in ok]
    ledger = Ledger(url)
    stored = [e["id"] for e in ledger.events() if e["event"] == "add"]
    expected = {i for ids in plan.values() for i in ids}
    lost = expected - set(stored)
    duplicated = len(stored) - len(set(stored))
    print(f"\n[{store}] {processes} processes, {len(expected)} distinct requests ({len(contested)} contested by every "
          f"process), {sum(len(ids) for ids in plan.values())} attempts in {seconds:.1f} s: "
          f"stored {len(set(stored))}, duplicates {duplicated}, lost {len(lost)}")
    assert duplicated == 0 and not lost
    assert sorted(filed) == sorted(stored)  # every add that said it filed is stored, once
    assert all(filed.count(c) == 1 for c in contested)  # each contested id: one winner, the rest refused
    assert all(len(ledger.records(r)) == 1 for r in ledger.active())


def test_the_inputs_stage_sees_a_database_ledger_change(tmp_path):
    """The data stage reruns when the ledger changes; a database ledger is fingerprinted by its events,
    under its URL without the password."""
    from pipelines.inputs import fingerprint

    url = f"sqlite:///{tmp_path}/ledger.db"
    params = {"data": {"source": "builtin", "requests": url}}
    before = fingerprint(params)
    assert list(before) == [url]
    save_records(tmp_path / "ann.jsonl", [_rec("ann-1", "Ann Berg")])
    Ledger(url).add("R-1", "privacy", "Ann Berg", tmp_path / "ann.jsonl")
    after = fingerprint(params)
    assert after[url] != before[url] and fingerprint(params) == after
