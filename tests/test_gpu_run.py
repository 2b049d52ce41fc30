"""bench/gpu_run.py, the paper's setting for a GPU: `--smoke` runs every phase of it on the micro
configuration (in a process where mlflow and dvc cannot be imported, as on the GPU machine), a small
`--budget-s` stops it cleanly with a partial JSON, and the weights' parts reassemble byte for byte."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_run.py"
# the GPU machine has none of these: the run must never import them (a None entry makes an import fail)
ABSENT = ("mlflow", "dvc")
GUARDED = ("import runpy, sys\n"
           "for name in sys.argv[1].split(','):\n"
           "    sys.modules[name] = None\n"
           "sys.argv = [sys.argv[2]] + sys.argv[3:]\n"
           "runpy.run_path(sys.argv[0], run_name='__main__')\n")
CELL = re.compile(r"\d+\.\d{3} \[-?\d+\.\d{2}, -?\d+\.\d{2}\], n = \d+")  # relearn.evaluation.uncertainty.describe
SMOKE_LIMIT_S = 180
pytestmark = pytest.mark.slow  # the smoke run: every phase of the GPU script on the CPU, about a minute


def run_script(args: list[str], absent=ABSENT, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", GUARDED, ",".join(absent), str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"gpu_run.py {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def as_bytes(tensor):
    import torch

    return tensor.contiguous().view(-1).view(torch.uint8)


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_run_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    start = time.monotonic()
    done = run_script(["--smoke", "--out", str(out)])
    seconds = time.monotonic() - start
    print(f"gpu_run.py --smoke: {seconds:.0f} s")
    return {"json": json.loads((out / "gpu_run.json").read_text()), "md": (out / "gpu_run.md").read_text(),
            "items": json.loads((out / "per_item.json").read_text()), "seconds": seconds, "log": done.stdout}


def test_smoke_runs_every_phase(smoke):
    r = smoke["json"]
    assert smoke["seconds"] < SMOKE_LIMIT_S
    assert r["mode"] == "smoke" and r["complete"] and r["stopped"] is None and r["skipped"] == []
    baselines = [f"baseline:{m}@{lr}" for lr in ("0.001", "0.003") for m in ("ga", "npo", "gd")]
    expected = ["data", "base", "target", "control", "augment", "relearn", "eval:target", "eval:control", "eval:relearn",
                "eval:base", *baselines, "robustness:relearn", "robustness:control", "throughput", "export"]
    assert sorted(r["plan"]) == sorted(expected) and set(r["phases"]) == set(r["plan"])
    statuses = {name: v["status"] for name, v in r["phases"].items()}
    assert statuses.pop("eval:base") == "n/a"  # the from-scratch smoke has no pretrained base
    assert set(statuses.values()) == {"done"}, {k: (v, r["phases"][k].get("note")) for k, v in statuses.items() if v != "done"}
    assert all(v["seconds"] >= 0 for v in r["phases"].values())
    # what the GPU machine must have: nothing of the absent packages, and gguf only for a GGUF base
    imported = set(r["environment"]["imported"])
    assert not imported & {"mlflow", "dvc", "gguf"}
    assert r["data"]["counts"]["forget"] > 0 and r["target"]["epochs_run"] > 0 and r["augment"]["kept"] > 0


def test_smoke_every_model_has_intervals(smoke):
    r = smoke["json"]
    names = {"target", "control", "relearn"} | {f"{m}@{lr}" for m in ("ga", "npo", "gd") for lr in ("0.001", "0.003")}
    assert set(r["models"]) == names and set(smoke["items"]) == names
    for name, m in r["models"].items():
        for key in ("kfr", "krr", "ls"):
            ci = m["ci"][key]
            assert ci["n"] > 0 and ci["value"] == pytest.approx(m[key]), (name, key)
            assert ci["low"] is not None and ci["low"] - 1e-9 <= m[key] <= ci["high"] + 1e-9, (name, key, ci)
        assert m["ci"]["kfr"]["method"] == "wilson" and m["ci"]["ls"]["method"] == "bootstrap"
        if name != "control":  # read against the control: TOFU forget quality with its interval
            assert "ci" in m["tofu"]["forget_quality"]
    for name in names - {"target", "control"}:  # read against the target, the items resampled for both
        assert r["models"][name]["ci"]["ls_ratio"]["n"] > 0
    # each baseline at each of its learning rates, trained at that rate
    assert r["baselines"] == {m: {lr: f"{m}@{lr}" for lr in ("0.001", "0.003")} for m in ("ga", "npo", "gd")}
    for method, by_lr in r["baselines"].items():
        for lr, name in by_lr.items():
            assert r["train"][name]["method"] == method and r["train"][name]["lr"] == pytest.approx(float(lr))


def test_smoke_paired_tests_robustness_export_throughput(smoke):
    r = smoke["json"]
    tests = {t["method"]: t for t in r["paired_tests"]}
    assert set(tests) == set(r["models"]) - {"target", "control", "relearn"}
    for t in tests.values():
        assert t["reference"] == "relearn" and "vs relearn" in t["summary"]
        assert all(0.0 <= t[key]["p_value"] <= 1.0 for key in ("kfr", "krr", "ls"))
    rob = r["robustness"]
    assert set(rob) == {"relearn", "control", "summary"}
    summary = rob["summary"]
    for key in ("int4_kfr_drop", "jailbreak_min_kfr", "relearning_recovery", "relearning_excess"):
        assert summary[key] is not None and summary["ci"][key]["n"] > 0, key
    for name in ("relearn", "control"):
        assert set(rob[name]["ladder"]["rungs"]) == {"torch-fp32", "onnx-int4"}
        assert "ci" in rob[name]["relearning"] and "jailbreak_min_kfr" in rob[name]["probes"]
    assert r["export"]["provider"] == "CPUExecutionProvider" and r["export"]["token_agreement"] is not None
    assert {"fp32_kfr", "int8_kfr", "int8_krr_drop"} <= set(r["export"])
    t = r["throughput"]
    assert set(t["ratios"][t["ratios_model"]]) == {"relearn_over_sft_step", "memory_over_two_copy", "batched_over_sequential"}
    assert all(row["mfu"] is not None and row["mfu"] > 0 for row in t["cost"][t["ratios_model"]].values())


def test_smoke_markdown_shows_intervals(smoke):
    md = smoke["md"]
    sections = {part.splitlines()[0]: part for part in md.split("\n## ")[1:]}

    def rows(title: str) -> dict[str, str]:
        section = next(text for head, text in sections.items() if head.startswith(title))
        return {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}

    models = rows("Models")
    for name in smoke["json"]["models"]:
        assert len(CELL.findall(models[name])) >= 3, models[name]  # KFR, KRR and LS with interval and n
    robustness = rows("Robustness")
    assert CELL.search(robustness["relearning_excess"]) and CELL.search(robustness["int4_kfr_drop"])
    assert set(rows("Baselines against ReLearn")) >= {t["method"] for t in smoke["json"]["paired_tests"]}
    assert {"Phases", "Export (ONNX Runtime provider CPUExecutionProvider)"} <= set(sections)
    assert set(rows("Throughput")) >= {"relearn_over_sft_step", "memory_over_two_copy", "batched_over_sequential"}


def test_budget_stops_early_with_a_partial_json(tmp_path):
    # optimum absent too, as on the GPU machine: the ONNX parts are announced as left out
    run_script(["--smoke", "--out", str(tmp_path), "--budget-s", "12"], absent=(*ABSENT, "optimum"), timeout=200)
    r = json.loads((tmp_path / "gpu_run.json").read_text())
    assert not r["complete"] and r["stopped"] == "budget" and r["elapsed_s"] < 60
    assert set(r["phases"]) == set(r["plan"])
    statuses = {name: v["status"] for name, v in r["phases"].items()}
    assert set(statuses.values()) <= {"done", "n/a", "skipped", "interrupted"}
    assert sorted(r["skipped"]) == sorted(n for n, s in statuses.items() if s in ("skipped", "interrupted"))
    assert {"export", "throughput", "robustness:control"} <= set(r["skipped"])
    for name in r["skipped"]:
        assert r["phases"][name]["note"]
    assert any("optimum cannot be imported" in note for note in r["notes"])
    md = (tmp_path / "gpu_run.md").read_text()
    assert "incomplete (stopped: budget" in md


def test_without_optimum_the_ladder_keeps_its_torch_rungs():
    from relearn.params import Params

    gpu_run = load_module()
    p = Params()
    p.robustness.ladder = ["torch-fp32", "onnx-int4"]
    same, note = gpu_run.without_onnx(p, None)
    assert same is p and note is None
    fewer, note = gpu_run.without_onnx(p, "optimum cannot be imported here")
    assert fewer.robustness.ladder == ["torch-fp32"] and "onnx-int4" in note and p.robustness.ladder[1] == "onnx-int4"


def test_weights_pack_and_reassemble_byte_for_byte(tmp_path):
    from safetensors.torch import load_file

    from tiny import save_base_and_adapter

    gpu_run = load_module()
    base = save_base_and_adapter(tmp_path / "tiny", ["Question: who? Answer: Ada Lovelace, 1815."] * 4)["base"]
    data = tmp_path / "data" / "knowundo-privacy"
    data.mkdir(parents=True)
    (data / "full.json").write_text("[]")
    limit = 0.1  # MiB: several parts of the tiny model
    manifest = gpu_run.pack_weights(base, tmp_path / "packed", part_mib=limit, data=data)
    assert manifest["parts"] >= 3 and manifest["kind"] == "directory"
    parts = sorted((tmp_path / "packed").glob("part*"))
    assert [p.name for p in parts] == [f"part{i}" for i in range(1, manifest["parts"] + 1)]
    for folder in parts:
        pieces = list(folder.glob(f"{gpu_run.PART_PREFIX}*"))
        assert len(pieces) == 1 and pieces[0].stat().st_size <= limit * 2**20
    assert (parts[-1] / "data" / "knowundo-privacy" / "full.json").is_file()

    # the device: each command copies its part into one folder; the last one's command runs the script
    device = tmp_path / "device"
    device.mkdir()
    for folder in parts[:-1]:
        shutil.copytree(folder, device, dirs_exist_ok=True)
    with pytest.raises(SystemExit, match="missing"):
        gpu_run.weights_source(device)
    shutil.copytree(parts[-1], device, dirs_exist_ok=True)
    model_dir = gpu_run.weights_source(device)
    assert model_dir == device / "model" / base.name
    assert sorted(f.name for f in model_dir.iterdir()) == sorted(f.name for f in base.iterdir() if f.is_file())
    before, after = load_file(base / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert before.keys() == after.keys()
    for key, tensor in before.items():  # byte-identical tensors
        assert after[key].dtype == tensor.dtype and after[key].shape == tensor.shape
        assert as_bytes(after[key]).equal(as_bytes(tensor)), key
    assert gpu_run.weights_source(device) == model_dir  # a second call reuses the extracted model

    # a damaged part is refused
    piece = next(device.glob(f"{gpu_run.PART_PREFIX}01*"))
    raw = bytearray(piece.read_bytes())
    raw[100] ^= 0xFF
    piece.write_bytes(bytes(raw))
    shutil.rmtree(device / "model")
    with pytest.raises(SystemExit, match="damaged"):
        gpu_run.weights_source(device)


def test_a_relative_data_path_resolves_where_mlflow_cannot_be_imported(tmp_path):
    """The first H200 run stopped at its data phase: resolving `--data` imported the MLflow tracking module
    (for the project root), and the GPU machine has no mlflow. The smoke run reads the built-in world and
    never resolves a path, so this checks that one step on its own."""
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "deep").mkdir()
    code = ("import sys\n"
            f"for name in {ABSENT!r}:\n"
            "    sys.modules[name] = None\n"
            "from relearn.data.sources import resolve\n"
            "print(resolve('data/knowundo'))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "deep", env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path.resolve() / "data" / "knowundo")


def test_the_gpu_batch_scales_the_learning_rates_by_the_square_root():
    module = load_module()
    raw = {"target": {"batch_size": 8, "lr": 3e-4}, "unlearn": {"batch_size": 8, "lr": 1e-3}}
    module.scale_batch(raw, 32)
    assert raw["target"] == {"batch_size": 32, "lr": pytest.approx(6e-4)}
    assert raw["unlearn"] == {"batch_size": 32, "lr": pytest.approx(2e-3)}
    module.scale_batch(raw, None)
    assert raw["unlearn"]["batch_size"] == 32
