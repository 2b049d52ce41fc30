"""`relearn init`: a params.yaml for your own model and your own forget and retain files.

    relearn init --model PATH|FILE.gguf|HUB_ID --forget F --retain R [--format auto|tofu|relearn] [--name NAME]

The steps, each of which can fail with one line and exit status 2, nothing written:

1. The files are checked as `relearn data validate --forget F --retain R` checks them (fields, types,
   duplicates, a question in both sets). Both files become the `tofu` source: `data.path` is the
   directory that holds both, `data.forget_file` and `data.retain_file` their paths inside it; a
   seeded share (`data.eval_fraction`) of each is held out for evaluation.
2. The model is prepared as the base stage prepares it (relearn.modeling.base_model: a GGUF file is
   dequantised once, into the same content-addressed cache `dvc repro` then reuses) and inspected:
   parameters, chat template, context length.
3. The settings come from what worked on a pretrained model of that size (`RECIPES`): below about
   1.5B parameters, profiles/smollm2-*.yaml's full fine-tuning of the target and its LoRA ReLearn
   recipe; above, the paper's LoRA target and its learning rate. `model.max_length` and
   `evaluate.max_new_tokens` are read off the data's own token lengths; dtype and device off this
   machine; on a machine without a GPU the robustness stage gets the profiles' cheaper grid.
4. The time the run takes here is estimated from measured steps: a few fine-tuning steps of the real
   model on the real pairs, and one batch of generation, scaled by the step counts the settings imply
   (`estimate`). It is an estimate, printed with the parts it is made of.

The params.yaml written holds every key (the schema's defaults where init has no reason to
change one), with each key's help as a comment and a note on each value init chose. An existing
file is kept unless `--force`, and then moved to `<out>.bak` first.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from relearn.errors import UserError

SMALL = 1.5e9  # parameters: below, full fine-tuning of the target (profiles/smollm2-*.yaml); above, LoRA
# A ReLearn step is a forward and backward pass on a forget batch and on a retain batch, and a reference
# forward on the retain batch, through a LoRA adapter. Against a full fine-tuning step of the same batch
# (SmolLM2-135M, batch 8, 2026-12-04): 3.6x on an H200 in bf16, where small steps are bound by kernel
# launches (6.0 against 1.66 steps a second, bench/gpu_run.py); 1.5x on 2 CPU cores in fp32, where the
# adapter's cheaper backward pass counts (about 7 s against 10.9 s a step, profiles/smollm2-knowundo.yaml).
UNLEARN_STEP_FACTOR = {"cuda": 3.6, "cpu": 1.5}
# The rules backend keeps about 4.8 training pairs per forget item (the original and four variants,
# a few dropped by the leak check: 1,923 of 2,000 for KnowUnDo's 400 forget items).
PAIRS_PER_FORGET_ITEM = 4.8
CPU_ROBUSTNESS = {"ladder": ["torch-fp32", "onnx-int4"], "probes": ["jailbreak"],
                  "relearn_lrs": [3e-5, 1e-4], "relearn_steps": [10, 25], "relearn_folds": 1}


@dataclass(frozen=True)
class Recipe:
    """Training settings known to work for pretrained models of a size (the notes say where from)."""
    target: dict
    unlearn: dict
    lora: dict
    note: str


RECIPES = {
    "small": Recipe(
        target={"finetune": "full", "epochs": 6, "batch_size": 8, "lr": 5e-4, "warmup_ratio": 0.05,
                "check_every": 1, "stop_recall": 0.9},
        unlearn={"epochs": 2, "batch_size": 8, "lr": 1e-3},
        lora={"r": 32, "alpha": 32},
        note="profiles/smollm2-knowundo.yaml (SmolLM2-135M-Instruct: target forget recall 0.94 after 4 epochs "
             "at 5e-4; ReLearn with the aspect phrasing, 2 epochs: KFR 0.95, KRR 0.90 on 43/41 items)"),
    "large": Recipe(
        target={"finetune": "lora", "lora_r": 64, "epochs": 10, "batch_size": 8, "lr": 3e-4, "warmup_ratio": 0.05,
                "check_every": 1, "stop_recall": 0.9},
        unlearn={"epochs": 2, "batch_size": 8, "lr": 1e-4},
        lora={"r": 32, "alpha": 32},
        note="the paper (Llama-2-7b-chat: a LoRA target at lr 3e-4 for up to 10 epochs; ReLearn lr 1e-4 on TOFU)"),
}


@dataclass
class ModelFacts:
    source: str
    directory: Path
    parameters: int
    chat_template: bool
    context_length: int | None
    dtype: str

    def size(self) -> str:
        return "small" if self.parameters < SMALL else "large"


@dataclass
class Estimate:
    """Seconds for each stage on this machine, and what they rest on."""
    parts: dict[str, float] = field(default_factory=dict)
    basis: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def human(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


# ------------------------------------------------------------------------------------------ data
def check_data(forget: str, retain: str, fmt: str | None):
    """(forget records, retain records) of two valid files, or a UserError naming the first problem."""
    from relearn.data.validate import check_file, check_overlap

    problems, loaded = [], {}
    for path in (forget, retain):
        if not Path(path).is_file():
            raise UserError(f"{path}: file not found")
        records, file_problems = check_file(path, fmt)
        problems += file_problems
        loaded[path] = records
    if not problems:
        problems += check_overlap(loaded[forget], loaded[retain], forget, retain)
    if not problems:
        for path, kind in ((forget, "forget"), (retain, "retain")):
            if len(loaded[path]) < 2:
                problems.append(f"{path}: the {kind} set needs at least 2 records (one to train on, one to "
                                f"evaluate), found {len(loaded[path])}")
    if problems:
        more = f" (and {len(problems) - 1} more: relearn data validate --forget {forget} --retain {retain})" \
            if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    return loaded[forget], loaded[retain]


def data_location(forget: Path, retain: Path, root: Path) -> dict:
    """data.* for the two files: their common directory (relative to the project when inside it)."""
    forget, retain = forget.resolve(), retain.resolve()
    common = Path(os.path.commonpath([forget.parent, retain.parent]))
    try:
        shown = common.relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        shown = common.as_posix()
    return {"source": "tofu", "path": shown, "forget_file": forget.relative_to(common).as_posix(),
            "retain_file": retain.relative_to(common).as_posix()}


# ----------------------------------------------------------------------------------------- model
def inspect_model(source: str, cache_dir: str | os.PathLike = ".cache/base") -> tuple[ModelFacts, tempfile.TemporaryDirectory]:
    """Prepare `source` as the base stage does (into the same cache) and read its size and template.
    Returns the facts and the temporary directory holding the prepared model (the caller cleans it up)."""
    from transformers import AutoConfig

    from relearn.modeling.base_model import prepare_base

    scratch = tempfile.TemporaryDirectory(prefix="relearn-init-")
    directory = Path(scratch.name) / "base"
    try:
        report = prepare_base(source, directory, cache_dir)
        config = AutoConfig.from_pretrained(str(directory))
    except UserError:
        scratch.cleanup()
        raise
    except (OSError, ValueError, KeyError) as e:
        scratch.cleanup()
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"--model {source}: cannot be read as a causal language model ({type(e).__name__}: {first})") from None
    facts = ModelFacts(source=source, directory=directory, parameters=int(report.get("parameters") or 0),
                       chat_template=bool(report.get("chat_template")),
                       context_length=getattr(config, "max_position_embeddings", None), dtype=str(report.get("dtype")))
    return facts, scratch


def token_lengths(directory: Path, records, template) -> tuple[list[int], list[int]]:
    """(prompt + answer tokens, answer tokens) of each record, as the training stages encode them."""
    from transformers import AutoTokenizer

    from relearn.modeling.encoding import answer_ids, prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    pairs, answers = [], []
    for r in records:
        a = len(answer_ids(tokenizer, r.answer, template))
        pairs.append(len(prompt_ids(tokenizer, r.question, template)) + a)
        answers.append(a)
    return pairs, answers


def quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -------------------------------------------------------------------------------------- settings
def choose(facts: ModelFacts, pair_lengths: list[int], answer_lengths: list[int], cuda: bool, n_forget: int,
           name: str) -> tuple[dict, dict]:
    """(overrides of the schema defaults, a note for each key chosen)."""
    recipe = RECIPES[facts.size()]
    notes: dict[tuple, str] = {}
    cap = min(facts.context_length or 2048, 2048)
    longest = quantile(pair_lengths, 0.99)
    max_length = min(cap, max(64, 32 * math.ceil(longest * 1.1 / 32)))
    new_tokens = min(128, max(32, 8 * math.ceil((quantile(answer_lengths, 0.95) + 8) / 8)))
    over = {
        "checkpoint_every": 50,
        "model": {"base": facts.source, "max_length": max_length, "dtype": "auto",
                  "prompt_format": "auto"},
        "target": dict(recipe.target),
        "augment": {"backend": "rules", "general_ratio": 0.0, "phrasing": "aspect" if facts.chat_template else "discreet"},
        "unlearn": {**recipe.unlearn, "lora": dict(recipe.lora)},
        "evaluate": {"max_new_tokens": new_tokens, "ppl_model": "base", "ppl_aggregate": "mean", "variant_items": 25},
        "register": {"model_name": f"relearn-{name}", "gates": real_model_gates()},
        "export": {"quantize": "auto"},
    }
    notes[("model", "base")] = f"relearn init: {facts.parameters:,} parameters, " \
                               f"chat template {'yes' if facts.chat_template else 'no (the plain prompt_template)'}"
    notes[("model", "max_length")] = f"relearn init: the 99th percentile of the pairs' tokens is {longest} " \
                                     f"(context length {facts.context_length or 'unknown'})"
    notes[("model", "dtype")] = "relearn init: " + ("bfloat16 on this machine's GPU" if cuda else
                                                    "float32 here (no GPU: bf16 autocast ran slower than fp32 on CPUs without AMX)")
    for section in ("target", "unlearn"):
        notes[(section, "lr")] = f"relearn init: {facts.size()} model ({facts.parameters / 1e6:,.0f}M), from {recipe.note}"
    notes[("evaluate", "max_new_tokens")] = f"relearn init: the 95th percentile of the answers' tokens is " \
                                            f"{quantile(answer_lengths, 0.95)}"
    notes[("export", "quantize")] = "relearn init: ship the fastest deployable that passes the export gates " \
                                    "(on SmolLM2, int8 at accuracy_level 4: 25 ms a token against 66 for torch fp32)"
    notes[("augment", "backend")] = "relearn init: the offline rules backend; an LLM endpoint writes better vague answers (docs/augmentation.md)"
    notes[("augment", "phrasing")] = "relearn init: " + (
        "vague answers in a chat model's register that name what was asked (on SmolLM2: KRR 0.90 against 0.76, "
        "ls_ratio 1.11 against 0.74 for the discreet sentences, relevance 0.746 against 0.647 for the chat "
        "sentences, docs/augmentation.md)" if facts.chat_template else
        "no chat template: the discreet sentences (chat and aspect phrasings are for chat models)")
    if not cuda:
        over["robustness"] = dict(CPU_ROBUSTNESS)
        notes[("robustness", "relearn_lrs")] = "relearn init: no GPU here, the profiles' CPU grid (the default grid is for a GPU)"
    if n_forget < 40:
        notes[("data", "eval_fraction")] = f"relearn init: {n_forget} forget records leave about " \
                                           f"{max(1, round(0.2 * n_forget))} to evaluate on: every rate will carry a wide interval"
    return over, notes


def real_model_gates() -> dict:
    """The SmolLM2 profiles' gates: the knowledge and fluency gates read the lower end of the 95% interval."""
    return {
        "kfr": {"metric": "unlearned.kfr", "min": 0.7, "bound": "lower"},
        "krr": {"metric": "unlearned.krr", "min": 0.7, "bound": "lower"},
        "ls_ratio": {"metric": "ls_ratio", "min": 0.75, "bound": "lower"},
        "int4": {"metric": "robustness.int4_kfr_drop", "max": 0.05},
        "jailbreak": {"metric": "robustness.jailbreak_min_kfr", "min": 0.7, "bound": "lower"},
        "relearning": {"metric": "robustness.relearning_excess", "max": 0.25, "blocks": ["weights"]},
        "mia": {"metric": "mia_auc_excess", "max": 0.1, "blocks": ["weights"]},
        "truth_ratio": {"metric": "truth_ratio_vs_control", "min": 0.5, "max": 2.0, "blocks": ["weights"]},
        "guard": {"metric": "robustness.guarded_jailbreak_min_kfr", "min": 1.0, "blocks": ["api"]},
        "guard_cost": {"metric": "robustness.guard_krr_drop", "max": 0.01, "blocks": ["api"]},
        "deployable_agreement": {"metric": "export.token_agreement", "min": 0.8},
        "deployable_krr": {"metric": "export.deployable_krr_drop", "max": 0.03},
    }


