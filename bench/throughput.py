"""fp32 vs bf16 tokens/s of the three hot loops, for the built-in model and SmolLM2: SFT step, ReLearn step, generation.

    python bench/throughput.py [--models builtin,smollm2] [--steps 5] [--json FILE]

Every measurement runs on one fixed batch (--batch QA pairs of the built-in world, at most --max-length
tokens, encoded in the model's PromptFormat: SmolLM2's chat template, the plain template for the built-in
model), warms up once, then keeps the best of --steps. bf16 is what the pipeline runs with model.dtype:
bfloat16: autocast from make_accelerator (CPU too) for the two training steps, on the weights the
pipeline loads (full fine-tuning, as the target stage does it, keeps fp32 master weights; every LoRA
and generation base is loaded in bf16); generation runs the bf16 weights as-is, as the evaluate stage
does. The device is CUDA when present, else the CPU. On a busy CPU, --threads 1 avoids
threads waiting on each other (two threads on two loaded cores ran 10-100x slower here).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate.state import AcceleratorState
from peft import get_peft_model

from relearn.data.world import generate_world
from relearn.generation import generate_token_ids
from relearn.methods import METHODS
from relearn.methods.losses import answer_ce
from relearn.model import DTYPES, build_scratch_model, load_pretrained, train_tokenizer
from relearn.params import load_params
from relearn.training import make_accelerator, make_loader, make_optimizer, optimizer_step
from relearn.unlearning import lora_config

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "bfloat16")


@dataclass
class Subject:
    """A model under test: a fresh copy in a given weight dtype, its tokenizer, and its fixed batches."""
    name: str
    load: Callable[[str], torch.nn.Module]
    tokenizer: object
    forget: dict
    retain: dict
    questions: list[str]


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


def sft_step(s: Subject, p, dtype: str, steps: int) -> tuple[int, float]:
    """Full fine-tuning: forward, answer-token CE, backward, clip, AdamW step (train_causal_lm's step)."""
    accelerator = accelerator_for(dtype)
    model = s.load("float32")  # the target stage trains fp32 master weights; bf16 is the autocast
    optimizer, scheduler = make_optimizer(model, p.target.lr, p.target.weight_decay, 0.0, steps + 1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    batch = on(s.forget, accelerator.device)

    def step():
        loss = answer_ce(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                         batch["labels"])
        optimizer_step(accelerator, model, optimizer, scheduler, loss, p.target.grad_clip)
    return int(batch["attention_mask"].sum()), best_seconds(step, steps, accelerator.device)


def relearn_step(s: Subject, p, dtype: str, steps: int) -> tuple[int, float]:
    """LoRA on params.unlearn.lora, METHODS['relearn'] on forget + retain with the adapter-off KL reference
    (unlearn's step); tokens are forget + retain tokens."""
    accelerator = accelerator_for(dtype)
    torch.manual_seed(p.seed)
    model = get_peft_model(s.load(dtype), lora_config(p))
    optimizer, scheduler = make_optimizer(model, p.unlearn.lr, p.unlearn.weight_decay, 0.0, steps + 1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    forget, retain = on(s.forget, accelerator.device), on(s.retain, accelerator.device)

    @torch.no_grad()
    def reference(batch):  # as in relearn.training.unlearn: the same weights with the adapter off
        with model.disable_adapter():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def step():
        loss, _ = METHODS["relearn"](model, forget, retain, reference, p.unlearn)
        optimizer_step(accelerator, model, optimizer, scheduler, loss, p.unlearn.grad_clip)
    tokens = int(forget["attention_mask"].sum() + retain["attention_mask"].sum())
    return tokens, best_seconds(step, steps, accelerator.device)


def generation(s: Subject, p, dtype: str, steps: int, new_tokens: int) -> tuple[int, float]:
    """Batched (left-padded) greedy generation of all questions at once; new tokens/s (stop tokens counted)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = s.load(dtype).to(device)
    counted = []

    def step():
        with contextlib.redirect_stdout(io.StringIO()):  # generate_token_ids' progress line
            rows = generate_token_ids(model, s.tokenizer, s.questions, p.model.prompt, new_tokens, len(s.questions))
        counted.append(sum(min(len(r) + 1, new_tokens) for r in rows))
    seconds = best_seconds(step, steps, device)
    return min(counted), seconds  # greedy: every call makes the same tokens


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
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    p = load_params(args.params)
    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    info = {"device": device, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg()[0], "steps": args.steps, "batch": args.batch,
            "max_length": args.max_length, "new_tokens": args.new_tokens}
    print(", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    measures = {"sft step": lambda s, dt: sft_step(s, p, dt, args.steps),
                "relearn step": lambda s, dt: relearn_step(s, p, dt, args.steps),
                "generation": lambda s, dt: generation(s, p, dt, args.steps, args.new_tokens)}
    rows, models = [], subjects(args.models.split(","), p, args)
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
    info["loadavg_after"] = os.getloadavg()[0]
    info["under_load"] = device == "cpu" and info["loadavg_before"] >= 1.0  # something else had the CPUs
    print(f"load average (1 min) before {info['loadavg_before']:.2f}, after {info['loadavg_after']:.2f} on {info['cpus']} CPUs"
          + (": measured under load, the numbers are rough (--threads 1 is steadier on a busy machine)"
             if info["under_load"] else ""))
    result = {**info, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
