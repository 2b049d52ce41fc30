"""Model versions in the MLflow registry: register with gates, list, promote with approval, attach exports.

The life of a version:
1. `register_version` logs one run (params, metrics, dataset hashes and counts, the pyfunc model),
   creates a version, evaluates the gates and writes their verdicts as version tags. Which gates
   block depends on how the model is released (`register.release`, tagged `release`): the others
   are advisory, shown but never blocking. A version that passes every blocking gate gets the
   `challenger` alias and `approval_status=pending`; one that fails gets `approval_status=blocked`.
   Its description in the MLflow UI says the same in words: the verdict, the release and what it
   covers, the failed gates and where the report is (`describe_version`, once the report is attached).
2. A person reviews it and sets the tag `approval_status=approved` on the version page of the UI.
3. `promote` moves the `production` alias onto it, refusing unless the blocking gates passed and it is
   approved.

Only counts, hashes, params and metrics go to MLflow: never the text of the forget set.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

import relearn
from relearn.errors import UserError
from relearn.io import file_md5  # noqa: F401  (re-exported: stages and tests read it here)
from relearn.params import GATE_TAG_NAMES, Params
from relearn.registry.gates import (PASSED, RELEASE_SCOPE, derived, evaluate_gates, flatten, gate_tags, parse_gate_tag,
                                    shortfall)
from relearn.registry.tracking import client as project_client
from relearn.registry.tracking import setup, tracking_uri

CHALLENGER, PRODUCTION = "challenger", "production"
APPROVAL_TAG = "approval_status"
RELEASE_TAG = "release"
MAX_DESCRIPTION = 5000  # the length of MLflow's model-version description column
PENDING, BLOCKED, APPROVED = "pending", "blocked", "approved"
MODEL_REQUIREMENTS = ("torch", "transformers", "peft", "mlflow", "pandas")


# ------------------------------------------------------------------------------------ helpers
def _key(name: str) -> str:
    """A name MLflow accepts as a param, metric or tag key."""
    return re.sub(r"[^\w\-. /]", "_", name)[:MAX_ENTITY_KEY_LENGTH]


def _param_values(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> dotted keys with string values within MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_param_values(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            out[_key(name)] = text[:MAX_PARAM_VAL_LENGTH]
    return out


def _requirements() -> list[str]:
    """Pinned requirements of the logged model, from what is installed (no local '+cpu' parts)."""
    pins = []
    for name in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _not_found(e: MlflowException) -> bool:
    return e.error_code == "RESOURCE_DOES_NOT_EXIST"


def version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version behind `alias`, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    """alias -> version (search_model_versions does not fill in aliases)."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as e:
        if _not_found(e):
            raise UserError(f"no registered model {model_name!r} in {tracking_uri()}; run the pipeline first") from None
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _version(client: MlflowClient, model_name: str, version: str) -> ModelVersion:
    _aliases(client, model_name)  # the model itself must exist
    version = str(version).strip()
    if not version.isdigit():
        raise UserError(f"version must be a number like 3, got {version!r}")
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as e:
        if not _not_found(e):
            raise
    known = sorted(int(v.version) for v in client.search_model_versions(_name_filter(model_name)))
    listing = ", ".join(map(str, known)) or "none"
    raise UserError(f"version {version} of {model_name!r} does not exist (versions: {listing})")


def _name_filter(model_name: str) -> str:
    return "name='{}'".format(model_name.replace("'", "\\'"))


def _failed_gate_tags(tags: Mapping[str, str], advisory: bool = False) -> dict[str, str]:
    """gate name -> tag value, for the `gate.<name>` tags whose verdict is failed and that block the
    version (advisory=True: that are only advisory under its release). Tags written before releases
    existed carry no `advisory` word: those gates blocked."""
    failed = {}
    for key, value in sorted(tags.items()):
        name = key[len("gate."):]
        if not key.startswith("gate.") or name in GATE_TAG_NAMES:
            continue
        parsed = parse_gate_tag(value)
        if parsed.get("passed") is False and parsed.get("advisory", False) == advisory:
            failed[name] = value
    return failed


def _failures(tags: Mapping[str, str], advisory: bool = False) -> list[dict]:
    """`[{"gate", "value", "min", "max", "passed", "shortfall", ...}]` of the failed gates (see
    `_failed_gate_tags`), for `relearn status` and the description."""
    return [_gate_row(name, value) for name, value in _failed_gate_tags(tags, advisory).items()]


