"""The job runner: durable, retrying, falling back, never charging twice.

One job is one call to one model. Its life:

1. ``plan`` → the job row and its credit reservation are written together (or neither is).
2. ``submit`` → the provider's request id is stored the moment it is known.
3. ``result`` → output files are written to the content-addressed store, then the assets,
   the settlement of the charge and the job's success are committed in one transaction.

Transient errors are retried with exponential backoff and jitter (tenacity), honouring a
provider's Retry-After; when a candidate's retries are spent the job fails, its reservation
is released, the model's health records the failure, and the next candidate gets a new job.
Permanent errors and content-policy refusals fail at once with the provider's reason.

If the process stops mid-job the row stays ``queued`` or ``running``; :meth:`JobRunner.resume`
polls submitted jobs by their stored request id and resubmits the others, and since the
charge is settled only in step 3 a resumed job is charged exactly once.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.wait import wait_exponential, wait_exponential_jitter, wait_random

from bot import cpu
from bot.catalog import Candidate, Catalog, ModelSpec
from bot.domain import AssetKind, Capability, JobState
from bot.failpoints import failpoint
from bot.ledger import BudgetExceeded, Ledger, credits
from bot.progress import report
from bot.providers import (
    ContentPolicyError,
    GeneratedFile,
    GenerationRequest,
    ProviderError,
    ProviderRegistry,
    ProviderUnavailable,
    TransientError,
)
from bot.regions import parse_region
from bot.router import Health
from storage import AssetFiles, Store

log = logging.getLogger(__name__)

#: The inbound event (its inbox key) the running command or reaction came from; the jobs it
#: reserves record it, so after a crash a pending event with jobs is not run a second time.
CAUSE: ContextVar[str | None] = ContextVar("tierbot_cause", default=None)


def for_candidate(request: GenerationRequest, candidate: Candidate) -> GenerationRequest:
    """``request`` as ``candidate`` is sent it: its own model id, the resolution it offers
    nearest the one asked for, its sound setting and whether it takes a seed."""
    capability, prompt, subject = request.capability, request.prompt, request.subject
    if request.mask is not None and Capability.INPAINT in candidate.model.capabilities:
        capability = Capability.INPAINT  # it gets the mask: the words need not say where
    elif request.region:
        where = parse_region(request.region).words()
        prompt = f"{prompt}. Change only {where}; keep everything else exactly as it is."
        subject = subject or request.prompt  # the result keeps the person's words
    return request.model_copy(
        update={
            "job_id": "",
            "capability": capability,
            "prompt": prompt,
            "subject": subject,
            "model_id": candidate.model.id,
            "provider_model": candidate.serving.model_for(capability),
            "resolution": candidate.resolution_for(request.resolution),
            "audio": candidate.audio,
            "seed_accepted": candidate.seed,
        }
    )


@dataclass
class JobPlan:
    """What the pipeline asks the runner to do: one stage of one request."""

    request_id: str
    team: str
    channel: str
    request: GenerationRequest  # job_id and model fields are filled per candidate
    inputs: list[str]  # input asset ids: the lineage parents of every output
    candidates: list[Candidate]
    reason: str
    prices: dict[str, int] = field(default_factory=dict)


@dataclass
class CompletedJob:
    job_id: str
    request_id: str
    model: ModelSpec
    asset_ids: list[str]
    cost: int
    reason: str
    #: Who made it, as people read it: the model id, with ``@provider`` when there is a choice.
    label: str = ""


class JobFailed(Exception):
    """A job could not produce its result; ``message`` is for people.

    ``kind`` is one of ``permanent``, ``policy`` (a content-policy refusal), ``transient``
    (every candidate's retries spent), ``budget`` or ``cancelled``.
    """

    def __init__(
        self,
        message: str,
        kind: str,
        job_id: str | None = None,
        siblings: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.job_id = job_id
        #: Every job whose outcome this failure reports (a batch where none succeeded).
        self.job_ids = list(siblings) or ([job_id] if job_id else [])


#: How often a process waiting on jobs that workers run looks at them (one statement).
WAIT_POLL_S = 0.1
#: How often a worker looks whether the job it drives was cancelled.
CANCEL_POLL_S = 1.0
#: How often a job is offered to the queue (over about 12 s) before it fails: the database
#: is out of reach.
HAND_ATTEMPTS = 6


class WorkQueue(Protocol):
    """Hands jobs to worker processes (``storage.queue.JobQueue``)."""

    async def hand(self, job_id: str) -> None:
        """Make sure a worker will drive ``job_id`` (once, however often it is handed)."""


class JobRunner:
    """Runs jobs on providers with a concurrency limit per provider."""

    def __init__(
        self,
        *,
        store: Store,
        files: AssetFiles,
        ledger: Ledger,
        catalog: Catalog,
        providers: ProviderRegistry,
        health: Health,
        retries: int = 2,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_error: Callable[[str, str], None] | None = None,
        queue: WorkQueue | None = None,
    ) -> None:
        self.store = store
        self.files = files
        self.ledger = ledger
        self.catalog = catalog
        self.providers = providers
        self.health = health
        self.retries = retries
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        #: Told of every provider error: (provider, "transient" | "permanent" | "policy").
        self.on_error = on_error or (lambda provider, kind: None)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._running: dict[str, asyncio.Task[Any]] = {}
        #: Where jobs run when not here: ``tierbot worker`` processes (``storage.queue``).
        self.queue = queue
        #: Jobs workers run that this process waits on: who waits, and what state it saw.
        self._waiting: dict[str, list[tuple[tuple[str, int], asyncio.Future[Any]]]] = {}
        self._watcher: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------------------

    async def run(self, plan: JobPlan) -> CompletedJob:
        """Run ``plan`` on its first candidate, falling back along the rest.

        Raises:
            JobFailed: nothing was charged for the failed attempts.
        """
        (job_id,) = self.reserve_all([plan])
        return await self.drive(job_id)

    def reserve_all(self, plans: list[JobPlan]) -> list[str]:
        """Write every plan's job and reservation, or none: if one does not fit the budget,
        the ones already reserved are released and :class:`JobFailed` is raised."""
        job_ids: list[str] = []
        try:
            for plan in plans:
                job_ids.append(
                    self._reserve(
                        plan.request_id,
                        plan.team,
                        plan.channel,
                        plan.request,
                        plan.inputs,
                        plan.candidates,
                        plan.reason,
                        plan.prices,
                    )
                )
        except JobFailed:
            for job_id in job_ids:
                self.store.fail_job(
                    job_id,
                    state=JobState.CANCELLED,
                    error="its batch did not fit the budget",
                    kind="budget",
                )
            raise
        failpoint("job.reserved", plans[0].request.stage if plans else None)
        return job_ids

    async def resume(self, job_ids: Sequence[str] | None = None) -> list[CompletedJob | JobFailed]:
        """Finish the unfinished jobs ``job_ids`` (by default every one nobody live holds),
        concurrently; a job another live worker holds is left to it."""
        if job_ids is None:
            job_ids = [
                job["id"]
                for job in self.store.claimable_jobs()
                if job["state"] in (JobState.QUEUED, JobState.RUNNING)
            ]
        job_ids = [job_id for job_id in job_ids if self.store.claim_job(job_id)]
        if job_ids:
            log.info("resuming %d unfinished job(s)", len(job_ids))
        results = await asyncio.gather(
            *(self.drive(job_id) for job_id in job_ids), return_exceptions=True
        )
        outcomes: list[CompletedJob | JobFailed] = []
        for result in results:
            if isinstance(result, CompletedJob | JobFailed):
                outcomes.append(result)
            elif isinstance(result, BaseException):
                raise result
        return outcomes

    def outcome(self, job: dict[str, Any]) -> CompletedJob | JobFailed | None:
        """What a finished job came to, from its row (its outputs, or why it failed)."""
        if job["state"] == JobState.SUCCEEDED:
            assets = self.store.assets_for_job(job["id"])
            ids = [a["id"] for a in assets if a["kind"] != AssetKind.GRID]
            return self.completed(job, ids)
        if job["state"] == JobState.FAILED:
            return JobFailed(job["last_error"] or "failed", job["error_kind"] or "", job["id"])
        return None

    def completed(self, job: dict[str, Any], asset_ids: list[str]) -> CompletedJob | None:
        """The job row ``job`` with its outputs ``asset_ids`` as a :class:`CompletedJob`
        (after a restart the pipeline needs the drafts a previous process finished); None if
        it did not succeed."""
        if job["state"] != JobState.SUCCEEDED:
            return None
        candidate = self.catalog.candidate(f"{job['model_id']}@{job['provider']}")
        if candidate is None:
            return None
        entry = self.store.ledger_entry(job["id"])
        return CompletedJob(
            job["id"],
            job["request_id"],
            candidate.model,
            asset_ids,
            entry["amount"] if entry else 0,
            job["reason"],
            candidate.label,
        )

    async def cancel(self, job_id: str) -> bool:
        """Stop a queued or running job and release its credits; False if already finished."""
        job = self.store.get_job(job_id)
        if job is None or job["state"] not in (JobState.QUEUED, JobState.RUNNING):
            return False
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        if job.get("provider_request_id"):
            try:
                await self.providers.get(job["provider"]).cancel(job["provider_request_id"])
            except (ProviderError, ProviderUnavailable) as exc:
                log.warning("cancel of job %s at %s failed: %s", job_id, job["provider"], exc)
        self.store.fail_job(job_id, state=JobState.CANCELLED, error="cancelled", kind="cancelled")
        return True

    # -- internals ---------------------------------------------------------------------------

    def _reserve(
        self,
        request_id: str,
        team: str,
        channel: str,
        request: GenerationRequest,
        inputs: list[str],
        candidates: list[Candidate],
        reason: str,
        prices: dict[str, int],
        replaces: str | None = None,
        cause: str | None = None,
        replaced_because: str = "",
    ) -> str:
        """Write a job for the first affordable candidate, with its reservation."""
        last: BudgetExceeded | None = None
        for index, candidate in enumerate(candidates):
            model = candidate.model
            price = prices.get(candidate.key) or candidate.cost(
                images=request.n, seconds=request.duration_s, resolution=request.resolution
            )
            params = for_candidate(request, candidate).model_dump(
                mode="json", exclude={"job_id", "references"}
            )
            try:
                job_id = self.ledger.reserve_job(
                    {
                        "request_id": request_id,
                        "stage": request.stage.value,
                        "model_id": model.id,
                        "provider": candidate.provider,
                        "params": params,
                        "inputs": inputs,
                        "fallbacks": [c.key for c in candidates[index + 1 :]],
                        "reason": reason,
                        "team": team,
                        "channel": channel,
                        "cause": cause or CAUSE.get(),
                    },
                    price,
                    replaces=replaces,
                    replaced_because=replaced_because,
                )
                report(job_id, "queued", candidate.label)
                return job_id
            except BudgetExceeded as exc:
                last = exc
                log.info("budget refuses %s on %s: %s", request.stage, candidate.key, exc)
        assert last is not None
        raise JobFailed(
            f"not enough budget: {request.stage.value} costs {credits(last.amount)}; "
            f"{credits(last.left)} left of the {last.cap.describe()}",
            "budget",
        )

    async def drive(self, job_id: str) -> CompletedJob:
        """Run a reserved job to the end (here, or by a worker process when jobs run in
        workers); on exhausted transient errors it continues with its fallbacks.

        Raises:
            JobFailed: the job (and its fallbacks) failed; nothing was charged for them.
        """
        if self.queue is None:
            return await self.drive_here(job_id)
        await self._hand(job_id)
        return await self._outcome_of(job_id)

    async def _hand(self, job_id: str) -> None:
        """Queue the job for a worker, riding out a database hiccup; if the queue stays out
        of reach the job fails with its credits released, rather than wait unseen."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(HAND_ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=5.0) + wait_random(0, 0.5),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.queue.hand(job_id)  # type: ignore[union-attr]
        except Exception as exc:
            log.exception("could not queue job %s for a worker", job_id)
            message = f"the job queue could not be reached ({type(exc).__name__}); try again"
            self._fail(job_id, "transient", message)
            raise JobFailed(message, "transient", job_id) from None

    async def work(self, job_id: str) -> None:
        """What a worker process does with a job handed to it: drive it here. How it ended is
        on its row, where the process waiting for it looks; so is an error of the worker's
        own (it fails the job rather than leave its requester waiting)."""
        driving = asyncio.create_task(self.drive_here(job_id))
        try:
            while not driving.done():
                await asyncio.wait({driving}, timeout=CANCEL_POLL_S)
                if not driving.done() and self._cancelled(job_id):
                    driving.cancel()  # whoever cancelled it told the provider and the person
        finally:
            if not driving.done():  # this worker is stopping: the run goes back to the queue
                driving.cancel()
        try:
            await driving
        except (JobFailed, asyncio.CancelledError):
            pass
        except Exception as exc:
            log.exception("worker failed on job %s", job_id)
            job = self.store.get_job(job_id)
            if job is not None and job["state"] in (JobState.QUEUED, JobState.RUNNING):
                self._fail(job_id, "permanent", f"the worker failed ({type(exc).__name__})")

    def _cancelled(self, job_id: str) -> bool:
        """Whether the job (or the fallback it led to) was cancelled."""
        job = self.store.get_job(job_id)
        while job is not None and job.get("replaced_by"):
            job = self.store.get_job(job["replaced_by"])
        return job is not None and job["state"] == JobState.CANCELLED

    async def drive_here(self, job_id: str) -> CompletedJob:
        """Run a reserved job in this process (see :meth:`drive`). A job already finished
        (run again after its worker was taken for dead) reports how it ended."""
        while True:
            job = self.store.get_job(job_id)
            if job is None:
                raise JobFailed(f"job {job_id} does not exist", "permanent", job_id)
            if job.get("replaced_by"):
                job_id = job["replaced_by"]
                continue
            if job["state"] not in (JobState.QUEUED, JobState.RUNNING):
                outcome = self._finished(job)
                if isinstance(outcome, JobFailed):
                    raise outcome
                return outcome
            try:
                return await self._execute(job_id)
            except _FallBack as fallback:
                job_id = self._fall_back(job_id, fallback.message)

    def _fall_back(self, job_id: str, why: str) -> str:
        """The job that carries on after ``job_id`` failed for ``why``; its id."""
        job = self.store.get_job(job_id)
        assert job is not None
        candidates = [c for c in map(self.catalog.candidate, job["fallbacks"]) if c]
        if not candidates:
            self._fail(job_id, "transient", why)
            raise JobFailed(why, "transient", job_id) from None
        # Its parameters only: a reservation keeps the inputs, not their files.
        request = GenerationRequest(job_id=job["id"], **job["params"])
        log.info("job %s falls back to %s", job_id, candidates[0].key)
        try:
            return self._reserve(
                job["request_id"],
                job["team"],
                job["channel"],
                request,
                job["inputs"],
                candidates,
                job["reason"],
                {},
                replaces=job_id,
                cause=job.get("cause"),
                replaced_because=why,
            )
        except JobFailed:
            self._fail(job_id, "transient", why)
            raise

    def _finished(self, job: dict[str, Any]) -> CompletedJob | JobFailed:
        """How a finished job ended, as :meth:`drive` reports it."""
        if job["state"] == JobState.CANCELLED:
            return JobFailed("cancelled", "cancelled", job["id"])
        outcome = self.outcome(job)
        if outcome is None:  # succeeded, but its model left the catalog since
            return JobFailed(f"{job['model_id']} is no longer in the catalog", "permanent")
        return outcome

    async def _outcome_of(self, job_id: str) -> CompletedJob:
        """Wait for a job a worker runs to finish, following its fallbacks, and report its
        progress here as its row changes (the worker's own reports reach nobody). Every job
        this process waits on is looked up with one statement per :data:`WAIT_POLL_S`."""
        seen: tuple[str, int] = (JobState.QUEUED, 0)
        while True:
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(job_id, []).append((seen, future))
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch())
            job = await future
            if job.get("replaced_by"):
                job_id, seen = job["replaced_by"], (JobState.QUEUED, 0)
                continue
            label = self._label(job)
            if job["state"] in (JobState.QUEUED, JobState.RUNNING):
                seen = (job["state"], job["attempts"] or 0)
                if job["state"] == JobState.RUNNING:
                    if seen[1] > 1:
                        report(job_id, "retrying", job["last_error"] or label)
                    else:
                        report(job_id, "running", label)
                continue
            outcome = self._finished(job)
            if isinstance(outcome, JobFailed):
                report(job_id, "failed", outcome.message)
                raise outcome
            report(job_id, "succeeded", label)
            return outcome

    def _label(self, job: dict[str, Any]) -> str:
        candidate = self.catalog.candidate(f"{job['model_id']}@{job['provider']}")
        return candidate.label if candidate else job["model_id"]

    async def _watch(self) -> None:
        """Wake each waiter whose job's row moved on from what it last saw."""
        while self._waiting:
            await asyncio.sleep(WAIT_POLL_S)
            for job_id, waiters in list(self._waiting.items()):
                if all(future.done() for _, future in waiters):  # nobody waits any more
                    del self._waiting[job_id]
            waiting = list(self._waiting)
            for start in range(0, len(waiting), 500):
                try:
                    jobs = self.store.job_states(waiting[start : start + 500])
                except Exception:  # the database hiccuped: the waiters wait on
                    log.exception("looking at jobs run by workers failed")
                    continue
                for job in jobs:
                    now = (job["state"], job["attempts"] or 0)
                    still = []
                    for seen, future in self._waiting.get(job["id"], []):
                        if future.done():  # its waiter was cancelled
                            continue
                        if seen != now:
                            future.set_result(job)
                        else:
                            still.append((seen, future))
                    if still:
                        self._waiting[job["id"]] = still
                    else:
                        self._waiting.pop(job["id"], None)

    async def _paths(self, asset_ids: Sequence[str], pictures_only: bool = False) -> list[Path]:
        """Where input assets' files are (downloaded first where this machine lacks one)."""
        assets = [asset for i in asset_ids if (asset := self.store.get_asset(i))]
        if pictures_only:
            assets = [a for a in assets if a["kind"] != AssetKind.MASK]
        return await self.files.paths([a["path"] for a in assets])

    async def _request_for(self, job: dict[str, Any]) -> GenerationRequest:
        """The request as sent: input files (and a region edit's mask, kept by its path in
        the asset store) resolved on this machine, fetched first where it lacks them."""
        params = dict(job["params"])
        if params.get("mask"):
            params["mask"] = await self.files.local(params["mask"])
        # A mask among the inputs is the result's lineage, not a picture to send.
        references = await self._paths(job["inputs"], pictures_only=True)
        return GenerationRequest(job_id=job["id"], references=references, **params)

    def _slot(self, provider: str) -> asyncio.Semaphore:
        if provider not in self._slots:
            limit = self.catalog.concurrency(provider)
            self._slots[provider] = asyncio.Semaphore(limit)
        return self._slots[provider]

    def _wait(self, state: RetryCallState, job_id: str) -> float:
        wait = wait_exponential_jitter(initial=1.0, max=self.max_backoff_s)(state)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TransientError) and error.retry_after is not None:
            wait = min(max(error.retry_after, 0.0), self.max_backoff_s)
        if isinstance(error, ProviderError):
            detail = f"{error.message}; retrying in {wait:.0f} s"
            report(job_id, "retrying", detail)
            # On the row too: a bot waiting on a worker's job shows it (complete_job clears it).
            self.store.update_job(job_id, last_error=detail)
            job = self.store.get_job(job_id)
            self.on_error(job["provider"] if job else "?", "transient")
        return wait

    async def _execute(self, job_id: str) -> CompletedJob:
        job = self.store.get_job(job_id)
        assert job is not None
        candidate = self.catalog.candidate(f"{job['model_id']}@{job['provider']}")
        if candidate is None:
            self._fail(job_id, "permanent", "model left the catalog")
            raise JobFailed(f"{job['model_id']} is no longer in the catalog", "permanent", job_id)
        request = await self._request_for(job)
        self._running[job_id] = asyncio.current_task()  # type: ignore[assignment]
        try:
            provider = self.providers.get(candidate.provider)
            async with self._slot(candidate.provider):
                report(job_id, "running", candidate.label)
                outputs = await self._call_with_retries(job_id, provider, request)
        except ProviderUnavailable as exc:
            self._fail(job_id, "permanent", str(exc))
            raise JobFailed(
                f"{candidate.label} is unavailable: {exc}", "permanent", job_id
            ) from None
        except ContentPolicyError as exc:
            self.on_error(candidate.provider, "policy")
            message = f"{candidate.label} refused the content: {exc.message}"
            self._fail(job_id, "policy", exc.message, message)
            raise JobFailed(message, "policy", job_id) from None
        except TransientError as exc:
            self.on_error(candidate.provider, "transient")
            self.health.record_failure(candidate.key)
            raise _FallBack(f"{candidate.label} failed: {exc.message}") from None
        except ProviderError as exc:
            self.on_error(candidate.provider, "permanent")
            message = f"{candidate.label} failed: {exc.message}"
            self._fail(job_id, "permanent", exc.message, message)
            raise JobFailed(message, "permanent", job_id) from None
        finally:
            self._running.pop(job_id, None)
        self.health.record_success(candidate.key)
        completed = await self._complete(job, candidate, outputs)
        report(job_id, "succeeded", candidate.label)
        return completed

    def _fail(self, job_id: str, kind: str, error: str, message: str | None = None) -> None:
        """Fail the job: its status line shows ``error``; its row keeps ``message`` (the
        sentence people are told, which a process waiting on the job reports)."""
        self.store.fail_job(job_id, state=JobState.FAILED, error=message or error, kind=kind)
        report(job_id, "failed", error)

    async def _call_with_retries(
        self, job_id: str, provider: Any, request: GenerationRequest
    ) -> list[GeneratedFile]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=lambda state: self._wait(state, job_id),
            retry=retry_if_exception_type(TransientError),
            sleep=self.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                job = self.store.get_job(job_id)
                assert job is not None
                self.store.update_job(job_id, state=JobState.RUNNING, attempts=job["attempts"] + 1)
                provider_request_id = job.get("provider_request_id")
                if not provider_request_id:
                    provider_request_id = await provider.submit(request)
                    self.store.update_job(job_id, provider_request_id=provider_request_id)
                    failpoint("job.submitted", request.stage)
                try:
                    return await provider.result(provider_request_id, request)
                except TransientError:
                    # The generation itself failed: the next attempt submits afresh.
                    self.store.update_job(job_id, provider_request_id=None)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _keep_outside(
        self, job: dict[str, Any], outputs: list[GeneratedFile]
    ) -> tuple[list[GeneratedFile], list[dict[str, Any]]]:
        """A region edit's outputs made the source with only the region replaced (whatever
        the model returned), and each one's seam measured (see ``bot.canvas``)."""
        from bot import canvas  # numpy and scikit-image: loaded by the first region edit

        (source_path,) = await self._paths(job["inputs"][:1])
        source = await _read(source_path)
        mask = await _read(await self.files.local(job["params"]["mask"]))
        kept, facts = [], []
        for out in outputs:
            data, seam = await cpu.run(canvas.keep_outside, source, out.data, mask, out.seed or 0)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            kept.append(
                GeneratedFile(
                    data=data, mime="image/png", width=width, height=height, seed=out.seed
                )
            )
            facts.append({"seam_before": seam.before, "seam_after": seam.after})
        return kept, facts

    async def _complete(
        self, job: dict[str, Any], candidate: Candidate, outputs: list[GeneratedFile]
    ) -> CompletedJob:
        model = candidate.model
        facts: list[dict[str, Any]] = [{} for _ in outputs]
        if job["params"].get("mask"):
            outputs, facts = await self._keep_outside(job, outputs)
        stored = await asyncio.to_thread(
            lambda: [self.files.put(out.data, out.mime) for out in outputs]
        )
        reserved = self.store.ledger_entry(job["id"])
        seconds = round(max((o.duration_s or 0) for o in outputs)) if outputs else None
        actual = candidate.cost(
            images=len(outputs), seconds=seconds or None, resolution=job["params"].get("resolution")
        )
        amount = min(actual, reserved["amount"]) if reserved else actual
        params = job["params"]
        rows = [
            {
                "job_id": job["id"],
                "request_id": job["request_id"],
                "kind": (
                    AssetKind.VIDEO if out.mime.startswith("video/") else AssetKind.IMAGE
                ).value,
                "stage": job["stage"],
                "sha256": digest,
                "path": relative,
                "mime": out.mime,
                "width": out.width,
                "height": out.height,
                "duration_s": out.duration_s,
                "bytes": len(out.data),
                "prompt": params.get("subject") or params["prompt"],
                "model_id": model.id,
                "seed": out.seed if out.seed is not None else params.get("seed"),
                "cost": amount // max(1, len(outputs)),
                "facts": json.dumps(fact) if fact else None,
            }
            for out, (digest, relative), fact in zip(outputs, stored, facts, strict=True)
        ]
        asset_ids = self.store.complete_job(job["id"], rows, job["inputs"], amount)
        failpoint("job.completed", job["stage"])
        return CompletedJob(
            job["id"], job["request_id"], model, asset_ids, amount, job["reason"], candidate.label
        )


async def _read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


class _FallBack(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
