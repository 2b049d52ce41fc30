"""The report's content, independent of its format: sections of tables, paragraphs and plots.

`build(data, masker)` reads the (possibly incomplete) input and returns a `Report`; the HTML and
markdown renderers turn it into text, masking and escaping every string they write. Anything that
is missing or of the wrong type makes its part "not measured" instead of failing.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from relearn.report import plots

NOT_MEASURED = "not measured"
MISSING = "—"
ROLES = ("target", "control", "unlearned")
VARIANT_ORDER = ("original", "simple", "contextual", "noise", "logical")
RUNG_ORDER = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int4")  # relearn.robustness.ladder.RUNGS
PROBE_ORDER = ("plain", "paraphrase", "perturb")  # then "jailbreak:<id>", as relearn.robustness.probes names them


# ---------------------------------------------------------------- the view model
@dataclass
class Cell:
    text: str
    cls: str = ""  # "pass", "fail", "num", "strong", "muted"


@dataclass
class Table:
    headers: list[str]  # one per column, complete ("target KFR"): what markdown shows
    rows: list[list[Cell]]
    row_cls: list[str] = field(default_factory=list)
    # optional two-row header for HTML: groups [(label, span)] over sub-headers (one per column)
    groups: list[tuple[str, int]] = field(default_factory=list)
    sub: list[str] = field(default_factory=list)


def grouped(first: list[str], groups: list[str], subs: list[str]) -> dict:
    """Table header arguments for columns `first` + every (group, sub) pair."""
    return {"headers": first + [f"{g} {s}" for g in groups for s in subs],
            "groups": [("", 1)] * len(first) + [(g, len(subs)) for g in groups],
            "sub": first + [s for _ in groups for s in subs]}


@dataclass
class Para:
    text: str
    cls: str = ""  # "note", "warn", "muted"


@dataclass
class Plot:
    svg: str
    caption: str


@dataclass
class Example:
    id: str
    question: str
    reference: str
    answer_target: str
    answer_unlearned: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)
    in_summary: bool = True


@dataclass
class Report:
    title: str
    model_name: str
    version: str
    method: str
    created: str
    verdict: str            # "passed", "failed" or "not evaluated"
    verdict_note: str
    glance: list[tuple[str, str, str]]   # (label, value, detail)
    sections: list[Section]
    secrets: int


# ---------------------------------------------------------------- tolerant access
def get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def num(value: Any) -> int | float | None:
    """`value` if it is a number (int or float, not bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def first_num(obj: Any, *paths: tuple[str, ...]) -> float | None:
    for path in paths:
        value = num(get(obj, *path))
        if value is not None:
            return value
    return None


def fmt(value: Any) -> str:
    """A number for a table: 3 decimals, fewer for large values, scientific for tiny ones."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3f}"
    return str(value)


def ci_at(obj: Any, *path: str) -> Mapping | None:
    """The 95% interval stored beside the number at `path` (`("forget", "kfr")` ->
    `forget.ci.kfr`; relearn.evaluation.uncertainty), or None."""
    if not path:
        return None
    ci = get(obj, *path[:-1], "ci", path[-1])
    return ci if isinstance(ci, Mapping) else None


def fmt_ci(value: Any, ci: Mapping | None) -> str:
    """`0.750 [0.47, 0.91], n = 12`: the value with its 95% interval and item count where known."""
    text = fmt(value)
    if not isinstance(ci, Mapping) or value is None:
        return text
    low, high, n = num(ci.get("low")), num(ci.get("high")), num(ci.get("n"))
    if low is not None and high is not None:
        text += f" [{_end(float(low))}, {_end(float(high))}]"
    if n is not None:
        text += f", n = {n}"
    return text


def _end(x: float) -> str:
    """An interval's end: two decimals (as the value's third is noise there), else as fmt writes it."""
    return f"{x:.2f}" if math.isfinite(x) and (x == 0 or 1e-2 <= abs(x) < 100) else fmt(x)


def first_ci(obj: Any, *paths: tuple[str, ...]) -> tuple[float | None, Mapping | None]:
    """(the first number found along `paths`, its interval)."""
    for path in paths:
        value = num(get(obj, *path))
        if value is not None:
            return value, ci_at(obj, *path)
    return None, None


def _ci_cell(obj: Any, *paths: tuple[str, ...]) -> Cell:
    value, ci = first_ci(obj, *paths)
    return Cell(fmt_ci(value, ci), "num")


def mapping(obj: Any) -> Mapping:
    return obj if isinstance(obj, Mapping) else {}


def ordered(keys: Iterable[str], order: Iterable[str]) -> list[str]:
    keys = [k for k in keys if isinstance(k, str)]
    known = [k for k in order if k in keys]
    return known + sorted(k for k in keys if k not in known)


def model_roles(section: Any) -> list[str]:
    """Roles present in `section` ({role: {...}}): target, control, unlearned first."""
    return ordered([k for k, v in mapping(section).items() if isinstance(v, Mapping)], ROLES)


def na(text: str = NOT_MEASURED) -> Para:
    return Para(text, "muted")


def _num_cell(value: Any, cls: str = "num") -> Cell:
    return Cell(fmt(value), cls)


# ---------------------------------------------------------------- gates and verdict
GATE_KEYS = ("name", "metric", "value", "min", "max", "passed", "reason", "blocking", "blocks", "bound", "low", "high",
             "n")


def release_scope(release: str | None) -> Mapping[str, str] | None:
    """What the verdict vouches for under `release`, in an approver's words ({meaning, covers,
    not_covers}), or None for an unknown release: the registry's own text, so that the report and
    the version's description in the MLflow UI say the same."""
    from relearn.registry.gates import RELEASE_SCOPE

    return RELEASE_SCOPE.get(release or "")


