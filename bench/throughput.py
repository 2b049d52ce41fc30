"""What the three hot loops cost, for the built-in model and SmolLM2: fp32 against bf16, and the ratios of issue 12.

    python bench/throughput.py [--models builtin,smollm2] [--steps 5] [--only precision|ratios|attack] [--json FILE]

Every measurement runs on one fixed batch (--batch QA pairs of the built-in world, at most --max-length
tokens, encoded in the model's PromptFormat: SmolLM2's chat template, the plain template for the built-in
model), warms up once, then keeps the best of --steps. The device is CUDA when present, else the CPU
(for CPU figures on a GPU machine, run it with CUDA_VISIBLE_DEVICES= ). On a busy CPU, --threads 1 avoids
threads waiting on each other (two threads on two loaded cores ran 10-100x slower here).

The precision part (skipped with --only ratios) prints fp32 and bf16 tok/s of an SFT step, a ReLearn step
and generation. bf16 is what the pipeline runs with model.dtype: bfloat16: autocast from make_accelerator
(CPU too) for the two training steps, on the weights the pipeline loads (full fine-tuning, as the target
stage does it, keeps fp32 master weights; every LoRA and generation base is loaded in bf16); generation runs
the bf16 weights as-is, as the evaluate stage does.

The ratios part (skipped with --only precision) measures, in --dtype (auto: bf16 on a CUDA device that has
it, else fp32, since bf16 pays on a CPU only with AMX), the time per step and the peak memory of
    sft                  a full fine-tuning step on the forget batch (the precision part's SFT step);
    relearn_adapter_off  METHODS["relearn"] on the forget and retain batches, with LoRA, the KL reference
                         being the same PeftModel under disable_adapter() (as relearn.training.loop.unlearn does);
    relearn_two_copy     the same loss, LoRA and batches, the reference a frozen deep copy of the target in
                         eval mode under no_grad (the official ReLearn code's design),
and greedy generation of the batch's questions in one relearn.modeling.generation call against one question a call.
It prints per model, PASS or MISS against each aim:
    relearn_over_sft_step    relearn_adapter_off seconds / sft seconds                aim <= 1.3
    memory_over_two_copy     relearn_adapter_off peak / relearn_two_copy peak         aim <= 0.6
    batched_over_sequential  batched generation tok/s / sequential generation tok/s   aim >= 5
A ReLearn step runs two batches (forget and retain) and a reference forward where an SFT step runs one
batch: the per-step ratio is what an unlearning run costs against a fine-tuning run of as many steps; the
tok/s column compares them per token.

Peak memory is what the measurement's models, optimiser state, gradients and activations hold at the peak of
the warm-up and timed steps, over what the process held before the models were built (model-loading
transients are left out: the peak is reset once the step is ready). On CUDA it is
torch.cuda.max_memory_allocated (PyTorch's live tensors; not its allocator cache, not the CUDA context).
On a CPU it is the growth of the process's peak resident set: Linux's own high-water mark (VmHWM, reset
through /proc/self/clear_refs), which counts every page the process holds (tensors, allocator slack, code
paged in by the first step); where that file cannot be written, the resident set sampled every millisecond
by a thread, which can miss a shorter peak. Each step measure runs in a fresh interpreter (run_worker).

The attack part (--only attack, or with the others when --attack is given) measures a relearning attacker's
step as relearn.robustness.relearning runs it (attacker_setup, bound_activations, answer-token CE on the
forget batch, clip, step), each in a fresh interpreter like the step measures:
    attack_full_fp32   every weight, fp32 weights, AdamW (16 bytes a weight before activations)
    attack_full_bf16   every weight, bf16 weights, gradients and moments (BF16AdamW), gradient checkpointing
    attack_lora_bf16   a LoRA attacker (robustness.relearn_lora_r) over frozen bf16 weights
with the attack's own estimate (attacker_memory) beside the measured peak, and prints the bf16/fp32 peak.

MFU, when the device's peak is known (H100, H200 or A100 from torch.cuda.get_device_name, or --peak-tflops,
which gives an MFU on a CPU too): 6 * N * tokens / step seconds for the training steps (the model FLOPs of a
full training step; a LoRA step does less work, so its MFU is the conventional, flattering one) and
2 * N * new tokens / seconds for generation (the prompt's prefill not counted), over the peak dense bf16
FLOP/s. N is the weights that multiply per token: all but an input embedding that is not the output head.

--json FILE writes
    {"device", "torch", "torch_threads", "cpu_capability", "cpus", "loadavg_before", "steps", "batch",
     "max_length", "new_tokens", "loadavg_after", "under_load",
     "results": [{"model", "measure", "fp32_tok_s", "bf16_tok_s", "bf16_over_fp32", "fp32_tokens",
                  "fp32_seconds", "bf16_tokens", "bf16_seconds"}, ...],      # [] with --only ratios
     # the ratios part, absent with --only precision:
     "cost_dtype": "float32", "memory_method": "...", "peak_tflops": null or the peak used for MFU,
     "cost": {model: {"sft" | "relearn_adapter_off" | "relearn_two_copy":
                          {"tokens", "seconds", "tok_s", "peak_bytes", "matmul_params", "mfu"},
                      "generation_batched" | "generation_sequential":
                          {"tokens", "seconds", "tok_s", "matmul_params", "mfu"}}},
     "ratios": {model: {"relearn_over_sft_step", "memory_over_two_copy", "batched_over_sequential"}},
     "verdicts": {model: {the same keys: "PASS" or "MISS"}},
     "aims": {the same keys: "<= 1.3", "<= 0.6", ">= 5"},
     "ratios_model": the first model measured, whose three ratios are repeated at the top level:
     "relearn_over_sft_step", "memory_over_two_copy", "batched_over_sequential",
     # the attack part, absent unless it ran:
     "attack": {model: {"attack_full_fp32" | "attack_full_bf16" | "attack_lora_bf16":
                            {"tokens", "seconds", "tok_s", "peak_bytes", "estimate_bytes", "matmul_params"},
                        "full_bf16_over_fp32_peak"}}}
where model is "builtin" or "smollm2", seconds are the best step unrounded (so every ratio is exactly the
quotient of the numbers in "cost"), tokens count non-padding tokens (forget + retain for ReLearn; new tokens,
the stop token included, for generation) and mfu is null without a known peak.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate.state import AcceleratorState
from peft import get_peft_model

from relearn.data.world import generate_world
from relearn.modeling.generation import generate_token_ids
from relearn.methods import METHODS
from relearn.methods.losses import answer_ce
from relearn.modeling.model import DTYPES, build_scratch_model, count_parameters, load_pretrained, train_tokenizer
from relearn.params import load_params
from relearn.training.loop import make_accelerator, make_loader, make_optimizer, optimizer_step
from relearn.unlearning import lora_config

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "bfloat16")
STEP_MEASURES = ("sft", "relearn_adapter_off", "relearn_two_copy")
LABELS = {"sft": "sft step", "relearn_adapter_off": "relearn, adapter off", "relearn_two_copy": "relearn, two copies",
          "generation_batched": "generation, batched", "generation_sequential": "generation, one by one"}
# (comparison, aim, what is divided by what)
AIMS = {"relearn_over_sft_step": ("<=", 1.3, "ReLearn step / SFT step"),
        "memory_over_two_copy": ("<=", 0.6, "peak memory, adapter-off / two-copy reference"),
        "batched_over_sequential": (">=", 5.0, "generation tok/s, batched / sequential")}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, matched in order against
# torch.cuda.get_device_name(): the PCIe and NVL boards run lower clocks than the SXM ones, so they come first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
                    ("H200", 989.0), ("A100", 312.0))


@dataclass
class Subject:
    """A model under test: a fresh copy in a given weight dtype, its tokenizer, and its fixed batches."""
    name: str
    load: Callable[[str], torch.nn.Module]
    tokenizer: object
    forget: dict
    retain: dict
    questions: list[str]


@dataclass
class Step:
    """A training step ready to run: built apart from its timing so that the memory peak can be reset
    between the two, leaving model loading out of the peak."""
    tokens: int
    run: Callable[[], object]
    device: torch.device
    matmul_params: int
    estimate_bytes: int | None = None  # the relearning attack's own estimate (attack measures only)


def best_seconds(step: Callable[[], object], steps: int, device: torch.device) -> float:
    """One warm-up call, then the fastest of `steps` calls."""
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def accelerator_for(dtype: str):
    AcceleratorState._reset_state(True)  # the state is a process-wide singleton; fp32 and bf16 share a process
    return make_accelerator(dtype)


def on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def matmul_params(model: torch.nn.Module) -> int:
    """N of the 6N and 2N FLOPs per token: an input embedding is a lookup, not a multiply, so it counts only
    when it is also the output head (tied, as in SmolLM2; parameters() yields a tied weight once)."""
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n = count_parameters(model)
    return n if embedding is head else n - embedding.numel()


def prepare_sft(s: Subject, p, dtype: str, steps: int) -> Step:
    """Full fine-tuning: forward, answer-token CE, backward, clip, AdamW step (train_causal_lm's step)."""
    accelerator = accelerator_for(dtype)
    model = s.load("float32")  # the target stage trains fp32 master weights; bf16 is the autocast
    n = matmul_params(model)
    optimizer, scheduler = make_optimizer(model, p.target.lr, p.target.weight_decay, 0.0, steps + 1)
    return ce_step(accelerator, model, optimizer, scheduler, on(s.forget, accelerator.device), p.target.grad_clip, n)


def ce_step(accelerator, model, optimizer, scheduler, batch: dict, grad_clip: float, n: int,
            estimate: int | None = None) -> Step:
    """An answer-token CE training step of `model` on `batch`, prepared by `accelerator`."""
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()

    def step():
        loss = answer_ce(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                         batch["labels"])
        optimizer_step(accelerator, model, optimizer, scheduler, loss, grad_clip)
    return Step(int(batch["attention_mask"].sum()), step, accelerator.device, n, estimate)


def prepare_relearn(s: Subject, p, dtype: str, steps: int, two_copy: bool = False) -> Step:
    """LoRA on params.unlearn.lora, METHODS['relearn'] on forget + retain (unlearn's step); tokens are forget +
    retain tokens. The KL reference is the same weights with the adapter off, or with `two_copy` a frozen deep
    copy of the target: the loss, the adapter (same seed) and the batches are the same either way, so the two
    differ only in where the reference logits come from."""
    accelerator = accelerator_for(dtype)
    torch.manual_seed(p.seed)
    base = s.load(dtype)
    n = matmul_params(base)
    # copied before get_peft_model, which puts the LoRA layers into `base` itself
    frozen = copy.deepcopy(base).eval().requires_grad_(False).to(accelerator.device) if two_copy else None
    model = get_peft_model(base, lora_config(p))
    optimizer, scheduler = make_optimizer(model, p.unlearn.lr, p.unlearn.weight_decay, 0.0, steps + 1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    forget, retain = on(s.forget, accelerator.device), on(s.retain, accelerator.device)

    @torch.no_grad()
    def reference(batch):
        if frozen is not None:
            with accelerator.autocast():  # the same autocast as the prepared model's forward
                return frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with model.disable_adapter():  # as in relearn.training.loop.unlearn
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def step():
        loss, _ = METHODS["relearn"](model, forget, retain, reference, p.unlearn)
        optimizer_step(accelerator, model, optimizer, scheduler, loss, p.unlearn.grad_clip)
    tokens = int(forget["attention_mask"].sum() + retain["attention_mask"].sum())
    return Step(tokens, step, accelerator.device, n)


def prepare_attack(s: Subject, p, dtype: str, steps: int, attacker: str, precision: str) -> Step:
    """One step of the relearning attack's fine-tuning on the forget batch's original pairs, set up by the
    attack's own functions, under `dtype` autocast as the robustness stage runs it (the run's dtype); the
    Step carries the attack's memory estimate."""
    from transformers import get_constant_schedule

    from relearn.robustness.relearning import attacker_memory, attacker_setup, bound_activations

    accelerator = accelerator_for(dtype)
    r = p.robustness
    model = s.load(precision).to(accelerator.device)
    n, estimate = matmul_params(model), attacker_memory(model, attacker, r.relearn_lora_r)["estimate_bytes"]
    bound_activations(model, precision)
    attached, optimizer = attacker_setup(model, attacker, r.relearn_lora_r, min(r.relearn_lrs), p.seed)
    return ce_step(accelerator, attached, optimizer, get_constant_schedule(optimizer), on(s.forget, accelerator.device),
                   1.0, n, estimate)


ATTACK_MEASURES = {"attack_full_fp32": ("full", "float32"), "attack_full_bf16": ("full", "bfloat16"),
                   "attack_lora_bf16": ("lora", "bfloat16")}
LABELS.update({"attack_full_fp32": "attack full, fp32", "attack_full_bf16": "attack full, bf16",
               "attack_lora_bf16": "attack lora, bf16"})
PREPARE = {"sft": prepare_sft, "relearn_adapter_off": prepare_relearn,
           "relearn_two_copy": lambda s, p, dtype, steps: prepare_relearn(s, p, dtype, steps, two_copy=True),
           **{name: (lambda s, p, dtype, steps, a=a, pr=pr: prepare_attack(s, p, dtype, steps, a, pr))
              for name, (a, pr) in ATTACK_MEASURES.items()}}


def timed(step: Step, steps: int) -> tuple[int, float]:
    return step.tokens, best_seconds(step.run, steps, step.device)


def sft_step(s: Subject, p, dtype: str, steps: int) -> tuple[int, float]:
    return timed(prepare_sft(s, p, dtype, steps), steps)


def relearn_step(s: Subject, p, dtype: str, steps: int) -> tuple[int, float]:
    return timed(prepare_relearn(s, p, dtype, steps), steps)


def generation_rate(model, s: Subject, p, steps: int, new_tokens: int, batch_size: int,
                    device: torch.device) -> tuple[int, float]:
    """Greedy generation of all questions, `batch_size` prompts (left-padded) per generate call; new tokens
    (stop tokens counted) and the best seconds."""
    counted = []

    def step():
        with contextlib.redirect_stdout(io.StringIO()):  # generate_token_ids' progress line
            rows = generate_token_ids(model, s.tokenizer, s.questions, p.model.prompt, new_tokens, batch_size)
        counted.append(sum(min(len(r) + 1, new_tokens) for r in rows))
    seconds = best_seconds(step, steps, device)
    return min(counted), seconds  # greedy: every call makes the same tokens


def generation(s: Subject, p, dtype: str, steps: int, new_tokens: int) -> tuple[int, float]:
    """Batched generation of all questions at once, in weights of `dtype`; new tokens/s."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return generation_rate(s.load(dtype).to(device), s, p, steps, new_tokens, len(s.questions), device)


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_bytes("VmHWM")
        return True
    except (OSError, KeyError):
        return False


class PeakMemory:
    """Peak memory of one measurement over a baseline taken when this object is made (see the module docstring
    for what each device's number counts). Make it before building the models, call reset() once they are
    built, peak() after the steps."""

    def __init__(self, device: torch.device, sample: bool = False):
        self.cuda = device.type == "cuda"
        self.kernel = not self.cuda and not sample and _reset_peak_rss()
        self.method = ("torch.cuda.max_memory_allocated" if self.cuda else
                       "peak RSS growth (VmHWM, reset by /proc/self/clear_refs)" if self.kernel else
                       "peak RSS growth (psutil, sampled every 1 ms)")
        self._stop, self._thread, self._high = threading.Event(), None, 0
        self.base = self._current()

    def _current(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated()
        if self.kernel:
            return _proc_status_bytes("VmRSS")
        import psutil  # a dependency of accelerate

        return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._high = max(self._high, self._current())

    def reset(self) -> None:
        """Forget the peak so far: from here the peak starts at what the process holds now."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.kernel:
            _reset_peak_rss()
        else:
            self._high = self._current()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def peak(self) -> int:
        """Bytes at the peak since reset(), less the baseline."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.base
        if self.kernel:
            return max(_proc_status_bytes("VmHWM"), _proc_status_bytes("VmRSS")) - self.base
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return max(self._high, self._current()) - self.base


def worker(args, p) -> dict:
    """One step measure (args.worker) on one model (args.models), in this fresh process."""
    s = subjects([args.models], p, args)[0]
    memory = PeakMemory(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    step = PREPARE[args.worker](s, p, args.dtype, args.steps)
    memory.reset()
    tokens, seconds = timed(step, args.steps)
    return {"tokens": tokens, "seconds": seconds, "peak_bytes": memory.peak(), "matmul_params": step.matmul_params,
            "memory_method": memory.method,
            **({"estimate_bytes": step.estimate_bytes} if step.estimate_bytes is not None else {})}


def run_worker(measure: str, name: str, args, dtype: str) -> dict:
    """`measure` on model `name` in a fresh interpreter running this script. Why a process each: on a CPU the
    peak-RSS mark is per process and RSS does not come back down when a model is freed (glibc keeps the freed
    heap, the first step pages in kernels for good), so a measure made after another would be charged for it.
    CUDA's allocator counters could be reset in-process, but one path keeps the devices' numbers alike."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "measure.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", measure, "--worker-out", str(out),
               "--models", name, "--dtype", dtype, "--params", args.params, "--smollm2", args.smollm2,
               "--steps", str(args.steps), "--batch", str(args.batch), "--max-length", str(args.max_length)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{measure} on {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def cost_dtype(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def device_peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def verdict(key: str, value: float) -> str:
    op, aim, _ = AIMS[key]
    return "PASS" if (value <= aim if op == "<=" else value >= aim) else "MISS"


def measure_ratios(models: list[Subject], p, args, dtype: str, peak_tflops: float | None) -> dict:
    """The ratios part: the three step measures (a fresh process each), then both generations in this
    process (time only: they have no memory figure)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cost, ratios, verdicts, methods = {}, {}, {}, set()
    print(f"\n{'model':<8} | {'measure':<22} | {'s/step':>8} | {'tok/s':>9} | {'peak MiB':>8}"
          + (" | MFU" if peak_tflops else ""), flush=True)

    def show(s: Subject, measure: str, row: dict) -> None:
        row["tok_s"] = row["tokens"] / row["seconds"]
        flops = (6 if measure in STEP_MEASURES else 2) * row["matmul_params"] * row["tokens"] / row["seconds"]
        row["mfu"] = flops / (peak_tflops * 1e12) if peak_tflops else None
        mib = f"{row['peak_bytes'] / 2**20:>8.1f}" if "peak_bytes" in row else f"{'-':>8}"
        print(f"{s.name:<8} | {LABELS[measure]:<22} | {row['seconds']:>8.4f} | {row['tok_s']:>9,.0f} | {mib}"
              + (f" | {row['mfu']:.1%}" if peak_tflops else ""), flush=True)

    for s in models:
        rows = cost[s.name] = {}
        for measure in STEP_MEASURES:
            rows[measure] = run_worker(measure, s.name, args, dtype)
            methods.add(rows[measure].pop("memory_method"))
            show(s, measure, rows[measure])
        model = s.load(dtype).to(device)
        n = matmul_params(model)
        for measure, batch_size in {"generation_batched": len(s.questions), "generation_sequential": 1}.items():
            tokens, seconds = generation_rate(model, s, p, args.steps, args.new_tokens, batch_size, device)
            rows[measure] = {"tokens": tokens, "seconds": seconds, "matmul_params": n}
            show(s, measure, rows[measure])
        del model
        ratios[s.name] = {
            "relearn_over_sft_step": rows["relearn_adapter_off"]["seconds"] / rows["sft"]["seconds"],
            "memory_over_two_copy": rows["relearn_adapter_off"]["peak_bytes"] / rows["relearn_two_copy"]["peak_bytes"],
            "batched_over_sequential": rows["generation_batched"]["tok_s"] / rows["generation_sequential"]["tok_s"]}
        verdicts[s.name] = {k: verdict(k, v) for k, v in ratios[s.name].items()}
    for name in ratios:
        for key, value in ratios[name].items():
            op, aim, label = AIMS[key]
            print(f"{name}: {label} = {value:.2f} (aim {op} {aim:g}): {verdicts[name][key]}", flush=True)
    out = {"cost_dtype": dtype, "memory_method": ", ".join(sorted(methods)), "peak_tflops": peak_tflops,
           "cost": cost, "ratios": ratios, "verdicts": verdicts,
           "aims": {k: f"{op} {aim:g}" for k, (op, aim, _) in AIMS.items()}}
    if ratios:  # the first model's ratios at the top level too: json["relearn_over_sft_step"]
        first = next(iter(ratios))
        out.update(ratios_model=first, **ratios[first])
    return out


def measure_attack(models: list[Subject], args, dtype: str) -> dict:
    """The attack part: each attacker's step in a fresh process, with its estimate beside its peak, under
    `dtype` autocast (--dtype: the run's dtype)."""
    print(f"\n{'model':<8} | {'measure':<22} | {'s/step':>8} | {'tok/s':>9} | {'peak MiB':>8} | {'estimate MiB':>12}",
          flush=True)
    out: dict = {}
    for s in models:
        rows = out[s.name] = {}
        for measure in ATTACK_MEASURES:
            row = rows[measure] = run_worker(measure, s.name, args, dtype)
            row.pop("memory_method")
            row["tok_s"] = row["tokens"] / row["seconds"]
            print(f"{s.name:<8} | {LABELS[measure]:<22} | {row['seconds']:>8.4f} | {row['tok_s']:>9,.0f} | "
                  f"{row['peak_bytes'] / 2**20:>8.1f} | {row['estimate_bytes'] / 2**20:>12.1f}", flush=True)
        rows["full_bf16_over_fp32_peak"] = rows["attack_full_bf16"]["peak_bytes"] / rows["attack_full_fp32"]["peak_bytes"]
        print(f"{s.name}: full attacker's peak memory, bf16 / fp32 = {rows['full_bf16_over_fp32_peak']:.2f}", flush=True)
    return out


def subjects(names: list[str], p, args) -> list[Subject]:
    d = p.data
    splits = generate_world(p.seed, d.people, d.forget_people, d.holdout_people, d.general, d.eval_templates,
                            d.private_people)
    out = []
    for name in names:
        if name == "builtin":  # the target stage's from-scratch tokenizer and model
            texts = [p.model.prompt_template.format(question=r.question) + " " + r.answer
                     for rs in splits.values() for r in rs]
            tokenizer = train_tokenizer(texts, p.model.vocab_size)
            load = lambda dtype, t=tokenizer: build_scratch_model(p.model, t, p.seed).to(DTYPES[dtype])  # noqa: E731
        elif name == "smollm2":
            path = Path(args.smollm2) if Path(args.smollm2).is_absolute() else ROOT / args.smollm2
            if not any(path.glob("*.safetensors")):
                print(f"smollm2: no model at {path}: run `make smollm2` to get it; skipped")
                continue
            tokenizer = load_pretrained(path)[1]
            load = lambda dtype, path=path: load_pretrained(path, dtype)[0]  # noqa: E731
        else:
            raise SystemExit(f"unknown model {name!r} (builtin, smollm2)")

        def batch(split: str, tokenizer=tokenizer) -> dict:
            pairs = [(r.question, r.answer) for r in splits[split]]
            loader = make_loader(tokenizer, pairs, p.model.prompt, args.max_length, args.batch, p.seed, shuffle=False)
            return next(iter(loader))
        out.append(Subject(name, load, tokenizer, batch("forget"), batch("retain"),
                           [r.question for r in splits["forget"][:args.batch]]))
    return out


def measure_precision(models: list[Subject], p, args) -> list[dict]:
    """The precision part: fp32 and bf16 tok/s of each loop, in this process."""
    measures = {"sft step": lambda s, dt: sft_step(s, p, dt, args.steps),
                "relearn step": lambda s, dt: relearn_step(s, p, dt, args.steps),
                "generation": lambda s, dt: generation(s, p, dt, args.steps, args.new_tokens)}
    rows = []
    print(f"{'model':<8} | {'measure':<12} | {'fp32 tok/s':>10} | {'bf16 tok/s':>10} | bf16/fp32", flush=True)
    try:
        for s in models:
            for measure, run in measures.items():
                (t32, s32), (t16, s16) = (run(s, dtype) for dtype in PRECISIONS)
                fp32, bf16 = t32 / s32, t16 / s16
                rows.append({"model": s.name, "measure": measure, "fp32_tok_s": round(fp32, 1), "bf16_tok_s": round(bf16, 1),
                             "bf16_over_fp32": round(bf16 / fp32, 3), "fp32_tokens": t32, "fp32_seconds": round(s32, 4),
                             "bf16_tokens": t16, "bf16_seconds": round(s16, 4)})
                print(f"{s.name:<8} | {measure:<12} | {fp32:>10,.0f} | {bf16:>10,.0f} | {bf16 / fp32:.2f}", flush=True)
    finally:
        AcceleratorState._reset_state(True)  # leave no bf16 state behind for a caller in the same process
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--models", default="builtin,smollm2", help="comma-separated: builtin, smollm2")
    ap.add_argument("--smollm2", default="models/pretrained/SmolLM2-135M-Instruct", help="HF model directory")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up (best is kept)")
    ap.add_argument("--batch", type=int, default=8, help="QA pairs per batch (and prompts per generation)")
    ap.add_argument("--max-length", type=int, default=96, help="tokens per pair at most")
    ap.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--only", choices=("precision", "ratios", "attack"),
                    help="run only the fp32/bf16 part, the ratios part or the attack part (default: the first two, "
                         "and the attack part with --attack)")
    ap.add_argument("--attack", action="store_true", help="also measure the relearning attacker (see --only attack)")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="the ratios part's dtype (auto: bfloat16 on a CUDA device that has it, else float32)")
    ap.add_argument("--peak-tflops", type=float,
                    help="the device's peak dense bf16 TFLOP/s for MFU (default: looked up for H100, H200, A100)")
    ap.add_argument("--json", help="write the numbers to this file")
    ap.add_argument("--worker", choices=list(PREPARE), help=argparse.SUPPRESS)  # run_worker's child process
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    p = load_params(args.params)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(args, p)))
        return {}
    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    info = {"device": device, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg()[0], "steps": args.steps, "batch": args.batch,
            "max_length": args.max_length, "new_tokens": args.new_tokens}
    print(", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    models = subjects(args.models.split(","), p, args)
    rows, ratios = measure_precision(models, p, args) if args.only in (None, "precision") else [], {}
    if args.only in (None, "ratios"):
        dtype, peak = cost_dtype(args.dtype), device_peak_tflops(args.peak_tflops)
        print(f"\nratios in {dtype}: time per step, peak memory, generation batched against one by one", flush=True)
        if torch.cuda.is_available() and peak is None:
            print(f"no peak FLOP/s known for {torch.cuda.get_device_name()}: pass --peak-tflops for MFU")
        ratios = measure_ratios(models, p, args, dtype, peak)
    if args.only == "attack" or (args.attack and args.only is None):
        ratios["attack"] = measure_attack(models, args, cost_dtype(args.dtype))
    info["loadavg_after"] = os.getloadavg()[0]
    info["under_load"] = device == "cpu" and info["loadavg_before"] >= 1.0  # something else had the CPUs
    print(f"load average (1 min) before {info['loadavg_before']:.2f}, after {info['loadavg_after']:.2f} on {info['cpus']} CPUs"
          + (": measured under load, the numbers are rough (--threads 1 is steadier on a busy machine)"
             if info["under_load"] else ""))
    result = {**info, "results": rows, **ratios}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
