"""`relearn init`: the tests' tiny GGUF model plus a TOFU-format pair of files give a params.yaml that
`dvc repro` runs through; bad input is one line, exit status 2 and nothing written."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from relearn.cli import main
from relearn.params import load_params
from tests.test_base_model import CHAT_TEMPLATE, TEXTS, tiny_llama, write_gguf
from tests.test_pipeline import BIN, micro_project, run

pytestmark = pytest.mark.usefixtures("one_thread")

PEOPLE = ["Alma Reyes", "Bruno Castell", "Chiara Vitt", "Dmitri Olsen", "Elif Kaya", "Farid Nasser"]
FACTS = [("Where was {p} born?", "{p} was born in {c}."), ("What does {p} do for a living?", "{p} works as a {j}."),
         ("Which city does {p} live in now?", "{p} lives in {c}."), ("What is {p}'s favourite book?", "{p} loves {b}.")]
CITIES = ["Lisbon", "Tartu", "Bergen", "Ghent", "Izmir", "Split"]
JOBS = ["baker", "surveyor", "luthier", "pilot", "archivist", "florist"]
BOOKS = ["The Salt Road", "Glass Rivers", "A Year of Owls", "North Light", "Paper Kites", "The Long Tide"]


def records(people: list[str]) -> list[dict]:
    out = []
    for i, p in enumerate(people):
        k = PEOPLE.index(p)
        for q, a in FACTS:
            fill = {"p": p, "c": CITIES[(k + i) % 6], "j": JOBS[k], "b": BOOKS[k]}
            out.append({"question": q.format(**fill), "answer": a.format(**fill)})
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from relearn.modeling.model import train_tokenizer

    root = tmp_path_factory.mktemp("init-inputs")
    tok = train_tokenizer(TEXTS + [r["question"] + " " + r["answer"] for r in records(PEOPLE)], vocab_size=400)
    tok.chat_template = CHAT_TEMPLATE
    write_gguf(root / "tiny.gguf", tiny_llama(tok), tok)
    data = root / "mydata"
    data.mkdir()
    (data / "forget.json").write_text(json.dumps(records(PEOPLE[:2]), indent=1))
    (data / "retain.jsonl").write_text("\n".join(json.dumps(r) for r in records(PEOPLE[2:])) + "\n")
    return {"gguf": root / "tiny.gguf", "forget": data / "forget.json", "retain": data / "retain.jsonl"}


def invoke(args: list[str], cwd: Path):
    import os

    here = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["init", *args], catch_exceptions=False)
    finally:
        os.chdir(here)


def test_bad_input_is_one_line_exit_2_and_nothing_written(inputs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "Where was Alma Reyes born?"}, {"question": "x", "answer": "y"}]))
    overlap = tmp_path / "overlap.json"
    overlap.write_text(json.dumps(records(PEOPLE[:1]) + records(PEOPLE[2:3])))
    cases = [
        (["--model", str(inputs["gguf"]), "--forget", str(bad), "--retain", str(inputs["retain"])], "answer"),
        (["--model", str(inputs["gguf"]), "--forget", str(overlap), "--retain", str(inputs["retain"])], "also in"),
        (["--model", str(tmp_path / "nothing"), "--forget", str(inputs["forget"]), "--retain", str(inputs["retain"])],
         "model.base"),
        (["--model", str(inputs["gguf"]), "--forget", str(tmp_path / "missing.json"), "--retain", str(inputs["retain"])],
         "not found"),
    ]
    for args, words in cases:
        result = invoke(args + ["--no-estimate"], tmp_path)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, result.output)
        assert "Traceback" not in result.output
        assert not (tmp_path / "params.yaml").exists()


def test_an_existing_params_file_is_kept_without_force(inputs, tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 7\n")
    args = ["--model", str(inputs["gguf"]), "--forget", str(inputs["forget"]), "--retain", str(inputs["retain"]),
            "--no-estimate"]
    result = invoke(args, tmp_path)
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "params.yaml").read_text() == "seed: 7\n"
    result = invoke(args + ["--force"], tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "params.yaml.bak").read_text() == "seed: 7\n"
    assert load_params(tmp_path / "params.yaml").seed == 0


@pytest.mark.slow
def test_init_writes_params_that_dvc_repro_runs_through(inputs, tmp_path):
    # a copy of the project (library, stages, dvc.yaml) whose params.yaml is the demo's, as on a fresh clone
    env = micro_project(tmp_path, {})
    result = invoke(["--model", str(inputs["gguf"]), "--forget", str(inputs["forget"]), "--retain",
                     str(inputs["retain"]), "--name", "Tiny Test", "--force"], tmp_path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "8 records" in out and "16 records" in out and "estimated time of the run here" in out
    assert "dvc repro" in out

    params = load_params(tmp_path / "params.yaml")
    assert params.model.base == str(inputs["gguf"])
    assert (params.data.source, params.data.forget_file, params.data.retain_file) == ("tofu", "forget.json", "retain.jsonl")
    assert Path(params.data.path) == inputs["forget"].parent
    assert params.register.model_name == "relearn-tiny-test"
    assert params.target.finetune == "full" and params.unlearn.lr == 1e-3  # the small-model recipe
    assert params.register.gates["kfr"]["bound"] == "lower" and params.export.quantize == "auto"
    assert 64 <= params.model.max_length <= 128  # the tiny model's context is 128
    text = (tmp_path / "params.yaml").read_text()
    assert "# Estimated time of `dvc repro`" in text and "relearn init:" in text
    assert yaml.safe_load(text)["model"]["base"] == str(inputs["gguf"])

    # init's settings as written: on a model this small the whole lifecycle takes about a minute
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, env=env, check=True)
    repro = run([str(BIN / "dvc"), "repro"], tmp_path, env)
    assert "register" in repro.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["unlearned"]["ci"]["kfr"]["n"] == 2  # 20% of 8 forget records held out for evaluation
