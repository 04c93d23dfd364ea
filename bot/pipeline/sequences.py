"""Shot sequences: a storyboard's beats animated as short shots and stitched into one video.

The seeds' rule: a 30-second ad is not one 30-second generation but 2–3 second shots made with
the same style guide, stitched. ``/tierbot shots <grid-id>`` (or 🎬 on a storyboard grid)
renders each beat's draft as a shot (optionally through the final tier first) with the beat's
words as its motion, the same seed, style and references for every shot; prices and reserves
the whole sequence before anything starts; then stitches the shots that succeeded, in beat
order, into one MP4 posted in the grid's thread with each shot.

A sequence is a row (its beats, each beat's shot, the order) and, each time it is stitched, a
video asset of stage ``sequence`` whose parents are its shots; each shot's parent is its beat.
``reshoot`` renders one shot again (spends) and re-stitches; ``order`` re-stitches in a new
order (free). A shot that failed does not lose the others: the sequence says which one, and
``reshoot`` completes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bot import cpu, footage
from bot.commands import Invocation
from bot.domain import (
    SEQUENCE_STAGE,
    AssetKind,
    Capability,
    Decision,
    Origin,
    Reaction,
    Reply,
    Stage,
)
from bot.errors import UserError
from bot.ledger import credits
from bot.pipeline.base import Draftspec, UseCases
from bot.runner import CompletedJob, JobFailed

log = logging.getLogger(__name__)

#: Shot lengths the seeds recommend; complex motion over longer shots hallucinates.
SHOT_SECONDS = (2, 3)
DEFAULT_SHOT_SECONDS = 3
#: Reactions on a stitched sequence: sign it off, or reject it.
SEQUENCE_REACTIONS = [Reaction.APPROVE.value, Reaction.DISCARD.value]


class Sequences(UseCases):
    """Shots from a storyboard, stitched; reshoots and new orders."""

    async def shots(
        self, origin: Origin, grid_id: str, inv: Invocation | None = None, once: bool = False
    ) -> AsyncIterator[Reply]:
        """``/tierbot shots <grid-id> [--seconds 2..3] [--finals] [--motion subtle|dynamic]``
        and 🎬 on a storyboard grid. ``once`` (the reaction): a grid is shot once however many
        people press 🎬; the command asks for another sequence on purpose."""
        grid = self._asset(grid_id, AssetKind.GRID, "a storyboard grid")
        request = self.store.get_request(grid["request_id"])
        assert request is not None
        spec = Draftspec(**request["options"])
        if not spec.beats:
            raise UserError(
                f"grid {grid_id} is not a storyboard: 🎬 and /tierbot shots make a sequence of "
                "a storyboard's beats. For one draft, react with its number, then 🎬 on the final."
            )
        seconds = inv.seconds if inv and inv.seconds else DEFAULT_SHOT_SECONDS
        if seconds not in SHOT_SECONDS:
            raise UserError(
                f"shots are {SHOT_SECONDS[0]} to {SHOT_SECONDS[1]} seconds (complex motion over "
                f"longer shots goes wrong); got {seconds}. Nothing was spent."
            )
        motion = (inv.motion if inv else None) or "subtle"
        finals = bool(inv and inv.finals)
        model = inv.model if inv else None
        drafts = self.store.parents(grid_id)
        beats = spec.beats[: len(drafts)]
        refs = spec.references
        video = self._route(
            origin, Stage.VIDEO, beats[0], model=model, seconds=seconds, references=refs
        )
        final = (
            self._route(origin, Stage.FINAL, beats[0], hero=spec.hero, references=refs)
            if finals
            else None
        )
        each = video.price + (final.price if final else 0)
        total = each * len(beats)
        action = f"shooting {len(beats)} shots of {seconds} s ({credits(total)})"
        self._authorize(origin, video, action)
        if once and not self.store.record_gate(
            grid_id, Decision.SHOT, user=origin.user, surface=origin.surface
        ):
            raise UserError(
                f"grid {grid_id} is already being shot as a sequence; /tierbot shots "
                f"{grid_id} makes another on purpose. Nothing was spent."
            )
        new_request = self.store.create_request(
            origin=origin.model_dump(),
            command="shots",
            prompt=" | ".join(beats),
            options={**spec.as_dict(), "seconds": seconds, "motion": motion, "finals": finals},
        )
        sequence_id = self.store.create_sequence(
            request_id=new_request,
            grid_id=grid_id,
            beats=beats,
            sources=[d["id"] for d in drafts[: len(beats)]],
            spec={"seconds": seconds, "motion": motion, "finals": finals, "seed": spec.seed},
        )
        yield Reply(
            text=f"⏳ Shooting sequence {sequence_id}: {len(beats)} shots of {seconds} s "
            f"({motion} motion{', finals first' if finals else ''}) · {video.reason} · "
            f"{credits(total)} reserved for the whole sequence",
            thread_of=grid_id,
            status=True,
            request_id=new_request,
            reactions=[Reaction.DISCARD.value],
        )
        sources = [d["id"] for d in drafts[: len(beats)]]
        final_plans = (
            [
                self._plan(
                    origin,
                    new_request,
                    final,
                    Stage.FINAL,
                    Capability.IMAGE_TO_IMAGE,
                    prompt=self._enrich(beat, spec.style),
                    n=1,
                    seed=draft["seed"] or spec.seed,
                    aspect_ratio=spec.ar,
                    inputs=[draft["id"]],
                    refs=refs,
                    own_images=1,
                )
                for beat, draft in zip(beats, drafts, strict=False)
            ]
            if final
            else []
        )
        video_plans = [
            self._plan(
                origin,
                new_request,
                video,
                Stage.VIDEO,
                Capability.IMAGE_TO_VIDEO,
                prompt=self.motion_prompt(beat, motion),
                subject=beat,
                n=1,
                seed=spec.seed,
                aspect_ratio=spec.ar,
                inputs=[source],
                refs=refs,
                own_images=1,
                duration_s=seconds,
            )
            for beat, source in zip(beats, sources, strict=True)
        ]
        # The whole sequence is reserved before anything starts: a sequence the budget
        # cannot pay for is refused whole, never left half-shot.
        try:
            job_ids = self.runner.reserve_all([*final_plans, *video_plans])
        except JobFailed:
            if once:  # nothing was shot: 🎬 may be pressed again
                self.store.remove_gate(grid_id, Decision.SHOT)
            raise
        final_ids, video_ids = job_ids[: len(final_plans)], job_ids[len(final_plans) :]
        failures: dict[int, str] = {}
        if final_ids:
            made = await asyncio.gather(
                *(self.runner.drive(j) for j in final_ids), return_exceptions=True
            )
            for index, outcome in enumerate(made):
                if isinstance(outcome, CompletedJob):
                    # The shot starts from the final now; its references stay after it.
                    video = self.store.get_job(video_ids[index])
                    assert video is not None
                    sources[index] = outcome.asset_ids[0]
                    self.store.update_job(
                        video_ids[index], inputs=[sources[index], *video["inputs"][1:]]
                    )
                elif isinstance(outcome, JobFailed):
                    failures[index] = f"its final failed: {outcome.message}"
                    await self.runner.cancel(video_ids[index])
                else:
                    raise outcome
            self.store.update_sequence(sequence_id, sources=sources)
        shots = await asyncio.gather(
            *(self.runner.drive(j) for i, j in enumerate(video_ids) if i not in failures),
            return_exceptions=True,
        )
        running = [i for i in range(len(video_ids)) if i not in failures]
        made_shots: list[str | None] = [None] * len(beats)
        for index, outcome in zip(running, shots, strict=True):
            if isinstance(outcome, CompletedJob):
                made_shots[index] = outcome.asset_ids[0]
            elif isinstance(outcome, JobFailed):
                failures[index] = outcome.message
            else:
                raise outcome
        self.store.update_sequence(
            sequence_id, shots=made_shots, failures={str(k): v for k, v in failures.items()}
        )
        yield await self._stitched(sequence_id, "", job_ids=job_ids)

    async def reshoot(
        self, origin: Origin, sequence_id: str, index: int, motion_text: str | None = None
    ) -> AsyncIterator[Reply]:
        """``/tierbot reshoot <sequence-id> <k> [motion text]``: shot k rendered again (a new
        seed, or new motion words), the sequence stitched again with it."""
        sequence = self._sequence(sequence_id)
        beats: list[str] = sequence["beats"]
        if not 1 <= index <= len(beats):
            raise UserError(f"sequence {sequence_id} has shots 1 to {len(beats)}; got {index}")
        spec = sequence["spec"]
        request = self.store.get_request(sequence["request_id"])
        assert request is not None
        draftspec = Draftspec(**{k: v for k, v in request["options"].items() if k in _SPEC})
        beat = motion_text or beats[index - 1]
        route = self._route(
            origin,
            Stage.VIDEO,
            beat,
            seconds=spec["seconds"],
            references=draftspec.references,
        )
        self._authorize(origin, route, f"reshooting shot {index} of sequence {sequence_id}")
        yield self._status(
            f"Reshooting shot {index} of sequence {sequence_id}",
            route,
            thread_of=sequence["asset_id"] or sequence["grid_id"],
            request_id=sequence["request_id"],
        )
        retakes = sum(1 for _ in self.store.jobs_for_request(sequence["request_id"]))
        plan = self._plan(
            origin,
            sequence["request_id"],
            route,
            Stage.VIDEO,
            Capability.IMAGE_TO_VIDEO,
            prompt=self.motion_prompt(beat, spec["motion"]),
            subject=beat,
            n=1,
            seed=spec["seed"] + 7919 * retakes,  # a new take, not the same one again
            aspect_ratio=draftspec.ar,
            inputs=[sequence["sources"][index - 1]],
            refs=draftspec.references,
            own_images=1,
            duration_s=spec["seconds"],
        )
        (job,), job_ids = await self._run_all([plan])
        shots = list(sequence["shots"])
        shots[index - 1] = job.asset_ids[0]
        failures = {k: v for k, v in sequence["failures"].items() if k != str(index - 1)}
        self.store.update_sequence(sequence_id, shots=shots, failures=failures)
        yield await self._stitched(sequence_id, f"shot {index} reshot · ", job_ids=job_ids)

    async def order(self, origin: Origin, sequence_id: str, order: str) -> AsyncIterator[Reply]:
        """``/tierbot order <sequence-id> 3,1,2``: the same shots stitched in a new order
        (free: nothing is rendered)."""
        sequence = self._sequence(sequence_id)
        count = len(sequence["beats"])
        try:
            numbers = [int(part) for part in order.replace(" ", "").split(",") if part]
        except ValueError:
            numbers = []
        if sorted(numbers) != list(range(1, count + 1)):
            raise UserError(
                f"give every shot of sequence {sequence_id} once, in the new order: a "
                f"permutation of 1 to {count}, e.g. {','.join(str(n) for n in range(count, 0, -1))}"
            )
        self.store.update_sequence(sequence_id, order=[n - 1 for n in numbers])
        what = f"new order {','.join(map(str, numbers))} · free · "
        yield await self._stitched(sequence_id, what)

    async def sequence_after_restart(
        self, request: dict[str, Any], batch: list[CompletedJob | JobFailed]
    ) -> AsyncIterator[Reply]:
        """A sequence a previous process was shooting: its shots that finished since (each
        charged once: their jobs were reserved once), then the stitch; a shot that failed is
        named, the others kept."""
        sequence = self.store.sequence_for_request(request["id"])
        if sequence is None:
            return
        drafts = [d["id"] for d in self.store.parents(sequence["grid_id"])]
        sources, shots = list(sequence["sources"]), list(sequence["shots"])
        failures = dict(sequence["failures"])

        def beat_of(asset_id: str) -> int | None:
            for known in (sources, drafts):
                if asset_id in known:
                    return known.index(asset_id)
            return None

        for outcome in batch:
            job = self.store.get_job(outcome.job_id) if outcome.job_id else None
            index = beat_of(job["inputs"][0]) if job and job["inputs"] else None
            if job is None or index is None or index >= len(shots):
                continue
            if isinstance(outcome, JobFailed):
                failures[str(index)] = outcome.message
            elif job["stage"] == Stage.FINAL:
                sources[index] = outcome.asset_ids[0]
            elif job["stage"] == Stage.VIDEO:
                shots[index] = outcome.asset_ids[0]
                failures.pop(str(index), None)
        self.store.update_sequence(sequence["id"], sources=sources, shots=shots, failures=failures)
        job_ids = [o.job_id for o in batch if o.job_id]
        yield await self._stitched(sequence["id"], "after a restart · ", job_ids=job_ids)

    def _sequence(self, sequence_id: str) -> dict[str, Any]:
        sequence = self.store.get_sequence(sequence_id)
        if sequence is None:
            raise UserError(f"no sequence {sequence_id}; check the id on its message")
        return sequence

    async def _stitched(self, sequence_id: str, what: str, job_ids: Sequence[str] = ()) -> Reply:
        """Stitch the sequence's shots in its order into a new sequence asset and present it."""
        sequence = self._sequence(sequence_id)
        beats: list[str] = sequence["beats"]
        shots: list[str | None] = sequence["shots"]
        failures: dict[str, str] = sequence["failures"]
        order: list[int] = sequence["order"] or list(range(len(beats)))
        present = [(k, shots[k]) for k in order if shots[k]]
        lines = [
            f"shot {k + 1}: {shots[k]} “{beats[k]}”"
            if shots[k]
            else f"shot {k + 1} failed: {failures.get(str(k), 'not made')} — "
            f"/tierbot reshoot {sequence_id} {k + 1}"
            for k in order
        ]
        if not present:
            return Reply(
                text=f"⚠️ Sequence {sequence_id}: no shot was made. Nothing was charged.\n"
                + "\n".join(lines),
                thread_of=sequence["grid_id"],
                error=True,
                job_ids=list(job_ids),
            )
        rows = [self.store.get_asset(shot) for _, shot in present]
        paths = await self.files.paths([row["path"] for row in rows if row])
        data = await cpu.run(footage.stitch, paths, 0.0)
        digest, relative = await asyncio.to_thread(self.files.put, data, "video/mp4")
        width, height, seconds = await cpu.run(footage.probe, self.files.path(relative))
        asset_id = self.store.save_asset(
            {
                "request_id": sequence["request_id"],
                "kind": AssetKind.VIDEO.value,
                "stage": SEQUENCE_STAGE,
                "sha256": digest,
                "path": relative,
                "mime": "video/mp4",
                "width": width,
                "height": height,
                "duration_s": seconds,
                "bytes": len(data),
                "prompt": " | ".join(beats[k] for k, _ in present),
                "model_id": "stitch",
                "cost": 0,
                "facts": None,
            },
            parents=[shot for _, shot in present if shot],
        )
        self.store.add_facts(asset_id, sequence=sequence_id)
        self.store.update_sequence(sequence_id, asset_id=asset_id)
        cost = sum(row["cost"] or 0 for row in rows if row)
        missing = len(beats) - len(present)
        status = f"{len(present)} of {len(beats)} shots" if missing else f"{len(beats)} shots"
        return Reply(
            text=f"🎞️ Sequence {sequence_id} · {what}{status} · {seconds:.1f} s · "
            f"shots {credits(cost)} in all\n"
            + "\n".join(lines)
            + f"\nReact ✅ to sign it off. /tierbot reshoot {sequence_id} <k> redoes one shot; "
            f"/tierbot order {sequence_id} 3,1,2 re-stitches (free).",
            files=[self.files.path(relative), *paths],
            reactions=SEQUENCE_REACTIONS,
            asset_id=asset_id,
            thread_of=sequence["grid_id"],
            job_ids=list(job_ids),
        )


#: The fields of a draft request's options that make its Draftspec.
_SPEC = set(Draftspec.__dataclass_fields__)
