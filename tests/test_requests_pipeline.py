"""Erasure requests end to end: `relearn request add` / `withdraw` and `dvc repro` on a micro
configuration, one version per change of the ledger, per-request tags and gates, `relearn request
status` against the real SQLite registry, and the report's request table.

Requests 1 and 2 arrive one by one; request 1 is then withdrawn and request 3 arrives. The second
step raises register.request_kfr_min above 1, so that its version fails the request gates by name;
the third continues the production adapter (unlearn.init: production).
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from test_pipeline import BIN, MICRO, merged, micro_project, run

pytestmark = pytest.mark.slow
REQUESTS_MICRO = merged(MICRO, {
    "data": {"people": 5, "forget_people": 3, "requests": "requests"},
    "compare": {"methods": [], "overrides": {}, "robustness": []},
    "robustness": {"ladder": ["torch-fp32"], "probes": [], "relearn_steps": []},
    "register": {"request_kfr_min": 0.0},
})


def _relearn(work: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "relearn.cli", *args]
    if check:
        return run(cmd, work, env)
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def _registry(work: Path):
    """The project's registry, read here (a client of its own: the process-wide tracking URI is left alone)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")


def _tags(work: Path, version: str) -> dict:
    return dict(_registry(work).get_model_version("micro", version).tags)


def _set_params(work: Path, **changes) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The micro project with a ledger, and one request file per person of the source's forget pool."""
    from relearn.data.sources import load_source
    from relearn.params import parse_params
    from relearn.records import save_records

    work = tmp_path_factory.mktemp("requests-project")
    env = micro_project(work, REQUESTS_MICRO, gitignore="/requests/\n")
    params = parse_params(yaml.safe_load((work / "params.yaml").read_text()))
    by_person = defaultdict(list)
    for record in load_source(params.data, params.seed)["forget"]:  # what the data owners would send
        by_person[record.subject].append(record)
    incoming = work.parent / f"{work.name}-incoming"
    incoming.mkdir()
    files = []
    for i, (person, records) in enumerate(sorted(by_person.items()), 1):
        save_records(incoming / f"person{i}.jsonl", records)
        files.append((person, incoming / f"person{i}.jsonl"))
    return work, env, files


def _step(work: Path, env: dict) -> dict:
    """Version the ledger with DVC, reproduce, and return the registration."""
    run([str(BIN / "dvc"), "add", "-q", "requests"], work, env)
    result = run([str(BIN / "dvc"), "repro"], work, env)
    (work / "repro.log").write_text(result.stdout + result.stderr)
    return json.loads((work / "reports" / "registration.json").read_text())


def _status(work: Path, env: dict, request_id: str) -> dict:
    return json.loads(_relearn(work, env, "request", "status", request_id, "--json").stdout)


