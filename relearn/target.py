"""The target model, which knows the forget and retain sets (ReLearn pipeline, step 1), and the
retain-only control model, which never saw the forget set.

From scratch (params.model.base is null): a BPE tokenizer and a small Llama trained on forget +
retain + general until greedy answers reproduce the forget facts. From an existing model: the same
fine-tuning on the same data, starting from its weights.

The control gets identical settings: the target's tokenizer, the same initialisation (seed or base
weights), the same optimiser and schedule, and exactly as many epochs as the target ran; only the
data differ (no forget set). TOFU's forget quality compares the unlearned model with it, and every
robustness probe runs on it as the control.
"""
from __future__ import annotations

import time

from relearn.data.sources import control_training_records, target_training_records
from relearn.evaluation.scoring import knowledge_scores
from relearn.modeling.generation import generate_answers
from relearn.modeling.model import build_scratch_model, count_parameters, load_pretrained, train_tokenizer
from relearn.params import Params
from relearn.records import QARecord, seeded_subset
from relearn.training.loop import TrainSpec, train_causal_lm


def recall_sample(records: list[QARecord], params: Params) -> list[QARecord]:
    """The records a recall check reads: all, or target.recall_items of them (seeded, in file order)."""
    return seeded_subset(records, params.target.recall_items, params.seed)


def fact_recall(model, tokenizer, records: list[QARecord], params: Params) -> float:
    """Mean share of each record's facts (or, for free text, key facts) that the greedy answer
    reproduces, over the records' recall sample (target.recall_items)."""
    records = recall_sample(records, params)
    answers = generate_answers(model, tokenizer, [r.question for r in records], params.model.prompt,
                               params.evaluate.max_new_tokens, params.evaluate.batch_size, desc="recall check")
    shares = [item["share"] for item in knowledge_scores(answers, records, "retain")["by_id"].values()]
    return sum(shares) / max(len(shares), 1)


def check_launch(params: Params, stage: str) -> None:
    """The target and control stages under a sharded launch: FSDP only, and full fine-tuning (a LoRA
    fine-tune is merged into the weights after training, which sharded weights cannot take)."""
    from relearn.training.devices import refuse_deepspeed, refuse_sharding

    if params.model.base and params.target.finetune == "lora":
        refuse_sharding(stage, "target.finetune lora merges the adapter into the sharded weights; use full")
    refuse_deepspeed(stage)


def _pretrained(params: Params, base_dir):
    """The base model to fine-tune: fp32 master weights (bf16 runs as autocast), wrapped in a LoRA
    adapter when target.finetune is 'lora'."""
    model, tokenizer = load_pretrained(base_dir, "float32")
    if params.target.finetune == "lora":
        from peft import LoraConfig, get_peft_model
        from accelerate.utils import set_seed

        set_seed(params.seed)
        r = params.target.lora_r
        # every linear layer but the output head (peft's "all-linear"), whatever the architecture calls them
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules="all-linear"))
    return model, tokenizer


def _merged(model):
    """The plain model: a LoRA-trained target has its adapter merged into the weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def make_target(params: Params, splits: dict[str, list[QARecord]], base_dir=None):
    """Returns (model, tokenizer, loss history, report). base_dir: the prepared pretrained model
    (the base stage's output), or None to build a small model from scratch."""
    if base_dir:
        model, tokenizer = _pretrained(params, base_dir)
    else:
        plain = params.model.prompt_template
        texts = [plain.format(question=r.question) + " " + r.answer for rs in splits.values() for r in rs]
        tokenizer = train_tokenizer(texts, params.model.vocab_size)
        model = build_scratch_model(params.model, tokenizer, params.seed)
    checks: list[dict] = []

    def check(m, epoch: int) -> bool:
        recall = fact_recall(m, tokenizer, splits["forget"], params)
        checks.append({"epoch": epoch, "forget_recall": round(recall, 4)})
        print(f"[target] epoch {epoch}: forget fact recall {recall:.3f} (stop at {params.target.stop_recall})", flush=True)
        return recall >= params.target.stop_recall

    train = target_training_records(params.data.source, splits)
    model, history, report = _train(params, splits, model, tokenizer, train, check, params.target.check_every, "target",
                                    check_log=checks)
    report["checks"] = checks  # a resumed run's too: the checkpoints keep them
    # the model the last check read, when it ran after the last epoch: its recall is the final one
    last = checks[-1]["forget_recall"] if checks and checks[-1]["epoch"] == report["epochs_run"] else None
    _add_recalls(report, model, tokenizer, splits, params, forget=last)
    return model, tokenizer, history, report


def make_control(params: Params, splits: dict[str, list[QARecord]], tokenizer, epochs: int, base_dir=None):
    """The retain-only model: `tokenizer` is the target's, `epochs` the number the target ran.

    Returns (model, loss history, report)."""
    if base_dir:
        model, _ = _pretrained(params, base_dir)
    else:
        model = build_scratch_model(params.model, tokenizer, params.seed)
    train = control_training_records(params.data.source, splits)
    # the target's schedule (warm-up and decay over target.epochs), stopped where the target stopped
    model, history, report = _train(params, splits, model, tokenizer, train, lambda m, epoch: epoch >= epochs, 1, "control")
    _add_recalls(report, model, tokenizer, splits, params)
    return model, history, report


def _add_recalls(report: dict, model, tokenizer, splits, params: Params, forget: float | None = None) -> None:
    """The trained model's forget and retain recall (and how many records each read) into its report."""
    if forget is None:
        forget = round(fact_recall(model, tokenizer, splits["forget"], params), 4)
    report["forget_recall"] = forget
    report["retain_recall"] = round(fact_recall(model, tokenizer, splits["retain"], params), 4)
    report["recall_items"] = {name: len(recall_sample(splits[name], params)) for name in ("forget", "retain")}


def _train(params: Params, splits, model, tokenizer, train: list[QARecord], check, check_every: int, desc: str,
           check_log: list | None = None):
    pairs = [(r.question, r.answer) for r in train]
    print(f"[{desc}] {count_parameters(model):,} parameters, {len(pairs)} training pairs", flush=True)
    t = params.target
    start = time.monotonic()
    model, history = train_causal_lm(
        model, tokenizer, pairs, TrainSpec.of(params, t, desc), check=check, check_every=check_every, desc=desc,
        fingerprint_extra={"stop_recall": t.stop_recall, **({"recall_items": t.recall_items} if t.recall_items else {})}, check_log=check_log)
    model = _merged(model)
    seconds = time.monotonic() - start
    report = {
        "finetune": params.target.finetune if params.model.base else "scratch",
        "dtype": params.dtype(),
        "parameters": count_parameters(model),
        "train_pairs": len(pairs),
        "epochs_run": history.rows[-1]["epoch"] if history.rows else 0,
        "final_loss": round(history.rows[-1]["loss"], 4) if history.rows else None,
        "train_seconds": round(seconds, 1),
    }
    return model, history, report
