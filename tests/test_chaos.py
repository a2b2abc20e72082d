"""The light variant of ``make chaos`` (scripts/chaos.py): at demo scale, ``vespa-ops run import``
(mode apply, the reviewed fingerprint) on PostgreSQL, SIGKILLed with its kernel at a random moment of
the guard's transaction. The database is as before (or fully applied, had the kill come after the
commit), the killed run's manifest says ``running``, and the next plan and apply pass.

The heavy variants (realistic scale, several kills over the whole run, ``pg_ctl restart -m
immediate``) take minutes per case and run in ``make chaos``, not here."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from vespa_lib.sandbox import synth
from vespa_lib.sandbox.localpg import LocalPostgres, create_database_on, dsn_with_dbname, find_binaries

pytestmark = [pytest.mark.postgres, pytest.mark.notebook, pytest.mark.slow]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


def test_kill_of_vespa_ops_and_its_kernel_during_an_import_apply(tmp_path):
    import chaos

    if find_binaries() is None:
        pytest.skip("no PostgreSQL server binaries to start a server of this test's own")
    data = tmp_path / "demo"
    synth.generate(data)
    with LocalPostgres() as server:
        create_database_on(server.dsn(), "chaos_base")
        base = dsn_with_dbname(server.dsn(), "chaos_base")
        chaos.load_into_postgres(data / "production.duckdb", base)
        fingerprint = chaos.prepare(base, data, tmp_path)
        case = {"n": 0, "kind": "kill", "drawn_over": "guarded transaction",
                "at_s": round(random.Random(7).uniform(0, 1.0), 2)}
        result = chaos.disturb(server, case, data, tmp_path, fingerprint)
    print(result)
    assert result["landed"]["killed_pids"] >= 2  # vespa-ops and the kernel at least
    assert result["committed"] or result["checksums_equal"]
    assert result["manifest_status"] == "running"  # the killed run is visible as such
    assert result["next"]["ok"], result["next"]
    assert result["ok"]