def release_of(data: Mapping) -> str | None:
    """The release the gates were evaluated for ('api', 'weights'), or None when not given."""
    release = data.get("release")
    release = release.strip().lower() if isinstance(release, str) else None
    return release or None


def gates(data: Mapping) -> list[dict]:
    """The gate rows, each with `blocking` resolved: a row that does not say counts as blocking
    unless its `blocks` list leaves out the data's release (results from before releases existed
    all blocked)."""
    raw = data.get("gates")
    if isinstance(raw, Mapping):
        raw = [dict(mapping(v), name=mapping(v).get("name", k)) for k, v in raw.items()]
    release = release_of(data)
    out = []
    for g in raw if isinstance(raw, (list, tuple)) else []:
        if dataclasses.is_dataclass(g) and not isinstance(g, type):
            g = dataclasses.asdict(g)
        if isinstance(g, Mapping):
            row = {k: g.get(k) for k in GATE_KEYS}
            blocks = row["blocks"]
            row["blocks"] = [str(b) for b in blocks] if isinstance(blocks, (list, tuple)) else None
            if not isinstance(row["blocking"], bool):
                row["blocking"] = release in row["blocks"] if row["blocks"] is not None and release else True
            out.append(row)
    return out


def verdict(data: Mapping, gate_rows: list[dict]) -> tuple[str, str]:
    """(status, note): the status is decided by the blocking gates alone; the note counts them,
    names the advisory gates that failed and says, under the data's release, which threats the
    verdict covers and which it does not."""
    status = data.get("gate_status")
    status = status.strip().lower() if isinstance(status, str) else None
    blocking = [g for g in gate_rows if g["blocking"]]
    failed = [g for g in blocking if g["passed"] is not True]
    advisory_failed = [g for g in gate_rows if not g["blocking"] and g["passed"] is not True]
    derived = ("passed" if blocking and not failed else "failed") if gate_rows else None
    n = len(blocking)
    counts = f"{n - len(failed)} of {n} {'blocking ' if n < len(gate_rows) else ''}gates passed"
    release = release_of(data)
    if advisory_failed:
        names = ", ".join(str(g["name"]) for g in advisory_failed)
        counts += f"; advisory gates that failed (they do not block{f' under release {release}' if release else ''}): {names}"
    scope = release_scope(release)
    covers = (f". Release {release}: the verdict covers {scope['covers']}; it does not cover "
              f"{scope['not_covers']}" if scope else "")
    if status in ("passed", "failed"):
        note = counts if gate_rows else "no gate results were given"
        if derived and derived != status:
            note += f"; warning: the recorded status '{status}' disagrees with the gate results"
        elif status == "passed" and not gate_rows:
            note += "; the recorded status could not be checked"
        return status, note + covers
    if derived:
        return derived, f"{counts} (status derived from the gate results: none was recorded){covers}"
    return "not evaluated", "no gate status and no gate results were given"


def gates_section(gate_rows: list[dict], release: str | None = None) -> Section:
    """The gate table. Under a release, each gate says under which releases it blocks; a failed
    gate that does not block under this one is marked advisory (shown, not blocking)."""
    s = Section("gates", "Promotion gates")
    if not gate_rows:
        s.blocks.append(na())
        return s
    scope = release_scope(release)
    if scope:
        s.blocks.append(Para(f"Release {release}: {scope['meaning']}. A gate blocks the version only under "
                             f"the releases in its 'blocks under' column; under the others it is advisory: "
                             f"shown here, never blocking.", "note"))
    rows, cls = [], []
    for g in gate_rows:
        ok = g["passed"] is True
        if ok:
            word, word_cls, row_cls = "passed", "pass", ""
        elif g["blocking"]:
            word, word_cls, row_cls = "failed", "fail", "failrow"
        else:
            word, word_cls, row_cls = "failed (advisory)", "", "worst"
        blocks = g["blocks"]
        under = (", ".join(blocks) or "never") if blocks is not None else ("yes" if g["blocking"] else "advisory")
        interval = {"low": g.get("low"), "high": g.get("high"), "n": g.get("n")}
        rows.append([Cell(str(g["name"] if g["name"] is not None else MISSING), "strong"),
                     Cell(str(g["metric"] if g["metric"] is not None else MISSING), "mono"),
                     Cell(fmt_ci(num(g["value"]) if g["value"] is not None else None, interval), "num"),
                     Cell(str(g.get("bound") or "value"), "" if (g.get("bound") or "value") != "value" else "muted"),
                     _num_cell(num(g["min"])), _num_cell(num(g["max"])),
                     Cell(under, "" if g["blocking"] else "muted"),
                     Cell(word, word_cls),
                     Cell(str(g["reason"]) if g["reason"] is not None else "")])
        cls.append(row_cls)
    if any((g.get("bound") or "value") != "value" for g in gate_rows):
        s.blocks.append(Para("A gate compared on 'lower' (or 'upper') reads that end of the metric's 95% interval: "
                             "it passes only when the whole interval clears the threshold on that side.", "note"))
    s.blocks.append(Table(["gate", "metric", "value [95% interval], n", "compared", "min", "max", "blocks under",
                           "verdict", "reason"], rows, cls))
    return s


