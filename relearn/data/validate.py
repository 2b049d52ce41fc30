"""Check input data files and load them as `QARecord`s, naming every problem precisely.

Three formats are read:

    relearn   this project's JSON lines (see relearn.records)
    tofu      {"question", "answer"} records, a JSON list or JSON lines; optional
              "paraphrased_answer" (str) and "perturbed_answer" (list of str)
    knowundo  a JSON list of {"text": question, "labels": answer}

Records from tofu and knowundo files get the id `<file stem>-<index>` (0-based position in the
file). Every problem is one line naming the file, the place and the field, for example

    data/forget.jsonl:7: field 'answer': empty
    data/forget.json: record 12: field 'labels': missing

JSON lines are numbered by line (1-based); JSON lists by record (0-based), since a whole list may
sit on one line.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from relearn.errors import UserError, ValidationError
from relearn.records import VARIANTS, QARecord

FORMATS = ("relearn", "tofu", "knowundo")
MAX_PROBLEMS = 50  # per file; the rest are counted in one final line

PathLike = str | os.PathLike
Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


# --------------------------------------------------------------------------- value checks


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    """Name a JSON value for a message: `42`, `null`, `list`, `string "abc"`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return "string " + json.dumps(_shorten(value, 30), ensure_ascii=False)
    return "list" if isinstance(value, list) else "object"


