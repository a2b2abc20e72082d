"""A throw-away PostgreSQL cluster for integration tests and the benchmark.

``LocalPostgres`` runs ``initdb`` into a fresh temporary folder, starts the server on a free TCP
port on 127.0.0.1 only (unix socket inside the same folder), and removes everything on ``stop()``.
It writes nothing outside its own temporary folder.

The server is tuned for speed, not durability: ``fsync``, ``synchronous_commit`` and
``full_page_writes`` are off. That is acceptable only because the cluster is thrown away; never
point these settings at a database whose contents matter.

PostgreSQL refuses to run as root, so as root every server binary runs through
``runuser -u postgres --`` after the data folder is handed to ``postgres`` (docs/ARCHITECTURE.md, “Setting up and testing”).

    with LocalPostgres() as pg:
        dsn = pg.create_database("scratch")
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

from vespa_lib.errors import TargetError

__all__ = [
    "HOW_TO_INSTALL",
    "SERVER_SETTINGS",
    "LocalPostgres",
    "create_database_on",
    "dsn_with_dbname",
    "drop_database_on",
    "find_binaries",
]

HOW_TO_INSTALL = "apt-get install -y postgresql"

# Throw-away server only: durability is traded for speed (see module docstring).
SERVER_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "work_mem": "32MB",
    "maintenance_work_mem": "128MB",
    "max_wal_size": "2GB",
    "max_connections": "50",
    "log_min_messages": "warning",
}

_SERVICE_USER = "postgres"
_TIMEOUT_S = 60


def find_binaries() -> Path | None:
    """Return the folder holding ``initdb`` and ``pg_ctl``, or None. Read-only.

    PATH first; then ``/usr/lib/postgresql/<version>/bin`` (Debian's apt package puts the server
    binaries there, not on PATH), newest version first.
    """
    on_path = shutil.which("initdb")
    if on_path:
        folder = Path(on_path).resolve().parent
        if (folder / "pg_ctl").exists():
            return folder
        if shutil.which("pg_ctl"):
            return Path(on_path).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin")
    candidates.sort(key=lambda p: _version_key(Path(p).parent.name), reverse=True)
    for folder in map(Path, candidates):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _version_key(name: str) -> tuple[int, ...]:
    """Sort key for version folder names like ``15`` or ``9.6``."""
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dsn_with_dbname(server_dsn: str, dbname: str) -> str:
    """The same server DSN pointed at another database (URL or key=value form)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # lazy: starting a server needs no driver

    params = conninfo_to_dict(server_dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def create_database_on(server_dsn: str, name: str) -> None:
    """Create database ``name`` on the server ``server_dsn`` points to (any server)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_dsn, autocommit=True) as con:
        con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database_on(server_dsn: str, name: str) -> None:
    """Drop database ``name`` (if it exists), disconnecting its sessions first (PG 13+)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_dsn, autocommit=True) as con:
        con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class LocalPostgres:
    """A PostgreSQL cluster in a temporary folder; a context manager (``start``/``stop``)."""

    def __init__(self, bin_dir: Path | None = None, settings: dict[str, str] | None = None):
        self.bin_dir = bin_dir or find_binaries()
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.folder: Path | None = None
        self.port: int | None = None

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder (inside the temporary folder)."""
        if self.folder is None:
            raise TargetError("The local PostgreSQL has no folder: it is not started. Call start() first.")
        return self.folder / "data"

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalPostgres:
        """initdb into a fresh temporary folder and start the server; returns self."""
        if self.bin_dir is None:
            raise TargetError(
                "No PostgreSQL server binaries (initdb, pg_ctl) found on PATH or under "
                f"/usr/lib/postgresql/*/bin, so no throw-away server can start. Install them: {HOW_TO_INSTALL}"
            )
        self.folder = Path(tempfile.mkdtemp(prefix="vespa-pg-"))
        try:
            self._prepare_folder()
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-locale", "--no-sync")
            self._write_settings()
            self._start_server()
        except BaseException:
            self._remove_folder()
            raise
        return self

    def _prepare_folder(self) -> None:
        """As root: hand the folder to ``postgres`` and make sure it can traverse the parents."""
        if os.geteuid() != 0:
            return
        for parent in self.folder.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
        shutil.chown(self.folder, user=_SERVICE_USER, group=None)

    def _write_settings(self) -> None:
        """Append the test settings; the server reads the last value of a repeated setting."""
        lines = [f"{key} = '{value}'" for key, value in self.settings.items()]
        lines += ["listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.folder}'"]
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# vespa_lib.sandbox.localpg (throw-away server)\n" + "\n".join(lines) + "\n")

    def _start_server(self, attempts: int = 3) -> None:
        """Start on a free port; retry on a new port if another process took it in between."""
        for attempt in range(attempts):
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-w", "-t", str(_TIMEOUT_S), "-D", str(self.data_dir),
                          "-l", str(self.folder / "server.log"), "-o", f"-p {self.port}", "start")
                return
            except TargetError:
                if attempt == attempts - 1:
                    raise

    def _run(self, program: str, *args: str) -> None:
        """Run a server binary (through runuser as root); TargetError with its output on failure."""
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", _SERVICE_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S * 2,
                              cwd=self.folder, check=False)
        if done.returncode != 0:
            log = self.folder / "server.log" if self.folder else None
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise TargetError(
                f"{program} failed with exit code {done.returncode}: {done.stderr.strip()[-2000:]}\n{tail}\n"
                "The throw-away PostgreSQL could not start; check the output above and that the "
                f"binaries in {self.bin_dir} work."
            )

    def dsn(self, dbname: str = "postgres") -> str:
        """The connection string for ``dbname`` on this server (trust auth, no password)."""
        if self.port is None:
            raise TargetError("The local PostgreSQL is not running, so it has no DSN. Call start() first.")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        create_database_on(self.dsn(), name)
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server immediately (nothing in it is kept) and remove the folder. Idempotent."""
        if self.folder is None:
            return
        if self.port is not None and (self.data_dir / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-w", "-D", str(self.data_dir), "-m", "immediate", "stop")
            except TargetError:
                pass  # the folder is removed below either way; a dead server leaves nothing to stop
        self.port = None
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
