"""A throwaway PostgreSQL server for the datastore tests (DESIGN §8).

PostgreSQL refuses to run as root and test sessions run as root, so the server runs as the unprivileged
user ``trustmesh-pg`` (made by ``scripts/ensure-postgres``) in a temporary directory it owns. It listens
only on 127.0.0.1 on a free port, keeps its Unix socket in that directory, trusts loopback clients, and
skips fsync: it lives for one test session and holds nothing worth keeping.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

PG_USER = "trustmesh-pg"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30
START_ATTEMPTS = 3
_FIX = "run scripts/ensure-postgres (it installs PostgreSQL and creates the user) and try again"


class PostgresNotAvailable(Exception):
    """The server cannot be started on this machine; the message says how to fix that."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: from PATH, else the newest Debian install."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        (d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").exists() and (d / "pg_ctl").exists()),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise PostgresNotAvailable(f"PostgreSQL server binaries (initdb, pg_ctl) are not installed; {_FIX}")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """A running throwaway server; :meth:`start` it once per session, :meth:`stop` it at the end."""

    def __init__(self, bin_dir: Path, directory: Path, port: int, run_as: list[str]) -> None:
        self._bin_dir = bin_dir
        self.directory = directory
        self.port = port
        self._run_as = run_as

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = find_bin_dir()
        run_as: list[str] = []
        directory = Path(tempfile.mkdtemp(prefix="trustmesh-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(PG_USER)
            except KeyError:
                shutil.rmtree(directory)
                raise PostgresNotAvailable(f"user {PG_USER!r} to run PostgreSQL as does not exist; {_FIX}") from None
            os.chown(directory, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", PG_USER, "--"]
        server = cls(bin_dir, directory, 0, run_as)
        try:
            server._initdb()
            server._start_on_free_port()
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return server

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._run_as, *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _initdb(self) -> None:
        done = self._run(
            str(self._bin_dir / "initdb"),
            "-D",
            str(self.directory / "data"),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            timeout=60,
        )
        if done.returncode != 0:
            raise PostgresNotAvailable(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _start_on_free_port(self) -> None:
        log = self.directory / "server.log"
        for _attempt in range(START_ATTEMPTS):
            self.port = _free_port()
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.directory} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
            )
            done = self._run(
                str(self._bin_dir / "pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
                timeout=START_TIMEOUT_S + 10,
            )
            if done.returncode == 0:
                return
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else done.stderr
        raise PostgresNotAvailable(f"PostgreSQL did not start after {START_ATTEMPTS} attempts; server log:\n{tail}")

    def stop(self) -> None:
        self._run(
            str(self._bin_dir / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-m",
            "immediate",
            "-w",
            "stop",
            timeout=30,
        )
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres", schema: str | None = None) -> str:
        """A SQLAlchemy URL; with ``schema``, connections put that schema first on their search path."""
        url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"
        return url if schema is None else f"{url}?options=-csearch_path%3D{schema}"

    def _admin(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, autocommit=True)

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t_{secrets.token_hex(6)}"
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def create_schema(self) -> str:
        """A new empty schema in database ``postgres``: a clean slate in milliseconds, where creating a
        database takes a third of a second."""
        name = f"t_{secrets.token_hex(6)}"
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return name

    def drop_schema(self, name: str) -> None:
        with self._admin() as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