# ---------------------------------------------------------------- metrics
# (group, label, paths tried in order, what to look for)
METRICS: list[tuple[str, str, tuple[tuple[str, ...], ...], str]] = [
    ("Knowledge", "KFR (forget set)", (("kfr",), ("forget", "kfr")), "high; near or above control"),
    ("Knowledge", "KRR (retain set)", (("krr",), ("retain", "krr")), "high; near target"),
    ("Knowledge", "LS (mean of sets)", (("ls",),), "near target"),
    ("Forget set", "LS", (("forget", "ls"),), "near target"),
    ("Forget set", "PPL", (("forget", "ppl"),), "low (fluent)"),
    ("Forget set", "Brunet's W", (("forget", "brunet"),), "low (rich vocabulary)"),
    ("Forget set", "Honoré's H", (("forget", "honore"),), "high (rich vocabulary)"),
    ("Forget set", "ROUGE-1 recall", (("forget", "rouge1_recall"),), "low; near control"),
    ("Forget set", "ROUGE-L recall", (("forget", "rougeL_recall"),), "low; near control"),
    ("Forget set", "relevance (question-answer cosine)", (("forget", "relevance"),), "near target (on topic, whatever it says)"),
    ("Retain set", "LS", (("retain", "ls"),), "near target"),
    ("Retain set", "PPL", (("retain", "ppl"),), "low (fluent)"),
    ("Retain set", "Brunet's W", (("retain", "brunet"),), "low"),
    ("Retain set", "Honoré's H", (("retain", "honore"),), "high"),
    ("Retain set", "ROUGE-1 recall", (("retain", "rouge1_recall"),), "high; near target"),
    ("Retain set", "ROUGE-L recall", (("retain", "rougeL_recall"),), "high; near target"),
    ("Retain set", "relevance (question-answer cosine)", (("retain", "relevance"),), "near target"),
    ("TOFU", "forget probability", (("tofu", "forget", "probability"),), "low; near control"),
    ("TOFU", "forget truth ratio", (("tofu", "forget", "truth_ratio"),), "near control"),
    ("TOFU", "retain probability", (("tofu", "retain", "probability"),), "high; near target"),
    ("TOFU", "retain truth ratio", (("tofu", "retain", "truth_ratio"),), "near target"),
    ("TOFU", "forget quality: KS statistic", (("tofu", "forget_quality", "ks_statistic"),),
     "low"),
    ("TOFU", "forget quality: p-value", (("tofu", "forget_quality", "p_value"),),
     "high (same distribution as control)"),
    ("TOFU", "model utility", (("tofu", "model_utility"),), "near target"),
    ("Membership inference", "LOSS AUC", (("mia", "loss_auc"),), "near 0.5 / control"),
    ("Membership inference", "Min-K% AUC", (("mia", "mink_auc"),), "near 0.5 / control"),
    ("Membership inference", "name-masked LOSS AUC", (("mia", "name_masked_loss_auc"),), "near 0.5 / control"),
]


def metrics_section(models: Mapping) -> Section:
    s = Section("metrics", "Metrics: target vs control vs unlearned")
    roles = model_roles(models)
    if not roles:
        s.blocks.append(na())
        return s
    s.blocks.append(Para("Target: the model before unlearning. Control: a model trained on the retain "
                         "set only, which never saw the forget set; a model that truly forgot should "
                         "look like the control on the forget set and like the target on the retain "
                         "set. Brackets: the 95% interval (Wilson for rates, a seeded bootstrap over items "
                         "for scores); n: the items it rests on. Two models whose intervals overlap may "
                         "not differ at all.", "note"))
    rows, cls, last_group = [], [], None
    for group, label, paths, hint in METRICS:
        values = [first_num(models[r], *paths) for r in roles]
        if all(v is None for v in values):
            continue
        rows.append([Cell(group if group != last_group else "", "muted"), Cell(label, "strong")]
                    + [_ci_cell(models[r], *paths) for r in roles] + [Cell(hint, "muted")])
        cls.append("groupstart" if group != last_group else "")
        last_group = group
    if not rows:
        s.blocks.append(na())
    else:
        s.blocks.append(Table(["", "metric"] + roles + ["look for"], rows, cls))
    return s


