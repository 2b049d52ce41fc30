"""MkDocs hooks: the params reference, generated from the typed schema (relearn/params.py) at every build.

The page `reference/params.md` is never written to disk: `on_files` adds it to the build as a generated
file, so it always shows the schema of the code being documented (defaults, types, choices, help text).
"""
from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

import yaml
from mkdocs.structure.files import File

PARAMS_PAGE = "reference/params.md"
SCHEMA = Path(__file__).resolve().parents[1] / "relearn" / "params.py"
LONG_DEFAULT = 60  # defaults longer than this (flow YAML) go in a block under their table


def _inline(value) -> str:
    """A default as YAML on one line (JSON for a string with a line break, which flow YAML would fold)."""
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n...\n").strip()  # a plain scalar ends its document with "..."


def _code_cell(text: str) -> str:
    """Text as inline code inside a table cell: HTML, so that a '|' does not split the cell."""
    return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"


def _text_cell(text: str) -> str:
    """Help text for a table cell: code spans kept, everything else escaped for Markdown and HTML."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(_code_cell(part[1:-1]))
        else:
            part = html.escape(part, quote=False).replace("|", "&#124;")
            out.append(re.sub(r"([*_\\\[\]])", r"\\\1", part))
    return "".join(out)


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _split(obj) -> tuple[list[dataclasses.Field], list[dataclasses.Field]]:
    """A dataclass's fields: the plain ones and the nested sections."""
    fields = dataclasses.fields(obj)
    nested = [f for f in fields if dataclasses.is_dataclass(getattr(obj, f.name))]
    return [f for f in fields if f not in nested], nested


def _section(obj, prefix: str, title: str, help_: str, choices: dict, out: list[str], top_only: bool = False) -> None:
    """One table for the plain fields of `obj`, then one section per nested dataclass (unless top_only)."""
    out += [f"## {title}", ""]
    if help_:
        out += [_text_cell(help_), ""]
    scalars, nested = _split(obj)
    if top_only:
        nested = []
    blocks: list[str] = []
    if scalars:
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in scalars:
            key = f"{prefix}{f.name}"
            value = getattr(obj, f.name)
            default = _inline(value)
            if len(default) > LONG_DEFAULT:
                cell = f"[below](#{key.replace('.', '').replace('_', '')}-default)"
                dumped = yaml.safe_dump({f.name: value}, sort_keys=False, width=100).rstrip()
                blocks += [f'<a id="{key.replace(".", "").replace("_", "")}-default"></a>', "",
                           f"Default of `{key}`:", "", "```yaml", dumped, "```", ""]
            else:
                cell = _code_cell(default)
            meaning = _text_cell(f.metadata.get("help", ""))
            if key in choices:
                meaning += " One of: " + ", ".join(_code_cell(c) for c in choices[key]) + "."
            out.append(f"| <code>{key}</code> | {_code_cell(_type_name(f))} | {cell} | {meaning} |")
        out.append("")
    out += blocks
    for f in nested:
        key = f"{prefix}{f.name}"
        _section(getattr(obj, f.name), f"{key}.", f"`{key}`", f.metadata.get("help", ""), choices, out)


def params_markdown() -> str:
    from relearn.params import CHOICES, GateParams, Params, default_params_yaml

    out = [
        "# Params reference",
        "",
        "Every key of `params.yaml`, generated from the typed schema (`relearn/params.py`) each time this site",
        "is built, so it cannot drift from the code. The defaults are the schema's; the project's `params.yaml`",
        "sets some keys differently for the demo (read it, or `dvc params diff`). `relearn params` prints the",
        "same defaults and help as YAML; `relearn params --check FILE` validates a file, and a bad value fails",
        "before any work with `params.yaml:LINE: key: problem`.",
        "",
    ]
    params = Params()
    sections = _split(params)[1]
    out += ["Sections: " + ", ".join(["[top level](#top-level)"] + [f"[`{f.name}`](#{f.name})" for f in sections]) + ".", ""]

    _section(params, "", "Top level", "", CHOICES, out, top_only=True)
    for f in sections:
        _section(getattr(params, f.name), f"{f.name}.", f"`{f.name}`", f.metadata.get("help", ""), CHOICES, out)

    _section(GateParams(), "register.gates.<name>.", "One gate: `register.gates.<name>`",
             "Each entry of register.gates (see the Registry page for how gates are read).", CHOICES, out)

    out += ["## All defaults as YAML", "", "What `relearn params` prints:", "", "```yaml",
            default_params_yaml().rstrip(), "```", ""]
    return "\n".join(out)


def on_files(files, config):
    files.append(File.generated(config, PARAMS_PAGE, content=params_markdown()))
    return files


def on_serve(server, config, builder):
    server.watch(str(SCHEMA))
    return server
