"""SIGHUP reloads the job file of a running `collector run`: added jobs start, removed ones stop,
changed ones take their new params; a broken file or a new database changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from click.testing import CliRunner

from collector.cli import main
from collector.store import Store

from .helpers import wait_for
from .test_service import job_file, rows


def count(url: str, job: str) -> int:
    return rows(url, f"SELECT count(*) FROM runs WHERE job = '{job}'")[0][0]


def test_sighup_applies_the_new_job_file(tmp_path, fake, keypair, database_url) -> None:
    def write(jobs: str) -> None:
        job_file(tmp_path, fake, keypair, database_url, jobs)

    write("""
        a: {method: Time, every: 0.1s}
        keep: {method: Ticker, params: {pair: XBTUSD}, every: 0.1s}
    """)
    path, log = tmp_path / "jobs.yaml", tmp_path / "collector.log"
    store = Store.from_url(database_url)
    store.upgrade()  # so the test can count rows before the service's first write
    store.dispose()
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "run", str(path)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: count(database_url, "a") >= 2 and count(database_url, "keep") >= 2)

        # Remove a, add c, change keep's params.
        write("""
            keep: {method: Ticker, params: {pair: ETHUSD}, every: 0.1s}
            c: {method: Assets, every: 0.1s}
        """)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: count(database_url, "c") >= 2)
        stopped_at = count(database_url, "a")  # a run in flight at the reload is stored by now
        wait_for(lambda: count(database_url, "c") >= 8)
        assert count(database_url, "a") == stopped_at
        params = rows(database_url, "SELECT params FROM runs WHERE job = 'keep' ORDER BY id")
        pairs = [p if isinstance(p, dict) else json.loads(p) for (p,) in params]
        assert pairs[0] == {"pair": "XBTUSD"} and pairs[-1] == {"pair": "ETHUSD"}
        wait_for(lambda: "reloaded: 2 jobs; added c; removed a; changed keep" in log.read_text())

        # A file that no longer validates changes nothing, and says what `check` says: a line
        # for each mistake.
        write("c: {method: Assets, evry: 0.1s, raw: maybe}")
        check = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
        assert check.exit_code == 2
        lines = check.output.strip().splitlines()
        assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
        assert "jobs.c.evry: unknown key" in lines[0] and "jobs.c.raw: must be" in lines[1]
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: all(
                f"{line}; reload refused, nothing changed" in log.read_text() for line in lines
            )
        )
        before = count(database_url, "keep")
        wait_for(lambda: count(database_url, "keep") >= before + 3)  # still running as it was

        # A new database needs a restart: refused as a whole, the jobs go on.
        path.write_text(
            path.read_text()
            .replace(database_url, f"sqlite:///{tmp_path / 'other.db'}")
            .replace("evry", "every")
            .replace("maybe", "false")
            + "  d: {method: Time, every: 0.1s}\n"
        )
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused, nothing changed: database" in log.read_text())
        before = count(database_url, "c")
        wait_for(lambda: count(database_url, "c") >= before + 3)
        assert count(database_url, "d") == 0
        assert not (tmp_path / "other.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert keypair[1] not in text and "Traceback" not in text


def test_a_reload_is_applied_by_the_service_to_its_own_parts(tmp_path, fake, keypair) -> None:
    from collector.events import Reloaded
    from collector.jobfile import load
    from collector.reload import apply, diff
    from collector.service import Service

    url = f"sqlite:///{tmp_path / 'r.db'}"
    before = """
        a: {method: Time, every: 1h}
        keep: {method: Ticker, params: {pair: XBTUSD}, every: 1h}
        later: {method: Ticker, params: {pair: XBTUSD}, every: 1h}
    """
    old = load(job_file(tmp_path, fake, keypair, url, before, reference=False))
    new = load(
        job_file(
            tmp_path,
            fake,
            keypair,
            url,
            """
            keep: {method: Ticker, params: {pair: ETHUSD}, every: 1h}
            later: {method: Ticker, params: {pair: XBTUSD}, every: 2h}
            c: {method: Assets, every: 1h}
            """,
            reference=False,
        )
    )
    moved = load(job_file(tmp_path, fake, keypair, f"sqlite:///{tmp_path / 'x.db'}", before))
    service = Service(old)
    heard: list[Reloaded] = []
    service.events.subscribe(Reloaded, heard.append)
    try:
        changes = diff(old, new)
        # `later` changed only its schedule: its cursor held in memory stays.
        assert (changes.added, changes.removed, changes.changed, changes.forget) == (
            ("c",),
            ("a",),
            ("keep", "later"),
            ("a", "keep"),
        )
        assert not apply(service, moved)  # a new database needs a restart: nothing changes
        assert service.config is old and heard == []
        assert apply(service, new)
        assert service.config is new
        assert {j.name: j.every for j in service.schedule.jobs} == {
            j.name: j.every for j in new.jobs
        }
        assert [(e.added, e.removed, e.changed) for e in heard] == [
            (("c",), ("a",), ("keep", "later"))
        ]
    finally:
        service.stop()


def test_the_page_draws_the_jobs_of_the_file_reloaded(tmp_path, fake, keypair) -> None:
    """Before, the service's page kept the job file it started with: after SIGHUP it drew the
    removed jobs and none of the added ones."""
    import dataclasses

    from collector.jobfile import load
    from collector.reload import apply
    from collector.service import Service

    url = f"sqlite:///{tmp_path / 'p.db'}"
    old = load(job_file(tmp_path, fake, keypair, url, "gone: {method: Time, every: 1h}"))
    new = load(job_file(tmp_path, fake, keypair, url, "added: {method: Assets, every: 1h}"))
    listen = "127.0.0.1:0"
    service = Service(dataclasses.replace(old, metrics_listen=listen))
    try:
        service.open()

        def page() -> str:
            assert service.dashboard is not None
            return service.dashboard.answer({}).body.decode()

        assert ">gone<" in page() and ">added<" not in page()
        assert apply(service, dataclasses.replace(new, metrics_listen=listen))
        assert ">added<" in page() and ">gone<" not in page()
    finally:
        service.stop()


def test_a_reload_needing_a_lease_the_process_never_took_is_refused(
    tmp_path, fake, keypair
) -> None:
    """A lease is taken at start. Before, a file of private jobs alone (no reference jobs)
    reloaded with a stream or a public job was accepted, and the new ones waited for the
    public lease forever: nothing recorded, nothing said."""
    from collector.jobfile import load
    from collector.reload import apply, restart_needed

    url = f"sqlite:///{tmp_path / 'l.db'}"
    private = "b: {method: Balance, every: 1h}\n"
    old = load(job_file(tmp_path, fake, keypair, url, private, reference=False))
    streamed = job_file(tmp_path, fake, keypair, url, private, reference=False)
    streamed.write_text(
        streamed.read_text() + "streams:\n  tape: {channel: trade, pairs: [XBTUSD]}\n"
    )
    with_stream = load(streamed)
    public = load(
        job_file(
            tmp_path,
            fake,
            keypair,
            url,
            private + "t: {method: Time, every: 1h}\n",
            reference=False,
        )
    )
    assert restart_needed(old, with_stream) == ["the public jobs and streams"]
    assert restart_needed(old, public) == ["the public jobs and streams"]
    assert restart_needed(with_stream, old) == []  # fewer leases: applied (the lease idles)
    from collector.service import Service

    service = Service(old)
    try:
        assert not apply(service, with_stream)
        assert service.config is old
    finally:
        service.stop()