# ---------------------------------------------------------------- variants
def variants_section(models: Mapping, masker) -> Section:
    s = Section("variants", "Forgetting per question variant")
    roles = model_roles(models)
    per_model = {r: mapping(get(models[r], "variants")) for r in roles}
    kinds = ordered({k for v in per_model.values() for k, m in v.items() if isinstance(m, Mapping)},
                    VARIANT_ORDER)
    if not kinds:
        s.blocks.append(na())
        return s
    roles = [r for r in roles if per_model[r]]
    metrics = [m for m in ("kfr", "krr")
               if any(num(get(per_model[r], k, m)) is not None for r in roles for k in kinds)]
    mask = masker.mask
    panels = [(m.upper(), {mask(r): {mask(k): num(get(per_model[r], k, m)) for k in kinds} for r in roles})
              for m in metrics]
    svg = plots.bar_groups(masker.mask("KFR and KRR per question variant"), panels, [mask(k) for k in kinds],
                           "plot-variants")
    if svg:
        s.blocks.append(Plot(svg, "KFR (share of forget items whose answer no longer carries the fact) "
                                  "for each kind of rephrased forget question."))
    rows = [[Cell(k, "strong")] + [_ci_cell(per_model[r], (k, m)) for r in roles for m in metrics]
            for k in kinds]
    s.blocks.append(Table(rows=rows, **grouped(["variant"], roles, [m.upper() for m in metrics])))
    return s


# ---------------------------------------------------------------- robustness
def ladder_section(robustness: Mapping, masker) -> Section:
    s = Section("ladder", "Precision ladder (quantization)")
    roles = model_roles(robustness)
    per_model = {r: mapping(get(robustness[r], "ladder", "rungs")) for r in roles}
    roles = [r for r in roles if per_model[r]]
    rungs = ordered({k for v in per_model.values() for k, m in v.items() if isinstance(m, Mapping)},
                    RUNG_ORDER)
    if not rungs:
        s.blocks.append(na())
        return s
    s.blocks.append(Para("Unlearning by small weight changes can be undone by rounding: KFR should "
                         "stay high down the ladder (the exported, quantized artifact is what ships).",
                         "note"))
    mask = masker.mask
    panels = [(m.upper(), {mask(r): {mask(k): num(get(per_model[r], k, m)) for k in rungs} for r in roles})
              for m in ("kfr", "krr")]
    svg = plots.ladder(masker.mask("KFR and KRR per precision rung"), panels, [mask(k) for k in rungs], "plot-ladder")
    if svg:
        s.blocks.append(Plot(svg, "KFR and KRR of each model at each precision rung."))
    head = grouped(["rung"], roles, ["KFR", "KRR"])
    base = num(get(per_model.get("unlearned"), rungs[0], "kfr")) if "unlearned" in roles else None
    if base is not None:
        head["headers"].append(f"unlearned KFR change from {rungs[0]}")
        label, span = head["groups"][-1]
        head["groups"][-1:] = [(label, span + 1)] if label == "unlearned" else [(label, span), ("unlearned", 1)]
        head["sub"].append(f"KFR change from {rungs[0]}")
    rows = []
    for k in rungs:
        row = [Cell(k, "strong")] + [_ci_cell(per_model[r], (k, m)) for r in roles for m in ("kfr", "krr")]
        if base is not None:
            v = num(get(per_model["unlearned"], k, "kfr"))
            delta = None if v is None else v - base
            row.append(Cell(MISSING if delta is None else f"{delta:+.3f}",
                            "num fail" if delta is not None and delta < -0.05 else "num"))
        rows.append(row)
    s.blocks.append(Table(rows=rows, **head))
    return s


def probes_section(robustness: Mapping) -> Section:
    s = Section("probes", "Probes: paraphrase, perturbation, jailbreak")
    roles = [r for r in model_roles(robustness) if isinstance(get(robustness[r], "probes"), Mapping)]
    if not roles:
        s.blocks.append(na())
        return s
    names: list[tuple[str, tuple[str, ...]]] = []
    keys = set()
    for r in roles:
        keys |= {k for k, v in mapping(get(robustness[r], "probes", "probes")).items() if isinstance(v, Mapping)}
    for k in ordered([k for k in keys if not str(k).startswith("jailbreak:")], PROBE_ORDER):
        names.append((k, ("probes", k)))
    for k in sorted(k for k in keys if str(k).startswith("jailbreak:")):
        names.append((k, ("probes", k)))
    if any(isinstance(get(robustness[r], "probes", "worst"), Mapping) for r in roles):
        names.append(("largest KFR drop", ("worst",)))
    s.blocks.append(Para("KFR under attacking question forms; the worst case is what an adversary gets.",
                         "note"))
    rows, cls = [], []
    for label, path in names:
        rows.append([Cell(label, "strong")] + [_ci_cell(get(robustness[r], "probes"), (*path, m))
                                               for r in roles for m in ("kfr", "krr")])
        cls.append("worst" if path == ("worst",) else "")
    s.blocks.append(Table(rows=rows, row_cls=cls, **grouped(["probe"], roles, ["KFR", "KRR"])))
    for r in roles:  # the same answers as a client of `relearn serve` gets them, through the output guard
        probes = mapping(get(robustness[r], "probes", "probes"))
        guarded = [(label, path) for label, path in names
                   if path != ("worst",) and isinstance(get(probes, path[1], "guarded"), Mapping)]
        if not guarded:
            continue
        s.blocks.append(Para(f"{r}: each probe's answers without and with the output guard. KFR with the guard "
                             "is what a client of `relearn serve` can get; KRR with it is the guard's cost.",
                             "note"))
        rows = [[Cell(label, "strong"), _ci_cell(probes, (path[1], "kfr")),
                 _ci_cell(probes, (path[1], "guarded", "kfr")), _ci_cell(probes, (path[1], "krr")),
                 _ci_cell(probes, (path[1], "guarded", "krr"))] for label, path in guarded]
        s.blocks.append(Table(["probe", "KFR", "KFR, guarded", "KRR", "KRR, guarded"], rows))
    return s