# -------------------------------------------------------------------------------------- estimate
def estimate(params, facts: ModelFacts, forget, retain, steps: int = 3) -> Estimate:
    """Seconds for each stage here: fine-tuning steps and one generation batch are measured on the real
    model and pairs, then scaled by the step counts the settings imply."""
    from relearn.training.devices import resolve_device
    from relearn.modeling.generation import generate_answers
    from relearn.modeling.model import load_pretrained
    from relearn.training.loop import TrainSpec, train_causal_lm

    dtype = params.dtype()
    template = params.model.prompt
    batch = params.target.batch_size
    pairs = [(r.question, r.answer) for r in forget + retain]
    pairs = (pairs * math.ceil(batch * (steps + 1) / len(pairs)))[:batch * (steps + 1)]
    model, tokenizer = load_pretrained(facts.directory, "float32")

    def timed(n: int) -> float:
        nonlocal model
        start = time.perf_counter()
        spec = TrainSpec.of(params, params.target, epochs=1, lr=1e-6, warmup_ratio=0.0, weight_decay=0.0, dtype=dtype)
        model, _ = train_causal_lm(model, tokenizer, pairs[:batch * n], spec, desc="init timing")
        return time.perf_counter() - start

    one = timed(1)  # model placement, the accelerator, the first step's allocations
    step = max((timed(steps + 1) - one) / steps, 1e-3)
    questions = [r.question for r in forget + retain][:params.evaluate.batch_size]
    start = time.perf_counter()
    generate_answers(model, tokenizer, questions, template, params.evaluate.max_new_tokens,
                     batch_size=params.evaluate.batch_size)
    gen = time.perf_counter() - start
    n_f_eval = max(1, round(params.data.eval_fraction * len(forget)))
    n_r_eval = max(1, round(params.data.eval_fraction * len(retain)))
    n_forget, n_retain = len(forget) - n_f_eval, len(retain) - n_r_eval
    n_hold = round(params.data.holdout_fraction * n_retain)
    t = params.target
    target_pairs = len(forget) + len(retain)  # TOFU: the target trains on the eval items too
    per_epoch = math.ceil(target_pairs / t.batch_size)
    recall = math.ceil(n_forget / params.evaluate.batch_size) * gen
    out = Estimate()
    out.parts["target"] = t.epochs * (per_epoch * step + recall)
    out.parts["control"] = t.epochs * math.ceil((n_retain - n_hold + n_r_eval) / t.batch_size) * step
    u = params.unlearn
    forget_side = math.ceil(n_forget * PAIRS_PER_FORGET_ITEM)
    factor = UNLEARN_STEP_FACTOR["cuda" if resolve_device(params.device).type == "cuda" else "cpu"]
    out.parts["unlearn"] = u.epochs * math.ceil(forget_side / u.batch_size) * step * factor
    per_kind = math.ceil(n_forget * PAIRS_PER_FORGET_ITEM / 5)  # the original and four variants of each forget item
    if params.evaluate.variant_items:
        per_kind = min(per_kind, params.evaluate.variant_items)
    eval_batches = math.ceil((n_f_eval + n_r_eval + 5 * per_kind) / params.evaluate.batch_size)
    # target, control, unlearned: the answers, then PPL, MIA, truth ratio and the probes' scores, about three more
    # generation batches' worth (the CPU profile's evaluation took 29 minutes for 8 such batches of 12 s)
    out.parts["evaluate"] = 3 * 4 * eval_batches * gen
    r = params.robustness
    attack = len(r.relearn_lrs) * r.relearn_folds * (max(r.relearn_steps) if r.relearn_steps else 0)
    probes = len(r.probes) + max(0, len(r.ladder) - 1)
    out.parts["robustness"] = 2 * (attack * step + probes * eval_batches * gen)  # the unlearned model and the control
    out.basis = [f"a fine-tuning step (batch {batch}, {dtype}, {params.device}): {step:.2f} s, the mean of {steps} "
                 f"measured after one warm-up",
                 f"a generation batch ({len(questions)} questions, {params.evaluate.max_new_tokens} new tokens): {gen:.1f} s",
                 f"a ReLearn step as {factor}x a fine-tuning step (measured ratio); the target for all "
                 f"{t.epochs} epochs (it stops earlier once it knows the forget set)"]
    return out


