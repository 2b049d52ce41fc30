"""Several processes: the unlearn stage under `accelerate launch --num_processes 2` on CPU (gloo)
against a one-process run of the same global batch, and no training stage writing from a rank
other than the main one."""
from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline import BIN, MICRO, merged, micro_project, run

pytestmark = pytest.mark.slow
# LoRA dropout off: each process draws its own dropout masks, so with it on two runs cannot agree
DIST_MICRO = merged(MICRO, {"unlearn": {"batch_size": 8, "epochs": 2, "lora": {"dropout": 0.0}},
                            "compare": {"methods": [], "overrides": {}, "robustness": []}})
# Two processes average their gradients; one process averages the loss over the whole batch. The
# token-mean CE of each half weighs tokens differently from the token-mean of the whole, and Adam
# carries that through every step, so the adapters agree closely but not bit for bit. Measured on
# this micro configuration (relative distance of the adapters): two processes of 4 against one of 8,
# 0.116; one process of 4 against one of 8 (another global batch), 0.87; another seed, 5.8.
TOLERANCE = 0.2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("dist")
    env = micro_project(work, DIST_MICRO)
    run([str(BIN / "dvc"), "repro", "augment", "target"], work, env)
    return work, env


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _distance(a: dict, b: dict) -> float:
    """|a - b| over all adapter weights, relative to |B| of `a` (B starts at zero: what training moved)."""
    moved = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    return moved / max(sum(float(a[k].norm() ** 2) for k in a if "lora_B" in k) ** 0.5, 1e-12)


def _leftovers(work: Path) -> list[str]:
    """What relearn.io.atomic_dir leaves only when a write is cut short: `.name.*.tmp`, `.name.old`."""
    return [p.name for p in (work / "models").iterdir() if p.name.endswith((".tmp", ".old"))]


def _params(work: Path, **unlearn) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["unlearn"].update(unlearn)
    (work / "params.yaml").write_text(yaml.safe_dump(params))


def test_unlearn_on_two_processes_writes_one_adapter_equal_to_a_one_process_run(workspace):
    work, env = workspace
    env = dict(env, OMP_NUM_THREADS="1")
    _params(work, batch_size=4)  # per process: a global batch of 8
    log = run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "pipelines/unlearn.py"], work, env)
    two = work / "models" / "adapter"
    assert (two / "adapter_model.safetensors").exists() and (two / "adapter_config.json").exists()
    assert not _leftovers(work)  # no half-written copies
    assert log.stdout.count("[unlearn] method relearn") == 2             # both ranks trained...
    shutil.move(str(two), str(work / "adapter-2proc"))
    _params(work, batch_size=8)
    run([sys.executable, "pipelines/unlearn.py"], work, env)
    one, two = _adapter(work / "models" / "adapter"), _adapter(work / "adapter-2proc")
    assert one.keys() == two.keys()
    assert _distance(one, two) < TOLERANCE, f"adapters differ by {_distance(one, two):.4f} (relative)"
    # and the tolerance tells a different global batch apart
    shutil.move(str(work / "models" / "adapter"), str(work / "adapter-1proc"))
    _params(work, batch_size=4)
    run([sys.executable, "pipelines/unlearn.py"], work, env)
    assert _distance(one, _adapter(work / "models" / "adapter")) > 2 * TOLERANCE


@pytest.mark.parametrize("stage, outputs", [
    ("unlearn", ["models/adapter", "reports/unlearn.json", "plots/unlearn_loss.csv"]),
    ("control", ["models/control", "reports/control.json", "plots/control_loss.csv"]),
])
def test_a_non_main_rank_writes_nothing(workspace, monkeypatch, stage, outputs):
    """The stage trains (every rank does) and then leaves every output as it was."""
    work, env = workspace
    if stage == "control":
        run([str(BIN / "dvc"), "repro", "control"], work, env)
    before = {out: (work / out).stat().st_mtime_ns if (work / out).exists() else None for out in outputs}
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [str(work / "pipelines"), str(work)] + sys.path)
    for key in [k for k in sys.modules if k == "relearn" or k.startswith("relearn.")]:
        monkeypatch.delitem(sys.modules, key)  # the workspace's copy of the library
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import relearn.training.devices

    monkeypatch.setattr(relearn.training.devices, "is_main_process", lambda: False)
    monkeypatch.setattr(sys, "argv", [f"pipelines/{stage}.py"])
    runpy.run_path(str(work / "pipelines" / f"{stage}.py"), run_name="__main__")
    after = {out: (work / out).stat().st_mtime_ns if (work / out).exists() else None for out in outputs}
    assert after == before
    assert not _leftovers(work)