def relearning_section(robustness: Mapping) -> Section:
    """The relearning attack: its settings (params, as the aggregates recorded them), each model's
    worst case, and the grid of settings with the unlearned model's recovery against the control's
    under the same setting. Any role may be missing (the robustness stage no longer attacks the
    target), and a report from before the sweep (one setting, no `settings`) shows its one row."""
    s = Section("relearning", "Relearning attack")
    roles = [r for r in model_roles(robustness) if isinstance(get(robustness[r], "relearning"), Mapping)]
    if not roles:
        s.blocks.append(na())
        return s
    attacks = {r: mapping(get(robustness[r], "relearning")) for r in roles}
    s.blocks.append(Para("Retrain-on-T: the attacker fine-tunes a copy of the model on some of the forget "
                         "facts and KFR is measured on the facts it never saw; recovery is the KFR lost. "
                         "Every learning rate and step count of the grid is tried, and the worst case "
                         "counts. A retain-only control never knew the facts, so its recovery under the "
                         "same setting is what fine-tuning alone explains; recovery well beyond it means "
                         "the knowledge was hidden, not removed.", "note"))
    first = attacks.get("unlearned") or attacks[roles[0]]
    described = _attack_settings(first)
    if described:
        s.blocks.append(Para(f"Attack settings (params robustness.relearn_*): {described}."))
    if len({_attack_settings(a) for a in attacks.values()}) > 1:
        s.blocks.append(Para("The models were not attacked with the same settings: their recoveries are "
                             "not comparable.", "warn"))

    def worst_setting(a: Mapping) -> str:
        lr = num(get(a, "worst", "lr")) if isinstance(a.get("worst"), Mapping) else num(a.get("lr"))
        steps = num(get(a, "worst", "steps")) if isinstance(a.get("worst"), Mapping) else num(a.get("steps"))
        parts = ([f"lr {lr:g}"] if lr is not None else []) + ([f"{steps} steps"] if steps is not None else [])
        return ", ".join(parts) or MISSING

    rows = [[Cell(r, "strong"), Cell(worst_setting(attacks[r]))]
            + [_num_cell(num(attacks[r].get(k))) for k in ("kfr_before", "kfr_after")]
            + [_ci_cell(attacks[r], ("recovery",))] for r in roles]
    s.blocks.append(Table(["model", "worst setting", "KFR before", "KFR after", "recovery"], rows))

    grid = [g for g in (first.get("settings") if isinstance(first.get("settings"), list) else []) if isinstance(g, Mapping)]
    if not grid:
        return s
    control = {(num(g.get("lr")), num(g.get("steps"))): num(g.get("recovery"))
               for g in (get(attacks.get("control"), "settings") or []) if isinstance(g, Mapping)}
    label = "unlearned" if "unlearned" in attacks else roles[0]
    rows, excess = [], []
    for g in grid:
        lr, steps, rec = num(g.get("lr")), num(g.get("steps")), num(g.get("recovery"))
        ctl = control.get((lr, steps))
        diff = rec - ctl if rec is not None and ctl is not None and not (math.isnan(rec) or math.isnan(ctl)) else None
        excess.append(diff)
        rows.append([Cell(MISSING if lr is None else f"{lr:g}"), _num_cell(steps), _num_cell(rec),
                     _num_cell(num(g.get("krr_after"))), _num_cell(ctl),
                     Cell(MISSING if diff is None else f"{diff:+.3f}", "num")])
    known = [e for e in excess if e is not None]
    top = max(known) if known else None
    cls = ["worst" if top is not None and e == top else "" for e in excess]
    s.blocks.append(Table(["lr", "steps", f"{label} recovery", f"{label} KRR after", "control recovery",
                           "excess over the control"], rows, row_cls=cls))
    s.blocks.append(Para("The gate (robustness.relearning_excess) reads the largest excess over the "
                         "control at the same setting (highlighted)" +
                         ("" if "control" in attacks else "; no control was attacked, so there is none") + ".",
                         "muted"))
    return s


