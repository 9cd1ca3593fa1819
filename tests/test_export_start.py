"""What a read-only command's start costs: the database's revision read as one row and checked
against the migrations' file names (not Alembic's script folder), and an export that imports
neither Alembic nor the status report."""

from __future__ import annotations

import os
import subprocess
import sys

from collector.commands.base import known_revisions


def test_the_known_revisions_are_alembics_own_reading_of_the_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from collector.store import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    scripts = ScriptDirectory.from_config(cfg)
    assert known_revisions() == {r.revision for r in scripts.walk_revisions()}
    assert max(known_revisions()) == scripts.get_current_head()


_IMPORTED = """
import sys
from collector.commands import main
main(sys.argv[1:], standalone_mode=False)
heavy = ("alembic", "collector.status", "collector.verify")
print(sorted({m for m in sys.modules if m.startswith(heavy)}), file=sys.stderr)
"""


def test_an_export_imports_neither_alembic_nor_the_status_report(tmp_path, database_url) -> None:
    from collector.store import Store

    store = Store.from_url(database_url)
    store.upgrade()
    store.dispose()
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"database: {database_url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    out = tmp_path / "trades.csv"
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTED, "export", "trades", str(jobs), "-o", str(out)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().splitlines()[-1] == "[]"
    assert out.read_text().startswith("pair,trade_id,time,")
