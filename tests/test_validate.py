"""Tests for relearn.data.validate: format detection, problem messages, overlap."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from relearn.data.validate import (
    FORMATS,
    MAX_PROBLEMS,
    check_file,
    check_overlap,
    detect_format,
    load_validated,
    locate,
    normalise_question,
)
from relearn.errors import UserError, ValidationError
from relearn.records import QARecord

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _rec(rid: str, question: str = "Q?", answer: str = "A.", **extra) -> dict:
    return {"id": rid, "question": question, "answer": answer, **extra}


def _write_lines(path: Path, rows: list) -> Path:
    """Write rows as JSON lines; a str row is written verbatim."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_list(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def _only_problem(path: Path, fmt: str | None = None) -> str:
    _, problems = check_file(path, fmt)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------- valid files


def test_relearn_round_trip(tmp_path):
    full = QARecord(id="p1-email-0", question="What is Mara's email?", answer="It is m@x.org.",
                    subject="Mara", facts={"email": "m@x.org"}, source_id="p1", variant="simple",
                    paraphrased_answer="m@x.org it is.", perturbed_answer=["a@b.c", "d@e.f"])
    minimal = QARecord(id="p2", question="Q?", answer="A.")
    path = _write_lines(tmp_path / "f.jsonl", [full.to_dict(), "", minimal.to_dict() | {"extra": 1}])
    records, problems = check_file(path)
    assert problems == []
    assert records == [full, minimal]
    assert load_validated(path) == [full, minimal]


def test_tofu_list_and_lines(tmp_path):
    rows = [{"question": "Q0?", "answer": "A0", "paraphrased_question": "Q0 again?",
             "paraphrased_answer": "P0", "perturbed_answer": ["x", "y"]},
            {"question": "Q1?", "answer": "A1"}]
    for path in (_write_list(tmp_path / "tofu.json", rows), _write_lines(tmp_path / "tofu.jsonl", rows)):
        assert detect_format(path) == "tofu"
        records = load_validated(path)
        assert [r.id for r in records] == ["tofu-0", "tofu-1"]
        assert records[0] == QARecord(id="tofu-0", question="Q0?", answer="A0",
                                      paraphrased_answer="P0", perturbed_answer=["x", "y"])


def test_knowundo_list(tmp_path):
    path = _write_list(tmp_path / "ku.json", [{"text": "Q?", "labels": "A."}, {"text": "R?", "labels": "B."}])
    assert detect_format(path) == "knowundo"
    assert load_validated(path) == [QARecord(id="ku-0", question="Q?", answer="A."),
                                    QARecord(id="ku-1", question="R?", answer="B.")]


def test_ids_keep_file_positions_when_a_record_is_bad(tmp_path):
    path = _write_list(tmp_path / "ku.json", [{"text": "Q?", "labels": ""}, {"text": "R?", "labels": "B."}])
    records, problems = check_file(path)
    assert [r.id for r in records] == ["ku-1"]
    assert problems == [f"{path}: record 0: field 'labels': empty"]


# --------------------------------------------------------------------------- detection


def test_detect_relearn(tmp_path):
    assert detect_format(_write_lines(tmp_path / "f.jsonl", [_rec("a")])) == "relearn"