def _any_str(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, got {_describe(value)}"


def _non_empty_str(value: Any) -> str | None:
    if not isinstance(value, str):
        return _any_str(value)
    return None if value.strip() else "empty"


def _str_list(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"expected a list of strings, got {_describe(value)}"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"item {i}: expected a string, got {_describe(item)}"
    return None


def _str_map(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected an object of strings, got {_describe(value)}"
    for key, item in value.items():
        problem = _non_empty_str(item)
        if problem:
            return f"key {json.dumps(key, ensure_ascii=False)}: {problem}"
    return None


def _variant(value: Any) -> str | None:
    if not isinstance(value, str):
        return _any_str(value)
    if value not in VARIANTS:
        return f"expected one of {', '.join(VARIANTS)}, got {json.dumps(value, ensure_ascii=False)}"
    return None


# field -> (check, required), per format; fields not listed are ignored
_FIELDS: dict[str, dict[str, tuple[Check, bool]]] = {
    "relearn": {
        "id": (_non_empty_str, True),
        "question": (_non_empty_str, True),
        "answer": (_non_empty_str, True),
        "subject": (_any_str, False),
        "facts": (_str_map, False),
        "source_id": (_any_str, False),
        "variant": (_variant, False),
        "paraphrased_answer": (_any_str, False),
        "perturbed_answer": (_str_list, False),
        "prefill": (_any_str, False),
    },
    "tofu": {
        "question": (_non_empty_str, True),
        "answer": (_non_empty_str, True),
        "paraphrased_answer": (_any_str, False),
        "perturbed_answer": (_str_list, False),
    },
    "knowundo": {
        "text": (_non_empty_str, True),
        "labels": (_non_empty_str, True),
    },
}


def _field_problems(obj: Any, fmt: str) -> list[str]:
    """What is wrong with one parsed record (without its location)."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {_describe(obj)}"]
    problems = []
    for name, (check, required) in _FIELDS[fmt].items():
        if name not in obj:
            problem = "missing" if required else None
        else:
            problem = check(obj[name])
        if problem:
            problems.append(f"field '{name}': {problem}")
    return problems


def _to_record(obj: dict, fmt: str, stem: str, index: int) -> QARecord:
    """Build a record from an object that passed `_field_problems`."""
    if fmt == "relearn":
        return QARecord.from_dict(obj)
    rid = f"{stem}-{index}"
    if fmt == "knowundo":
        return QARecord(id=rid, question=obj["text"], answer=obj["labels"])
    return QARecord(id=rid, question=obj["question"], answer=obj["answer"],
                    paraphrased_answer=obj.get("paraphrased_answer", ""),
                    perturbed_answer=list(obj.get("perturbed_answer", [])))


# --------------------------------------------------------------------------- reading


class _FileProblem(Exception):
    """A problem with the file as a whole: nothing in it can be checked."""


@dataclass
class _Item:
    """One record as found in a file, parsed or not."""

    where: str  # location prefix: "f.jsonl:3" or "f.json: record 3"
    label: str  # the same without the file: "line 3" or "record 3"
    index: int  # 0-based position among the file's records
    value: Any = None
    problem: str = ""  # set when the record could not be parsed


def _read(path: PathLike) -> bytes:
    """The file's bytes, without a leading UTF-8 byte-order mark."""
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise _FileProblem(f"{name}: file not found") from None
    except IsADirectoryError:
        raise _FileProblem(f"{name}: is a directory, expected a file") from None
    except OSError as e:
        raise _FileProblem(f"{name}: cannot read ({e.strerror})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        raise _FileProblem(f"{name}: empty file")
    return data


def _utf8_problem(err: UnicodeDecodeError, column: int) -> str:
    return f"not UTF-8 (invalid byte 0x{err.object[err.start]:02x} at column {column})"


def _json_problem(err: json.JSONDecodeError) -> str:
    return f"invalid JSON: {err.msg} (column {err.colno})"


def _is_list(data: bytes) -> bool:
    return data.lstrip()[:1] == b"["


def _jsonl_items(name: str, data: bytes) -> Iterator[_Item]:
    """Each non-blank line, parsed on its own so that one bad line spoils nothing else."""
    index = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        item = _Item(where=f"{name}:{lineno}", label=f"line {lineno}", index=index)
        index += 1
        try:
            item.value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            item.problem = _utf8_problem(e, e.start + 1)
        except json.JSONDecodeError as e:
            item.problem = _json_problem(e)
        yield item


def _parse_list(name: str, data: bytes) -> list[Any]:
    """The top-level JSON list of the file; whole-file problems raise `_FileProblem`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        lineno = data.count(b"\n", 0, e.start) + 1
        raise _FileProblem(f"{name}:{lineno}: {_utf8_problem(e, e.start - line_start + 1)}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise _FileProblem(f"{name}:{e.lineno}: {_json_problem(e)}") from None
    if not isinstance(value, list):
        raise _FileProblem(f"{name}: expected a JSON list of objects")
    if not value:
        raise _FileProblem(f"{name}: no records (empty list)")
    return value


def _list_items(name: str, data: bytes) -> Iterator[_Item]:
    for i, value in enumerate(_parse_list(name, data)):
        yield _Item(where=f"{name}: record {i}", label=f"record {i}", index=i, value=value)


def _items(name: str, data: bytes, fmt: str) -> Iterator[_Item]:
    """The file's records, read as `fmt` lays them out."""
    if fmt == "relearn" and _is_list(data):
        raise _FileProblem(f"{name}: expected JSON lines (one object per line), got a JSON list")
    if fmt == "knowundo" and not _is_list(data):
        raise _FileProblem(f"{name}: expected a JSON list of objects")
    return _list_items(name, data) if _is_list(data) else _jsonl_items(name, data)


# --------------------------------------------------------------------------- detection

_EXPECTED = ("expected 'id', 'question', 'answer' (relearn, JSON lines), 'question', 'answer' "
             "(tofu) or 'text', 'labels' (knowundo, JSON list)")


def _classify(obj: dict, is_list: bool) -> str | None:
    if is_list and "text" in obj and "labels" in obj:
        return "knowundo"
    if not is_list and "id" in obj:
        return "relearn"
    if "question" in obj and "answer" in obj:
        return "tofu"
    return None


def _first_record(name: str, data: bytes) -> _Item:
    """The first record that parses (or, when none does, the first record)."""
    if _is_list(data):
        return next(_list_items(name, data))
    first = None
    for item in _jsonl_items(name, data):
        if not item.problem:
            return item
        first = first or item
    assert first is not None  # the file is not blank, so it has a record
    return first


def _is_one_object(data: bytes) -> bool:
    """Whether the whole file is a single (pretty-printed) JSON object."""
    try:
        return isinstance(json.loads(data.decode("utf-8")), dict)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return False


def _detect(name: str, data: bytes) -> str:
    item = _first_record(name, data)
    if item.problem and _is_one_object(data):
        raise _FileProblem(f"{name}: cannot detect format: one JSON object over several lines; "
                           "expected JSON lines (one object per line) or a JSON list")
    if item.problem:
        raise _FileProblem(f"{item.where}: cannot detect format: {item.problem}")
    if not isinstance(item.value, dict):
        raise _FileProblem(f"{item.where}: cannot detect format: "
                           f"expected a JSON object, got {_describe(item.value)}")
    fmt = _classify(item.value, _is_list(data))
    if fmt is None:
        fields = ", ".join(f"'{k}'" for k in item.value) or "no fields"
        raise _FileProblem(f"{item.where}: cannot detect format: record has {fields}; {_EXPECTED}")
    return fmt


def detect_format(path: PathLike) -> str:
    """The format of the file at `path`, one of FORMATS; raises ValidationError if unknown."""
    name = os.fspath(path)
    try:
        return _detect(name, _read(path))
    except _FileProblem as e:
        raise ValidationError([str(e)]) from None


# --------------------------------------------------------------------------- checking


@dataclass
class _Checked:
    records: list[QARecord]
    locations: list[str]  # parallel to records: "f.jsonl:3" or "f.json: record 3"
    problems: list[str]


def _cap(problems: list[str], limit: int = MAX_PROBLEMS) -> list[str]:
    if len(problems) <= limit:
        return problems
    return problems[:limit] + [f"... and {len(problems) - limit} more problems"]


def _check_items(items: Iterator[_Item], fmt: str, stem: str) -> _Checked:
    out = _Checked([], [], [])
    seen_ids: dict[str, str] = {}  # id -> label of the record that first had it
    for item in items:
        problems = [item.problem] if item.problem else _field_problems(item.value, fmt)
        rid = item.value.get("id") if fmt == "relearn" and isinstance(item.value, dict) else None
        if isinstance(rid, str) and rid.strip():
            if rid in seen_ids:
                problems.append(f"field 'id': duplicate of {seen_ids[rid]}")
            else:
                seen_ids[rid] = item.label
        if problems:
            out.problems.extend(f"{item.where}: {p}" for p in problems)
        else:
            out.records.append(_to_record(item.value, fmt, stem, item.index))
            out.locations.append(item.where)
    return out


def _check(path: PathLike, fmt: str | None) -> _Checked:
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    name = os.fspath(path)
    try:
        data = _read(path)
        fmt = fmt or _detect(name, data)
        checked = _check_items(_items(name, data, fmt), fmt, Path(path).stem)
    except _FileProblem as e:
        return _Checked([], [], [str(e)])
    checked.problems = _cap(checked.problems)
    return checked


def check_file(path: PathLike, fmt: str | None = None) -> tuple[list[QARecord], list[str]]:
    """The file's valid records and one line per problem; bad content never raises.

    `fmt` is one of FORMATS, or None to detect it. Records with a problem are left out.
    """
    checked = _check(path, fmt)
    return checked.records, checked.problems


def load_validated(path: PathLike, fmt: str | None = None, allow_empty: bool = False) -> list[QARecord]:
    """The file's records; raises ValidationError listing every problem if there is any.

    allow_empty: a zero-byte file is an empty list (a pipeline output that may have no records,
    such as the general QA mixed into the forget side when a source has none)."""
    if allow_empty and Path(path).is_file() and Path(path).stat().st_size == 0:
        return []
    records, problems = check_file(path, fmt)
    if problems:
        raise ValidationError(problems)
    return records


def locate(path: PathLike, fmt: str | None = None) -> dict[str, str]:
    """Record id -> where the record is in the file ("f.jsonl:3", "f.json: record 3")."""
    checked = _check(path, fmt)
    return {r.id: where for r, where in zip(checked.records, checked.locations)}


# --------------------------------------------------------------------------- overlap


def normalise_question(question: str) -> str:
    """Lower-case, whitespace collapsed, trailing punctuation and space removed."""
    text = " ".join(question.lower().split())
    return re.sub(r"[\W_]+$", "", text)


def _where(locations: dict[str, str], path: PathLike, rid: str) -> str:
    return locations.get(rid) or f"{os.fspath(path)}: id {json.dumps(rid, ensure_ascii=False)}"


def check_overlap(forget: list[QARecord], retain: list[QARecord],
                  forget_path: PathLike, retain_path: PathLike) -> list[str]:
    """One problem per forget record whose question is also asked in the retain set.

    The paths name the files the records came from; they are read again, only when there is
    an overlap, to say where each record is.
    """
    retained: dict[str, QARecord] = {}
    for r in retain:
        retained.setdefault(normalise_question(r.question), r)
    pairs = [(f, retained[key]) for f in forget
             if (key := normalise_question(f.question)) and key in retained]
    if not pairs:
        return []
    forget_at, retain_at = locate(forget_path), locate(retain_path)
    problems = []
    for f, r in pairs:
        quoted = json.dumps(_shorten(f.question, 60), ensure_ascii=False)
        problems.append(f"{_where(forget_at, forget_path, f.id)}: field 'question': "
                        f"also in {_where(retain_at, retain_path, r.id)} ({quoted})")
    return _cap(problems)
