"""DVC stage `distill`: with distill.enabled, distil the unlearned model (target + adapter) into a
shrunk-and-perturbed copy trained in full (relearn.distill, UNDO); evaluate, export, robustness and
register then see models/distilled (pipelines/layout.py). Switched off, it writes only a note, so
that the stages after it can always depend on models/distilled.
"""
from relearn.data.splits import read_splits
from relearn.data.validate import load_validated
from relearn.distill import distill, distillation_pairs, shrink_and_perturb
from relearn.training.checkpoints import clear_checkpoints
from relearn.training.devices import finish, is_main_process, refuse_sharding
from relearn.errors import main_guard
from relearn.io import atomic_dir, write_json, write_text
from relearn.params import load_params
from relearn.robustness.common import load_merged
from layout import ADAPTER, DISTILLED, TARGET


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    if not p.distill.enabled:
        if not is_main_process():
            return finish()
        with atomic_dir(DISTILLED) as out:
            (out / "DISABLED").write_text("distill.enabled is false: the unlearned model is "
                                          f"{TARGET} with {ADAPTER}\n", encoding="utf-8")
        write_text("plots/distill_loss.csv", "step,epoch,loss\n")
        write_json("reports/distill.json", {"enabled": False})
        return
    refuse_sharding("distill", "the student is trained in full and saved whole; gathering full weights is not written yet")
    splits = read_splits("data/splits", ("retain", "general"))
    variants = load_validated("data/augmented/forget_variants.jsonl")
    teacher, tokenizer = load_merged(TARGET, ADAPTER, p.dtype())
    # fp32 master weights: with bfloat16 the training step autocasts, as the target stage does
    student, _ = load_merged(TARGET, ADAPTER if p.distill.init == "unlearned" else None, "float32")
    shrink_and_perturb(student, p.distill.alpha, p.seed)
    pairs = distillation_pairs(p.distill.sets, splits, variants)
    print(f"[distill] student: {p.distill.init} shrunk and perturbed at alpha {p.distill.alpha}; "
          f"{len(pairs)} sequences from {', '.join(p.distill.sets)}", flush=True)
    student, history, report = distill(teacher, student, tokenizer, pairs, p)
    if not is_main_process():  # under accelerate launch / torchrun: rank 0 writes, the others are done
        return finish()
    with atomic_dir(DISTILLED) as out:
        student.save_pretrained(out)
        tokenizer.save_pretrained(out)
    write_text("plots/distill_loss.csv", history.to_csv())
    write_json("reports/distill.json", report)
    clear_checkpoints(p.checkpoints("distill")["checkpoint_dir"])  # the output is written: no resuming needed
    print(f"[distill] {report['steps']} steps in {report['train_seconds']:.0f} s; final KL {report['final_kl']}", flush=True)
    finish()


if __name__ == "__main__":
    main()
