"""A real PostgreSQL server for the tests: the one $RELEARN_TEST_POSTGRES names, else a throwaway one.

Each test that needs a database gets a fresh one on it (Server.new_database), so tests never share tables.

The throwaway server is a fresh cluster (initdb) in a temporary directory, listening on a free loopback
port with trust authentication, stopped and deleted when the tests end. PostgreSQL refuses to run as
root, so under root (CI) the cluster belongs to, and runs as, the `postgres` system user that Debian's
package creates. Found nowhere (no binaries, root without a `postgres` user): the tests that need it
skip, saying why in one line.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ENV = "RELEARN_TEST_POSTGRES"  # e.g. postgresql://relearn@db.internal/postgres (its user may create databases)


def _bindir() -> str | None:
    for candidate in [os.environ.get("PG_BINDIR", "")] + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if candidate and Path(candidate, "initdb").is_file():
            return candidate
    found = shutil.which("initdb")
    return str(Path(found).parent) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server the tests may create databases on: $RELEARN_TEST_POSTGRES's, or a throwaway one
    (initdb + pg_ctl start in a temporary directory; stop() removes it all)."""

    @classmethod
    def find(cls) -> "Server":
        url = os.environ.get(ENV, "").strip()
        if url:
            server = cls.__new__(cls)
            server.admin_url, server.dir = url, None
            wait_until_up(url, 10)
            return server
        return cls()

    def __init__(self):
        self.bindir = _bindir()
        if not self.bindir:
            raise RuntimeError(f"no PostgreSQL binaries (initdb) found and ${ENV} is not set")
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(f"running as root and no 'postgres' user to run a server as; set ${ENV}") from None
        self.dir = Path(tempfile.mkdtemp(prefix="relearn-pg-"))
        if self.user:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.port = _free_port()
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", opts, "-l", str(self.dir / "server.log"), "-w", "start")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        done = subprocess.run([str(Path(self.bindir, tool)), *args], capture_output=True, text=True, cwd=self.dir,
                              timeout=120, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {(done.stderr or done.stdout).strip()[-400:]}")

    def new_database(self) -> str:
        """A fresh, empty database on the server: its URL."""
        import uuid

        import sqlalchemy

        name = f"relearn_test_{uuid.uuid4().hex[:10]}"
        engine = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return str(sqlalchemy.engine.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False))

    def stop(self) -> None:
        if self.dir is None:  # not ours
            return
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def wait_until_up(url: str, seconds: float = 30) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    deadline = time.monotonic() + seconds
    while True:
        try:
            with engine.connect():
                break
        except sqlalchemy.exc.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    engine.dispose()
