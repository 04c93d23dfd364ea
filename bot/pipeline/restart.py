"""After a restart: posting what jobs a previous process left made, where it was asked for."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from bot.domain import AssetKind, Decision, Origin, Reply, Stage
from bot.pipeline.base import RESULT_LABELS, Draftspec, UseCases
from bot.runner import CompletedJob, JobFailed

log = logging.getLogger(__name__)


class Restart(UseCases):
    """Results of jobs finished (or failed) after a restart."""

    def resumed(
        self, outcomes: list[CompletedJob | JobFailed]
    ) -> list[tuple[Origin, AsyncIterator[Reply]]]:
        """What to post for jobs a previous process left unfinished and this one finished.

        A draft request gets its grid (in the thread of its newest grid when it was a reroll);
        a final, edit, upscale or video is posted in its source's thread; a failure says so
        there. Each goes to the channel the job was asked for in. The previous process's
        status lines are the surfaces' business (they read "interrupted by a restart").
        """
        flows: list[tuple[Origin, AsyncIterator[Reply]]] = []
        drafts: dict[str, list[CompletedJob | JobFailed]] = {}  # request id -> its batch
        sequences: dict[str, list[CompletedJob | JobFailed]] = {}  # the same, for shots
        for outcome in outcomes:
            job = self.store.get_job(outcome.job_id) if outcome.job_id else None
            request = self.store.get_request(job["request_id"]) if job else None
            if job is None or request is None:
                continue
            origin = Origin(
                surface=request["surface"],
                team=job["team"],
                channel=job["channel"],
                user=request["user"],
            )
            if request["command"] == "shots":
                if request["id"] not in sequences:
                    sequences[request["id"]] = []
                    flows.append(
                        (origin, self.sequence_after_restart(request, sequences[request["id"]]))
                    )
                sequences[request["id"]].append(outcome)
            elif job["stage"] == Stage.DRAFT:
                if request["id"] not in drafts:
                    drafts[request["id"]] = []
                    flows.append((origin, self._grid_after_restart(request, drafts[request["id"]])))
                drafts[request["id"]].append(outcome)
            else:
                flows.append((origin, self._result_after_restart(job, outcome)))
        return flows

    async def _grid_after_restart(
        self, request: dict[str, Any], batch: list[CompletedJob | JobFailed]
    ) -> AsyncIterator[Reply]:
        """The grid of draft jobs that finished but were never posted (``batch``), in the
        thread of the request's newest posted grid when it was a reroll."""
        grids = [
            a["id"]
            for job in self.store.jobs_for_request(request["id"])
            if job["stage"] == Stage.DRAFT and job.get("delivered")
            for a in self.store.assets_for_job(job["id"])
            if a["kind"] == AssetKind.GRID
        ]
        thread_of = grids[-1] if grids else None
        spec = Draftspec(**request["options"])
        done = [o for o in batch if isinstance(o, CompletedJob)]
        job_ids = [o.job_id for o in batch if o.job_id]
        if not done:
            failures = [o for o in batch if isinstance(o, JobFailed)]
            reason = failures[0].message if failures else "no draft was made"
            yield Reply(
                text=f"⚠️ The drafts of “{spec.prompt}” failed after a restart: {reason}. "
                "Nothing was charged.",
                thread_of=thread_of,
                error=True,
                job_ids=job_ids,
            )
            return
        yield await self._grid_reply(
            request["id"],
            spec,
            done,
            heading="↻ After a restart: ",
            thread_of=thread_of,
            job_ids=job_ids,
        )

    async def _result_after_restart(
        self, job: dict[str, Any], outcome: CompletedJob | JobFailed
    ) -> AsyncIterator[Reply]:
        stage = Stage(job["stage"])
        source = job["inputs"][0] if job["inputs"] else None
        thread_of = source
        if stage == Stage.FINAL and source:  # a final is posted in its draft's grid thread
            grid = next(
                (c for c in self.store.children(source) if c["kind"] == AssetKind.GRID), None
            )
            thread_of = grid["id"] if grid else source
        if isinstance(outcome, JobFailed):
            if stage == Stage.FINAL and source:
                self.store.remove_gate(source, Decision.SELECTED)  # the draft may be chosen again
            yield Reply(
                text=f"⚠️ Failed after a restart: {outcome.message}. Nothing was charged.",
                thread_of=thread_of,
                error=True,
                job_ids=[job["id"]],
            )
            return
        yield await self._result(
            RESULT_LABELS[stage],
            outcome,
            thread_of=thread_of or outcome.asset_ids[0],
            extra=f"of {source} · finished after a restart" if source else "· after a restart",
        )
