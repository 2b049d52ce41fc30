"""DVC stage `unlearn`: train the unlearning LoRA adapter (ReLearn, or the baseline in unlearn.method).

    accelerate launch pipelines/unlearn.py    # several devices; plain `python` runs on one

With unlearn.init: production (incremental unlearning), training continues from the adapter of the
version behind the registry's production alias instead of a fresh adapter on the target. DVC does not
see the registry: reports/unlearn.json records the version it started from.
"""
import tempfile

from relearn.comparison import forget_side_for
from relearn.data.splits import read_splits
from relearn.data.validate import load_validated
from relearn.training.checkpoints import clear_checkpoints
from relearn.training.devices import finish, gather_trainable, is_main_process, refuse_deepspeed, refuse_sharding, sharding
from relearn.errors import UserError, main_guard
from relearn.training.hardening import negative_triples
from relearn.io import atomic_dir, file_md5, read_json, write_json, write_text
from relearn.params import load_params
from relearn.unlearning import make_adapter


@main_guard
def main() -> None:
    p = load_params("params.yaml")
    if sharding() and p.unlearn.harden.needs_split():
        refuse_sharding("unlearn", "unlearn.harden sam_rho, mask and normalise take the forget and retain gradients "
                                   "apart on the unwrapped model, outside the sharded backward")
    refuse_deepspeed("unlearn")
    splits = read_splits("data/splits", ("forget", "retain"))
    variants = load_validated("data/augmented/forget_variants.jsonl")
    forget_side = forget_side_for(p.unlearn.method, splits["forget"], variants,
                                  load_validated("data/augmented/general_mix.jsonl", allow_empty=True))
    with tempfile.TemporaryDirectory(prefix="relearn-init-adapter-") as tmp:
        start = None
        if p.unlearn.init == "production":
            from relearn.registry.versions import alias_adapter  # MLflow: a second to import, only here

            start = alias_adapter(p.register.model_name, tmp)
        if start and start[1] is None:
            print(f"[unlearn] incremental: version {start[0]} is a distilled model, with no adapter to continue: "
                  "a fresh adapter instead", flush=True)
            start = None
        elif start and start[2].get("target_md5") != file_md5("models/target"):
            print(f"[unlearn] incremental: version {start[0]} was trained on another target model: "
                  "a fresh adapter instead", flush=True)
            start = None
        elif p.unlearn.init == "production":
            print(f"[unlearn] incremental: {'from the adapter of version ' + start[0] if start else 'no production version: from the target'}"
                  " (its LoRA settings, not unlearn.lora)", flush=True)
        purged = read_json("data/splits/requests.json").get("purged", [])
        if purged and not start:  # their records are deleted: only the adapter that forgot them still does
            raise UserError(f"requests {', '.join(purged)} are purged (relearn request purge): an adapter trained "
                            "afresh from the target cannot forget them again. Set unlearn.init: production, with "
                            "the production version's adapter made on this target, or withdraw them")
        model, _, history, report = make_adapter(p, "models/target", forget_side, splits["retain"],
                                                 start[1] if start else None,
                                                 negatives=negative_triples(variants, splits["forget"]))
    report["init"] = f"version {start[0]}" if start else "target"
    adapter = gather_trainable(model)  # every process: under FSDP each holds a shard of the adapter
    if not is_main_process():  # under accelerate launch / torchrun: rank 0 writes, the others are done
        return finish()
    with atomic_dir("models/adapter") as out:
        model.save_pretrained(out, state_dict=adapter)  # adapter weights only (safetensors) + adapter_config.json
    write_text("plots/unlearn_loss.csv", history.to_csv())
    write_json("reports/unlearn.json", report)
    clear_checkpoints(p.checkpoints("unlearn")["checkpoint_dir"])  # the output is written: no resuming needed
    finish()


if __name__ == "__main__":
    main()