def test_a_sequence_of_requests(project):
    work, env, files = project
    assert len(files) == 3
    (p1, f1), (p2, f2), (p3, f3) = files

    # 1. the first request: version 1 covers it; promoted, production honours it
    _relearn(work, env, "request", "add", "--id", "R-1", "--kind", "privacy", "--subject", p1, "--retain",
             "/nonexistent", str(f1))
    reg = _step(work, env)
    assert reg["version"] == "1" and reg["gate_status"] == "passed"
    tags = _tags(work, "1")
    assert tags["requests"] == "R-1" and tags["request.R-1"].startswith("kfr=")
    assert tags["gate.request.R-1"].endswith("passed") and tags["unlearned_from"] == "target"
    assert p1 not in json.dumps(tags)  # ids only, never who
    manifest = json.loads((work / "data" / "splits" / "requests.json").read_text())
    forget_ids = {json.loads(line)["id"] for line in (work / "data/splits/forget.jsonl").read_text().splitlines()}
    assert set(manifest["requests"]) == {"R-1"} and forget_ids == set(manifest["requests"]["R-1"]["forget_ids"])
    assert _status(work, env, "R-1")["status"] == "in a version"
    _registry(work).set_model_version_tag("micro", "1", "approval_status", "approved")  # what an approver does in the UI
    _relearn(work, env, "promote", "--version", "1")
    s1 = _status(work, env, "R-1")
    assert s1["status"] == "in production" and s1["since_version"] == "1" and s1["since"]
    assert s1["report"].startswith("runs:/") and s1["report"].endswith("report.html") and 0 <= s1["kfr"] <= 1
    report = (work / "reports" / "report" / "report.md").read_text()
    assert "Erasure requests" in report and "R-1" in report

    # 2. the second request, with a request gate no version can pass: blocked, by name
    _relearn(work, env, "request", "add", "--id", "R-2", "--kind", "copyright", "--subject", p2, str(f2))
    _set_params(work, **{"register.request_kfr_min": 1.01})
    reg = _step(work, env)
    assert reg["version"] == "2" and reg["gate_status"] == "failed"
    failed = {g["name"] for g in reg["gates"] if not g["passed"]}
    assert failed == {"request.R-1", "request.R-2"}
    tags = _tags(work, "2")
    assert tags["requests"] == "R-1,R-2" and tags["gate.request.R-2"].endswith("failed")
    s2 = _status(work, env, "R-2")
    assert s2["status"] == "in a version" and not s2["honoured_in_production"] and s2["failed_in_versions"] == ["2"]
    assert _status(work, env, "R-1")["status"] == "in production"  # still version 1
    table = (work / "reports" / "report" / "report.md").read_text()
    assert "R-2" in table and "FAILED" in table

    # 3. request 1 withdrawn, request 3 arrives: version 3 forgets 2 and 3 only, continuing the
    #    production adapter (incremental unlearning)
    _set_params(work, **{"register.request_kfr_min": 0.0, "unlearn.init": "production", "unlearn.incremental_epochs": 1})
    _relearn(work, env, "request", "withdraw", "R-1", "--reason", "the data subject withdrew the request")
    _relearn(work, env, "request", "add", "--id", "R-3", "--kind", "privacy", "--subject", p3, str(f3))
    reg = _step(work, env)
    assert reg["version"] == "3" and reg["gate_status"] == "passed"
    tags = _tags(work, "3")
    assert tags["requests"] == "R-2,R-3" and "request.R-1" not in tags
    assert tags["unlearned_from"] == "version 1" and tags["target_md5"] == _tags(work, "1")["target_md5"]
    assert json.loads((work / "reports" / "unlearn.json").read_text())["epochs"] == 1
    ids = {json.loads(line)["id"] for line in (work / "data/splits/forget.jsonl").read_text().splitlines()}
    assert not ids & set(manifest["requests"]["R-1"]["forget_ids"])
    audit = json.loads(_relearn(work, env, "request", "status", "--all", "--json").stdout)
    assert {r["id"]: r["status"] for r in audit} == {"R-1": "withdrawn", "R-2": "in a version", "R-3": "in a version"}
    listing = _relearn(work, env, "request", "list").stdout
    assert "R-1" in listing and "withdrawn" in listing and "versions 2,3" in listing
    # the target and the control were trained once: the requests never touched them
    assert (work / "repro.log").read_text().count("Running stage 'target'") == 0

    # a request asking about the retain set is refused, naming the question, and nothing is filed
    retain = (work / "data" / "splits" / "retain.jsonl").read_text().splitlines()[:1]
    bad = work.parent / "retain-request.jsonl"
    bad.write_text(retain[0] + "\n")
    before = (work / "requests" / "ledger.jsonl").read_text()
    refused = _relearn(work, env, "request", "add", "--id", "R-4", "--kind", "privacy", "--subject", "x", str(bad),
                       check=False)
    assert refused.returncode == 2 and "refused" in refused.stderr and json.loads(retain[0])["question"] in refused.stderr
    assert "Traceback" not in refused.stderr and (work / "requests" / "ledger.jsonl").read_text() == before


def test_a_second_clone_pulls_outputs_and_ledger_from_a_remote_and_reproduces_nothing(project, tmp_path):
    """A team's set-up (docs/operations.md): a DVC remote (a local path here; S3 or SSH for a team) holds
    the pipeline's outputs and the ledger snapshot; a second clone pulls them, has nothing to reproduce, and
    answers `relearn request status` from the shared registry."""
    work, env, files = project
    if not (work / "reports" / "registration.json").is_file():  # run on its own: one request, one version
        person, file = files[0]
        _relearn(work, env, "request", "add", "--id", "R-1", "--kind", "privacy", "--subject", person, str(file))
        _step(work, env)
    with open(work / ".gitignore", "a") as ignore:
        ignore.write("/mlflow.db\n/mlartifacts/\n/.cache/\n")  # the registry is the tracking server's, not git's
    run([str(BIN / "dvc"), "remote", "add", "-d", "team", str(tmp_path / "remote")], work, env)
    run([str(BIN / "dvc"), "add", "-q", "requests"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "outputs and the ledger snapshot"], work, env)
    run([str(BIN / "dvc"), "push", "-q"], work, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(work), str(clone)], tmp_path, env)
    shared = dict(env, PYTHONPATH=str(clone), MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    assert not (clone / "requests").exists() and not (clone / "models" / "adapter").exists()
    run([str(BIN / "dvc"), "pull", "-q"], clone, shared)
    assert (clone / "requests" / "ledger.jsonl").read_text() == (work / "requests" / "ledger.jsonl").read_text()
    status = run([str(BIN / "dvc"), "status"], clone, shared).stdout
    changed = [line.strip() for line in status.splitlines() if line.strip()]
    assert changed == ["inputs:", "always changed"], status  # the one stage that always runs, and nothing else
    repro = run([str(BIN / "dvc"), "repro"], clone, shared).stdout
    ran = [line for line in repro.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'inputs':"], repro
    audit = json.loads(_relearn(clone, shared, "request", "status", "--all", "--json").stdout)
    here = json.loads(_relearn(work, env, "request", "status", "--all", "--json").stdout)
    assert [(r["id"], r["status"]) for r in audit] == [(r["id"], r["status"]) for r in here] and audit
