"""Background pulls of the REST gateway: one job per (system, tag), run by a thread pool.

``POST /api/pull`` returns at once with the job's state; NERSC's client polls by POSTing again.
A job's progress events (from :class:`~shifter.gateway.service.ImageService`) move its NERSC
status (PULLING, CONVERSION, TRANSFER) and its heartbeat; a job with no heartbeat for
``pull_timeout`` seconds is failed by the sweeper (:meth:`JobTable.reap`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shifter.gateway.stores import Caller

JobKey = tuple[str, str]  # (system, normalised tag)
PHASES = {"resolve": "PENDING", "wait": "PENDING", "pulling": "PULLING", "converting": "CONVERSION",
          "publish": "CONVERSION", "transfer": "TRANSFER"}
# A failed pull answers FAILURE this long to the same request (so the polling client sees it and
# stops), then the same request pulls again; a request with other credentials or lists pulls at once.
FAILURE_HOLD_S = 10.0


@dataclass
class Job:
    key: JobKey
    caller: Caller
    request: object = None  # what was asked (caller, registry credentials, access list)
    status: str = "INIT"
    message: str = "queued"
    image_id: str | None = None
    exit_code: int | None = None  # of the error that failed it (shifterimg's exit code)
    beat: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None


class JobSink:
    """A progress sink that moves a job's status and heartbeat."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def phase(self, name: str, message: str) -> None:
        job = self.job
        job.beat = time.monotonic()
        if not job.done and name in PHASES:
            job.status, job.message = PHASES[name], message

    def layer_start(self, digest: str, total: int) -> None:
        self.job.beat = time.monotonic()

    def layer_advance(self, digest: str, nbytes: int) -> None:
        self.job.beat = time.monotonic()

    def layer_done(self, digest: str) -> None:
        self.job.beat = time.monotonic()


class JobTable:
    """The jobs of this gateway process (several processes share the work through the store's
    per-image lock and the database; see docs/gateway.md)."""

    def __init__(self, workers: int, pull_timeout: int) -> None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="pull")
        self.pull_timeout = pull_timeout
        self.lock = threading.Lock()
        self.jobs: dict[JobKey, Job] = {}
        self.started = 0
        self.failed = 0

    def current(self, key: JobKey, request: object = None) -> Job | None:
        """The job answering for ``key``: in flight, or failed moments ago on the same ``request``."""
        job = self.jobs.get(key)
        if job is None or not job.done:
            return job
        if (job.status == "FAILURE" and job.request == request
                and time.monotonic() - (job.finished or 0) < FAILURE_HOLD_S):
            return job
        return None

    def submit(self, key: JobKey, caller: Caller, run: Callable[[Job], None], request: object = None) -> Job:
        """Start a job for ``key`` unless one answers already; returns the job that answers."""
        with self.lock:
            job = self.current(key, request)
            if job is not None:
                return job
            job = Job(key, caller, request)
            self.jobs[key] = job
            self.started += 1
        self.pool.submit(self._run, job, run)
        return job

    def _run(self, job: Job, run: Callable[[Job], None]) -> None:
        try:
            run(job)
        finally:
            if job.finished is None:
                job.finished = time.monotonic()
            if job.status == "FAILURE":
                self.failed += 1

    def fail(self, job: Job, message: str, exit_code: int = 1) -> None:
        job.status, job.message, job.exit_code, job.finished = "FAILURE", message, exit_code, time.monotonic()

    def reap(self) -> list[Job]:
        """Fail the jobs whose heartbeat stopped for ``pull_timeout`` seconds; forget old finished ones."""
        now = time.monotonic()
        stuck: list[Job] = []
        with self.lock:
            for key, job in list(self.jobs.items()):
                if not job.done and self.pull_timeout and now - job.beat > self.pull_timeout:
                    self.fail(job, f"no progress for {self.pull_timeout} s: pull failed; pull again")
                    stuck.append(job)
                elif job.done and now - (job.finished or now) > 3600:
                    del self.jobs[key]
        return stuck

    def in_flight(self) -> list[Job]:
        return [job for job in list(self.jobs.values()) if not job.done]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def describe(job: Job) -> dict[str, Any]:
    return {"status": job.status, "image": job.key[1], "message": job.message}


__all__ = ["FAILURE_HOLD_S", "Job", "JobSink", "JobTable", "describe"]
