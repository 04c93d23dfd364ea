"""The job queue between ``tierbot run`` and ``tierbot worker``: procrastinate, on Postgres.

With ``TIERBOT_RUN_JOBS=workers`` a bot process reserves a job as always (the job row and its
credits, in the store) and hands its id to this queue; a worker process takes it and drives it
(``JobRunner.drive_here``); the bot waits for the job's row to finish and goes on as if it had
run the job itself (``JobRunner.drive``). The store stays the truth about a job: the queue only
says who should work on it next.

- **One worker at a time per job.** Each queued run carries ``lock=<job id>`` (procrastinate
  runs one job per lock at a time) and ``queueing_lock=<job id>`` (handing a job that is
  already waiting is a no-op), so a bot that hands a job again after a restart adds nothing.
- **A worker that dies loses nothing.** Workers beat every ``heartbeat_s``; every worker also
  looks for runs whose worker stopped beating for ``stalled_s`` and puts them back in the
  queue (procrastinate never does this on its own). The next run finds the job's stored
  provider request id and polls it rather than submitting again, and the job's charge is
  settled only when it completes, once (``Store.complete_job`` ignores a second completion).
- The queue's tables (``procrastinate_*``) live beside tierbot's; the first process to start
  creates them, under an advisory lock so two starting at once do not both try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import psycopg
from procrastinate import App, PsycopgConnector, RetryStrategy, exceptions

log = logging.getLogger(__name__)

#: The advisory lock held while the queue's schema is created ("tierbotq" in ASCII).
_SCHEMA_LOCK = 0x74696572626F7471
RUN_JOB = "tierbot.run_job"
QUEUE = "jobs"


class JobQueue:
    """Hands job ids to worker processes (:meth:`hand`) and runs them in one (:meth:`work`)."""

    def __init__(
        self, url: str, *, heartbeat_s: float = 5.0, stalled_s: float = 20.0, pool_size: int = 4
    ) -> None:
        self.url = url
        self.heartbeat_s = heartbeat_s
        self.stalled_s = stalled_s
        self.app = App(
            connector=PsycopgConnector(conninfo=url, min_size=1, max_size=pool_size),
        )
        self._drive: Callable[[str], Awaitable[None]] | None = None
        # A worker told to stop aborts the runs it could not finish in time; they go back to
        # the queue (the runner itself never lets a job's failure out as an exception).
        self.task = self.app.task(
            name=RUN_JOB, queue=QUEUE, retry=RetryStrategy(max_attempts=50, wait=1)
        )(self._run_job)
        self._opened = False
        self._opening = asyncio.Lock()
        logging.getLogger("procrastinate").setLevel(logging.WARNING)

    async def open(self) -> None:
        """Connect, and create the queue's tables if this is the first process."""
        async with self._opening:
            if self._opened:
                return
            await asyncio.to_thread(self._ensure_schema)
            await self.app.open_async()
            self._opened = True

    def _ensure_schema(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("select pg_advisory_lock(%s)", [_SCHEMA_LOCK])
            try:
                exists = conn.execute("select to_regclass('procrastinate_jobs')").fetchone()
                if exists and exists[0] is None:
                    conn.execute(self.app.schema_manager.get_schema())
            finally:
                conn.execute("select pg_advisory_unlock(%s)", [_SCHEMA_LOCK])

    async def aclose(self) -> None:
        if self._opened:
            await self.app.close_async()
            self._opened = False

    async def hand(self, job_id: str) -> None:
        """Queue a run of ``job_id`` unless one is already waiting."""
        await self.open()
        with contextlib.suppress(exceptions.AlreadyEnqueued):
            await self.task.configure(lock=job_id, queueing_lock=job_id).defer_async(job_id=job_id)

    async def work(self, drive: Callable[[str], Awaitable[None]], *, concurrency: int) -> None:
        """Be a worker until cancelled: take queued jobs and ``drive`` each, ``concurrency``
        at a time, and put back the runs of workers that died."""
        self._drive = drive
        await self.open()
        recovering = asyncio.create_task(self._recover_stalled())
        try:
            await self.app.run_worker_async(
                queues=[QUEUE],
                concurrency=concurrency,
                install_signal_handlers=False,  # the command owns SIGTERM and cancels us
                update_heartbeat_interval=self.heartbeat_s,
                stalled_worker_timeout=self.stalled_s,
                fetch_job_polling_interval=1.0,
                shutdown_graceful_timeout=10.0,
                delete_jobs="successful",
            )
        finally:
            recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovering

    async def _run_job(self, job_id: str) -> None:
        assert self._drive is not None, "only a worker runs jobs"
        await self._drive(job_id)

    async def _recover_stalled(self) -> None:
        manager = self.app.job_manager
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=self.stalled_s)
                for job in stalled:
                    with contextlib.suppress(exceptions.ConnectorException):  # finished since
                        await manager.retry_job(job)
                        log.warning("job run %s lost its worker; queued again", job.id)
            except Exception:
                log.exception("looking for runs of dead workers failed")