def _gate_row(name: str, tag: str) -> dict:
    """One gate's tag, parsed, with `shortfall` in words; the 95% interval and n follow a point value."""
    parsed = parse_gate_tag(tag)
    bound = parsed.get("bound", "value")
    text = shortfall(parsed.get("value"), parsed.get("min"), parsed.get("max"), bound, parsed.get("ci"))
    ci = parsed.get("ci")
    if bound == "value" and isinstance(ci, list) and ci[0] is not None:
        text += f" (95% interval [{ci[0]:.4g}, {ci[1]:.4g}], n = {parsed.get('n', '?')})"
    elif bound != "value" and isinstance(parsed.get("value"), float):
        text += f"; value {parsed['value']:.4g}, n = {parsed.get('n', '?')}"
    return {"gate": name, **parsed, "shortfall": text}


def _bounded_gates(tags: Mapping[str, str]) -> list[dict]:
    """The gates read on an end of the 95% interval (their tag has `bound=`), passed or not."""
    return [_gate_row(key[len("gate."):], value) for key, value in sorted(tags.items())
            if key.startswith("gate.") and key[len("gate."):] not in GATE_TAG_NAMES and " bound=" in f" {value}"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _normal(value: str | None) -> str:
    return (value or "").strip().lower()


# ------------------------------------------------------------------------------------ register
def register_version(*, model_name: str, experiment: str, params: Params, metrics: dict,
                     base_model_dir: str | Path, adapter_dir: str | Path | None, generation: dict,
                     dataset_hashes: dict[str, str], counts: dict[str, int], git_commit: str | None,
                     extra_tags: dict | None = None, extra_gates: dict | None = None,
                     version_tags: dict | None = None) -> dict:
    """Log a run with the pyfunc model, create a version of `model_name`, gate it.

    extra_gates: gates beyond register.gates (the per-request gates); version_tags: tags of the
    version itself (ids of the requests it covers). Returns `{"version", "run_id", "gate_status",
    "gates": [GateResult as dict, ...]}`.
    """
    from relearn.registry.pyfunc import GENERATION_KEYS, INPUT_EXAMPLE, SIGNATURE, UnlearnedModel  # here: status and promote never load it

    base_model_dir = Path(base_model_dir)
    adapter_dir = Path(adapter_dir) if adapter_dir is not None else None  # None: a distilled model, no adapter
    for what, d in (("base model", base_model_dir), ("adapter", adapter_dir)):
        if d is not None and not d.is_dir():
            raise UserError(f"{d}: {what} directory not found")
    missing = [k for k in GENERATION_KEYS if k not in generation]
    if missing:
        raise UserError(f"generation settings lack {', '.join(missing)}")
    flat = derived(flatten(metrics))
    release = params.register.release
    results = evaluate_gates(flat, {**params.gates(), **(extra_gates or {})}, release)
    status = gate_tags(results)["gate.status"]

    run_tags = {"git_commit": git_commit or "unknown"}
    run_tags.update({_key(f"data.{name}.md5"): str(h) for name, h in dataset_hashes.items()})
    run_tags.update({_key(f"data.{name}.count"): str(int(n)) for name, n in counts.items()})
    run_tags.update({_key(str(k)): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in (extra_tags or {}).items()})

    setup(experiment)
    method = params.unlearn.method
    with mlflow.start_run(run_name=f"relearn-{method}", tags=run_tags) as run:
        mlflow.log_params(_param_values(params.to_dict()))
        with tempfile.TemporaryDirectory(prefix="relearn-generation-") as tmp:
            settings = Path(tmp) / "generation.json"
            settings.write_text(json.dumps(generation, indent=2, sort_keys=True), encoding="utf-8")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=UnlearnedModel(),
                artifacts={"base_model": str(base_model_dir), "generation": str(settings),
                           **({"adapter": str(adapter_dir)} if adapter_dir is not None else {})},
                pip_requirements=_requirements(),
                code_paths=[str(Path(relearn.__file__).parent)],
                # MLflow loads the logged model once and answers the example to check it (seconds on
                # SmolLM2; a 7B model's load on bigger ones)
                signature=SIGNATURE, input_example=INPUT_EXAMPLE,
            )
        # the metrics after the model, linked to it in one batch: logged before, MLflow would read
        # each one's history back to link it to the model (a query a metric: a real model's version
        # logs about two thousand) and store every value twice
        mlflow.log_metrics({_key(k): v for k, v in flat.items()}, model_id=info.model_id)
        run_id = run.info.run_id

    version_tags = {**gate_tags(results), RELEASE_TAG: release, "method": method, "run_id": run_id,
                    APPROVAL_TAG: PENDING if status == PASSED else BLOCKED,
                    **{_key(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in (version_tags or {}).items()}}
    mv = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
    client = project_client()
    # the report is attached later (pipelines/register.py), which calls describe_version again
    client.update_model_version(model_name, mv.version, description=version_description(version_tags))
    if status == PASSED:
        client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    return {"version": str(mv.version), "run_id": run_id, "gate_status": status, "release": release,
            "gates": [asdict(r) for r in results]}


# ------------------------------------------------------------------------------------ describe
def version_description(tags: Mapping[str, str], report: str | None = None) -> str:
    """The version's description in the MLflow UI, in markdown, from its tags: what an approver
    reads first on the version page, which otherwise shows only tags: the verdict, the release and
    what the verdict covers under it, the failed blocking gates, the advisory gates that failed, and
    where the report is (`report`: e.g. `runs:/<run id>/report/report.html`; None: not attached yet).
    """
    blocking, advisory = _failures(tags), _failures(tags, advisory=True)
    passed = _normal(tags.get("gate.status")) == PASSED and not blocking
    if passed:
        lines = [f"**Gates passed: may be approved.** An approver sets `{APPROVAL_TAG}={APPROVED}` on this "
                 f"page after reading the report."]
    else:
        names = ", ".join(f["gate"] for f in blocking) or f"gate.status={tags.get('gate.status', 'missing')}"
        lines = [f"**Blocked by gates: {names}.** This version cannot be promoted; an approval does not "
                 f"override its gates."]
    release = _normal(tags.get(RELEASE_TAG))
    scope = RELEASE_SCOPE.get(release)
    if scope:
        lines += ["", f"**Release: {release}** ({scope['meaning']}). The verdict covers {scope['covers']}; "
                      f"it does not cover {scope['not_covers']}."]
    else:
        lines += ["", "**Release: not recorded** (registered before `register.release` existed): every gate blocks."]
    if blocking:
        lines += ["", "Failed gates (blocking):"] + [f"- {f['gate']}: {f['shortfall']}" for f in blocking]
    if advisory:
        lines += ["", f"Advisory gates that failed (they do not block under release {release}):"]
        lines += [f"- {f['gate']}: {f['shortfall']}" for f in advisory]
    bounded = _bounded_gates(tags)
    if bounded:
        lines += ["", "Gates read on an end of the metric's 95% interval (a few lucky items cannot pass them):"]
        lines += [f"- {g['gate']}: {g['shortfall']}: {'passed' if g.get('passed') else 'failed'}" for g in bounded]
    if tags.get("guard.facts"):
        asked = (f" {tags['guard.asked']} of these facts, which the retain set also states, are guarded only where "
                 f"their forget question is asked." if tags.get("guard.asked") not in (None, "0", 0) else "")
        lines += ["", f"Output guard: {tags['guard.facts']} forget facts as keyed hashes "
                      f"({tags.get('guard.requests', '0')} erasure requests); `relearn serve` redacts them "
                      f"from answers.{asked}"]
    lines += ["", f"Report: `{report}` (the run's artifacts)" if report else "Report: not attached yet."]
    text = "\n".join(lines)
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 1] + "…"


