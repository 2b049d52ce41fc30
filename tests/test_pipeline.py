"""End to end: `dvc repro` of a micro configuration in a temporary copy of the project.

Real DVC stages, a real SQLite MLflow store at the copy's root (the default location), real
ONNX Runtime sessions. Takes a minute or two on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

MICRO = {
    "seed": 0,
    "data": {"people": 4, "forget_people": 1, "holdout_people": 1, "general": 8, "private_people": 1},
    "model": {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 400,
              "max_length": 64},
    "target": {"epochs": 4, "batch_size": 16, "lr": 0.005, "check_every": 0},
    "augment": {"general_ratio": 0.25},
    "unlearn": {"epochs": 1, "batch_size": 16, "lr": 0.003, "lora": {"r": 4, "alpha": 8}},
    # 200 bootstrap resamples: the intervals are checked for being there and well formed here (their
    # values against scipy's in test_uncertainty); with 1000 the bootstrap was most of the evaluation's time
    "evaluate": {"max_new_tokens": 12, "batch_size": 64, "bootstrap_resamples": 200},
    "register": {"model_name": "micro", "experiment": "micro",
                 # a micro model forgets and retains little: gates that check the plumbing, not quality
                 "gates": {"krr_floor": {"metric": "unlearned.krr", "min": 0.0},
                           "ls_ratio": {"metric": "ls_ratio", "min": 0.0}}},
    "export": {"parity_questions": 8, "max_new_tokens": 8},
    "robustness": {"relearn_steps": [1, 2], "relearn_lrs": [0.001, 0.005], "relearn_folds": 1},
    "compare": {"methods": ["relearn", "npo"], "overrides": {"npo": {"lr": 0.001}}, "robustness": ["npo", "relearn"]},
}
MODELS = {"target", "control", "unlearned"}


def merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "gates" else value
    return out


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def micro_project(work: Path, overrides: dict, gitignore: str = "") -> dict:
    """A copy of the project in `work` (library, stages, the full params schema with `overrides`),
    committed to a fresh git + DVC repository; the environment to run its commands with."""
    for name in ("relearn", "pipelines"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    # DVC wants every key a stage names to be in params.yaml: write the full schema, micro-sized
    from relearn.params import Params

    (work / "params.yaml").write_text(yaml.safe_dump(merged(Params().to_dict(), overrides)))
    if gitignore:
        (work / ".gitignore").write_text(gitignore)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(work)  # the copy's library, not the checkout's
    env.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q"], work, env)
    run([str(BIN / "dvc"), "init", "-q"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "micro"], work, env)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("project")
    env = micro_project(work, MICRO)
    result = run([str(BIN / "dvc"), "repro"], work, env)
    (work / "repro.log").write_text(result.stdout + result.stderr)
    return work, env


def test_repro_writes_metrics_for_both_models(project):
    work, env = project
    headline = json.loads((work / "metrics.json").read_text())
    assert {name: set(m) for name, m in headline.items()} == {name: {"kfr", "krr", "ls", "ci"} for name in MODELS}
    metrics = json.loads((work / "reports" / "evaluation.json").read_text())
    for model in MODELS:
        for key in ("kfr", "krr", "ls"):
            assert 0.0 <= metrics[model][key] <= 1.0 and metrics[model][key] == headline[model][key]
            # beside each headline number, its 95% interval and item count (the same in both files)
            ci = metrics[model]["ci"][key]
            assert headline[model]["ci"][key] == {"low": ci["low"], "high": ci["high"], "n": ci["n"]}
            assert ci["low"] <= metrics[model][key] <= ci["high"] and ci["n"] > 0
        assert metrics[model]["ci"]["kfr"]["method"] == "wilson" and metrics[model]["ci"]["ls"]["method"] == "bootstrap"
        assert metrics[model]["variants"]["simple"]["ci"]["kfr"]["n"] > 0
        assert metrics[model]["mia"]["ci"]["loss_auc"]["n"] == metrics[model]["mia"]["n_members"] + \
            metrics[model]["mia"]["n_nonmembers"]
    assert metrics["unlearned"]["ci"]["ls_ratio"]["value"] == pytest.approx(
        metrics["unlearned"]["ls"] / metrics["target"]["ls"])
    for model in MODELS:
        assert set(metrics[model]["forget"]) >= {"ppl", "brunet", "honore", "p", "b", "h", "rougeL_recall"}
        assert set(metrics[model]["variants"]) == {"original", "simple", "contextual", "noise", "logical"}
        tofu, mia = metrics[model]["tofu"], metrics[model]["mia"]
        assert 0.0 < tofu["forget"]["probability"] <= 1.0 and tofu["forget"]["truth_ratio"] > 0
        assert tofu["model_utility"] is not None and 0.0 <= tofu["forget_quality"]["p_value"] <= 1.0
        assert 0.0 <= mia["loss_auc"] <= 1.0 and mia["n_members"] > 0 and mia["n_nonmembers"] > 0
    # the control is compared with itself: identical truth ratios
    assert metrics["control"]["tofu"]["forget_quality"]["p_value"] == 1.0
    control = json.loads((work / "reports" / "control.json").read_text())
    target = json.loads((work / "reports" / "target.json").read_text())
    assert control["epochs_run"] == target["epochs_run"] and control["train_pairs"] < target["train_pairs"]
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], work, env).stdout
    assert "unlearned" in shown and "kfr" in shown
    assert (work / "models" / "adapter" / "adapter_model.safetensors").exists()
    assert (work / "plots" / "unlearn_loss.csv").read_text().startswith("step,epoch,loss,forget_ce,retain_ce,retain_kl")


def test_registered_version_is_gated_and_pending(project):
    work, env = project
    script = (
        "import json, mlflow\n"
        "from mlflow import MlflowClient\n"
        "c = MlflowClient()\n"
        "v = c.get_model_version_by_alias('micro', 'challenger')\n"
        "print(json.dumps({'version': str(v.version), 'tags': v.tags}))\n"
    )
    env = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    out = json.loads(run([sys.executable, "-c", script], work, env).stdout.strip().splitlines()[-1])
    assert out["version"] == "1"
    tags = out["tags"]
    assert tags["gate.status"] == "passed" and tags["approval_status"] == "pending"
    assert tags["gate.krr_floor"].endswith("passed")
    # weight-only int8 keeps the embedding (most of this micro model) and the output head in fp32
    assert float(tags["export.int8_ratio"]) < 1.0
    registration = json.loads((work / "reports" / "registration.json").read_text())
    assert registration["version"] == "1"


def test_export_has_parity_and_int8_forgetting(project):
    work, _ = project
    report = json.loads((work / "reports" / "export.json").read_text())
    assert report["parity_fp32_vs_torch"]["exact_match"] == 1.0
    assert 0.0 <= report["int8_kfr"] <= 1.0 and 0.0 <= report["int8_krr"] <= 1.0
    assert (work / "export" / "onnx-int8" / "model_quantized.onnx").exists()
    assert report["deployable_krr_drop"] == pytest.approx(report["fp32_krr"] - report["int8_krr"])
    # the deployable says how it must be prompted: the micro model has no chat template, so plain
    fmt = json.loads((work / "export" / "onnx-int8" / "prompt_format.json").read_text())
    assert fmt["mode"] == "auto" and fmt["template"] == "Question: {question}\nAnswer:"


def test_promote_refuses_until_approved_then_moves_production(project):
    work, env = project
    relearn = [sys.executable, "-m", "relearn.cli"]
    refused = subprocess.run(relearn + ["promote", "--version", "1"], cwd=work, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "not approved" in refused.stderr and "Traceback" not in refused.stderr
    approve = ("from mlflow import MlflowClient\n"
               "MlflowClient().set_model_version_tag('micro', '1', 'approval_status', 'approved')\n")
    run([sys.executable, "-c", approve], work, dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db"))
    promoted = run(relearn + ["promote", "--version", "1"], work, env)
    assert "production" in promoted.stdout
    status = run(relearn + ["status"], work, env).stdout
    assert "production" in status and "approved" in status


def test_second_repro_does_nothing(project):
    work, env = project
    result = run([str(BIN / "dvc"), "repro"], work, env)
    # only the inputs stage runs (always_changed: it hashes data.path and the request ledger); its
    # output is the same, so nothing after it runs again
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'inputs':"], result.stdout


def test_compare_stage_and_report(project):
    work, env = project
    result = json.loads((work / "reports" / "compare" / "npo.json").read_text())
    assert result["method"] == "npo" and 0.0 <= result["metrics"]["kfr"] <= 1.0
    assert abs(sum(result["seesaw"]["target"]) - 1.0) < 1e-6 and abs(sum(result["seesaw"]["unlearned"]) - 1.0) < 1e-6
    assert (work / "models" / "compare" / "npo" / "adapter_model.safetensors").exists()
    table = run([sys.executable, "-m", "relearn.cli", "compare"], work, env).stdout
    assert "| target |" in table and "| npo |" in table
    # the pipeline's own method is not trained twice: its row is the unlearn/evaluate/robustness stages' run
    reused = json.loads((work / "reports" / "compare" / "relearn.json").read_text())
    evaluation = json.loads((work / "reports" / "evaluation.json").read_text())
    assert "reused" in reused and reused["metrics"] == evaluation["unlearned"]
    assert reused["robustness"]["summary"] == json.loads((work / "reports" / "robustness.json").read_text())["summary"]
    summary = json.loads((work / "reports" / "compare.json").read_text())
    assert set(summary) == {"target", "relearn", "npo"} and {"kfr", "krr", "ls", "ls_forget", "ppl_forget"} <= set(summary["npo"])
    # intervals in the table, and npo tested against relearn on the same items
    assert len(summary["npo"]["kfr 95% CI"]) == 2 and result["per_item"]["forget"]
    tests = json.loads((work / "reports" / "compare_tests.json").read_text())
    assert [t["method"] for t in tests] == ["npo"] and tests[0]["kfr"]["n"] == len(result["per_item"]["forget"])
    assert "npo vs relearn: KFR" in table and "Paired tests against relearn" in table
    for name in ("compare_kfr_krr.png", "compare_ls.png", "compare_seesaw.png"):
        assert (work / "plots" / name).stat().st_size > 1000


def test_robustness_stage_probes_three_models(project):
    work, _ = project
    report = json.loads((work / "reports" / "robustness.json").read_text())
    assert MODELS <= set(report)
    for name in MODELS:
        rungs = report[name]["ladder"]["rungs"]
        assert set(rungs) == {"torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int4"}
        assert all(0.0 <= v["kfr"] <= 1.0 and 0.0 <= v["krr"] <= 1.0 for v in rungs.values())
        assert {"plain", "paraphrase", "perturb"} <= set(report[name]["probes"]["probes"])
    # the relearning sweep runs on the control and the unlearned model only (no gate reads the target's)
    assert "relearning" not in report["target"]
    for name in ("control", "unlearned"):
        assert report[name]["relearning"]["steps"] == [1, 2]
        assert len(report[name]["relearning"]["settings"]) == 4
        # relearn_precision auto on a CPU run: fp32 weights, AdamW, and what that holds
        attack = report[name]["relearning"]
        assert (attack["precision"], attack["optimizer"], attack["gradient_checkpointing"]) == ("float32", "adamw", False)
        assert attack["memory"]["estimate_bytes"] > attack["memory"]["weights_bytes"] > 0
    summary = report["summary"]
    assert set(summary) >= {"int4_kfr_drop", "int8_kfr_drop", "jailbreak_min_kfr", "relearning_excess"}
    # each gated number with its 95% interval and item count
    assert {"int4_kfr_drop", "jailbreak_min_kfr", "relearning_recovery", "relearning_excess"} <= set(summary["ci"])
    assert summary["ci"]["relearning_excess"]["value"] == pytest.approx(summary["relearning_excess"])
    assert report["unlearned"]["ladder"]["rungs"]["onnx-int4"]["ci"]["kfr"]["method"] == "wilson"
    control = {(s["lr"], s["steps"]): s["recovery"] for s in report["control"]["relearning"]["settings"]}
    assert summary["relearning_excess"] == pytest.approx(max(s["recovery"] - control[(s["lr"], s["steps"])]
                                                             for s in report["unlearned"]["relearning"]["settings"]))
    # the unlearned model's probes through the output guard the register stage attaches: a guarded
    # answer never gives away more than the unguarded one, and the guard costs no retain knowledge
    probes = report["unlearned"]["probes"]
    assert probes["guard"]["facts"] > 0 and "guard" not in report["control"]["probes"]
    for name, block in probes["probes"].items():
        assert block["guarded"]["kfr"] >= block["kfr"], name
    assert summary["guarded_jailbreak_min_kfr"] == 1.0 and summary["guard_krr_drop"] <= 0.01
    plain = probes["probes"]["plain"]  # the guard's cost is read on the general set too
    assert plain["general"]["n"] > 0 and summary["guard_krr_drop"] == max(
        plain["krr"] - plain["guarded"]["krr"], plain["general"]["krr"] - plain["general"]["guarded"]["krr"])
    assert summary["ci"]["guarded_jailbreak_min_kfr"]["method"] == "wilson"
    compared = json.loads((work / "reports" / "compare" / "npo.json").read_text())
    assert "onnx-int4" in compared["robustness"]["ladder"]["rungs"]


def test_guard_probes_bench_scores_the_workspace_model_with_and_without_the_guard(project, tmp_path):
    work, env = project
    out = tmp_path / "guard.json"
    run([sys.executable, str(ROOT / "bench" / "guard_probes.py"), "--project", str(work),
         "--jailbreaks", "priming-sure", "--json", str(out)], work, env)
    result = json.loads(out.read_text())
    assert list(result["rows"]) == ["plain", "jailbreak:priming-sure"] and result["guard"]["facts"] > 0
    for row in result["rows"].values():
        assert row["kfr_guarded"]["value"] >= row["kfr"]["value"] and row["kfr"]["method"] == "wilson"
        assert row["kfr"]["n"] == row["kfr_guarded"]["n"] > 0
    assert result["aggregate"]["guarded_jailbreak_min_kfr"]["kfr"] == result["rows"]["jailbreak:priming-sure"][
        "kfr_guarded"]["value"]


def test_guard_probes_bench_rescores_the_robustness_stage_answers_without_the_model(project, tmp_path):
    """--answers: the stage's kept answers through a guard this checkout builds; with the same guard code
    the rescored guarded rates are the stage's own, probe by probe (the key differs, the matches do not)."""
    work, env = project
    out = tmp_path / "rescored.json"
    run([sys.executable, str(ROOT / "bench" / "guard_probes.py"), "--project", str(work),
         "--answers", "reports/robustness_items.json", "--json", str(out)], work, env)
    result = json.loads(out.read_text())
    stage = json.loads((work / "reports" / "robustness.json").read_text())["unlearned"]["probes"]
    assert set(result["rows"]) == set(stage["probes"]) and "plain" in result["rows"]
    for name, row in result["rows"].items():
        assert row["kfr_guarded"]["value"] == pytest.approx(stage["probes"][name]["guarded"]["kfr"]), name
        assert row["krr_guarded"]["value"] == pytest.approx(stage["probes"][name]["guarded"]["krr"]), name
        assert row["kfr"]["value"] == pytest.approx(stage["probes"][name]["kfr"]), name
        assert 0 <= row["retain_touched"] <= row["krr"]["n"]
    # the general set's plain answers, the guard's cost beyond the retain set, rescored the same way
    general = stage["probes"]["plain"]["general"]
    assert result["rows"]["plain"]["general"]["krr_guarded"]["value"] == pytest.approx(general["guarded"]["krr"])
    assert result["rows"]["plain"]["general"]["krr"]["n"] == general["n"] > 0
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "guard_probes.py"), "--project", str(work),
                          "--answers", "reports/robustness.json"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "not a robustness stage per-item file" in bad.stderr


