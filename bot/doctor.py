"""The live check: does each configured provider take our key, and does each catalog model it
should serve exist there? (``tierbot doctor``; ``tierbot run`` runs it at start in the
background and takes a model the provider says does not exist out of routing.)

Nothing here runs at import time, and nothing spends: each adapter asks its provider's
metadata endpoints (``Provider.check``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bot.catalog import Candidate, Catalog
from bot.providers import ProviderCheck, ProviderRegistry, ProviderUnavailable
from bot.router import Router

log = logging.getLogger(__name__)

#: How long one provider's check may take before it is reported as unanswered.
CHECK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Finding:
    """One line of the check: a model on one provider (or a provider as a whole)."""

    subject: str  # ``model@provider`` or the provider's name
    ok: bool | None  # True fine, False something to change, None not checkable here
    text: str
    #: For a model the provider says does not exist: the reason it leaves routing.
    missing: str | None = None

    def line(self) -> str:
        mark = {True: "ok  ", False: "FIX ", None: "--  "}[self.ok]
        return f"{mark}{self.subject}: {self.text}"


async def live_check(catalog: Catalog, providers: ProviderRegistry) -> list[Finding]:
    """Ask every provider the catalog names; one finding per model deployment."""
    deployments: dict[str, list[Candidate]] = {}
    for model in catalog.models.values():
        for serving in model.providers:
            deployments.setdefault(serving.provider, []).append(Candidate(model, serving))
    findings: list[Finding] = []
    checks = await asyncio.gather(
        *(_ask(providers, name, candidates) for name, candidates in deployments.items())
    )
    for (name, candidates), (problem, check) in zip(deployments.items(), checks, strict=True):
        if problem is not None:
            findings.append(
                Finding(name, None if problem.startswith("not configured") else False, problem)
            )
            continue
        assert check is not None
        if check.key_problem:
            findings.append(Finding(name, False, f"{check.key_problem}: check its key or URL"))
            continue
        findings.extend(_model_findings(candidates, check))
    return findings


async def _ask(
    providers: ProviderRegistry, name: str, candidates: list[Candidate]
) -> tuple[str | None, ProviderCheck | None]:
    """(a problem, None) or (None, what the provider said)."""
    try:
        provider = providers.get(name)
    except ProviderUnavailable as exc:
        return str(exc), None
    ids = [model_id for c in candidates if not c.retired for model_id in _ids(c)]
    try:
        return None, await asyncio.wait_for(provider.check(ids), CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:.0f} s", None
    except Exception as exc:  # a check must never stop the bot
        log.warning("live check of %s failed: %r", name, exc)
        return f"the check failed: {type(exc).__name__}", None


def _ids(candidate: Candidate) -> list[str]:
    """The provider's own ids a deployment calls: its model, and per-capability endpoints."""
    return list(dict.fromkeys([candidate.serving.model, *candidate.serving.models.values()]))


def _model_findings(candidates: list[Candidate], check: ProviderCheck) -> list[Finding]:
    findings = []
    for candidate in candidates:
        where = f"[[models.{candidate.model.id}.providers]] provider = {candidate.provider!r}"
        if candidate.retired:
            findings.append(
                Finding(candidate.key, None, f"retired, not called: {candidate.retired}")
            )
            continue
        ids = _ids(candidate)
        gone = [i for i in ids if check.exists.get(i) is False]
        unknown = [i for i in ids if check.exists.get(i) is None]
        if gone:
            said = "; ".join(check.notes.get(i, "") for i in gone if check.notes.get(i))
            reason = f"{', '.join(gone)} does not exist at {candidate.provider}" + (
                f" ({said})" if said else ""
            )
            findings.append(
                Finding(
                    candidate.key,
                    False,
                    f'{reason}: set its current id in {where}, or `retired = "why"`',
                    missing=reason,
                )
            )
        elif unknown:
            findings.append(
                Finding(candidate.key, None, f"{', '.join(unknown)}: the provider cannot tell")
            )
        else:
            findings.append(Finding(candidate.key, True, f"{', '.join(ids)} exists"))
    return findings


def take_out_missing(router: Router, findings: list[Finding]) -> list[str]:
    """Take every deployment the provider says does not exist out of routing (with that
    reason, shown by ``tierbot models``); returns their keys."""
    router.missing = {f.subject: f.missing for f in findings if f.missing}
    for key, reason in router.missing.items():
        log.warning("live check: %s leaves routing: %s", key, reason)
    return list(router.missing)