def report_uri(mv: ModelVersion) -> str | None:
    """`runs:/<run id>/<report path>` of a version whose report is attached (its `report` tag), or None."""
    tags = dict(mv.tags or {})
    run_id = mv.run_id or tags.get("run_id")
    return f"runs:/{run_id}/{tags['report']}" if tags.get("report") and run_id else None


def describe_version(model_name: str, version: str) -> str:
    """Write the version's description from its current tags (call it again once the report is
    attached, so the description says where it is); returns the text."""
    client = project_client()
    mv = _version(client, model_name, version)
    text = version_description(dict(mv.tags or {}), report_uri(mv))
    client.update_model_version(model_name, mv.version, description=text)
    return text


# ------------------------------------------------------------------------------------ inspect
def version_status(model_name: str) -> list[dict]:
    """Every version of `model_name`, newest first: gates (failed_gates: the blocking ones that
    failed; advisory_gates: the advisory ones that failed), release, approval, aliases, creation time."""
    client = project_client()
    aliases = _aliases(client, model_name)
    versions = sorted(client.search_model_versions(_name_filter(model_name)),
                      key=lambda v: int(v.version), reverse=True)
    rows = []
    for mv in versions:
        tags = dict(mv.tags or {})
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc)
        rows.append({
            "version": str(mv.version),
            "run_id": mv.run_id or tags.get("run_id", ""),
            "gate_status": tags.get("gate.status", "unknown"),
            "release": tags.get(RELEASE_TAG, ""),
            "failed_gates": _failures(tags),
            "advisory_gates": _failures(tags, advisory=True),
            "approval_status": tags.get(APPROVAL_TAG, ""),
            "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
            "created": created.isoformat(timespec="seconds"),
        })
    return rows


