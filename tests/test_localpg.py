"""vespa_lib.sandbox.localpg: the throw-away PostgreSQL cluster behind every integration test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from vespa_lib import errors
from vespa_lib.errors import TargetError
from vespa_lib.sandbox import localpg

pytestmark = pytest.mark.postgres
needs_binaries = pytest.mark.skipif(localpg.find_binaries() is None, reason=localpg.HOW_TO_INSTALL)


@needs_binaries
def test_find_binaries_returns_a_folder_with_initdb_and_pg_ctl():
    folder = localpg.find_binaries()
    assert (folder / "initdb").exists() and (folder / "pg_ctl").exists()


@needs_binaries
def test_server_starts_serves_a_database_and_leaves_nothing_behind():
    with localpg.LocalPostgres() as pg:
        folder = pg.folder
        dsn = pg.create_database("scratch")
        with psycopg.connect(dsn) as con:
            settings = dict(con.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes', 'listen_addresses')").fetchall())
            assert con.execute("SELECT current_database(), current_user").fetchone() == ("scratch", "postgres")
        assert settings == {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                            "listen_addresses": "127.0.0.1"}
        assert list(folder.glob(".s.PGSQL.*"))  # the unix socket lives in the temp folder
        port = pg.port
    assert not folder.exists()
    with socket.socket() as sock:  # the server is gone: nothing listens on its port any more
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@needs_binaries
def test_stop_is_idempotent_and_dsn_needs_a_running_server():
    pg = localpg.LocalPostgres().start()
    pg.stop()
    pg.stop()
    with pytest.raises(TargetError, match="not running"):
        pg.dsn()


def test_missing_binaries_give_the_install_command():
    pg = localpg.LocalPostgres()
    pg.bin_dir = None
    with pytest.raises(TargetError, match=localpg.HOW_TO_INSTALL):
        pg.start()
    assert pg.folder is None


@pytest.mark.parametrize(("dsn", "expected"), [
    ("postgresql://u:p@h:5/a", {"user": "u", "password": "p", "host": "h", "port": "5", "dbname": "b"}),
    ("host=h port=5 dbname=a user=u", {"user": "u", "host": "h", "port": "5", "dbname": "b"}),
])
def test_dsn_with_dbname_keeps_everything_but_the_database(dsn, expected):
    assert psycopg.conninfo.conninfo_to_dict(localpg.dsn_with_dbname(dsn, "b")) == expected


@needs_binaries
@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="the non-root path is what every non-root run exercises already")
def test_starts_as_a_non_root_user():
    # As root the suite goes through runuser; this runs the module as the unprivileged postgres user.
    # The copy lives in a fresh folder under the system temp folder that postgres may enter, and postgres
    # works in it: the checkout (and pytest's tmp_path, 0700) may sit where other users cannot enter.
    with tempfile.TemporaryDirectory(prefix="vespa-localpg-") as tmp:
        work = Path(tmp)
        # the module and vespa_lib.errors, at their paths in the package (wherever localpg sits in it)
        *parents, _ = localpg.__name__.split(".")
        package = work / "pkg" / Path(*parents)
        package.mkdir(parents=True)
        for depth in range(1, len(parents) + 1):
            (work / "pkg" / Path(*parents[:depth]) / "__init__.py").write_text("")
        shutil.copy(localpg.__file__, package / "localpg.py")
        shutil.copy(errors.__file__, work / "pkg" / parents[0] / "errors.py")
        for path in (work, *(work / "pkg").rglob("*")):
            path.chmod(0o755)
        script = (f"import {localpg.__name__} as m\nfrom {localpg.__name__} import LocalPostgres\n"
                  "pg = LocalPostgres().start(); folder = pg.folder; print(m.__file__); print(pg.port); pg.stop()\n"
                  "assert not folder.exists()\n")
        done = subprocess.run(["runuser", "-u", "postgres", "--", "/usr/bin/python3", "-c", script],
                              env={"PYTHONPATH": str(work / "pkg"), "PATH": os.environ["PATH"]}, cwd=work,
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    module, port = done.stdout.split()
    assert module == str(package / "localpg.py")  # the copy, not a vespa_lib found elsewhere
    assert int(port) > 0