def _attack_settings(attack: Mapping) -> str:
    """The attack's settings in words, from what its aggregate recorded ('' when it recorded none)."""
    out = []
    attacker = attack.get("attacker")
    if attacker == "lora":
        r = num(attack.get("lora_r"))
        out.append(f"LoRA attacker{f' of rank {r}' if r is not None else ''} on every linear layer but the output head")
    elif attacker == "full":
        out.append("full fine-tuning of every weight")
    precision = attack.get("precision")
    if precision in ("float32", "bfloat16"):
        optimizer = ("AdamW in bf16 with stochastic rounding" if attack.get("optimizer") == "bf16-adamw-stochastic-rounding"
                     else "AdamW")
        text = f"weights in {precision}, {optimizer}"
        if attack.get("gradient_checkpointing"):
            text += ", gradient checkpointing"
        memory = attack.get("memory") if isinstance(attack.get("memory"), Mapping) else {}
        estimate, peak = num(memory.get("estimate_bytes")), num(memory.get("device_peak_bytes"))
        if estimate is not None:
            text += f" ({estimate / 1024 ** 3:.2f} GiB of weights, gradients and optimizer state"
            text += f"; {peak / 1024 ** 3:.2f} GiB peak on the GPU)" if peak is not None else ")"
        out.append(text)
    folds = num(attack.get("folds"))
    fraction = num(attack.get("fraction"))
    if folds is not None and folds > 1:
        out.append(f"{folds} folds of the forget facts, each held out once")
    elif fraction is not None:
        out.append(f"one seeded split: {fraction:g} of the forget facts fine-tuned on, the rest held out")
    lrs = attack.get("lrs") if isinstance(attack.get("lrs"), list) else [attack.get("lr")]
    lrs = [f"{v:g}" for v in lrs if num(v) is not None]
    if lrs:
        out.append(f"learning rate{'s' if len(lrs) > 1 else ''} {', '.join(lrs)}"
                   + (" (constant)" if attack.get("schedule") == "constant" else ""))
    steps = attack.get("steps") if isinstance(attack.get("steps"), list) else [attack.get("steps")]
    steps = [str(v) for v in steps if num(v) is not None]
    if steps:
        out.append(f"recovery read after {', '.join(steps)} steps")
    batch = num(attack.get("batch_size"))
    if batch is not None:
        out.append(f"{batch} pairs a step")
    return "; ".join(out)


def requests_section(requests: Any) -> Section:
    """One row per erasure request the version covers: id, kind, received, KFR before and after."""
    s = Section("requests", "Erasure requests")
    rows_in = [r for r in (requests or []) if isinstance(r, Mapping)]
    if not rows_in:
        s.blocks.append(Para("This version was not made from an erasure-request ledger (data.requests).", "muted"))
        return s
    s.blocks.append(Para("Each request's KFR is measured on its own questions (held-out phrasings of its facts "
                         "when the source has them); the per-request gate fails a request that is not forgotten. "
                         "Ids only: the requests' content stays in the ledger.", "note"))
    rows, cls = [], []
    for r in rows_in:
        gate = r.get("passed")
        rows.append([Cell(_str(r.get("id"), MISSING), "strong"), Cell(_str(r.get("kind"), MISSING)),
                     Cell(_str(r.get("received"), MISSING)), _num_cell(num(r.get("kfr_target"))),
                     Cell(fmt_ci(num(r.get("kfr")), r.get("ci")), "num"), _num_cell(num(r.get("n"))),
                     Cell(_str(r.get("eval"), MISSING)),
                     Cell("passed" if gate else "FAILED" if gate is False else MISSING,
                          "pass" if gate else "fail" if gate is False else "muted")])
        cls.append("" if gate is not False else "worst")
    s.blocks.append(Table(["request", "kind", "received", "target KFR", "KFR", "questions", "asked on", "gate"],
                          rows, row_cls=cls))
    return s


SUMMARY_LABELS = {
    "bf16_kfr_drop": "KFR drop at torch bf16", "int8_kfr_drop": "KFR drop at ONNX int8",
    "int4_kfr_drop": "KFR drop at ONNX int4", "paraphrase_kfr": "KFR, paraphrased questions",
    "perturb_kfr": "KFR, misspelt questions", "jailbreak_min_kfr": "lowest KFR over jailbreaks",
    "probe_max_kfr_drop": "largest KFR drop over probes", "relearning_recovery": "relearning recovery",
    "relearning_excess": "relearning recovery beyond the control's",
    "guarded_jailbreak_min_kfr": "lowest KFR over jailbreaks, through the output guard",
    "guard_krr_drop": "KRR lost to the output guard (its false positives)",
}


