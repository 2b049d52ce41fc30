"""Which model versions cover which erasure requests, and whether production honours them.

The register stage tags every version with the requests it covers (`request.<id>` = its KFR and
questions scored, `gate.request.<id>` = the request's gate verdict, `requests` = the ids), never
with their content. `coverage` reads those tags back for `relearn request status`:

- covered: the versions whose forget set held the request;
- honoured by a version: covered, and the request's gate passed there;
- in production: honoured by the version behind the `production` alias;
- since: the first version of the unbroken run of promotions up to production that all honoured it
  (followed back through `promoted_from`), with its `promoted_at` date.

A purged request (its records deleted, relearn.ledger.core) is no longer in any forget split: a later
version covers and honours it when its output guard carries the request's guard (tag
`purged.<id>`), which the register stage sets, while its adapter continues the one that forgot it
(the unlearn stage refuses otherwise).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from relearn.errors import UserError
from relearn.ledger.core import IN_PRODUCTION, IN_VERSION, PURGED, RECEIVED, WITHDRAWN, Request
from relearn.registry.gates import parse_gate_tag
from relearn.registry.tracking import client as project_client
from relearn.registry.versions import PRODUCTION, _aliases, _name_filter


def _versions(model_name: str) -> tuple[list, dict[str, str]]:
    client = project_client()
    try:
        aliases = _aliases(client, model_name)
    except UserError:  # nothing registered yet
        return [], {}
    versions = sorted(client.search_model_versions(_name_filter(model_name)), key=lambda v: int(v.version))
    return versions, aliases


def _kfr(tag: str) -> Optional[float]:
    for part in (tag or "").split():
        if part.startswith("kfr="):
            try:
                return float(part[4:])
            except ValueError:
                return None
    return None


def coverage(model_name: str, requests: list[Request], served_version: Optional[str] = None) -> list[dict]:
    """One entry per request: status, the versions covering it, production, since, KFR, report."""
    versions, aliases = _versions(model_name)
    production = aliases.get(PRODUCTION)
    out = []
    for request in requests:
        covering, honouring = [], []
        for mv in versions:
            tags = dict(mv.tags or {})
            tag = tags.get(f"request.{request.id}")
            carried = tags.get(f"purged.{request.id}") is not None
            if tag is None and not carried:
                continue
            passed = carried or parse_gate_tag(tags.get(f"gate.request.{request.id}", "")).get("passed", False)
            created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc)
            entry = {"version": str(mv.version), "kfr": _kfr(tag) if tag else None, "gate_passed": passed,
                     "created": created.isoformat(timespec="seconds"), "promoted_at": tags.get("promoted_at"),
                     "promoted_from": tags.get("promoted_from"),
                     "report": f"runs:/{mv.run_id}/{tags['report']}" if tags.get("report") and mv.run_id else None}
            covering.append(entry)
            if passed:
                honouring.append(entry)
        in_production = next((e for e in honouring if e["version"] == production), None)
        since = _since(in_production, {e["version"]: e for e in honouring})
        if not request.active:
            status = WITHDRAWN
        elif request.purged:
            status = PURGED
        elif in_production:
            status = IN_PRODUCTION
        elif covering:
            status = IN_VERSION
        else:
            status = RECEIVED
        measured = [e for e in covering if e["kfr"] is not None]
        latest = in_production if in_production and in_production["kfr"] is not None else \
            (measured[-1] if measured else None)
        out.append({
            "id": request.id, "kind": request.kind, "received": request.received, "records": request.records,
            "withdrawn": request.withdrawn, "status": status, "purged": request.purged,
            "purged_version": request.purged_version, "purged_kfr": request.purged_kfr,
            "production_version": production, "honoured_in_production": in_production is not None,
            "since_version": since["version"] if since else None,
            "since": since["promoted_at"] if since else None,
            "kfr": latest["kfr"] if latest else None,
            "report": latest["report"] if latest else None,
            "versions": [e["version"] for e in covering],
            "failed_in_versions": [e["version"] for e in covering if not e["gate_passed"]],
            "served_version": served_version,
            "honoured_by_server": (served_version in {e["version"] for e in honouring}) if served_version else None,
        })
    return out


def _since(production: Optional[dict], honouring: dict[str, dict]) -> Optional[dict]:
    """The first version of the unbroken run of promotions, ending with the production version,
    that all honoured the request (followed back through `promoted_from`). A version promoted again
    keeps only its last promotion's tags, so after a rollback the run may start later than it did:
    `since` can understate how long a request has been honoured, never overstate it."""
    if production is None:
        return None
    entry, seen = production, {production["version"]}
    while entry["promoted_from"] in honouring and entry["promoted_from"] not in seen:
        entry = honouring[entry["promoted_from"]]
        seen.add(entry["version"])
    return entry if entry["promoted_at"] else None