def test_attack_precision_bench_runs_the_attack_in_both_precisions_on_the_workspace(project, tmp_path):
    work, env = project
    out = tmp_path / "attack.json"
    run([sys.executable, str(ROOT / "bench" / "attack_precision.py"), "--workspace", str(work), "--threads", "1",
         "--set", "robustness.relearn_steps=[2]", "--json", str(out)], work, env)
    result = json.loads(out.read_text())
    lrs = yaml.safe_load((work / "params.yaml").read_text())["robustness"]["relearn_lrs"]
    assert [row["lr"] for row in result["table"]] == sorted(lrs)
    for row in result["table"]:
        for precision in ("float32", "bfloat16"):
            cell = row[precision]
            assert cell["excess"] == pytest.approx(cell["recovery"] - cell["control"])
    assert result["runs"]["unlearned/bfloat16"]["memory"]["estimate_bytes"] * 2 == \
        result["runs"]["unlearned/float32"]["memory"]["estimate_bytes"]
    assert set(result["worst_excess"]) == {"float32", "bfloat16"}


def test_sweep_bench_runs_the_compare_stage_per_point_and_puts_the_params_back(project, tmp_path):
    work, env = project
    params_before, lock_before = (work / "params.yaml").read_text(), (work / "dvc.lock").read_text()
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    cmd = [sys.executable, str(ROOT / "bench" / "sweep_methods.py"), "--workdir", str(work), "--method", "ga",
           "--lr", "0.0001", "0.01", "--epochs", "1", "--json", str(out), "--plot", str(png)]
    try:
        first = run(cmd, work, env).stdout
        assert (work / "params.yaml").read_text() == params_before
        result = json.loads(out.read_text())
        points = {p["name"]: p for p in result["points"]}
        assert set(points) == {"ga-lr0.0001-e1", "ga-lr0.01-e1"}
        for name, point in points.items():
            kept = json.loads((work / "reports" / "sweep" / f"{name}.json").read_text())
            # each point is the compare stage with that override: its training report says the lr
            assert kept["train"]["lr"] == point["lr"] and kept["method"] == "ga"
            assert point["kfr_ci"][0] <= point["kfr"] <= point["kfr_ci"][1] and point["kfr_n"] > 0
        # gradient ascent at a hundred times the lr forgets at least as much (the same items, seeded)
        assert points["ga-lr0.01-e1"]["kfr"] >= points["ga-lr0.0001-e1"]["kfr"]
        assert result["relearn"]["kfr"] == json.loads((work / "reports" / "evaluation.json").read_text())["unlearned"]["kfr"]
        assert result["nearest"]["ga"]["point"] in points and png.stat().st_size > 1000
        # the matched point tested against ReLearn on the same items
        [test] = result["paired_tests"]
        assert test["method"] == "ga" and test["kfr"]["n"] == points["ga-lr0.01-e1"]["kfr_n"]
        assert "vs relearn: KFR" in first
        assert "| relearn (the pipeline's) |" in first
        # a rerun takes the kept points instead of training again, and --kept tabulates them all
        assert "[sweep] ga-lr0.01-e1 ..." not in run(cmd, work, env).stdout
        kept = [sys.executable, str(ROOT / "bench" / "sweep_methods.py"), "--workdir", str(work), "--kept",
                "--json", str(out), "--plot", str(png)]
        assert "[sweep]" not in run(kept, work, env).stdout
        assert {p["name"] for p in json.loads(out.read_text())["points"]} == set(points)
    finally:
        (work / "params.yaml").write_text(params_before)
        (work / "dvc.lock").write_text(lock_before)
        for path in ("reports/sweep", "models/compare/ga"):
            shutil.rmtree(work / path, ignore_errors=True)
        (work / "reports" / "compare" / "ga.json").unlink(missing_ok=True)