# -------------------------------------------------------------------------------------- writing
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "model"


@dataclass
class InitResult:
    path: Path
    facts: ModelFacts
    params: object
    estimate: Estimate | None
    counts: dict
    backup: Path | None


def init_project(model: str, forget: str, retain: str, fmt: str | None = None, name: str | None = None,
                 out: str = "params.yaml", force: bool = False, measure: bool = True,
                 cache_dir: str = ".cache/base") -> InitResult:
    """Check, inspect, choose, estimate, then write `out` (atomically; nothing on any error)."""
    import torch

    from relearn.io import find_project_root, write_text
    from relearn.params import Params, merge_raw, params_yaml, parse_params

    target = Path(out)
    if target.exists() and not force:
        raise UserError(f"{out}: already exists (the demo's settings?); --force replaces it, keeping it as {out}.bak")
    forget_records, retain_records = check_data(forget, retain, fmt)
    root = find_project_root(target.resolve().parent)
    facts, scratch = inspect_model(model, cache_dir)
    try:
        cuda = torch.cuda.is_available()
        template = Params().model.prompt
        pair_lengths, answer_lengths = token_lengths(facts.directory, forget_records + retain_records, template)
        name = slug(name or Path(model.rstrip("/")).stem)
        over, notes = choose(facts, pair_lengths, answer_lengths, cuda, len(forget_records), name)
        over["data"] = data_location(Path(forget), Path(retain), root)
        notes[("data", "path")] = f"relearn init: {len(forget_records)} forget and {len(retain_records)} retain records"
        params = parse_params(merge_raw(Params().to_dict(), over), str(out))
        timing = estimate(params, facts, forget_records, retain_records) if measure else None
    finally:
        scratch.cleanup()
    header = ["relearn init " + " ".join([f"--model {model}", f"--forget {forget}", f"--retain {retain}"]
                                         + ([f"--format {fmt}"] if fmt else []) + [f"--name {name}"]),
              f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: every key, with a note where init chose the value.", ""]
    if timing is not None:
        header += [f"Estimated time of `dvc repro` on the machine init ran on: about {human(timing.total)}"]
        header += [f"  {stage}: {human(s)}" for stage, s in timing.parts.items()]
        header += [f"  ({basis})" for basis in timing.basis] + [""]
    text = params_yaml(params, notes, header)
    backup = None
    if target.exists():
        backup = target.with_name(target.name + ".bak")
        shutil.copy2(target, backup)
    write_text(target, text)
    counts = {"forget": len(forget_records), "retain": len(retain_records),
              "pairs_p99_tokens": quantile(pair_lengths, 0.99), "median_answer_tokens": statistics.median(answer_lengths)}
    return InitResult(target, facts, params, timing, counts, backup)
