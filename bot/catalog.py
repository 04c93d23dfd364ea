"""The model catalog: data, not code.

The shipped ``catalog.toml`` describes every model (provider, the provider's model name, the
stages it serves, capabilities, price, latency) plus style presets and per-provider
concurrency. A user file named by ``TIERBOT_CATALOG`` is merged over it table by table, so
swapping an engine is a catalog edit.
"""

from __future__ import annotations

import difflib
import logging
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from bot.domain import ASPECT_RATIOS, RESOLUTIONS, Capability, Stage

log = logging.getLogger(__name__)

#: Capabilities that take no input image.
TEXT_ONLY = frozenset({Capability.TEXT_TO_IMAGE, Capability.TEXT_TO_VIDEO})


class Serving(BaseModel):
    """One provider's deployment of a model, in the model's order of preference.

    The facts below, when set, override the model's for this provider only (Replicate's
    Seedream takes fewer aspect ratios than fal's; Veo always has sound on the Gemini API).
    """

    provider: str = Field(min_length=1)
    #: The provider's id for the model (an endpoint, model name, workflow file...).
    model: str = Field(min_length=1)
    #: Per-capability ids where the provider splits them (fal's ``.../edit`` endpoints).
    models: dict[Capability, str] = Field(default_factory=dict)
    #: Milli-credits per unit on this provider, when it differs from the model's price.
    price: int | None = Field(default=None, ge=0)
    #: Milli-credits per unit at each resolution, when they differ from ``price``.
    prices: dict[str, int] | None = None
    audio_price: int | None = Field(default=None, ge=0)
    aspect_ratios: list[str] | None = None
    resolutions: list[str] | None = None
    default_resolution: str | None = None
    seed: bool | None = None
    audio: bool | None = None
    max_references: int | None = Field(default=None, ge=0)
    style_reference: bool | None = None
    #: Why this deployment no longer serves (a retired id): it is shown, never called.
    retired: str | None = None

    def model_for(self, capability: Capability) -> str:
        return self.models.get(capability, self.model)


class ModelSpec(BaseModel):
    """One model as the catalog describes it.

    ``providers`` lists who serves it, preferred first. The short form ``provider = ...`` with
    ``provider_model = ...`` declares a single provider.
    """

    id: str
    providers: list[Serving] = Field(min_length=1)
    stages: list[Stage]
    capabilities: set[Capability]
    aspect_ratios: list[str] = Field(default_factory=lambda: list(ASPECT_RATIOS))
    max_images: int = Field(default=4, ge=1)
    seed: bool = True
    #: How many input images one call takes in all (the draft or source image of a final,
    #: edit or video counts): 0 for a text-only model; None: 1 for a model that takes an
    #: image (image-to-image, inpaint, upscale, image-to-video), else 0.
    max_references: int | None = Field(default=None, ge=0)
    #: Whether an image can be given as a style to follow (palette, light, texture) rather
    #: than content: instruction-following image models can be told so.
    style_reference: bool = False
    negative_prompt: bool = True
    multi_subject: bool = True
    price: int = Field(ge=0, description="milli-credits per unit")
    #: Milli-credits per unit at each resolution where the price depends on it.
    prices: dict[str, int] = Field(default_factory=dict)
    #: "image" (per output), "second" (of video) or "megapixel" (of output, per image).
    unit: Literal["image", "second", "megapixel"] = "image"
    #: The output area a "megapixel" model is asked for (its price follows from it).
    pixels: int = Field(default=1024 * 1024, ge=1)
    #: The resolutions a model offers (``RESOLUTIONS``); empty when it has one size only.
    resolutions: list[str] = Field(default_factory=list)
    #: What is asked for when the request names none (finals at 2K where offered).
    default_resolution: str | None = None
    #: Whether a video has sound: None for a model that makes none; otherwise what is sent
    #: (explicitly, never the provider's default, since sound is priced).
    audio: bool | None = None
    #: Milli-credits per second with sound, where it costs more.
    audio_price: int | None = Field(default=None, ge=0)
    latency_s: float = Field(default=10.0, ge=0)
    quality: int = Field(default=5, ge=1, le=10)
    rank: int = 50
    max_seconds: int | None = None
    #: The only video lengths a model accepts (Veo: 4, 6 or 8 s), if it is that strict.
    durations: list[int] | None = None
    enabled: bool = True
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "provider" in data:
            data = dict(data)
            serving = {"provider": data.pop("provider"), "model": data.pop("provider_model", "")}
            data["providers"] = [serving, *data.get("providers", [])]
        return data

    @model_validator(mode="after")
    def _known_resolutions(self) -> ModelSpec:
        for fact in (self, *self.providers):
            named = {*(fact.resolutions or []), *(fact.prices or {}), fact.default_resolution}
            unknown = sorted(named - {None, *RESOLUTIONS})
            if unknown:
                raise ValueError(f"unknown resolution {unknown[0]} (use {', '.join(RESOLUTIONS)})")
        return self


