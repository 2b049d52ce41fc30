"""Data sources: KnowUnDo, TOFU and JSONL inputs become the pipeline's six splits."""
import json
from pathlib import Path

import pytest

from relearn.data.sources import control_training_records, hold_out, load_source, target_training_records
from relearn.errors import UserError, ValidationError
from relearn.params import DataParams
from relearn.records import QARecord, save_records

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _knowundo(tmp_path: Path, bad: bool = False) -> Path:
    for i, name in enumerate(("unlearn_train", "unlearn_val", "retention_train", "retention_val")):
        rows = [{"text": f"Question {name} {j}?", "labels": f"Answer {name} {j}."} for j in range(3)]
        if bad and i == 1:
            rows[2] = {"text": "No label here?"}
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    return tmp_path


def test_knowundo_files_map_to_splits(tmp_path):
    splits = load_source(DataParams(source="knowundo", path=str(_knowundo(tmp_path))), seed=0)
    # one retain item is held out as the never-trained membership-inference holdout
    assert {k: len(v) for k, v in splits.items()} == {"forget": 3, "retain": 2, "forget_eval": 3, "retain_eval": 3,
                                                      "holdout": 1, "general": 0}
    assert splits["forget"][0].question == "Question unlearn_train 0?"
    # a non-builtin target learns everything (eval splits included) but the holdout
    train = target_training_records("knowundo", splits)
    assert len(train) == 11 and splits["holdout"][0].question not in {r.question for r in train}
    assert len(target_training_records("builtin", splits)) == 5
    # the control learns the same without the forget set
    control = control_training_records("knowundo", splits)
    assert len(control) == 5 and not {r.question for r in control} & {r.question for r in splits["forget"] + splits["forget_eval"]}
    no_holdout = load_source(DataParams(source="knowundo", path=str(_knowundo(tmp_path)), holdout_fraction=0.0), seed=0)
    assert len(no_holdout["holdout"]) == 0 and len(no_holdout["retain"]) == 3


def test_bad_input_file_names_file_record_and_field(tmp_path):
    with pytest.raises(ValidationError) as info:
        load_source(DataParams(source="knowundo", path=str(_knowundo(tmp_path, bad=True))), seed=0)
    assert info.value.problems == [f"{tmp_path / 'unlearn_val.json'}: record 2: field 'labels': missing"]


def test_missing_path_and_directory_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data.path: required"):
        load_source(DataParams(source="tofu"), seed=0)
    with pytest.raises(UserError, match="is not a directory"):
        load_source(DataParams(source="tofu", path=str(tmp_path / "nope")), seed=0)


def test_tofu_holds_out_a_seeded_share_for_eval(tmp_path):
    rows = [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(10)]
    (tmp_path / "forget10.json").write_text(json.dumps(rows))
    (tmp_path / "retain90.json").write_text("\n".join(json.dumps(r) for r in rows))  # JSON lines
    params = DataParams(source="tofu", path=str(tmp_path), eval_fraction=0.2)
    a, b = load_source(params, seed=1), load_source(params, seed=1)
    assert len(a["forget"]) == 8 and len(a["forget_eval"]) == 2
    assert [r.id for r in a["forget_eval"]] == [r.id for r in b["forget_eval"]]
    assert not {r.id for r in a["forget"]} & {r.id for r in a["forget_eval"]}


def test_tofu_files_may_be_this_projects_records_in_a_subdirectory(tmp_path):
    """relearn init points the tofu source at any two files under one directory, in any of the formats."""
    (tmp_path / "a").mkdir()
    save_records(tmp_path / "a" / "mine.jsonl", [QARecord(id=f"f{i}", question=f"Where is f{i}?", answer="x",
                                                           subject="F") for i in range(5)])
    (tmp_path / "theirs.json").write_text(json.dumps([{"text": f"r{i}?", "labels": "y"} for i in range(5)]))  # KnowUnDo's
    params = DataParams(source="tofu", path=str(tmp_path), forget_file="a/mine.jsonl", retain_file="theirs.json")
    splits = load_source(params, seed=0)
    assert {r.subject for r in splits["forget"] + splits["forget_eval"]} == {"F"}
    assert len(splits["retain"]) + len(splits["retain_eval"]) + len(splits["holdout"]) == 5


