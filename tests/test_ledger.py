"""The erasure-request ledger: adding, refusing, withdrawing, and the forget split made from it."""
from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from relearn.cli import main
from relearn.errors import UserError, ValidationError
from relearn.ledger.core import Ledger, forget_split, request_kfr
from relearn.serving.guard import REDACTED, Guard, version_guard
from relearn.records import QARecord, save_records


def _rec(i: str, person: str, fact: str = "city") -> QARecord:
    return QARecord(id=f"{i}", question=f"Where does {person} live?" if fact == "city" else f"What does {person} do?",
                    answer=f"{person} lives in Oslo.", subject=person, facts={"city": "Oslo"})


ANN = [_rec("ann-1", "Ann Berg"), _rec("ann-2", "Ann Berg", "job")]
BO = [_rec("bo-1", "Bo Lind")]
RETAIN = [_rec("cy-1", "Cy Moe")]
HELD_OUT = [QARecord(id="ann-eval", question="In which city does Ann Berg live?", answer="Oslo.", subject="Ann Berg",
                     facts={"city": "Oslo"})]


@pytest.fixture()
def files(tmp_path):
    paths = {}
    for name, records in (("ann", ANN), ("bo", BO), ("retain", RETAIN)):
        paths[name] = tmp_path / f"{name}.jsonl"
        save_records(paths[name], records)
    return paths


def test_add_withdraw_and_the_history_stays(tmp_path, files):
    ledger = Ledger(tmp_path / "requests")
    a = ledger.add("R-1", "privacy", "Ann Berg", files["ann"], (RETAIN, "retain.jsonl"))
    assert (a.records, a.file, a.active) == (2, "records/R-1.jsonl", True)
    ledger.add("R-2", "privacy", "Bo Lind", files["bo"])
    assert [r.id for r in ledger.active()] == ["R-1", "R-2"]
    assert [r.id for r in ledger.records(ledger.get("R-1"))] == ["ann-1", "ann-2"]
    ledger.withdraw("R-1", "consent given again")
    assert [r.id for r in ledger.active()] == ["R-2"]
    events = [json.loads(line) for line in ledger.path.read_text().splitlines()]
    assert [(e["event"], e["id"]) for e in events] == [("add", "R-1"), ("add", "R-2"), ("withdraw", "R-1")]
    assert ledger.get("R-1").withdraw_reason == "consent given again" and (ledger.dir / "records" / "R-1.jsonl").is_file()
    with pytest.raises(UserError, match="already withdrawn"):
        ledger.withdraw("R-1")
    with pytest.raises(UserError, match="never reused"):
        ledger.add("R-1", "privacy", "Ann Berg", files["ann"])
    with pytest.raises(UserError, match=r"no request 'R-9'.*R-1, R-2"):
        ledger.get("R-9")


