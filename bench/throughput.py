"""Throughput of the three hot loops on the demo-size model: target training, ReLearn steps, generation.

    python bench/throughput.py [--params params.yaml] [--steps 30]

Prints tokens/s (training) and questions/s (generation) on whatever device torch picks (CUDA when
available). Uses the built-in world and a freshly initialised model, so it needs no pipeline outputs.
"""
from __future__ import annotations

import argparse
import time

import torch
from peft import get_peft_model

from relearn.data.world import generate_world
from relearn.generation import generate_answers
from relearn.methods import METHODS
from relearn.model import build_scratch_model, count_parameters, train_tokenizer
from relearn.params import load_params
from relearn.training import make_loader, make_optimizer
from relearn.unlearning import lora_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    p = load_params(args.params)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = p.data
    splits = generate_world(p.seed, d.people, d.forget_people, d.holdout_people, d.general, d.eval_templates, d.private_people)
    template = p.model.prompt_template
    tokenizer = train_tokenizer([template.format(question=r.question) + " " + r.answer for rs in splits.values() for r in rs],
                                p.model.vocab_size)
    model = build_scratch_model(p.model, tokenizer, p.seed).to(device)
    pairs = [(r.question, r.answer) for r in splits["forget"] + splits["retain"]]
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {count_parameters(model):,} parameters")

    # target training: answer-token CE
    from relearn.methods.losses import answer_ce
    loader = make_loader(tokenizer, pairs, template, p.model.max_length, p.target.batch_size, p.seed)
    optimizer, _ = make_optimizer(model, p.target.lr, 0.0, 0.0, args.steps)
    def batches(n: int):
        while True:
            for batch in loader:
                if n == 0:
                    return
                n -= 1
                yield batch

    tokens, start = 0, time.perf_counter()
    model.train()
    for batch in batches(args.steps):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = answer_ce(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    print(f"target training: {tokens / seconds:,.0f} tokens/s ({args.steps} steps of {p.target.batch_size}, {seconds:.1f} s)")

    # ReLearn steps on a LoRA adapter (forward forget + retain, reference forward, backward)
    peft_model = get_peft_model(model, lora_config(p))
    optimizer, _ = make_optimizer(peft_model, p.unlearn.lr, 0.0, 0.0, args.steps)
    loader = make_loader(tokenizer, pairs, template, p.model.max_length, p.unlearn.batch_size, p.seed)

    @torch.no_grad()
    def reference(batch):
        with peft_model.disable_adapter():
            return peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    tokens, start = 0, time.perf_counter()
    it = iter(loader)
    for _ in range(args.steps):
        try:
            forget, retain = next(it), next(it)
        except StopIteration:
            it = iter(loader)
            forget, retain = next(it), next(it)
        forget = {k: v.to(device) for k, v in forget.items()}
        retain = {k: v.to(device) for k, v in retain.items()}
        loss, _ = METHODS["relearn"](peft_model, forget, retain, reference, p.unlearn)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(forget["attention_mask"].sum() + retain["attention_mask"].sum())
    seconds = time.perf_counter() - start
    print(f"relearn steps: {tokens / seconds:,.0f} tokens/s ({args.steps} steps of {p.unlearn.batch_size}+{p.unlearn.batch_size}, {seconds:.1f} s)")

    # batched greedy generation
    questions = [r.question for r in splits["retain_eval"]]
    start = time.perf_counter()
    generate_answers(peft_model, tokenizer, questions, template, p.evaluate.max_new_tokens, p.evaluate.batch_size)
    seconds = time.perf_counter() - start
    print(f"generation: {len(questions) / seconds:.1f} questions/s ({len(questions)} questions, "
          f"{p.evaluate.max_new_tokens} new tokens max, batch {p.evaluate.batch_size})")


if __name__ == "__main__":
    main()