def robustness_summary_section(summary: Any, guard: Any = None) -> Section:
    """The unlearned model's robustness numbers that gates read (`robustness.<key>`), and what the
    output guard served with the version holds (`guard`: relearn.serving.guard.Guard.summary())."""
    s = Section("robustness-summary", "Robustness summary (what the gates read)")
    values = {k: num(v) for k, v in mapping(summary).items() if k != "ci"}
    if not any(v is not None for v in values.values()):
        s.blocks.append(na())
        return s
    rows = [[Cell(SUMMARY_LABELS.get(k, k), "strong"), Cell(f"robustness.{k}", "muted"),
             Cell(fmt_ci(v, ci_at(summary, k)), "num")] for k, v in values.items()]
    s.blocks.append(Table(["measure", "gate metric", "unlearned [95% interval], n"], rows))
    guard = mapping(guard)
    if guard.get("facts") is not None:
        s.blocks.append(Para(f"Output guard: {guard['facts']} forget facts ({guard.get('strong', 0)} matched "
                             f"anywhere, the rest only where their subject is named) from {guard.get('records', 0)} "
                             "records, kept as keyed hashes; `relearn serve` redacts them from answers. The "
                             "guarded rows score the same answers as a client receives them.", "note"))
    return s


# ---------------------------------------------------------------- seesaw
def _probabilities(raw: Any) -> tuple[list[float] | None, list[float] | None]:
    """(token probabilities, histogram shares) from a list of probabilities or {"histogram": [...]}."""
    if isinstance(raw, Mapping):
        hist = [num(v) for v in raw.get("histogram") or [] if num(v) is not None]
        return None, (hist or None)
    if isinstance(raw, (list, tuple)):
        values = [num(v) for v in raw]
        values = [min(max(v, 0.0), 1.0) for v in values if v is not None and math.isfinite(v)]
        return (values or None), None
    return None, None


def seesaw_section(seesaw: Any, masker) -> Section:
    s = Section("seesaw", "Probability seesaw")
    shares, rows = {}, []
    for role in model_roles({k: {} for k in mapping(seesaw)}):
        values, hist = _probabilities(mapping(seesaw)[role])
        if values:
            shares[masker.mask(role)] = plots.histogram_shares(values)
            low = sum(v < 0.1 for v in values) / len(values)
            high = sum(v > 0.9 for v in values) / len(values)
            rows.append([Cell(role, "strong"), _num_cell(len(values)), _num_cell(statistics.fmean(values)),
                         _num_cell(statistics.median(values)), _num_cell(low), _num_cell(high)])
        elif hist:
            total = sum(hist) or 1.0
            hist = [h / total for h in hist]
            shares[masker.mask(role)] = hist
            centers = [(i + 0.5) / len(hist) for i in range(len(hist))]
            rows.append([Cell(role, "strong"), Cell(MISSING, "num"),
                         _num_cell(sum(c * h for c, h in zip(centers, hist))), Cell(MISSING, "num"),
                         Cell(MISSING, "num"), Cell(MISSING, "num")])
    if not shares:
        s.blocks.append(na())
        return s
    s.blocks.append(Para("Probabilities the model gives to the tokens of the original forget answers. "
                         "Reverse optimisation piles them up near 0 and damages fluency nearby; "
                         "ReLearn should move mass down without a collapse.", "note"))
    svg = plots.seesaw(masker.mask("Forget-answer token probabilities"), shares, "plot-seesaw")
    if svg:
        s.blocks.append(Plot(svg, "Share of forget-answer tokens per probability bin."))
    s.blocks.append(Table(["model", "tokens", "mean", "median", "share < 0.1", "share > 0.9"], rows))
    return s


# ---------------------------------------------------------------- membership inference
def mia_section(models: Mapping, masker) -> Section:
    s = Section("mia", "Membership inference")
    roles = [r for r in model_roles(models) if isinstance(get(models[r], "mia"), Mapping)]
    keys = (("loss_auc", "LOSS AUC"), ("name_masked_loss_auc", "name-masked LOSS AUC"),
            ("mink_auc", "Min-K% AUC"), ("name_masked_mink_auc", "name-masked Min-K% AUC"))
    roles = [r for r in roles if any(num(get(models[r], "mia", k)) is not None for k, _ in keys)]
    if not roles:
        s.blocks.append(na())
        return s
    s.blocks.append(Para("AUC of telling forget-set questions from never-seen ones by the model's loss. "
                         "0.5: indistinguishable; the unlearned model should be as close to 0.5 as the "
                         "control. The name-masked AUCs score only the answer tokens that are not the "
                         "subject's name, so a model cannot tell the sets apart by familiar names alone: "
                         "high plain but near-control name-masked AUCs mean the names are still known, "
                         "not the facts. The mia gate reads the plain LOSS AUC (minus the control's), "
                         "since recognising a forgotten person's name also leaks membership.", "note"))
    mask = masker.mask
    series = {mask(r): {label: num(get(models[r], "mia", k)) for k, label in keys} for r in roles}
    svg = plots.bar_groups(masker.mask("Membership-inference AUC"), [("AUC forget vs holdout", series)],
                           [label for _, label in keys], "plot-mia", ylabel="AUC", hline=0.5)
    if svg:
        s.blocks.append(Plot(svg, "Membership-inference AUC per model (dashed: chance)."))
    rows = [[Cell(r, "strong")] + [_num_cell(num(get(models[r], "mia", k))) for k, _ in keys] for r in roles]
    s.blocks.append(Table(["model"] + [label for _, label in keys], rows))
    return s