def test_detect_uses_first_parsable_line(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", ["{bad", _rec("a")])
    assert detect_format(path) == "relearn"
    assert check_file(path)[1] == [f"{path}:1: invalid JSON: Expecting property name enclosed "
                                   "in double quotes (column 2)"]


def test_detect_failure_names_fields(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [{"prompt": "Q", "completion": "A"}])
    with pytest.raises(ValidationError) as e:
        detect_format(path)
    (msg,) = e.value.problems
    assert msg.startswith(f"{path}:1: cannot detect format: record has 'prompt', 'completion'")
    assert check_file(path) == ([], [msg])


def test_detect_failure_not_json(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("hello\n")
    with pytest.raises(ValidationError, match=r"f.txt:1: cannot detect format: invalid JSON"):
        detect_format(path)


def test_detect_failure_pretty_printed_object(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(_rec("a"), indent=2))
    with pytest.raises(ValidationError, match="f.json: cannot detect format: one JSON object over several lines"):
        detect_format(path)


def test_detect_failure_missing_file(tmp_path):
    with pytest.raises(ValidationError, match="nope.jsonl: file not found"):
        detect_format(tmp_path / "nope.jsonl")


def test_unknown_format_argument(tmp_path):
    with pytest.raises(UserError, match="unknown data format 'csv'"):
        check_file(_write_lines(tmp_path / "f.jsonl", [_rec("a")]), "csv")
    assert FORMATS == ("relearn", "tofu", "knowundo")


def test_format_mismatch(tmp_path):
    lines = _write_lines(tmp_path / "f.jsonl", [_rec("a")])
    lst = _write_list(tmp_path / "g.json", [_rec("a")])
    assert _only_problem(lines, "knowundo") == f"{lines}: expected a JSON list of objects"
    assert _only_problem(lst, "relearn") == f"{lst}: expected JSON lines (one object per line), got a JSON list"


@pytest.mark.parametrize("rel, fmt", [("knowundo-privacy/unlearn_val.json", "knowundo"),
                                      ("tofu-general/world_facts_perturbed.json", "tofu")])
def test_real_files(rel, fmt):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert detect_format(path) == fmt
    records = load_validated(path)
    assert len(records) > 100
    assert records[0].id == f"{path.stem}-0" and records[0].question and records[0].answer


# --------------------------------------------------------------------------- problems


def test_missing_file(tmp_path):
    path = tmp_path / "missing.jsonl"
    assert check_file(path) == ([], [f"{path}: file not found"])
    assert check_file(path, "relearn") == ([], [f"{path}: file not found"])


def test_empty_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("  \n\n")
    assert check_file(path) == ([], [f"{path}: empty file"])


def test_empty_list(tmp_path):
    assert _only_problem(_write_list(tmp_path / "x.json", [])).endswith("x.json: no records (empty list)")


def test_bad_json_line(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [_rec("a"), _rec("b"), '{"id": "c" "question": "Q"}'])
    records, problems = check_file(path)
    assert [r.id for r in records] == ["a", "b"]
    assert problems == [f"{path}:3: invalid JSON: Expecting ',' delimiter (column 12)"]


def test_bad_json_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[\n  {"text": "Q", "labels": "A"},\n  {"text": "Q" "labels": "A"}\n]\n')
    assert _only_problem(path, "knowundo") == f"{path}:3: invalid JSON: Expecting ',' delimiter (column 16)"


def test_not_a_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"text": "Q",\n "labels": "A"}\n')
    assert _only_problem(path, "knowundo") == f"{path}: expected a JSON list of objects"


def test_missing_and_empty_fields(tmp_path):
    path = _write_lines(tmp_path / "forget.jsonl",
                        [_rec("a"), {"id": "b", "question": "Q?"}, _rec("c", answer="  ")])
    records, problems = check_file(path)
    assert [r.id for r in records] == ["a"]
    assert problems == [f"{path}:2: field 'answer': missing", f"{path}:3: field 'answer': empty"]


def test_missing_field_in_list(tmp_path):
    path = _write_list(tmp_path / "x.json", [{"text": "Q", "labels": "A"}] * 12 + [{"text": "Q"}])
    assert _only_problem(path) == f"{path}: record 12: field 'labels': missing"


def test_wrong_types(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [
        _rec("a", question=42),
        _rec("b", subject=None),
        _rec("c", perturbed_answer="x"),
        _rec("d", perturbed_answer=["x", 3]),
        {"id": 7, "question": "Q", "answer": "A"},
    ])
    assert check_file(path)[1] == [
        f"{path}:1: field 'question': expected a string, got 42",
        f"{path}:2: field 'subject': expected a string, got null",
        f"{path}:3: field 'perturbed_answer': expected a list of strings, got string \"x\"",
        f"{path}:4: field 'perturbed_answer': item 1: expected a string, got 3",
        f"{path}:5: field 'id': expected a string, got 7",
    ]


def test_facts_wrong_type(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [_rec("a", facts=["m@x.org"]), _rec("b", facts={"email": ""}),
                                               _rec("c", facts={"age": 41})])
    assert check_file(path)[1] == [
        f"{path}:1: field 'facts': expected an object of strings, got list",
        f"{path}:2: field 'facts': key \"email\": empty",
        f"{path}:3: field 'facts': key \"age\": expected a string, got 41",
    ]


def test_bad_variant(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [_rec("a", variant="fancy")])
    msg = _only_problem(path)
    assert msg.startswith(f"{path}:1: field 'variant': expected one of original, simple,")
    assert msg.endswith('got "fancy"')


def test_duplicate_id(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [_rec("a"), _rec("b"), "", _rec("a")])
    records, problems = check_file(path)
    assert [r.id for r in records] == ["a", "b"]
    assert problems == [f"{path}:4: field 'id': duplicate of line 1"]


def test_not_an_object(tmp_path):
    lines = _write_lines(tmp_path / "f.jsonl", [_rec("a"), "[1, 2]", '"text"'])
    assert check_file(lines)[1] == [f"{lines}:2: expected a JSON object, got list",
                                    f'{lines}:3: expected a JSON object, got string "text"']
    lst = _write_list(tmp_path / "g.json", [{"text": "Q", "labels": "A"}, ["Q", "A"]])
    assert _only_problem(lst) == f"{lst}: record 1: expected a JSON object, got list"


def test_non_utf8_line_keeps_other_lines(tmp_path):
    path = tmp_path / "f.jsonl"
    good = [json.dumps(_rec(r)).encode() for r in "abc"]
    path.write_bytes(b"\n".join([good[0], b'{"id\xff": 1}', good[1], good[2]]) + b"\n")
    records, problems = check_file(path)
    assert [r.id for r in records] == ["a", "b", "c"]
    assert problems == [f"{path}:2: not UTF-8 (invalid byte 0xff at column 5)"]


def test_non_utf8_in_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'[\n {"text": "Q", "labels": "A"},\n {"text": "\xe9t\xe9", "labels": "A"}\n]')
    assert _only_problem(path) == f"{path}:3: not UTF-8 (invalid byte 0xe9 at column 12)"


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_rec("a")).encode() + b"\r\n")
    assert [r.id for r in load_validated(path)] == ["a"]