def test_hold_out_keeps_one_on_each_side():
    records = [QARecord(id=str(i), question="q", answer="a") for i in range(2)]
    kept, held = hold_out(records, 0.01, seed=0)
    assert len(kept) == 1 and len(held) == 1
    assert hold_out(records[:1], 0.5, seed=0) == (records[:1], [])


def test_jsonl_source_and_general_files(tmp_path):
    save_records(tmp_path / "forget.jsonl", [QARecord(id=f"f{i}", question=f"f{i}?", answer="x") for i in range(4)])
    save_records(tmp_path / "retain.jsonl", [QARecord(id=f"r{i}", question=f"r{i}?", answer="y") for i in range(4)])
    general = tmp_path / "general.json"
    general.write_text(json.dumps([{"question": "Capital of France?", "answer": "Paris"}]))
    splits = load_source(DataParams(source="jsonl", path=str(tmp_path), general_files=[str(general)]), seed=0)
    assert len(splits["forget"]) + len(splits["forget_eval"]) == 4 and len(splits["general"]) == 1
    with pytest.raises(UserError, match="needs forget.jsonl and retain.jsonl"):
        load_source(DataParams(source="jsonl", path=str(tmp_path / "..")), seed=0)


@pytest.mark.skipif(not (SHARED / "knowundo-privacy").is_dir(), reason="shared data not present")
def test_real_knowundo_privacy():
    splits = load_source(DataParams(source="knowundo", path=str(SHARED / "knowundo-privacy")), seed=0)
    # retention_train's 441 items: 44 (10%) become the never-trained holdout
    assert [len(splits[k]) for k in ("forget", "forget_eval", "retain", "retain_eval", "holdout")] == [400, 110, 397, 108, 44]


def test_subject_subset_keeps_whole_people_and_their_eval_questions(tmp_path):
    people = ["Ann Lee", "Bob Stone", "Cara Al-Amin", "Dan Fox"]
    forget = [{"text": f"Where does {p} live?", "labels": f"{p} lives in town {i}."} for i, p in enumerate(people)]
    forget += [{"text": f"What is {p}'s job?", "labels": f"{p} is a baker."} for p in people]
    evals = [{"text": f"Who are {p}'s parents?", "labels": "Two teachers."} for p in people[:3]]
    for name, rows in (("unlearn_train", forget), ("unlearn_val", evals), ("retention_train", forget[:1]),
                       ("retention_val", evals[:1])):
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    params = DataParams(source="knowundo", path=str(tmp_path), forget_subjects=2, holdout_fraction=0.0)
    splits = load_source(params, seed=0)
    chosen = {r.question.split(" ", 2)[2].split("'")[0].removesuffix(" live?") for r in splits["forget"]}
    # two people, both of their questions, only people the eval file also asks about (not Dan Fox)
    assert len(splits["forget"]) == 4 and len(splits["forget_eval"]) == 2 and "Dan Fox" not in chosen
    assert {r.question for r in splits["forget_eval"]} == {f"Who are {p}'s parents?" for p in chosen}
    assert load_source(params, seed=0)["forget"] == splits["forget"]  # seeded
    assert len(load_source(DataParams(source="knowundo", path=str(tmp_path), holdout_fraction=0.0), 0)["forget"]) == 8


def test_asking_for_more_people_than_the_data_names_is_a_user_error(tmp_path):
    rows = [{"text": "Where does Ann Lee live?", "labels": "In Lyon."}]
    for name in ("unlearn_train", "unlearn_val", "retention_train", "retention_val"):
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"data.retain_subjects: 3 people asked for, but the data names only 1"):
        load_source(DataParams(source="knowundo", path=str(tmp_path), retain_subjects=3), seed=0)