# ---------------------------------------------------------------- examples, lineage
def examples_section(raw: Any) -> Section:
    s = Section("examples", "Forget-set examples", in_summary=False)
    items = [e for e in raw if isinstance(e, Mapping)] if isinstance(raw, (list, tuple)) else []
    if not items:
        s.blocks.append(na())
        return s
    s.blocks.append(Para("Forgotten facts are masked as [redacted] everywhere in this report, in the "
                         "questions and the reference as well as in the answers.", "note"))

    def text(e: Mapping, key: str) -> str:
        v = e.get(key)
        return MISSING if v is None else str(v)

    for i, e in enumerate(items, 1):
        s.blocks.append(Example(text(e, "id") if e.get("id") is not None else f"#{i}", text(e, "question"),
                                text(e, "reference"), text(e, "answer_target"), text(e, "answer_unlearned")))
    return s


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, Mapping):
        out = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}{k}.")
        return out
    if isinstance(obj, (list, tuple)):
        return [(prefix[:-1], ", ".join(str(x) for x in obj))]
    return [(prefix[:-1], fmt(obj) if isinstance(obj, float) else str(obj))]


def lineage_section(raw: Any) -> Section:
    s = Section("lineage", "Lineage")
    items = _flatten(raw) if isinstance(raw, Mapping) else []
    if not items:
        s.blocks.append(na())
        return s
    s.blocks.append(Table(["item", "value"], [[Cell(k, "strong"), Cell(v, "mono")] for k, v in items]))
    return s


# ---------------------------------------------------------------- at a glance
def glance(models: Mapping, robustness: Mapping) -> list[tuple[str, str, str]]:
    out = []

    def trio(label: str, paths: tuple[tuple[str, ...], ...]) -> None:
        v = {r: first_ci(models.get(r), *paths) for r in ROLES}
        if v["unlearned"][0] is None:
            return
        detail = ", ".join(f"{r} {fmt_ci(*v[r])}" for r in ("target", "control") if v[r][0] is not None)
        out.append((label, fmt_ci(*v["unlearned"]), detail))

    trio("KFR unlearned", (("kfr",), ("forget", "kfr")))
    trio("KRR unlearned", (("krr",), ("retain", "krr")))
    trio("LS unlearned", (("ls",),))
    trio("forget quality p", (("tofu", "forget_quality", "p_value"),))
    trio("LOSS MIA AUC", (("mia", "loss_auc"),))
    u = mapping(robustness.get("unlearned"))
    worst = num(get(u, "probes", "worst", "kfr"))
    if worst is not None:
        out.append(("worst-probe KFR", fmt(worst), "the probe with the largest KFR drop"))
    jail = num(get(u, "probes", "jailbreak_min_kfr", "kfr"))
    if jail is not None:
        out.append(("jailbreak KFR", fmt(jail), "lowest KFR over the jailbreak prompts"))
    rungs = mapping(get(u, "ladder", "rungs"))
    lowest = [k for k in RUNG_ORDER[::-1] if isinstance(rungs.get(k), Mapping)]
    if lowest:
        k = lowest[0]
        v = num(get(rungs, k, "kfr"))
        if v is not None:
            out.append((f"KFR at {k}", fmt(v), "lowest precision measured"))
    rec = num(get(u, "relearning", "recovery"))
    if rec is not None:
        c = num(get(robustness, "control", "relearning", "recovery"))
        out.append(("relearning recovery", fmt(rec), f"control {fmt(c)}" if c is not None else ""))
    return out


# ---------------------------------------------------------------- the whole report
def _str(value: Any, default: str) -> str:
    return default if value is None or value == "" else str(value)


def build(data: Mapping | None, masker) -> Report:
    data = mapping(data)
    models = mapping(data.get("models"))
    robustness = mapping(data.get("robustness"))
    gate_rows = gates(data)
    status, note = verdict(data, gate_rows)
    name = _str(data.get("model_name"), "unnamed model")
    version = _str(data.get("version"), "unregistered")
    sections = [
        gates_section(gate_rows, release_of(data)),
        requests_section(data.get("requests")),
        metrics_section(models),
        variants_section(models, masker),
        ladder_section(robustness, masker),
        probes_section(robustness),
        relearning_section(robustness),
        robustness_summary_section(data.get("robustness_summary"),
                                   get(robustness, "unlearned", "probes", "guard")),
        seesaw_section(data.get("seesaw"), masker),
        mia_section(models, masker),
        examples_section(data.get("examples")),
        lineage_section(data.get("lineage")),
    ]
    return Report(title=f"Unlearning report: {name} version {version}", model_name=name, version=version,
                  method=_str(data.get("method"), "unknown"), created=_str(data.get("created"), MISSING),
                  verdict=status, verdict_note=note, glance=glance(models, robustness), sections=sections,
                  secrets=len(masker))

