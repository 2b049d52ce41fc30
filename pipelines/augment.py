"""DVC stage `augment`: question variants and vague answers for the forget set, leak-checked."""
from relearn.augment.build import build_training_set
from relearn.data.splits import read_splits
from relearn.errors import main_guard
from relearn.io import write_json
from relearn.params import load_params
from relearn.records import save_records


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = read_splits("data/splits", ("forget", "general"))
    kept, mixed, report = build_training_set(splits["forget"], splits["general"], p.augment, p.seed)
    save_records("data/augmented/forget_variants.jsonl", kept)
    save_records("data/augmented/general_mix.jsonl", mixed)
    write_json("reports/augment.json", report)
    print(f"[augment] {report['forget_items']} forget items -> {report['made']} pairs made, {report['kept']} kept, "
          f"{report['dropped']} dropped by the leak check; {report['general_mixed']} general pairs mixed in", flush=True)


if __name__ == "__main__":
    main()
