"""The erasure-request ledger in a shared database (data.requests: a SQLAlchemy URL).

For a team: several people file and withdraw requests at once, from their own machines, against one
PostgreSQL database (`postgresql://relearn@db.internal/relearn`), or a SQLite file on one machine
(`sqlite:////srv/relearn/ledger.db`). The ledger is the same as relearn.ledger.core's directory: append-only
events (a JSON body each, in the order the database numbered them), each request's records as the
bytes whose sha256 the `add` event holds, and the output guards of purged requests. What changes is
the concurrency: every command is one database transaction, and writers take a transaction-scoped
advisory lock (PostgreSQL) or an immediate write lock (SQLite) before they read, so the checks a
command makes (is the id new? are its record ids free?) hold when it commits. A second guarantee
sits in the schema: a request id (case-folded) is a primary key, so a duplicate cannot be stored
even by a writer that bypasses this code.

No password belongs in params.yaml: PostgreSQL's client reads PGPASSWORD or ~/.pgpass (and
PGHOST, PGUSER, ...), so `postgresql:///relearn` is a complete URL. Messages show the URL without
a password.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from relearn.errors import UserError

LOCK_KEY = 0x52454C4541524E  # "RELEARN": the advisory lock every ledger writer takes (PostgreSQL)
PREFIX = "relearn_ledger_"


def _tables():
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, Text

    meta = MetaData()
    return meta, {
        "events": Table(f"{PREFIX}events", meta, Column("seq", Integer, primary_key=True, autoincrement=True),
                        Column("request_id", String(64), nullable=False), Column("event", String(16), nullable=False),
                        Column("body", Text, nullable=False)),
        # one row per request id ever added, case-folded: ids are never reused, whoever writes
        "ids": Table(f"{PREFIX}ids", meta, Column("key", String(64), primary_key=True)),
        "records": Table(f"{PREFIX}records", meta, Column("name", String(200), primary_key=True),
                         Column("data", LargeBinary, nullable=False)),
        # a purged request's guard (relearn.serving.guard): its files, keyed hashes and their key, never text
        "guards": Table(f"{PREFIX}guards", meta, Column("request_id", String(64), primary_key=True),
                        Column("files", Text, nullable=False)),
    }


class SqlStore:
    """relearn.ledger.core.FileStore's interface over a database."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine, event
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            parsed = make_url(url)
        except ArgumentError as e:
            raise UserError(f"data.requests: {url!r} is not a database URL ({e})") from None
        self.location = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        try:
            if self.dialect == "sqlite":
                if parsed.database:
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(parsed, connect_args={"timeout": 60})

                # pysqlite opens transactions lazily and as readers; a ledger command must hold the write
                # lock from its first read, so that two commands cannot both decide an id is free
                @event.listens_for(engine, "connect")
                def _no_implicit_begin(dbapi_connection, _record):
                    dbapi_connection.isolation_level = None

                @event.listens_for(engine, "begin")
                def _begin_immediate(conn):
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                engine = create_engine(parsed, pool_pre_ping=True)
        except (NoSuchModuleError, ModuleNotFoundError) as e:
            raise UserError(f"data.requests: {self.location}: no driver for it ({e}); for PostgreSQL: "
                            "pip install 'psycopg[binary]' (or: pip install -e '.[postgres]')") from None
        self.engine = engine
        self.meta, self.t = _tables()
        self._conn = None
        with self._connect() as conn:
            self._lock(conn)
            self.meta.create_all(conn)

    # ------------------------------------------------------------------ connections
    @contextmanager
    def _connect(self):
        from sqlalchemy.exc import OperationalError

        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
            raise UserError(f"data.requests: cannot use the ledger database {self.location} ({reason})") from None

    def _lock(self, conn) -> None:
        from sqlalchemy import text

        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})

    @contextmanager
    def transaction(self):
        """One command's writes, all or nothing; writers queue on the lock before reading anything."""
        if self._conn is not None:  # nested: the outer transaction holds the lock already
            yield
            return
        with self._connect() as conn:
            self._lock(conn)
            self._conn = conn
            try:
                yield
            finally:
                self._conn = None

    @contextmanager
    def _read(self):
        if self._conn is not None:
            yield self._conn
        else:
            with self._connect() as conn:
                yield conn

    def _write(self):
        if self._conn is None:
            raise RuntimeError("ledger writes happen inside SqlStore.transaction()")
        return self._conn

    # ------------------------------------------------------------------ the FileStore interface
    def where(self, name: str) -> str:
        return f"{self.location}#{name}"

    def events(self) -> list[dict]:
        from sqlalchemy import select

        from relearn.ledger.core import parse_events

        t = self.t["events"]
        with self._read() as conn:
            rows = conn.execute(select(t.c.seq, t.c.body).order_by(t.c.seq)).all()
        return parse_events((f"{self.location}: event {seq}", body) for seq, body in rows)

    def append(self, event: dict) -> None:
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError

        conn = self._write()
        if event["event"] == "add":
            try:
                with conn.begin_nested():
                    conn.execute(insert(self.t["ids"]).values(key=event["id"].lower()))
            except IntegrityError:
                raise UserError(f"request {event['id']} already exists in {self.location}; ids are never reused") \
                    from None
        conn.execute(insert(self.t["events"]).values(request_id=event["id"], event=event["event"],
                                                    body=json.dumps(event, ensure_ascii=False, sort_keys=True)))

    def write_records(self, name: str, data: bytes) -> None:
        from sqlalchemy import delete, insert

        conn = self._write()
        conn.execute(delete(self.t["records"]).where(self.t["records"].c.name == name))
        conn.execute(insert(self.t["records"]).values(name=name, data=data))

    def read_records(self, name: str) -> Optional[bytes]:
        from sqlalchemy import select

        t = self.t["records"]
        with self._read() as conn:
            row = conn.execute(select(t.c.data).where(t.c.name == name)).first()
        return bytes(row[0]) if row else None

    def delete_records(self, name: str) -> None:
        from sqlalchemy import delete

        self._write().execute(delete(self.t["records"]).where(self.t["records"].c.name == name))

    def save_guard(self, request_id: str, guard) -> str:
        from sqlalchemy import delete, insert

        with tempfile.TemporaryDirectory() as d:
            guard.save(d)
            files = {str(p.relative_to(d)): p.read_text(encoding="utf-8") for p in sorted(Path(d).rglob("*"))
                     if p.is_file()}
        conn = self._write()
        conn.execute(delete(self.t["guards"]).where(self.t["guards"].c.request_id == request_id))
        conn.execute(insert(self.t["guards"]).values(request_id=request_id, files=json.dumps(files, sort_keys=True)))
        return self.where(f"guards/{request_id}")

    def load_guard(self, request_id: str):
        from sqlalchemy import select

        from relearn.serving.guard import Guard

        t = self.t["guards"]
        with self._read() as conn:
            row = conn.execute(select(t.c.files).where(t.c.request_id == request_id)).first()
        if row is None:
            return None
        with tempfile.TemporaryDirectory() as d:
            for name, text in json.loads(row[0]).items():
                path = Path(d) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            return Guard.load(d)

    def fingerprint(self) -> str:
        """sha256 of the events in order (an add event holds its records' sha256)."""
        from sqlalchemy import select

        t = self.t["events"]
        digest = hashlib.sha256()
        with self._read() as conn:
            for seq, body in conn.execute(select(t.c.seq, t.c.body).order_by(t.c.seq)):
                digest.update(f"{seq}\t{body}\n".encode())
        return digest.hexdigest()
