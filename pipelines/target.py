"""DVC stage `target`: train (or fine-tune) the model that knows the forget and retain sets.

    accelerate launch pipelines/target.py     # several devices; plain `python` runs on one
"""
from relearn.data.splits import read_splits
from relearn.training.checkpoints import clear_checkpoints
from relearn.training.devices import finish, gather_state, is_main_process
from relearn.errors import main_guard
from relearn.io import atomic_dir, write_json, write_text
from relearn.params import load_params
from relearn.target import check_launch, make_target


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    check_launch(p, "target")
    # the forget pool (data/corpus): the target learns it whatever the erasure requests say
    splits = read_splits("data/splits", ("retain", "retain_eval", "general")) | \
        read_splits("data/corpus", ("forget", "forget_eval"))
    # a pretrained model.base was prepared by the `base` stage as a safetensors directory
    model, tokenizer, history, report = make_target(p, splits, "models/base" if p.model.base else None)
    state = gather_state(model)  # every process: under FSDP each holds a shard of every weight
    if not is_main_process():  # under accelerate launch / torchrun: rank 0 writes, the others are done
        return finish()
    with atomic_dir("models/target") as out:
        model.save_pretrained(out, state_dict=state)
        tokenizer.save_pretrained(out)
    write_text("plots/target_loss.csv", history.to_csv())
    write_json("reports/target.json", report)
    clear_checkpoints(p.checkpoints("target")["checkpoint_dir"])  # the output is written: no resuming needed
    print(f"[target] forget recall {report['forget_recall']}, retain recall {report['retain_recall']}, "
          f"{report['train_seconds']} s", flush=True)
    finish()


if __name__ == "__main__":
    main()