def test_report_is_attached_and_shows_no_forget_fact(project):
    work, env = project
    from relearn.data.validate import load_validated
    from relearn.evidence import secrets

    html = (work / "reports" / "report" / "report.html").read_text()
    assert "<html" in html.lower() and "micro" in html
    # the probes and the ladder as the robustness stage measured them
    assert "paraphrase" in html and "jailbreak:" in html and "robustness.relearning_excess" in html
    ladder = html[html.index('id="ladder"'):]  # the ladder section lists the rungs from fp32 down
    assert ladder.index("torch-fp32") < ladder.index("onnx-int4")
    forget = load_validated(work / "data" / "splits" / "forget.jsonl") + load_validated(work / "data" / "splits" / "forget_eval.jsonl")
    values = [v for r in forget for v in r.facts.values()]
    assert values and not [v for v in values if v.lower() in html.lower()]
    assert not [s for s in secrets(forget) if len(s) > 3 and s.lower() in html.lower()]
    script = ("import json\n"
              "from mlflow import MlflowClient\n"
              "c = MlflowClient()\n"
              "v = c.get_model_version('micro', '1')\n"
              "print(json.dumps({'tag': v.tags.get('report'), 'files': [a.path for a in c.list_artifacts(v.run_id, 'report')],\n"
              "                  'guard': [a.path for a in c.list_artifacts(v.run_id, 'guard')],\n"
              "                  'facts': v.tags.get('guard.facts'), 'description': v.description}))\n")
    out = json.loads(run([sys.executable, "-c", script], work, dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db"))
                     .stdout.strip().splitlines()[-1])
    assert out["tag"] == "report/report.html" and "report/report.html" in out["files"]
    # the output guard: keyed hashes of the forget facts, no text; the description counts them
    assert sorted(out["guard"]) == ["guard/guard.json", "guard/guard.key"] and int(out["facts"]) > 0
    assert f"Output guard: {out['facts']} forget facts" in out["description"]
    assert "Output guard:" in html


def test_failed_robustness_gate_keeps_version_out_of_challenger(project):
    work, env = project
    params = yaml.safe_load((work / "params.yaml").read_text())
    # no model can keep KFR above 1 under every jailbreak: this gate must fail
    params["register"]["gates"]["jailbreak"] = {"metric": "robustness.jailbreak_min_kfr", "min": 1.01}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run([str(BIN / "dvc"), "repro", "register"], work, env)
    registration = json.loads((work / "reports" / "registration.json").read_text())
    assert registration["version"] == "2" and registration["gate_status"] == "failed"
    gate = next(g for g in registration["gates"] if g["name"] == "jailbreak")
    assert gate["value"] is not None and not gate["passed"]  # measured and too low, not missing
    status = run([sys.executable, "-m", "relearn.cli", "status"], work, env).stdout
    line = next(row for row in status.splitlines() if "version   2" in row)
    assert "failed" in line and "blocked" in line and "challenger" not in line
    assert "failed gate jailbreak" in status


def test_hardened_and_distilled_model_flows_through_every_stage_and_release_decides_the_gate(project):
    """unlearn.harden and the distill stage on: every stage after unlearn sees the distilled model,
    the version carries no adapter, and a relearning gate that fails blocks under release 'weights'
    and is advisory under 'api'."""
    work, env = project
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["unlearn"]["harden"] = {**params["unlearn"]["harden"], "negative": "dpo", "normalise": True, "sam_rho": 0.05}
    params["distill"] = {**params["distill"], "enabled": True, "epochs": 1, "alpha": 0.5}
    # the compare stages are test_compare_stage_and_report's; here (and in the README's experiment
    # after it) they would only retrain and probe npo again
    params["compare"] = {"methods": [], "overrides": {}, "robustness": []}
    # the micro gates only (an earlier test added a jailbreak gate that always fails), and a relearning
    # gate that always fails: no model gets back less than nothing
    params["register"]["gates"] = {**MICRO["register"]["gates"],
                                   "relearning": {"metric": "robustness.relearning_excess", "max": -1.0, "blocks": ["weights"]}}
    params["register"]["release"] = "weights"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    log = run([str(BIN / "dvc"), "repro"], work, env).stdout
    for stage in ("unlearn", "distill", "evaluate", "export", "robustness", "register"):
        assert f"Running stage '{stage}'" in log
    assert json.loads((work / "reports" / "unlearn.json").read_text())["harden"]["negative"] == "dpo"
    header = (work / "plots" / "unlearn_loss.csv").read_text().splitlines()[0].split(",")
    assert {"forget_dpo", "forget_grad_scale", "forget_sam"} <= set(header)
    distilled = json.loads((work / "reports" / "distill.json").read_text())
    assert distilled["enabled"] and distilled["steps"] > 0 and (work / "models" / "distilled" / "model.safetensors").exists()
    blocked = json.loads((work / "reports" / "registration.json").read_text())
    assert blocked["gate_status"] == "failed"
    assert next(g for g in blocked["gates"] if g["name"] == "relearning")["passed"] is False
    script = (
        "import json, sys, yaml, mlflow\n"
        "from mlflow import MlflowClient\n"
        "c = MlflowClient()\n"
        "v = c.get_model_version('micro', sys.argv[1])\n"
        "d = mlflow.artifacts.download_artifacts(f'models:/micro/{sys.argv[1]}')\n"
        "arts = yaml.safe_load(open(d + '/MLmodel'))['flavors']['python_function']['artifacts']\n"
        "print(json.dumps({'tags': v.tags, 'artifacts': sorted(arts), 'description': v.description}))\n"
    )
    tracked = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    out = json.loads(run([sys.executable, "-c", script, blocked["version"]], work, tracked).stdout.strip().splitlines()[-1])
    assert out["artifacts"] == ["base_model", "generation"]          # the distilled model alone, no adapter
    assert out["tags"]["distilled"].startswith("alpha=0.5") and out["tags"]["release"] == "weights"
    assert "Blocked by gates" in out["description"] and "relearning" in out["description"]
    # the same evidence under release 'api': the relearning gate is shown, not blocking
    params["register"]["release"] = "api"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run([str(BIN / "dvc"), "repro", "register"], work, env)
    passed = json.loads((work / "reports" / "registration.json").read_text())
    assert passed["gate_status"] == "passed" and int(passed["version"]) == int(blocked["version"]) + 1
    out = json.loads(run([sys.executable, "-c", script, passed["version"]], work, tracked).stdout.strip().splitlines()[-1])
    assert "failed advisory" in out["tags"]["gate.relearning"] and "Advisory gates that failed" in out["description"]


def _readme_next_commands() -> list[str]:
    """The commands the README gives for after `make demo`, as it writes them (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("source .venv/bin/activate\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_readmes_next_commands_work_as_written(project):
    """After the pipeline has run: `source .venv/bin/activate`, then each command of the README's
    block in turn; the two servers (ui, serve) must answer on their default ports, then stop."""
    import time
    import urllib.request

    work, env = project
    commands = _readme_next_commands()
    assert [c.split()[:2] for c in commands] == [["dvc", "repro"], ["dvc", "exp"], ["relearn", "status"],
                                                 ["relearn", "ui"], ["relearn", "promote"], ["relearn", "serve"]]
    venv = work / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix))  # the environment `make` created, where the README expects it
    env = {k: v for k, v in env.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(BIN))  # only activate adds it
    servers = {"relearn ui": "http://127.0.0.1:5000/health", "relearn serve": "http://127.0.0.1:8080/ready"}

    def shell(command: str) -> list[str]:
        return ["bash", "-c", f"source .venv/bin/activate && exec {command}"]

    for command in commands:
        if command in servers:
            proc = subprocess.Popen(shell(command), cwd=work, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            try:
                deadline, up = time.monotonic() + 120, False
                while not up and time.monotonic() < deadline and proc.poll() is None:
                    try:
                        up = urllib.request.urlopen(servers[command], timeout=2).status == 200
                    except OSError:
                        time.sleep(0.5)
                assert up, f"{command}: did not answer {servers[command]}: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
            finally:
                proc.terminate()
                proc.wait(30)
            continue
        done = subprocess.run(shell(command), cwd=work, env=env, capture_output=True, text=True, timeout=900)
        if command.startswith("relearn promote"):
            # the README's version 3 does not exist here, or is not approved: a one-line refusal, exit 2
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            continue
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ran = [line for line in done.stdout.splitlines() if line.startswith("Running stage")]
        if command == "dvc repro":
            assert ran == ["Running stage 'inputs':"], done.stdout
        if command.startswith("dvc exp run -S unlearn."):
            # an experiment on the unlearning settings: the target's and the control's evaluation and
            # probes are kept (their own stages), only the new unlearned model is measured
            assert "Running stage 'unlearn':" in ran and "Running stage 'evaluate':" in ran, done.stdout
            assert not [line for line in ran if "references" in line or "'control'" in line], done.stdout
