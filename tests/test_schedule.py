"""The scheduler seam: what collector.schedule relies on in APScheduler 3, held by tests that fail
the day a release changes it, and no private APScheduler name used outside its one adapter."""

from __future__ import annotations

import ast
import inspect
import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apscheduler.events
import apscheduler.executors.base
import apscheduler.executors.pool
import apscheduler.job
import apscheduler.jobstores.base
import apscheduler.jobstores.memory
import apscheduler.schedulers.background
import apscheduler.schedulers.base
import apscheduler.schedulers.blocking
import apscheduler.triggers.base
import apscheduler.triggers.cron
import apscheduler.triggers.interval
from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
from apscheduler.schedulers.blocking import BlockingScheduler

import collector
from collector.jobfile import Job
from collector.schedule import RunExecutor, Schedule

from .helpers import wait_for

_MODULES = (
    apscheduler.events,
    apscheduler.executors.base,
    apscheduler.executors.pool,
    apscheduler.job,
    apscheduler.jobstores.base,
    apscheduler.jobstores.memory,
    apscheduler.schedulers.background,
    apscheduler.schedulers.base,
    apscheduler.schedulers.blocking,
    apscheduler.triggers.base,
    apscheduler.triggers.cron,
    apscheduler.triggers.interval,
)
#: The adapter that may name APScheduler's private methods: (module, class).
_ADAPTER = ("schedule.py", "RunExecutor")


def _private_methods() -> set[str]:
    """The private methods of APScheduler's classes (``_name``, not ``__dunder__``)."""
    found = set()
    for module in _MODULES:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not cls.__module__.startswith("apscheduler"):
                continue
            for name, member in vars(cls).items():
                if name.startswith("_") and not name.startswith("__") and callable(member):
                    found.add(name)
    return found


def test_apscheduler_still_offers_what_the_adapter_relies_on() -> None:
    """The contract with APScheduler 3: an executor is handed every due time of a job through
    the public ``submit_job(job, run_times)`` and refuses with ``MaxInstancesReachedError``; its
    one abstract method is ``_do_submit_job`` (RunExecutor defines it, never calls it); the
    blocking scheduler's public ``start()`` runs its loop in the caller's thread; the events the
    schedule listens to carry the due times."""
    params = list(inspect.signature(BaseExecutor.submit_job).parameters)
    assert params == ["self", "job", "run_times"]
    assert BaseExecutor.__abstractmethods__ == frozenset({"_do_submit_job"})
    abstract = vars(BaseExecutor)["_do_submit_job"]  # the one private name, defined not called
    assert list(inspect.signature(abstract).parameters) == params
    assert issubclass(MaxInstancesReachedError, Exception)
    assert list(inspect.signature(BaseExecutor.start).parameters) == ["self", "scheduler", "alias"]
    assert (
        "scheduled_run_times" in inspect.signature(apscheduler.events.JobSubmissionEvent).parameters
    )
    for name in ("EVENT_JOB_MAX_INSTANCES", "EVENT_JOB_SUBMITTED", "EVENT_SCHEDULER_STARTED"):
        assert isinstance(getattr(apscheduler.events, name), int), name

    # The scheduler hands the executor every due time when coalesce is off, and the blocking
    # scheduler's start() returns only when it is shut down.
    handed: list[list[datetime]] = []

    class Recording(RunExecutor):
        def submit_job(self, job, run_times):  # type: ignore[no-untyped-def]
            handed.append(list(run_times))
            super().submit_job(job, run_times)

    ran = threading.Event()
    scheduler = BlockingScheduler(
        executors={"default": Recording(1)},
        job_defaults={"coalesce": False, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )
    now = datetime.now(UTC)
    scheduler.add_job(
        lambda scheduled_at=None: ran.set(),
        "interval",
        seconds=60,
        start_date=now - timedelta(minutes=3),
        next_run_time=now - timedelta(minutes=3),
    )
    caller = threading.current_thread()
    loop_threads: list[threading.Thread] = []
    scheduler.add_listener(
        lambda _e: loop_threads.append(threading.current_thread()),
        apscheduler.events.EVENT_SCHEDULER_STARTED,
    )
    thread = threading.Thread(target=scheduler.start)
    thread.start()
    try:
        assert ran.wait(10)
    finally:
        scheduler.shutdown()
        thread.join(10)
    assert not thread.is_alive() and loop_threads == [thread] and thread is not caller
    assert len(handed) == 1 and len(handed[0]) == 4  # 3 minutes late: four due times


def test_no_private_apscheduler_name_is_used_outside_the_adapter() -> None:
    """Every private APScheduler method the package names (defines or reaches) is in RunExecutor;
    the failure says where else one is."""
    private = _private_methods()
    assert {"_do_submit_job", "_main_loop", "_run_job_success", "_process_jobs"} <= private
    outside = []
    for path in sorted(Path(collector.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        allowed: set[int] = set()
        if path.name == _ADAPTER[0]:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name == _ADAPTER[1]:
                    allowed |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.name
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                else None
            )
            if name in private and id(node) not in allowed:
                outside.append(f"{path.name}:{node.lineno}: {name}")
    assert not outside, "APScheduler's private names outside schedule.RunExecutor: " + ", ".join(
        outside
    )


def test_each_run_gets_its_due_time_and_a_run_that_raised_frees_its_turn() -> None:
    due: list[datetime] = []
    stamps: list[datetime] = []

    def run(job: Job, scheduled_at: datetime | None = None) -> None:
        assert scheduled_at is not None
        stamps.append(scheduled_at)
        nxt = schedule.next_run(job.name)
        if nxt is not None:
            due.append(nxt)
        raise RuntimeError("a bug in a run")  # logged; the job keeps its schedule

    job = Job(name="t", method="Time", every=timedelta(seconds=0.2))
    schedule = Schedule([job], run, workers=2)
    schedule.start()
    try:
        wait_for(lambda: len(stamps) >= 3)
    finally:
        schedule.shutdown()
    assert not schedule.running
    # Each later run is stamped with the time it was due: the grid of 0.2 s from the first.
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps[1:])]
    assert all(abs(step - 0.2) < 1e-3 for step in steps), stamps
    assert all(s.tzinfo is not None for s in stamps)


def test_runs_go_to_at_most_workers_threads_and_shutdown_waits_for_them() -> None:
    """Five jobs due at once through two workers: two run at a time, in two threads; a shutdown
    while they run returns when the runs handed over have ended (none is dropped)."""
    release = threading.Event()
    lock = threading.Lock()
    running: list[str] = []
    most = 0
    ended: list[str] = []
    threads: set[str] = set()

    def run(job: Job, scheduled_at: datetime | None = None) -> None:
        nonlocal most
        with lock:
            running.append(job.name)
            most = max(most, len(running))
            threads.add(threading.current_thread().name)
        release.wait(30)
        with lock:
            running.remove(job.name)
            ended.append(job.name)

    jobs = [Job(name=f"j{i}", method="Time", every=timedelta(hours=1)) for i in range(5)]
    schedule = Schedule(jobs, run, workers=2)
    schedule.start()
    try:
        wait_for(lambda: len(running) == 2)
    finally:
        release.set()
        schedule.shutdown(wait=True)
    assert sorted(ended) == [f"j{i}" for i in range(5)]
    assert most == 2 and threads == {"collector-run_0", "collector-run_1"}
