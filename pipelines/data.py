"""DVC stage `data`: write the built-in world's splits to data/splits/."""
from relearn.data.splits import write_splits
from relearn.data.world import generate_world
from relearn.errors import main_guard
from relearn.io import write_json
from relearn.params import load_params


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    splits = generate_world(p.seed, p.data.people, p.data.forget_people, p.data.holdout_people, p.data.general,
                            p.data.eval_templates, p.data.private_people)
    counts = write_splits("data/splits", splits)
    write_json("reports/data.json", counts)
    print("[data] " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)


if __name__ == "__main__":
    main()
