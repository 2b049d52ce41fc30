"""Which vague answers a pretrained base model finds likely: PPL under the base and relevance, no training.

    python bench/vague_answers.py --project DIR [--split forget|forget_eval] [--json out.json]

DIR is a project that has run the augment stage on a real model (for example the directory
`bench/compare_methods.py --keep` leaves). For every forget item's original question it scores, under
`model.base` in the project's prompt format: the original (sensitive) answer, the vague answer the
augment stage trained on, and each candidate phrasing below with the item's subject filled in. Per
phrasing: the mean PPL (the spec's LS aggregate), the median, and the relevance (cosine of question and
answer under evaluate.embedding_model, when set). LS's PPL is the base's PPL of what the unlearned
model says, and the unlearned model says what it was trained on, so a phrasing the base finds likely
is the cheapest lever on `ls_ratio`; relevance says whether it still answers the question asked.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# candidates written for how a chat model speaks; {name} is the subject, kept whole
CANDIDATES = {
    "sorry-specific": "I'm sorry, but I don't have specific information about {name} on that.",
    "no-reliable": "I don't have reliable details about that aspect of {name}'s life or work.",
    "not-shared": "{name} hasn't shared much about this publicly, so I can't give specifics.",
    "little-public": "There isn't much public information about this part of {name}'s life.",
    "cannot-say": "I can't say for certain. {name} has kept the details of this private.",
    "general-only": "I only know {name} in general terms, not the specifics you are asking about.",
    "private-matter": "That is a private matter for {name}, and the details have not been made public.",
    "writing-vague": "{name} is known as a writer, but the details you ask about have not been made public.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", required=True, help="A project whose augment stage has run (data/augmented).")
    ap.add_argument("--limit", type=int, default=0, help="Score only the first N forget items (0: all).")
    ap.add_argument("--split", choices=("forget", "forget_eval"), default="forget",
                    help="Whose questions: the forget set's (trained on) or forget_eval's (held out, as the "
                         "evaluation asks them; what an unlearned model's relevance is measured on).")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    project = Path(args.project).resolve()
    sys.path.insert(0, str(ROOT))

    import torch

    from relearn.evaluation.linguistic import aggregate_ppl, perplexity
    from relearn.modeling.generation import answer_nll
    from relearn.modeling.model import load_pretrained
    from relearn.params import load_params
    from relearn.data.validate import load_validated as load_records

    p = load_params(project / "params.yaml")
    if not p.model.base:
        raise SystemExit(f"{project}/params.yaml: model.base is not set: this bench is for a pretrained model")
    forget = load_records(project / f"data/splits/{args.split}.jsonl")
    if args.limit:
        forget = forget[:args.limit]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = load_pretrained(project / "models/base", p.model.dtype)
    embedder = None
    if p.evaluate.embedding_model:
        from relearn.evaluation.embedding import load_embedder

        embedder = load_embedder(p.evaluate.embedding_model)
    from relearn.augment.rules import PHRASINGS, guess_subject, vague_answer

    sets = {"original (sensitive)": [r.answer for r in forget]}
    if args.split == "forget":  # the held-out questions were not trained on
        trained = {r.source_id: r.answer for r in load_records(project / "data/augmented/forget_variants.jsonl")
                   if r.variant == "original"}
        sets["trained vague answer"] = [trained.get(r.id, "") for r in forget]
    for key, text in CANDIDATES.items():
        sets[key] = [text.format(name=r.subject or guess_subject(r.question) or "This person") for r in forget]
    for phrasing in PHRASINGS:   # what the rules backend writes for each augment.phrasing, seeded per item
        sets[f"phrasing: {phrasing}"] = [vague_answer(r, random.Random(f"0:{r.id}"), phrasing=phrasing) for r in forget]
    questions = [r.question for r in forget]
    rows = {}
    started = time.monotonic()
    for name, answers in sets.items():
        keep = [i for i, a in enumerate(answers) if a]
        nll = answer_nll(model, tokenizer, [questions[i] for i in keep], [answers[i] for i in keep], p.model.prompt,
                         p.model.max_length)
        ppls = [perplexity(s, n) for s, n in nll]
        row = {"n": len(ppls), "ppl_mean": aggregate_ppl(ppls, "mean"), "ppl_median": statistics.median(ppls)}
        if embedder is not None:
            from relearn.evaluation.relevance import relevance_scores

            rel = relevance_scores(embedder, [questions[i] for i in keep], [answers[i] for i in keep])
            row["relevance"] = statistics.fmean(rel)
        rows[name] = row
        print(f"  {name:<22} n {row['n']:>4}  PPL mean {row['ppl_mean']:8.2f}  median {row['ppl_median']:7.2f}"
              + (f"  relevance {row['relevance']:.3f}" if "relevance" in row else ""), flush=True)
    print(f"[vague-answers] {len(forget)} {args.split} items, {len(sets)} answer sets, {time.monotonic() - started:.0f} s",
          flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"split": args.split, "items": len(forget), "sets": rows,
                                                   "candidates": CANDIDATES},
                                                  indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