def test_refusals_leave_the_ledger_as_it_was(tmp_path, files):
    ledger = Ledger(tmp_path / "requests")
    ledger.add("R-1", "privacy", "Ann Berg", files["ann"])
    before = ledger.path.read_bytes()
    with pytest.raises(UserError, match="request R-1 already exists"):  # ids differing only by case share a file
        ledger.add("r-1", "privacy", "Bo", files["bo"])
    with pytest.raises(UserError, match="letters, digits"):
        ledger.add("R 2/x", "privacy", "Bo", files["bo"])
    with pytest.raises(UserError, match="not one of privacy"):
        ledger.add("R-2", "gossip", "Bo", files["bo"])
    with pytest.raises(UserError, match="already in request R-1"):  # the same record id twice
        ledger.add("R-2", "privacy", "Ann Berg", files["ann"])
    with pytest.raises(UserError) as overlap:  # asks about what the model must keep knowing
        ledger.add("R-2", "privacy", "Cy Moe", files["retain"], (RETAIN, "retain.jsonl"))
    assert "Where does Cy Moe live?" in "\n".join(overlap.value.problems)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "", "answer": "a"}\n{not json\n')
    with pytest.raises(ValidationError) as invalid:
        ledger.add("R-2", "privacy", "X", bad)
    assert f"{bad}:1: field 'question': empty" in invalid.value.problems
    assert any(p.startswith(f"{bad}:2:") for p in invalid.value.problems)
    assert ledger.path.read_bytes() == before and not (ledger.dir / "records" / "R-2.jsonl").exists()


def test_an_id_named_like_the_ledger_cannot_overwrite_it(tmp_path, files):
    ledger = Ledger(tmp_path / "requests")
    ledger.add("ledger", "privacy", "Ann Berg", files["ann"])
    ledger.add("R-2", "privacy", "Bo Lind", files["bo"])
    assert [r.id for r in ledger.active()] == ["ledger", "R-2"]


def test_a_changed_request_file_is_detected(tmp_path, files):
    ledger = Ledger(tmp_path / "requests")
    ledger.add("R-1", "privacy", "Ann Berg", files["ann"])
    path = ledger.dir / "records" / "R-1.jsonl"
    path.write_text(path.read_text().replace("Oslo", "Rome"))
    with pytest.raises(UserError, match="changed since request R-1 was added"):
        ledger.records(ledger.get("R-1"))


def test_forget_split_from_the_active_requests(tmp_path, files):
    ledger = Ledger(tmp_path / "requests")
    with pytest.raises(UserError, match="no active erasure request"):
        forget_split(ledger, HELD_OUT, RETAIN)
    ledger.add("R-1", "privacy", "Ann Berg", files["ann"])
    ledger.add("R-2", "copyright", "Bo Lind", files["bo"])
    forget, forget_eval, manifest = forget_split(ledger, HELD_OUT, RETAIN)
    assert [r.id for r in forget] == ["ann-1", "ann-2", "bo-1"]
    assert [r.id for r in forget_eval] == ["ann-eval", "bo-1"]  # Bo has no held-out question: his own
    assert manifest["requests"]["R-1"] == {"kind": "privacy", "received": ledger.get("R-1").received,
                                           "forget_ids": ["ann-1", "ann-2"], "eval_ids": ["ann-eval"],
                                           "eval": "held-out"}
    assert manifest["requests"]["R-2"]["eval"] == "own records"
    assert "Ann" not in json.dumps(manifest)  # ids only
    ledger.withdraw("R-1")
    forget, forget_eval, manifest = forget_split(ledger, HELD_OUT, RETAIN)
    assert [r.id for r in forget] == ["bo-1"] and manifest["withdrawn"] == ["R-1"]
    # a retain set that now asks a requested question: refused by name
    with pytest.raises(UserError) as e:
        forget_split(ledger, HELD_OUT, RETAIN + BO, "data/splits/retain.jsonl")
    assert "Where does Bo Lind live?" in "\n".join(e.value.problems)


def test_request_kfr():
    manifest = {"requests": {"R-1": {"eval_ids": ["a", "b"]}, "R-2": {"eval_ids": ["c"]}, "R-3": {"eval_ids": ["z"]}}}
    items = {"a": {"forgotten": True}, "b": {"forgotten": False}, "c": {"forgotten": True}}
    out = request_kfr(manifest, items)
    assert {k: out["R-1"][k] for k in ("kfr", "n")} == {"kfr": 0.5, "n": 2}
    assert {k: out["R-2"][k] for k in ("kfr", "n")} == {"kfr": 1.0, "n": 1}
    assert math.isnan(out["R-3"]["kfr"]) and out["R-3"]["n"] == 0
    # each request's KFR carries its Wilson interval: 1 of 2 forgotten spans most of [0, 1]
    ci = out["R-1"]["ci"]["kfr"]
    assert (ci["n"], ci["method"]) == (2, "wilson") and ci["low"] == pytest.approx(0.0945, abs=1e-3) \
        and ci["high"] == pytest.approx(0.9055, abs=1e-3)
    assert out["R-3"]["ci"]["kfr"]["low"] is None


def test_cli_add_list_withdraw(tmp_path, files):
    runner = CliRunner()
    ledger = str(tmp_path / "requests")
    r = runner.invoke(main, ["request", "add", "--ledger", ledger, "--id", "R-1", "--kind", "privacy",
                             "--subject", "Ann Berg", "--retain", str(files["retain"]), str(files["ann"])])
    assert r.exit_code == 0, r.output
    assert "R-1: 2 records filed" in r.output and "dvc add" in r.output
    r = runner.invoke(main, ["request", "add", "--ledger", ledger, "--id", "R-2", "--kind", "privacy",
                             "--subject", "Cy Moe", "--retain", str(files["retain"]), str(files["retain"])])
    assert r.exit_code == 2 and "refused" in r.output and "Traceback" not in r.output
    assert "Where does Cy Moe live?" in r.output
    r = runner.invoke(main, ["request", "withdraw", "--ledger", ledger, "R-1", "--reason", "x"])
    assert r.exit_code == 0 and "withdrawn" in r.output
    r = runner.invoke(main, ["request", "withdraw", "--ledger", ledger, "R-7"])
    assert r.exit_code == 2 and "no request 'R-7'" in r.output


def test_since_follows_the_promotions_back():
    from relearn.registry.coverage import _since

    def v(n, promoted_from="", at="t"):
        return {"version": n, "promoted_from": promoted_from, "promoted_at": at}

    honouring = {"2": v("2", "1", "t2"), "3": v("3", "2", "t3"), "5": v("5", "4", "t5")}
    assert _since(honouring["3"], honouring)["version"] == "2"  # 1 did not honour it
    assert _since(honouring["5"], honouring)["version"] == "5"  # 4 did not
    loop = {"1": v("1", "2", "t1b"), "2": v("2", "1", "t2")}  # 1 -> 2 -> back to 1
    assert _since(loop["1"], loop)["version"] == "2"  # understated, never overstated
    assert _since(None, honouring) is None


def test_purge_deletes_the_records_and_keeps_the_proof_and_the_guard(tmp_path, files):
    ledger = Ledger(tmp_path / "requests")
    ledger.add("R-1", "privacy", "Ann Berg", files["ann"])
    ledger.add("R-2", "privacy", "Bo Lind", files["bo"])
    with pytest.raises(UserError, match="honoured by no production version"):
        ledger.purge("R-1")  # active, and no version honours it: its data is still needed
    purged = ledger.purge("R-1", version="3", kfr=1.0)
    assert (purged.purged_version, purged.purged_kfr, purged.active, purged.records) == ("3", 1.0, True, 2)
    assert not (ledger.dir / "records" / "R-1.jsonl").exists()
    kept = (ledger.dir / "purged" / "R-1" / "guard.json").read_text()
    assert "Oslo" not in kept and "Ann" not in kept  # keyed hashes only
    with pytest.raises(UserError, match="purged on"):
        ledger.records(purged)
    with pytest.raises(UserError, match="already purged"):
        ledger.purge("R-1", version="3")
    assert [e["event"] for e in map(json.loads, ledger.path.read_text().splitlines())] == ["add", "add", "purge"]
    # the next forget split has no records of it; the version's guard still carries its facts
    forget, forget_eval, manifest = forget_split(ledger, HELD_OUT, RETAIN)
    assert [r.id for r in forget] == ["bo-1"] and manifest["purged"] == ["R-1"] and "R-1" not in manifest["requests"]
    guard = version_guard(forget + forget_eval, manifest["requests"], str(ledger.dir))
    assert guard.summary()["purged"] == 1
    leak = "Ann Berg lives in Oslo, near the fjord."
    assert guard.redact(leak, "Where does Ann Berg live?")[0] == f"Ann Berg lives in {REDACTED}, near the fjord."
    guard.save(tmp_path / "version-guard")
    assert Guard.load(tmp_path / "version-guard").redact(leak, "Where does Ann Berg live?") == guard.redact(
        leak, "Where does Ann Berg live?")
    # a withdrawn request can be purged without a version; then nothing with records is left
    ledger.withdraw("R-2")
    assert ledger.purge("R-2").purged_version is None
    with pytest.raises(UserError, match=r"no active erasure request with records \(purged: R-1\)"):
        forget_split(ledger, HELD_OUT, RETAIN)


def test_cli_purge_refuses_what_production_does_not_honour_and_status_says_purged(tmp_path, files, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    runner = CliRunner()
    ledger = str(tmp_path / "requests")
    for rid, who, f in (("R-1", "Ann Berg", "ann"), ("R-2", "Bo Lind", "bo")):
        r = runner.invoke(main, ["request", "add", "--ledger", ledger, "--id", rid, "--kind", "privacy",
                                 "--subject", who, "--retain", str(files["retain"]), str(files[f])])
        assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["request", "purge", "--ledger", ledger, "--model", "m", "R-1"])
    assert r.exit_code == 2 and "R-1 is received: purge a request once a production version honours it" in r.output
    assert (tmp_path / "requests" / "records" / "R-1.jsonl").is_file()
    runner.invoke(main, ["request", "withdraw", "--ledger", ledger, "R-2"])
    r = runner.invoke(main, ["request", "purge", "--ledger", ledger, "--model", "m", "R-2"])
    assert r.exit_code == 0, r.output
    assert "R-2: purged on" in r.output and "1 records deleted; withdrawn" in r.output
    r = runner.invoke(main, ["request", "status", "--ledger", ledger, "--model", "m", "R-2"])
    assert r.exit_code == 0 and "R-2: withdrawn" in r.output and "purged on" in r.output, r.output


def test_the_retention_policy_says_which_requests_are_due():
    from datetime import datetime, timezone

    from relearn.ledger.core import purge_due

    now = datetime(2026, 12, 4, tzinfo=timezone.utc)
    rows = [
        {"id": "old", "honoured_in_production": True, "since": "2026-11-01T09:00:00+00:00", "since_version": "3"},
        {"id": "recent", "honoured_in_production": True, "since": "2026-11-20T09:00:00+00:00", "since_version": "5"},
        {"id": "undated", "honoured_in_production": True, "since": None},  # no promotion date: not known to be due
        {"id": "waiting", "honoured_in_production": False, "since": None},
        {"id": "gone", "withdrawn": "2026-10-01T00:00:00+00:00", "honoured_in_production": False},
        {"id": "gone-lately", "withdrawn": "2026-12-01T00:00:00+00:00", "honoured_in_production": False},
        {"id": "done", "purged": "2026-11-02", "honoured_in_production": True, "since": "2026-01-01T00:00:00+00:00"},
    ]
    due = purge_due(rows, 30, now)
    assert [rid for rid, _ in due] == ["old", "gone"]
    assert "honoured in production for 32 days (since version 3)" in due[0][1] and "withdrawn 64 days" in due[1][1]
    assert [rid for rid, _ in purge_due(rows, 0, now)] == ["old", "recent", "gone", "gone-lately"]


def test_cli_purge_due_applies_the_retention_period(tmp_path, files, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ledger = str(tmp_path / "requests")
    for rid, who, f in (("R-1", "Ann Berg", "ann"), ("R-2", "Bo Lind", "bo")):
        assert runner.invoke(main, ["request", "add", "--ledger", ledger, "--id", rid, "--kind", "privacy",
                                    "--subject", who, "--retain", str(files["retain"]), str(files[f])]).exit_code == 0
    runner.invoke(main, ["request", "withdraw", "--ledger", ledger, "R-2"])
    r = runner.invoke(main, ["request", "purge", "--ledger", ledger, "--model", "m", "--due"])
    assert r.exit_code == 2 and "no retention period: set data.purge_after_days" in r.output
    (tmp_path / "params.yaml").write_text("data:\n  purge_after_days: 30\n")
    r = runner.invoke(main, ["request", "purge", "--ledger", ledger, "--model", "m", "--due"])
    assert r.exit_code == 0 and "nothing to purge" in r.output  # withdrawn today: kept for 30 days
    r = runner.invoke(main, ["request", "purge", "--ledger", ledger, "--model", "m", "--due", "--after-days", "0",
                             "--dry-run"])
    assert r.exit_code == 0 and "R-2: would be purged (withdrawn 0 days ago)" in r.output and "R-1" not in r.output
    assert (tmp_path / "requests" / "records" / "R-2.jsonl").is_file()
    r = runner.invoke(main, ["request", "purge", "--ledger", ledger, "--model", "m", "--due", "--after-days", "0"])
    assert r.exit_code == 0 and "R-2: purged on" in r.output and "(withdrawn 0 days ago)" in r.output, r.output
    assert not (tmp_path / "requests" / "records" / "R-2.jsonl").exists()
    assert (tmp_path / "requests" / "records" / "R-1.jsonl").is_file()  # active and not honoured: still needed
    r = runner.invoke(main, ["request", "purge", "--ledger", ledger, "--model", "m", "R-1", "--due"])
    assert r.exit_code == 2 and "give one REQUEST_ID or --due" in r.output
