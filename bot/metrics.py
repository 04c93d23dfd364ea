"""What an operator watches, in Prometheus' text format (``prometheus_client``), and whether
the process is ready.

Counters and histograms that happen in this process (command acknowledgement latency per
surface, provider errors by provider and class) are updated where they happen. What lives in
the store (jobs by state and stage, credits spent by stage and team, the depth of the job
queue, the inbox and the outbox) is read at each scrape by :class:`StoreCollector`, so every
process reports the same numbers and a restart loses none. Each process has its own
:class:`Ops`: its registry and its readiness.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterator

    from storage import Store

log = logging.getLogger(__name__)

#: The content type of :meth:`Ops.metrics`.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Slack wants an acknowledgement within 3 s; the buckets resolve the range that matters.
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StoreCollector:
    """Gauges read from the store at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily(
            "tierbot_jobs", "Jobs by state and stage", labels=["state", "stage"]
        )
        for state, stage, count in self.store.job_counts():
            jobs.add_metric([state, stage], count)
        yield jobs
        spent = CounterMetricFamily(
            "tierbot_credits_spent",
            "Credits charged (settled), by stage and team",
            labels=["stage", "team"],
        )
        for stage, team, amount in self.store.settled_spend():
            spent.add_metric([stage, team], amount / 1000)
        yield spent
        depth = GaugeMetricFamily(
            "tierbot_queue_depth",
            "Work waiting: unfinished jobs, commands and reactions not acted on, replies not "
            "posted",
            labels=["queue"],
        )
        for queue, count in self.store.queue_depths().items():
            depth.add_metric([queue], count)
        yield depth
        alive = GaugeMetricFamily(
            "tierbot_processes",
            "Processes beating on the database, by role (run, worker): jobs queued for workers "
            "wait while there are none",
            labels=["role"],
        )
        for role, count in self.store.live_processes().items():
            alive.add_metric([role], count)
        yield alive


class Ops:
    """One process's metrics registry and readiness.

    Readiness is ready only when the store answers and every part the process runs reported
    itself up (the job queue's recovery loop, each configured chat surface); a part that
    stops reporting up (a surface that lost its connection) makes it unready again.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))  # type: ignore[arg-type]
        self.ack_seconds = Histogram(
            "tierbot_command_ack_seconds",
            "Seconds from a command's arrival to its acknowledgement, by surface",
            ["surface"],
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.provider_errors = Counter(
            "tierbot_provider_errors",
            "Provider errors by provider and class (transient, permanent, policy)",
            ["provider", "kind"],
            registry=self.registry,
        )
        self._parts: dict[str, bool] = {}

    def expect(self, part: str) -> None:
        """``part`` must be up before the process is ready."""
        self._parts.setdefault(part, False)

    def up(self, part: str, ready: bool = True) -> None:
        """``part`` is up (or, with ``ready=False``, down again)."""
        self._parts[part] = ready

    def health(self) -> tuple[bool, dict[str, str]]:
        """Whether the process is ready, and each part's state."""
        checks: dict[str, str] = {}
        try:
            checks["store"] = "up" if self.store.answers() else "down"
        except Exception as exc:  # any failure of the store is "not ready", said plainly
            checks["store"] = f"down: {type(exc).__name__}"
        for part, ready in sorted(self._parts.items()):
            checks[part] = "up" if ready else "starting"
        ready = bool(self._parts) and all(state == "up" for state in checks.values())
        return ready, checks

    def metrics(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