@dataclass(frozen=True)
class Candidate:
    """A model on one of its providers: what the router ranks and the runner calls."""

    model: ModelSpec
    serving: Serving

    @property
    def key(self) -> str:
        """``model@provider``: how jobs, fallbacks, health and ``--model`` name it."""
        return f"{self.model.id}@{self.serving.provider}"

    @property
    def label(self) -> str:
        """What people read: the model id, with the provider when there is a choice."""
        return self.key if len(self.model.providers) > 1 else self.model.id

    @property
    def provider(self) -> str:
        return self.serving.provider

    # The facts of this deployment: the serving's where it states them, else the model's.

    @property
    def aspect_ratios(self) -> list[str]:
        return self.serving.aspect_ratios or self.model.aspect_ratios

    @property
    def resolutions(self) -> list[str]:
        return (
            self.serving.resolutions
            if self.serving.resolutions is not None
            else self.model.resolutions
        )

    @property
    def seed(self) -> bool:
        return self.model.seed if self.serving.seed is None else self.serving.seed

    @property
    def audio(self) -> bool | None:
        return self.model.audio if self.serving.audio is None else self.serving.audio

    @property
    def max_references(self) -> int:
        """Input images one call takes, the stage's own source image included."""
        if self.serving.max_references is not None:
            return self.serving.max_references
        if self.model.max_references is not None:
            return self.model.max_references
        return 0 if self.model.capabilities <= TEXT_ONLY else 1

    @property
    def style_reference(self) -> bool:
        if self.serving.style_reference is not None:
            return self.serving.style_reference
        return self.model.style_reference

    def resolution_for(self, asked: str | None) -> str | None:
        """The resolution sent for ``asked`` (None: the default): asked where offered, else
        the default (2K for finals where offered); None for a model of one size or one
        without a declared default (it renders its own size)."""
        offered = self.resolutions
        if not offered:
            return None
        if asked in offered:
            return asked
        default = self.serving.default_resolution or self.model.default_resolution
        return default if default in offered else None  # None: the provider's own size

    def unit_price(self, resolution: str | None = None) -> int:
        """Milli-credits per unit (image, second or megapixel) at ``resolution`` (None: the
        default): the provider's price where it states one, at that resolution where it
        differs, with sound where this deployment makes it and sound costs more."""
        model, serving = self.model, self.serving
        if model.unit == "second" and self.audio:
            audio = serving.audio_price if serving.audio_price is not None else model.audio_price
            if audio is not None:
                return audio
        prices = {**model.prices, **(serving.prices or {})}
        resolution = self.resolution_for(resolution)
        if resolution in prices:
            return prices[resolution]
        return serving.price if serving.price is not None else model.price

    def cost(
        self, *, images: int = 1, seconds: int | None = None, resolution: str | None = None
    ) -> int:
        """Milli-credits for one call making ``images`` images, or ``seconds`` of video, at
        ``resolution`` (None: the default). The price shown before a step is this, and so is
        what is charged."""
        price = self.unit_price(resolution)
        if self.model.unit == "second":
            return price * (seconds or 0)
        if self.model.unit == "megapixel":
            return -(-price * self.model.pixels * images // 1_000_000)  # rounded up
        return price * images

    @property
    def retired(self) -> str | None:
        return self.serving.retired


class StylePreset(BaseModel):
    name: str
    description: str = ""
    adds: str


class ProviderConfig(BaseModel):
    concurrency: int = Field(default=4, ge=1)


class CatalogError(Exception):
    """The catalog file is malformed; the message names the entry and the field."""


class Catalog(BaseModel):
    models: dict[str, ModelSpec]
    styles: dict[str, StylePreset]
    providers: dict[str, ProviderConfig]
    #: Camera and subject motion presets of videos (``--motion``): the words a shot adds.
    motions: dict[str, StylePreset] = Field(default_factory=dict)

    def get(self, model_id: str) -> ModelSpec | None:
        return self.models.get(model_id)

    def for_stage(self, stage: Stage) -> list[ModelSpec]:
        return [m for m in self.models.values() if stage in m.stages]

    def provider_names(self) -> set[str]:
        return {s.provider for m in self.models.values() for s in m.providers}

    def candidate(self, key: str) -> Candidate | None:
        """The candidate named ``model@provider`` (or a bare model id: its first provider)."""
        model_id, _, provider = key.partition("@")
        model = self.models.get(model_id)
        if model is None:
            return None
        for serving in model.providers:
            if not provider or serving.provider == provider:
                return Candidate(model, serving)
        return None

    def concurrency(self, provider: str) -> int:
        return self.providers.get(provider, ProviderConfig()).concurrency

    @model_validator(mode="after")
    def _drop_disabled(self) -> Catalog:
        self.models = {k: v for k, v in self.models.items() if v.enabled}
        return self


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest known name to ``word``, for "did you mean" hints."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        text = resources.files("bot").joinpath("catalog.toml").read_text(encoding="utf-8")
        source = "shipped catalog.toml"
    else:
        text = path.read_text(encoding="utf-8")
        source = str(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def load_catalog(override: Path | None = None) -> Catalog:
    """Load the shipped catalog, merged with ``override`` when given.

    Raises:
        CatalogError: naming the file, the entry and the field that is wrong.
    """
    raw = _read_toml(None)
    if override is not None:
        raw = _merge(raw, _read_toml(override))
    models = {k: {"id": k, **v} for k, v in raw.get("models", {}).items()}
    styles = {k: {"name": k, **v} for k, v in raw.get("styles", {}).items()}
    motions = {k: {"name": k, **v} for k, v in raw.get("motion", {}).items()}
    try:
        return Catalog(
            models=models, styles=styles, providers=raw.get("providers", {}), motions=motions
        )
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False)
        ]
        raise CatalogError("invalid catalog:\n  " + "\n  ".join(problems)) from None
