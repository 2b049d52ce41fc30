"""DVC stage `control`: the retain-only model, trained with the target's settings without the forget set.

It is the reference of TOFU's forget quality and the control of every robustness probe.

    accelerate launch pipelines/control.py    # several devices; plain `python` runs on one
"""
from transformers import AutoTokenizer

from relearn.data.splits import read_splits
from relearn.training.checkpoints import clear_checkpoints
from relearn.training.devices import finish, gather_state, is_main_process
from relearn.errors import main_guard
from relearn.io import atomic_dir, read_json, write_json, write_text
from relearn.params import load_params
from relearn.target import check_launch, make_control


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    check_launch(p, "control")
    # the forget pool (data/corpus): the target learns it whatever the erasure requests say
    splits = read_splits("data/splits", ("retain", "retain_eval", "general")) | \
        read_splits("data/corpus", ("forget", "forget_eval"))
    tokenizer = AutoTokenizer.from_pretrained("models/target")  # the very same tokenizer
    epochs = read_json("reports/target.json")["epochs_run"]
    model, history, report = make_control(p, splits, tokenizer, epochs, "models/base" if p.model.base else None)
    state = gather_state(model)  # every process: under FSDP each holds a shard of every weight
    if not is_main_process():  # under accelerate launch / torchrun: rank 0 writes, the others are done
        return finish()
    with atomic_dir("models/control") as out:
        model.save_pretrained(out, state_dict=state)
        tokenizer.save_pretrained(out)
    write_text("plots/control_loss.csv", history.to_csv())
    write_json("reports/control.json", report)
    clear_checkpoints(p.checkpoints("control")["checkpoint_dir"])  # the output is written: no resuming needed
    print(f"[control] {epochs} epochs: forget recall {report['forget_recall']} (the target's data minus the forget "
          f"set), retain recall {report['retain_recall']}, {report['train_seconds']} s", flush=True)
    finish()


if __name__ == "__main__":
    main()