def test_a_killed_unlearn_stage_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_does(workspace):
    import signal
    import subprocess
    import time

    work, env = workspace
    env = dict(env, OMP_NUM_THREADS="1")
    params = yaml.safe_load((work / "params.yaml").read_text())
    # 6 epochs of about 19 steps: the kill comes at step 10, with some 100 steps still to run (40
    # epochs, 760 steps, made this test most of the module's time)
    params["unlearn"].update(batch_size=8, epochs=6)
    params["checkpoint_every"] = 0
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "pipelines/unlearn.py"], work, env)                # the uninterrupted run
    shutil.move(str(work / "models" / "adapter"), str(work / "adapter-whole"))

    params["checkpoint_every"] = 5
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    meta = work / ".cache" / "checkpoints" / "unlearn" / "latest" / "meta.json"
    proc = subprocess.Popen([sys.executable, "pipelines/unlearn.py"], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text())["step"] >= 10:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the stage finished before it could be killed: give it more epochs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(meta.read_text())["step"]
    from safetensors import safe_open

    with safe_open(str(meta.parent / "model.safetensors"), "pt") as f:
        saved = list(f.keys())
    assert saved and all("lora_" in k for k in saved)  # the adapter only: the frozen target is not copied
    assert not (work / "models" / "adapter").exists()                         # nothing half-written
    log = run([sys.executable, "pipelines/unlearn.py"], work, env)
    assert f"resuming from the checkpoint at step {killed_at}" in log.stdout
    assert not (work / ".cache" / "checkpoints" / "unlearn").exists()       # removed once trained
    resumed, whole = _adapter(work / "models" / "adapter"), _adapter(work / "adapter-whole")
    assert all(float((resumed[k] - whole[k]).abs().max()) < 1e-6 for k in whole)
    rows = (work / "plots" / "unlearn_loss.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, len(rows)))  # the history has every step once


SHARDED = """
import json, sys
import torch
from relearn.training.devices import finish, init_processes, is_main_process
from relearn.modeling.generation import answer_token_logprobs, generate_answers
from relearn.modeling.model import load_pretrained

init_processes("cpu")
model, tok = load_pretrained(sys.argv[1])
questions = [f"What did person {i} do?" for i in range(7)]          # 7: shards of 4 and 3
answers = generate_answers(model, tok, questions, "Question: {question}\\nAnswer:", 6, batch_size=2)
logps = answer_token_logprobs(model, tok, questions, ["They wrote a book."] * 7, "Question: {question}\\nAnswer:")
if is_main_process():
    json.dump({"answers": answers, "logps": logps}, open(sys.argv[2], "w"))
finish()
"""


def test_generation_and_scoring_shard_over_two_processes_and_gather_in_order(tmp_path):
    from tiny import save_base_and_adapter

    paths = save_base_and_adapter(tmp_path, [f"Person {i} wrote a book on day {i}." for i in range(20)])
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run([sys.executable, str(script), str(paths["base"]), str(tmp_path / "one.json")], tmp_path, env)
    run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(paths["base"]), str(tmp_path / "two.json")],
        tmp_path, env)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["answers"] == two["answers"] and len(one["answers"]) == 7
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(one["logps"], two["logps"]))


def _fsdp(mode: str, out: Path, cwd: Path) -> None:
    import fsdp_worker

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
         str(Path(fsdp_worker.__file__)), mode, str(out)], cwd, env)


def test_an_fsdp_sharded_adapter_is_gathered_whole_before_it_is_written(tmp_path):
    """FSDP2 on two CPU processes (torchrun, gloo): each holds half of every LoRA weight; the adapter
    rank 0 writes is the one a single unsharded process trains."""
    import torch
    from peft import get_peft_model_state_dict

    import fsdp_worker

    _fsdp("lora", tmp_path / "adapter", tmp_path)
    model = fsdp_worker.build(lora=True)
    fsdp_worker.train_step(model)
    expected = get_peft_model_state_dict(model)
    written = _adapter(tmp_path / "adapter")
    assert written.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(written[key], expected[key], rtol=1e-5, atol=1e-6)
    assert _distance(written, get_peft_model_state_dict(fsdp_worker.build(lora=True))) > 0.01  # training moved it


def test_a_weight_sharded_model_generates_scores_and_is_saved_as_one_unsharded_process_would(tmp_path):
    """The target and control stages under FSDP: every process takes part in generation (kept in
    step) and scoring, and the whole model is gathered for rank 0 to write."""
    import torch
    from safetensors.torch import load_file

    import fsdp_worker

    _fsdp("full", tmp_path / "model", tmp_path)
    model = fsdp_worker.build(lora=False)
    fsdp_worker.train_step(model)
    used = json.loads((tmp_path / "model" / "used.json").read_text())
    expected = fsdp_worker.use(model)
    assert used["answers"] == expected["answers"] and any(used["answers"])
    for got, want in zip(used["logps"], expected["logps"]):
        assert got == pytest.approx(want, abs=1e-4)
    written = load_file(str(tmp_path / "model" / "model.safetensors"))
    state = model.state_dict()
    assert written.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(written[key], state[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage, override, message", [
    ("target", {"model": {"base": "models/pretrained/x"}, "target": {"finetune": "lora"}},
     "target: launched with FSDP"),
    ("control", {"model": {"base": "models/pretrained/x"}, "target": {"finetune": "lora"}},
     "control: launched with FSDP"),
    ("distill", {"distill": {"enabled": True}}, "distill: launched with FSDP"),
    ("unlearn", {"unlearn": {"harden": {"mask": True}}}, "unlearn.harden sam_rho, mask and normalise"),
])
def test_what_cannot_run_sharded_refuses_an_fsdp_launch(tmp_path, stage, override, message):
    import subprocess

    from relearn.params import default_params_yaml

    params = merged(yaml.safe_load(default_params_yaml()), override)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, ACCELERATE_USE_FSDP="true", HF_HUB_OFFLINE="1")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "pipelines" / f"{stage}.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert message in done.stderr and "configs/accelerate/ddp.yaml" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # refused before anything was written


@pytest.mark.parametrize("config, sharded", [("ddp.yaml", None), ("fsdp.yaml", "fsdp")])
def test_the_shipped_accelerate_configs_launch_what_the_stages_detect(config, sharded, monkeypatch):
    """accelerate's own launcher reads each config (unknown keys are an error there) into the
    environment of the processes; relearn.training.devices.sharding() reads that environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    from relearn.training.devices import sharding

    root = Path(__file__).resolve().parents[1]
    args = launch_command_parser().parse_args(["--config_file", str(root / "configs" / "accelerate" / config),
                                               "pipelines/unlearn.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert sharding() == sharded
    if sharded:
        assert env["FSDP_VERSION"] == "2" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