# ------------------------------------------------------------------------------------ promote
def release_problem(model_name: str, mv: ModelVersion) -> str | None:
    """Why `mv` may not reach production (its blocking gates did not pass, or no one approved it),
    or None. `promote` refuses such a version, and `relearn serve` never loads one. Gates that are
    advisory under the version's release never stop it; a blocking gate tagged failed does, even
    under a `gate.status` that says passed (a tag edited by hand)."""
    label = f"version {mv.version} of {model_name!r}"
    tags = dict(mv.tags or {})
    blocking = _failed_gate_tags(tags)
    if _normal(tags.get("gate.status")) != PASSED or blocking:
        failed = [f"{name}: {value}" for name, value in blocking.items()]
        detail = f" ({'; '.join(failed)})" if failed else f" (gate.status={tags.get('gate.status', 'missing')})"
        return f"{label} did not pass its gates{detail}"
    approval = tags.get(APPROVAL_TAG)
    if _normal(approval) != APPROVED:
        return (f"{label} is not approved ({APPROVAL_TAG}={(approval or 'missing').strip()}): an approver "
                f"sets {APPROVAL_TAG}={APPROVED} on the version page in the MLflow UI")
    return None


def promote(model_name: str, version: str, alias: str = PRODUCTION) -> dict:
    """Move `alias` onto `version` if its gates passed and a person approved it.

    Returns `{"version", "previous"}` (previous: the version the alias was on, or ''). Promoting
    the version the alias already points to changes nothing.
    """
    client = project_client()
    mv = _version(client, model_name, version)
    problem = release_problem(model_name, mv)
    if problem:
        raise UserError(f"{problem}: it cannot be promoted" if "not approved" not in problem else problem)
    previous = _aliases(client, model_name).get(alias, "")
    if previous == str(mv.version):
        return {"version": str(mv.version), "previous": previous}
    try:
        client.set_registered_model_alias(model_name, alias, mv.version)
    except MlflowException as e:
        raise UserError(f"cannot set alias {alias!r}: {e.message}") from None
    client.set_model_version_tag(model_name, mv.version, "promoted_at", _now())
    client.set_model_version_tag(model_name, mv.version, "promoted_from", previous)
    return {"version": str(mv.version), "previous": previous}


# ------------------------------------------------------------------------------------ attach
def attach_artifacts(model_name: str, version: str, local_dir: str | Path, artifact_path: str,
                     metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> str:
    """Log a directory under `artifact_path` of the version's run, plus run metrics and version tags.

    Used for the deployable export (`deployable/`) and the unlearning report (`report/`). Returns
    the run id.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise UserError(f"{local_dir}: directory not found")
    client = project_client()
    mv = _version(client, model_name, version)
    run_id = mv.run_id or (mv.tags or {}).get("run_id")
    if not run_id:
        raise UserError(f"version {mv.version} of {model_name!r} has no run to attach {artifact_path}/ to")
    client.log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)
    if metrics:
        stamp = int(datetime.now(timezone.utc).timestamp() * 1000)
        client.log_batch(run_id, metrics=[Metric(_key(k), float(v), stamp, 0) for k, v in metrics.items()])
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, mv.version, _key(key), str(value)[:MAX_TAG_VAL_LENGTH])
    return run_id


# ------------------------------------------------------------------------------------ incremental
def alias_adapter(model_name: str, dst: str | Path, alias: str = PRODUCTION) -> tuple[str, Path, dict] | None:
    """(version, local adapter directory, version tags) of the version behind `alias`, downloaded
    into `dst`; None when the model or the alias does not exist (incremental unlearning starts from it).
    The directory is None when the version is a distilled model (tag `distilled`), which has no adapter."""
    client = project_client()
    mv = version_by_alias(client, model_name, alias)
    if mv is None:
        return None
    if (mv.tags or {}).get("distilled", "no") != "no":
        return str(mv.version), None, dict(mv.tags or {})
    logged = client.get_logged_model(mv.source.rstrip("/").split("/")[-1])  # source: models:/<logged model id>
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{logged.artifact_location}/artifacts/adapter",
                                                dst_path=str(dst))
    return str(mv.version), Path(local), dict(mv.tags or {})
