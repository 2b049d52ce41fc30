"""Where the MLflow store lives, and the experiment the pipeline's runs go to.

The default store is `sqlite:////<project root>/mlflow.db` with artifacts in
`<project root>/mlartifacts`. The path is absolute so that a DVC experiment running in a temporary
copy of the workspace (`.dvc/tmp/exps/...`) writes to the project's database, not to a fresh one.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.tracking import MlflowClient

from relearn.io import MARKERS, find_project_root  # noqa: F401  (re-exported: mlflow-free home in relearn.io)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI` if set, else the absolute SQLite database at the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{find_project_root() / DB_NAME}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (relative paths against cwd), else None."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    # sqlite:///rel.db -> "/rel.db" (relative), sqlite:////abs.db -> "//abs.db" (absolute)
    path = path[1:] if path.startswith("/") else path
    return Path(path).resolve() if path else None


def artifact_location(uri: str | None = None) -> str | None:
    """Where new experiments keep artifacts: `mlartifacts` beside a SQLite database, as a file URI.

    None for other stores (a tracking server decides where its artifacts go).
    """
    db = _sqlite_path(uri or tracking_uri())
    return (db.parent / ARTIFACTS_DIR).as_uri() if db else None


def client() -> MlflowClient:
    """A client on the project's store (also made the process-wide tracking URI)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def setup(experiment: str) -> str:
    """Point MLflow at the project's store, make `experiment` exist and be active; its id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    store = MlflowClient(tracking_uri=uri)
    found = store.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = store.create_experiment(experiment, artifact_location=artifact_location(uri))
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def check_database(uri: str) -> str:
    """Connect to a tracking server's backend store once; the URI without its password. A URI that
    cannot be reached, or has no driver installed, is a UserError saying which and why."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from relearn.errors import UserError

    try:
        url = make_url(uri)
    except ArgumentError as e:
        raise UserError(f"--backend-store-uri {uri!r} is not a database URL ({e})") from None
    shown = url.render_as_string(hide_password=True)
    try:
        args = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
        engine = sqlalchemy.create_engine(url, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise UserError(f"--backend-store-uri {shown}: no driver for it ({e}); for PostgreSQL: "
                        "pip install 'psycopg[binary]' (or: pip install -e '.[postgres]')") from None
    except OperationalError as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise UserError(f"--backend-store-uri {shown}: cannot connect ({reason})") from None
    return shown
