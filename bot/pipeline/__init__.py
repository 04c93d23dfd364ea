"""The use cases of the stage-gate pipeline, one module per family.

- ``drafting``: ``/draft``, storyboards, scheduled batches, reroll, discard;
- ``escalating``: final, edit, upscale, video and re-render, one table driving one function;
- ``images_in``: named references and hand-fixed versions (images people send in);
- ``sequences``: storyboard beats animated as shots and stitched; reshoot, order;
- ``decisions``: QA sign-off and rejection;
- ``restart``: posting what jobs finished after a restart made;
- ``reports``: lineage, budget, models;
- ``base``: the steps they share (route, authorise, plan, run, present) and the hand-over of
  results (:func:`durable`).

Use cases are async generators of :class:`~bot.domain.Reply`: first a status line, then the
result, so a surface can show progress and a shell can print as it goes. A
:class:`~bot.errors.UserError` (or a router refusal) is raised before anything is spent.
"""

from __future__ import annotations

import logging

from bot.pipeline.base import (
    RESULT_LABELS,
    Draftspec,
    References,
    UseCases,
    durable,
    nearest_ratio,
    reactions_for,
)
from bot.pipeline.decisions import Decisions
from bot.pipeline.drafting import Drafting
from bot.pipeline.escalating import ESCALATIONS, Escalating, Escalation
from bot.pipeline.images_in import ImagesIn
from bot.pipeline.reports import LineageNode, Reports
from bot.pipeline.restart import Restart
from bot.pipeline.sequences import Sequences

log = logging.getLogger(__name__)

__all__ = [
    "ESCALATIONS",
    "RESULT_LABELS",
    "Draftspec",
    "Escalation",
    "LineageNode",
    "Pipeline",
    "References",
    "UseCases",
    "durable",
    "nearest_ratio",
    "reactions_for",
]


class Pipeline(Drafting, Escalating, ImagesIn, Sequences, Decisions, Restart, Reports):
    """Every use case, over the router, the runner, the ledger and the store."""
