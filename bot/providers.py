"""The provider port: what the core asks of a model provider, and the errors it understands.

A provider adapter (``adapters/providers/<name>.py``) translates a :class:`GenerationRequest`
into one provider's HTTP API and back. The protocol is split into ``submit`` and ``result``
so the job runner can store the provider's request id the moment it is known: after a
restart it calls ``result`` again with that id instead of paying for a second generation.

Errors are classified by the adapter, not by the runner: :class:`TransientError` is retried
and then falls back to the next candidate, :class:`PermanentError` fails the job at once
with the provider's reason, :class:`ContentPolicyError` is shown to the person as a policy
refusal and never silently retried elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from bot.domain import Capability, Stage

log = logging.getLogger(__name__)


class GenerationRequest(BaseModel):
    """One call to one model, as the core describes it (never a wire format)."""

    job_id: str
    stage: Stage
    capability: Capability
    model_id: str  # catalog id, e.g. "nano-banana"
    provider_model: str  # the provider's own model name
    prompt: str
    #: The prompt as people gave it, kept on the result: ``prompt`` may add words about the
    #: reference images (which image to keep, which to take the style from). None: ``prompt``.
    subject: str | None = None
    negative_prompt: str | None = None
    n: int = 1
    seed: int = 0
    aspect_ratio: str = "1:1"
    #: Wanted size of the long edge in pixels (upscale target, final resolution), if any.
    long_edge: int | None = None
    #: Video length in seconds (video stage only).
    duration_s: int | None = None
    #: Output resolution ("1k", "2k", "4k") for a model that offers several; the router has
    #: checked it is one the model offers. None for a model of one size.
    resolution: str | None = None
    #: Sound on a video, for a model that can make it: always sent explicitly (it is priced).
    audio: bool | None = None
    #: Whether the model takes a seed (a catalog fact; some APIs reject the field).
    seed_accepted: bool = True
    #: Input images: the draft for a final, the source for an upscale, edit or video, then
    #: the images people gave as references (``--ref``), then the style references.
    references: list[Path] = Field(default_factory=list)
    #: How many of the last ``references`` are style references (``--sref``): their look is
    #: to be followed, not their content (the prompt says so too).
    style_references: int = 0
    #: A region edit's mask: a greyscale PNG the size of ``references[0]``, white where the
    #: image may change, black where it must not. A model with native inpainting
    #: (capability ``inpaint``) gets it; an instruction-only editor gets the region in words.
    #: Either way the core keeps every pixel outside it (``bot.canvas.composite``).
    mask: Path | None = None
    #: The box around ``mask`` (``x,y,w,h`` in percent, ``bot.regions``): an editor without
    #: inpainting is told it in words.
    region: str | None = None
    #: How much an image-to-image pass may change, 0 to 1 (🪄's soft pass: 0.2); None: the
    #: model's own. Sent where a model takes it; the prompt says so for the others.
    strength: float | None = Field(default=None, ge=0, le=1)

    @property
    def has_source(self) -> bool:
        """Whether ``references[0]`` is the stage's own image (a final's draft; an edit's,
        upscale's or video's source), whose shape the output keeps. A draft's references are
        only references: the draft takes the ratio asked for."""
        return bool(self.references) and self.stage is not Stage.DRAFT


class GeneratedFile(BaseModel):
    """One output of a generation, held in memory until the asset store writes it."""

    data: bytes
    mime: str
    width: int
    height: int
    duration_s: float | None = None
    seed: int | None = None


class ProviderError(Exception):
    """Base of every error a provider adapter raises.

    ``message`` is safe to show to people: it never contains a key or token.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(ProviderError):
    """Timeouts, rate limits and server errors: retry with backoff, then fall back."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """Bad requests, bad auth, missing models: fail at once with the provider's reason."""


class ContentPolicyError(PermanentError):
    """The provider refused the content. Shown to a person; never retried on another model."""


class ProviderUnavailable(Exception):
    """The provider cannot serve at all here (not configured); the reason is shown as is."""


@dataclass(frozen=True)
class ProviderCheck:
    """What a provider's API said of our key and of the catalog's model ids (a live check:
    ``tierbot doctor``, and ``tierbot run`` at start).

    Attributes:
        key_problem: None when the key works, else what is wrong (never the key itself).
        exists: per model id: True (the provider knows it), False (it says there is no such
            model), None (its API cannot tell without spending).
        notes: per model id, what the provider said (a deprecation, a 404's message).
    """

    key_problem: str | None = None
    exists: dict[str, bool | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """A model provider. Implementations live in ``adapters/providers/``."""

    name: str

    async def submit(self, request: GenerationRequest) -> str:
        """Start a generation and return the provider's request id at once."""
        ...

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        """Wait for (poll) a submitted generation and return its files.

        Adapters retry their own polling hiccups. A :class:`TransientError` raised here means
        the generation itself failed and a new submission may succeed.
        """
        ...

    async def cancel(self, provider_request_id: str) -> None:
        """Ask the provider to stop a generation; best effort."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...

    async def check(self, models: Sequence[str]) -> ProviderCheck:
        """Ask the provider, spending nothing, whether the key works and whether each of
        ``models`` (its own ids) exists."""
        ...


class ProviderRegistry:
    """The providers that can serve here, and why the others cannot."""

    def __init__(self, providers: dict[str, Provider], unavailable: dict[str, str]) -> None:
        self._providers = providers
        self._unavailable = unavailable

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise ProviderUnavailable(self.why_unavailable(name) or "not configured") from None

    def why_unavailable(self, name: str) -> str | None:
        """None when ``name`` can serve, else the reason people are shown."""
        if name in self._providers:
            return None
        return self._unavailable.get(name, "not configured")

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