def test_problems_are_capped(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [_rec(str(i), answer="") for i in range(MAX_PROBLEMS + 25)])
    problems = check_file(path)[1]
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == "... and 25 more problems"


def test_load_validated_raises_with_all_problems(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [_rec("a", question=""), _rec("b"), "nope", _rec("a")])
    with pytest.raises(ValidationError) as e:
        load_validated(path)
    assert e.value.problems == [f"{path}:1: field 'question': empty",
                                f"{path}:3: invalid JSON: Expecting value (column 1)",
                                f"{path}:4: field 'id': duplicate of line 1"]
    assert str(e.value) == "\n".join(e.value.problems)


# --------------------------------------------------------------------------- overlap


def test_normalise_question():
    assert normalise_question("  What IS\tthe  capital?! ") == "what is the capital"


def test_overlap_jsonl(tmp_path):
    forget = _write_lines(tmp_path / "forget.jsonl",
                          [_rec("f0", "Where does Mara live?"), "", _rec("f1", "What is Mara's email?")])
    retain = _write_lines(tmp_path / "retain.jsonl", [_rec("r0", "Who is Tobin?"), _rec("r1", "what is  mara's EMAIL")])
    problems = check_overlap(load_validated(forget), load_validated(retain), forget, retain)
    assert problems == [f"{forget}:3: field 'question': also in {retain}:2 (\"What is Mara's email?\")"]


def test_overlap_lists_and_truncation(tmp_path):
    long_q = "Which " + "very " * 20 + "long question is this?"
    forget = _write_list(tmp_path / "forget.json", [{"text": "Other?", "labels": "A"}, {"text": long_q, "labels": "A"}])
    retain = _write_list(tmp_path / "retain.json", [{"text": long_q, "labels": "B"}])
    (msg,) = check_overlap(load_validated(forget), load_validated(retain), forget, retain)
    quoted = json.dumps(long_q[:57] + "...")
    assert msg == f"{forget}: record 1: field 'question': also in {retain}: record 0 ({quoted})"


def test_overlap_records_not_from_files(tmp_path):
    forget = [QARecord(id="x", question="Same?", answer="A")]
    retain = [QARecord(id="y", question="same", answer="B"), QARecord(id="z", question="other", answer="B")]
    (msg,) = check_overlap(forget, retain, tmp_path / "f.jsonl", tmp_path / "r.jsonl")
    assert msg == f'{tmp_path / "f.jsonl"}: id "x": field \'question\': also in {tmp_path / "r.jsonl"}: id "y" ("Same?")'


def test_no_overlap(tmp_path):
    forget = [QARecord(id="x", question="One?", answer="A")]
    retain = [QARecord(id="y", question="Two?", answer="B")]
    assert check_overlap(forget, retain, "f.jsonl", "r.jsonl") == []


def test_locate(tmp_path):
    path = _write_lines(tmp_path / "f.jsonl", [_rec("a"), "", _rec("b")])
    assert locate(path) == {"a": f"{path}:1", "b": f"{path}:3"}
