"""The `relearn` command: data generate/validate, params, and registry commands on an empty store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from relearn.cli import main
from relearn.data.splits import SPLITS
from relearn.params import Params, parse_params

SCRIPT = Path(sys.executable).parent / "relearn"
SMALL = "seed: 0\ndata:\n  people: 6\n  forget_people: 2\n  holdout_people: 2\n  general: 10\n  private_people: 1\n"


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _errors(result) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith("error: ") for line in lines), lines
    return [line[len("error: "):] for line in lines]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    params = root / "small.yaml"
    params.write_text(SMALL, encoding="utf-8")
    out = root / "splits"
    result = _run("data", "generate", "--params", params, "--out", out)
    return result, out


# ------------------------------------------------------------------------------ data generate
def test_data_generate_writes_six_splits(generated):
    result, out = generated
    assert result.exit_code == 0, result.output
    expected = {"forget": 48, "retain": 96, "forget_eval": 16, "retain_eval": 32, "holdout": 64, "general": 10 + 8}
    assert set(expected) == set(SPLITS)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.jsonl" for s in SPLITS)
    for name, n in expected.items():
        lines = (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == n
        assert all(json.loads(line)["id"] for line in lines)
        assert f"{out / (name + '.jsonl')}: {n} records" in result.stdout


def test_data_generate_bad_params_exits_2(tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text("data:\n  people: 2\n  forget_people: 2\n", encoding="utf-8")
    result = _run("data", "generate", "--params", params, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert _errors(result)[0].startswith(f"{params}:3: data.forget_people:")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ data validate
def test_validate_generated_files_ok(generated):
    _, out = generated
    files = [out / f"{s}.jsonl" for s in SPLITS]
    result = _run("data", "validate", *files)
    assert result.exit_code == 0, result.output
    for f in files:
        assert f"{f}: " in result.stdout and "records ok" in result.stdout
    assert result.stderr == ""
    result = _run("data", "validate", "--forget", out / "forget.jsonl", "--retain", out / "retain.jsonl")
    assert result.exit_code == 0, result.output


def test_validate_bad_file_one_line_per_problem(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [
        {"id": "a", "question": "Q1?", "answer": "A1."},     # 1 ok
        {"id": "b", "question": "Q2?"},                      # 2 answer missing
        {"id": "c", "question": "  ", "answer": "A3."},      # 3 question empty
        {"id": "a", "question": "Q4?", "answer": "A4."},     # 4 duplicate id
        {"id": "e", "question": "Q5?", "answer": "A5.", "facts": ["x"]},   # 5 wrong type
        "{not json",                                         # 6
    ])
    good = _write_jsonl(tmp_path / "good.jsonl", [{"id": "x", "question": "Q?", "answer": "A."}])
    result = _run("data", "validate", bad, good)
    assert result.exit_code == 2
    errors = _errors(result)
    assert errors[:4] == [f"{bad}:2: field 'answer': missing",
                          f"{bad}:3: field 'question': empty",
                          f"{bad}:4: field 'id': duplicate of line 1",
                          f"{bad}:5: field 'facts': expected an object of strings, got list"]
    assert len(errors) == 5 and errors[4].startswith(f"{bad}:6: invalid JSON")
    assert f"{good}: 1 records ok" in result.stdout
    assert f"{bad}: " not in result.stdout
    assert "Traceback" not in result.output


def test_validate_overlap_names_both_files(tmp_path):
    forget = _write_jsonl(tmp_path / "forget.jsonl", [
        {"id": "f1", "question": "Where was Ann born?", "answer": "In Oxbury."},
        {"id": "f2", "question": "What does Ann do?", "answer": "She is a potter."},
    ])
    retain = _write_jsonl(tmp_path / "retain.jsonl", [
        {"id": "r1", "question": "Who is Bo?", "answer": "A baker."},
        {"id": "r2", "question": "what does ann  do", "answer": "Pottery."},
    ])
    result = _run("data", "validate", "--forget", forget, "--retain", retain)
    assert result.exit_code == 2
    errors = _errors(result)
    assert len(errors) == 1
    assert errors[0].startswith(f"{forget}:2: field 'question': also in {retain}:2 ")
    assert "What does Ann do?" in errors[0]


def test_validate_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    result = _run("data", "validate", missing)
    assert result.exit_code == 2
    assert _errors(result) == [f"{missing}: file not found"]


def test_validate_forget_needs_retain(generated):
    _, out = generated
    result = _run("data", "validate", "--forget", out / "forget.jsonl")
    assert result.exit_code == 2
    assert _errors(result) == ["--forget and --retain go together"]
    result = _run("data", "validate", "--retain", out / "retain.jsonl")
    assert result.exit_code == 2


def test_validate_nothing_given():
    result = _run("data", "validate")
    assert result.exit_code == 2
    assert "nothing to validate" in _errors(result)[0]


# ------------------------------------------------------------------------------ params
def test_params_prints_yaml_that_parses_to_the_defaults():
    result = _run("params")
    assert result.exit_code == 0
    raw = yaml.safe_load(result.stdout)
    assert parse_params(raw, "stdout", result.stdout) == Params()


def test_params_check_ok_and_bad(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(SMALL, encoding="utf-8")
    result = _run("params", "--check", good)
    assert result.exit_code == 0 and f"{good}: ok" in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\nunlearn:\n  lr: fast\n  lora:\n    rank: 2\n", encoding="utf-8")
    result = _run("params", "--check", bad)
    assert result.exit_code == 2
    errors = _errors(result)
    assert errors[0] == f"{bad}:3: unlearn.lr: expected a number, got 'fast'"
    assert errors[1].startswith(f"{bad}:5: unlearn.lora.rank: unknown key")
    assert len(errors) == 2


def test_installed_script_bad_file_exits_2_without_traceback(tmp_path):
    assert SCRIPT.is_file()
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "question": "Q?"}])
    proc = subprocess.run([str(SCRIPT), "data", "validate", str(bad)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {bad}:1: field 'answer': missing"]


# ------------------------------------------------------------------------------ registry on an empty store
@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    params = root / "params.yaml"
    params.write_text("register:\n  model_name: nothing-here\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri, params


def test_status_on_empty_store(empty_store):
    uri, params = empty_store
    result = _run("status", "--params", params)
    assert result.exit_code == 2, result.output
    errors = _errors_only(result)
    assert errors == [f"no registered model 'nothing-here' in {uri}; run the pipeline first"]


def test_promote_on_empty_store(empty_store):
    uri, params = empty_store
    result = _run("promote", "--params", params, "--version", "1", "--model", "other-model")
    assert result.exit_code == 2, result.output
    errors = _errors_only(result)
    assert errors == [f"no registered model 'other-model' in {uri}; run the pipeline first"]
    assert "Traceback" not in result.output


def _errors_only(result) -> list[str]:
    """The `error: ` lines of stderr (MLflow also logs to stderr while it creates the database)."""
    return [line[len("error: "):] for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_ui_starts_mlflows_server_on_the_project_store_with_one_worker(tmp_path, monkeypatch):
    """`relearn ui` replaces itself with `mlflow server` on the project's database and artifact root;
    one worker unless asked (the README test starts the real one and waits for /health)."""
    (tmp_path / "params.yaml").write_text("seed: 0\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    assert _run("ui").exit_code == 0 and _run("ui", "--workers", "3", "--port", "5005").exit_code == 0
    first, second = calls
    assert first[1:4] == ["-m", "mlflow", "server"]
    assert first[first.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert first[first.index("--workers") + 1] == "1" and first[first.index("--port") + 1] == "5000"
    assert second[second.index("--workers") + 1] == "3" and second[second.index("--port") + 1] == "5005"
