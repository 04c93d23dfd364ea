"""A fake Gemini API served by aiohttp on 127.0.0.1, for offline tests of the gemini adapter.

It follows the wire format of /work/shared/specs/providers.md, section 2, and its fake-server
checklist (2.7):

* ``POST /v1beta/models/{model}:generateContent`` answers 200 with the image inline as base64
  (a real PNG, or JPEG, made with Pillow), or a scripted outcome: a safety refusal as Google
  sends it (HTTP 200 with ``finishReason`` ``IMAGE_SAFETY`` and kin, or
  ``promptFeedback.blockReason``), ``NO_IMAGE``, a text-only answer, a malformed answer, data
  that is not an image. Request bodies are validated like the API does (aspect ratio, image
  size, int32 seed, inline data), and a bad one gets 400 ``INVALID_ARGUMENT``.
* ``POST /v1beta/models/{model}:predictLongRunning`` starts a Veo operation
  (``{"name": "models/{model}/operations/{id}"}``); ``GET /v1beta/{name}`` answers without
  ``done`` for ``polls_before_done`` polls (or for as long as the fake is held), then with
  ``done: true`` and the video's ``uri`` on ``GET /v1beta/files/{id}:download?alt=media`` (a
  real MP4 made by imageio-ffmpeg); ``POST /v1beta/{name}:cancel`` cancels it
  (google.longrunning: the operation ends with error code 1, CANCELLED). Veo refuses ``seed``
  like the Gemini API does. Scripted outcomes: responsible-AI filtering
  (``raiMediaFilteredReasons``), an operation error, inline ``encodedVideo``, a malformed
  answer, a download that is not a video or is huge, a download redirected to a storage host.
* Auth: ``x-goog-api-key`` (or ``?key=``) must be the fake's key: a wrong key gets Google's
  400 ``API_KEY_INVALID`` body (spec 2.4), a missing one 403 ``PERMISSION_DENIED``.
* :meth:`FakeGemini.fail_next` makes the next matching requests fail with an HTTP error and a
  google.rpc.Status body (429 with ``Retry-After`` and ``RetryInfo``, 500, 503...).
* :meth:`FakeGemini.hold` keeps every operation running and every generateContent call
  waiting until :meth:`FakeGemini.release`, to test restarts and cancellation mid-job.

Every request is recorded in :attr:`FakeGemini.requests` (method, path, query, headers, JSON
body) so tests can assert what the adapter sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import itertools
import json
import logging
import random
import secrets
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from aiohttp import web
from PIL import Image

log = logging.getLogger(__name__)

API = "/v1beta"
IMAGE_ASPECT_RATIOS = frozenset(
    ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
)
IMAGE_SIZES = {"1K", "2K", "4K"}
#: Veo parameters the Gemini API takes (spec 2.5 field map).
VIDEO_PARAMETERS = frozenset(
    (
        "aspectRatio",
        "durationSeconds",
        "resolution",
        "negativePrompt",
        "personGeneration",
        "sampleCount",
        "enhancePrompt",
    )
)
#: Parameters the Gemini API refuses for Veo (spec 2.5: the SDK raises before sending).
VIDEO_REFUSED = {"seed", "generateAudio", "fps", "storageUri", "pubsubTopic", "mask"}
VEO3_DURATIONS = {4, 6, 8}  # Veo 3.x lengths per Google's video docs [GUESS: not in the spec]
#: Long edge of the images the fake makes; noisy pixels keep a PNG well above 2 kB.
IMAGE_LONG_EDGE = 96

#: Where the middleware leaves a request's parsed JSON body for the handlers.
JSON_BODY = web.RequestKey("json_body", object)

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details. For "
    "more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
FILTERED_REASON = (
    "Your current safety settings for person generation or child generation blocked this video."
)
NO_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


@dataclass
class Recorded:
    """One request as the fake received it; ``body`` is the parsed JSON, if any."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None

    @property
    def action(self) -> str:
        """The custom method after the last ``:`` (``generateContent``, ``cancel``...)."""
        last = self.path.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else ""


@dataclass
class _Failure:
    status: int
    retry_after: float | None
    retry_delay: str | None
    message: str | None
    match: str | None


@dataclass
class _Operation:
    name: str
    model: str
    outcome: dict[str, Any]
    polls_left: int
    cancelled: bool = False
    polls: int = 0


@dataclass
class _File:
    data: bytes
    content_type: str
    declared_length: int | None = None


#: Ids Google shut down or retired (spec update 2026-12-06): the fake answers 404 for them.
RETIRED_MODELS = frozenset(
    {
        "gemini-3-pro-image-preview",
        "gemini-3.1-flash-image-preview",
        "veo-3.1-generate-preview",
        "veo-3.0-generate-001",
    }
)


class FakeGemini:
    """The Gemini API (generateContent, predictLongRunning, operations, files) in one process.

    Args:
        api_key: the only key accepted.
        polls_before_done: polls a Veo operation answers "running" before it is done.
        image_format: ``"PNG"`` or ``"JPEG"``: what generateContent returns (may be changed
            between calls).

    Attributes:
        base_url: ``http://127.0.0.1:<port>`` once started: the adapter's GEMINI_API_URL.
        requests: every request received, in order.
        operations: Veo operations by name.
        files: downloadable videos by file id.
    """

    def __init__(
        self,
        *,
        api_key: str = "fake-gemini-key-0123456789",
        polls_before_done: int = 2,
        image_format: str = "PNG",
    ) -> None:
        self.api_key = api_key
        self.polls_before_done = polls_before_done
        self.image_format = image_format
        #: Ids that answer 404 as shut-down models do (settable per test).
        self.retired: set[str] = set(RETIRED_MODELS)
        self.base_url = ""
        self.requests: list[Recorded] = []
        self.operations: dict[str, _Operation] = {}
        self.files: dict[str, _File] = {}
        self._failures: deque[_Failure] = deque()
        self._image_outcomes: deque[dict[str, Any]] = deque()
        self._video_outcomes: deque[dict[str, Any]] = deque()
        self._released = asyncio.Event()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and serve every route."""
        self._released.set()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 << 20)
        app.router.add_post(API + "/models/{target}", self._handle_model_call)
        app.router.add_get(API + "/models/{model}", self._handle_model_get)
        app.router.add_get(API + "/models/{model}/operations/{operation}", self._handle_poll)
        app.router.add_post(API + "/models/{model}/operations/{operation}", self._handle_cancel)
        app.router.add_get(API + "/files/{file}", self._handle_file)
        app.router.add_get("/storage/{file}", self._handle_storage)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        log.debug("fake gemini listening on %s", self.base_url)

    async def stop(self) -> None:
        """Release held calls and the port."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ scripting

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        retry_delay: str | None = None,
        message: str | None = None,
        match: str | None = None,
    ) -> None:
        """Make the next ``times`` authorised requests (whose path contains ``match``) fail.

        Args:
            status: the HTTP status (429, 500, 503, 400...).
            times: how many requests fail.
            retry_after: a ``Retry-After`` header, in seconds.
            retry_delay: a google.rpc.RetryInfo ``retryDelay`` in the body (``"7s"``).
            message: the error message (Google's usual one by default).
            match: only requests whose path contains this (``":generateContent"``,
                ``"/operations/"``, ``"/files/"``).
        """
        for _ in range(times):
            self._failures.append(_Failure(status, retry_after, retry_delay, message, match))

    def next_image(self, outcome: str, **details: Any) -> None:
        """Script the next generateContent answer (after validation and auth).

        Outcomes: ``ok``; ``refuse`` (candidate ``finishReason``, default ``IMAGE_SAFETY``;
        ``message`` for ``finishMessage``); ``block`` (``promptFeedback.blockReason``,
        default ``PROHIBITED_CONTENT``); ``no_image`` (``NO_IMAGE``); ``text_only``;
        ``malformed`` (no candidates at all); ``not_image`` (inline data that is HTML);
        ``bad_base64``; ``thought`` (a thought image first, then the real one).
        """
        self._image_outcomes.append({"outcome": outcome, **details})

    def next_video(self, outcome: str, **details: Any) -> None:
        """Script the next Veo operation's end.

        Outcomes: ``ok``; ``inline`` (``encodedVideo``); ``filtered`` (RAI, ``reasons``);
        ``error`` (``code``, default 13 INTERNAL, ``message``); ``malformed`` (a sample with
        neither URI nor bytes); ``not_video`` (the download is HTML); ``huge`` (the download
        declares ``size`` bytes); ``redirect`` (the download redirects to a storage path that
        needs no key).
        """
        self._video_outcomes.append({"outcome": outcome, **details})

    def hold(self) -> None:
        """Keep operations running and generateContent calls waiting until :meth:`release`."""
        self._released.clear()

    def release(self) -> None:
        """Let held operations finish (after their remaining polls) and held calls answer."""
        self._released.set()

    # ------------------------------------------------------------------ assertions

    def calls(self, action: str) -> list[Recorded]:
        """Requests to one custom method: ``generateContent``, ``predictLongRunning``,
        ``cancel``, ``download``."""
        return [r for r in self.requests if r.action == action]

    def polls(self) -> list[Recorded]:
        """Operation polls (``GET .../operations/{id}``)."""
        return [r for r in self.requests if r.method == "GET" and "/operations/" in r.path]

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = raw
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        if request.path.startswith(API):
            key = request.headers.get("x-goog-api-key") or request.query.get("key")
            if not key:
                return _status_error(403, NO_KEY_MESSAGE)
            if key != self.api_key:
                return _invalid_key()
            for failure in list(self._failures):
                if failure.match is None or failure.match in request.path:
                    self._failures.remove(failure)
                    return _scripted_error(failure)
        request[JSON_BODY] = body
        return await handler(request)

    def _new_id(self) -> str:
        return f"{next(self._ids):04d}{secrets.token_hex(4)}"

    # ------------------------------------------------------------------ generateContent

    def _serves(self, model: str) -> bool:
        """Image models and Veo, except the ids Google shut down (spec update 2026-12-06)."""
        return ("image" in model or model.startswith("veo-")) and model not in self.retired

    async def _handle_model_get(self, request: web.Request) -> web.StreamResponse:
        """``models.get``: the model's description, or 404 for an unknown or retired id."""
        model = request.match_info["model"]
        if not self._serves(model):
            return _not_found(model, "get")
        methods = ["predictLongRunning"] if model.startswith("veo-") else ["generateContent"]
        return web.json_response(
            {"name": f"models/{model}", "displayName": model, "supportedGenerationMethods": methods}
        )

    async def _handle_model_call(self, request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["target"].partition(":")
        body = request[JSON_BODY]
        if not self._serves(model):
            return _not_found(model, action)
        if action == "generateContent" and "image" in model:
            return await self._generate_content(model, body)
        if action == "predictLongRunning" and model.startswith("veo-"):
            return self._predict_long_running(model, body)
        return _not_found(model, action)

    async def _generate_content(self, model: str, body: Any) -> web.StreamResponse:
        problem, config = _check_generate_body(model, body)
        if problem:
            return _status_error(400, problem)
        await self._released.wait()
        script = self._image_outcomes.popleft() if self._image_outcomes else {"outcome": "ok"}
        outcome = script["outcome"]
        modalities = [m.upper() for m in config.get("responseModalities") or ["TEXT", "IMAGE"]]
        if "IMAGE" not in modalities:
            outcome = "text_only"
        usage = {"promptTokenCount": 17, "candidatesTokenCount": 1290, "totalTokenCount": 1307}
        answer: dict[str, Any] = {"usageMetadata": usage, "modelVersion": model}
        answer["responseId"] = secrets.token_urlsafe(16)
        image_config = config.get("imageConfig") or config.get("image_config") or {}
        seed = int(config.get("seed") or 0)
        if outcome == "block":
            reason = script.get("reason", "PROHIBITED_CONTENT")
            answer["promptFeedback"] = {"blockReason": reason}
            return web.json_response(answer)
        if outcome == "malformed":
            return web.json_response(answer)
        parts: list[dict[str, Any]] = []
        finish = "STOP"
        if outcome in ("ok", "thought"):
            if outcome == "thought":
                thumb = _image(self.image_format, "1:1", seed + 999, long_edge=8)
                parts.append({"inlineData": _blob(thumb, self.image_format), "thought": True})
            parts.append({"text": "Here is your image: "})
            data = _image(self.image_format, image_config.get("aspectRatio", "1:1"), seed)
            parts.append({"inlineData": _blob(data, self.image_format)})
        elif outcome == "not_image":
            html = b"<html><body>not an image</body></html>"
            parts.append({"inlineData": {"mimeType": "image/png", "data": _b64(html)}})
        elif outcome == "bad_base64":
            parts.append({"inlineData": {"mimeType": "image/png", "data": "%%not base64%%"}})
        elif outcome == "text_only":
            parts.append({"text": script.get("text", "I can only describe that image in words.")})
        elif outcome == "refuse":
            finish = script.get("reason", "IMAGE_SAFETY")
        elif outcome == "no_image":
            finish = "NO_IMAGE"
        else:
            raise ValueError(f"unknown image outcome {outcome!r}")
        candidate: dict[str, Any] = {"content": {"role": "model"}, "finishReason": finish}
        candidate["index"] = 0
        if parts:
            candidate["content"]["parts"] = parts
        if outcome == "refuse":
            candidate["finishMessage"] = script.get(
                "message",
                "The model output could not be generated. This output contains sensitive "
                "words that violate Google's Responsible AI practices.",
            )
        answer["candidates"] = [candidate]
        return web.json_response(answer)

    # ------------------------------------------------------------------ Veo

    def _predict_long_running(self, model: str, body: Any) -> web.StreamResponse:
        problem = _check_video_body(model, body)
        if problem:
            return _status_error(400, problem)
        script = self._video_outcomes.popleft() if self._video_outcomes else {"outcome": "ok"}
        name = f"models/{model}/operations/{self._new_id()}"
        self.operations[name] = _Operation(name, model, script, self.polls_before_done)
        return web.json_response({"name": name})

    def _operation(self, request: web.Request, suffix: str = "") -> _Operation | None:
        op_id = request.match_info["operation"].removesuffix(suffix)
        return self.operations.get(f"models/{request.match_info['model']}/operations/{op_id}")

    async def _handle_poll(self, request: web.Request) -> web.StreamResponse:
        operation = self._operation(request)
        if operation is None:
            return _status_error(404, "Operation not found.")
        operation.polls += 1
        if operation.cancelled:
            return web.json_response(
                {"name": operation.name, "done": True, "error": {"code": 1, "message": "CANCELLED"}}
            )
        if not self._released.is_set() or operation.polls_left > 0:
            if self._released.is_set():
                operation.polls_left -= 1
            return web.json_response({"name": operation.name})  # done omitted while running
        return web.json_response(self._finished(operation))

    async def _handle_cancel(self, request: web.Request) -> web.StreamResponse:
        if not request.match_info["operation"].endswith(":cancel"):
            return _status_error(404, "Method not found.")
        operation = self._operation(request, ":cancel")
        if operation is None:
            return _status_error(404, "Operation not found.")
        operation.cancelled = True
        return web.json_response({})

    def _finished(self, operation: _Operation) -> dict[str, Any]:
        script = operation.outcome
        outcome = script["outcome"]
        done: dict[str, Any] = {"name": operation.name, "done": True}
        if outcome == "error":
            done["error"] = {
                "code": script.get("code", 13),
                "message": script.get("message", "Internal error encountered."),
            }
            return done
        video: dict[str, Any]
        file_id = operation.name.rsplit("/", 1)[-1]
        if outcome == "filtered":
            reasons = script.get("reasons", [FILTERED_REASON])
            generated: dict[str, Any] = {
                "raiMediaFilteredCount": len(reasons),
                "raiMediaFilteredReasons": reasons,
            }
        else:
            if outcome == "inline":
                video = {"encodedVideo": _b64(sample_mp4()), "encoding": "video/mp4"}
            elif outcome == "malformed":
                video = {}
            else:
                if outcome == "not_video":
                    self.files[file_id] = _File(b"<html>quota page</html>", "text/html")
                elif outcome == "huge":
                    size = int(script.get("size", 50 << 20))
                    self.files[file_id] = _File(b"\0" * 1024, "video/mp4", declared_length=size)
                elif outcome == "redirect":
                    self.files[file_id] = _File(b"", "redirect")
                    self.files[f"storage-{file_id}"] = _File(sample_mp4(), "video/mp4")
                elif outcome == "ok":
                    self.files[file_id] = _File(sample_mp4(), "video/mp4")
                else:
                    raise ValueError(f"unknown video outcome {outcome!r}")
                video = {"uri": f"{self.base_url}{API}/files/{file_id}:download?alt=media"}
            generated = {"generatedSamples": [{"video": video}]}
        done["response"] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
            "PredictLongRunningResponse",
            "generateVideoResponse": generated,
        }
        return done

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        file_id, _, action = request.match_info["file"].partition(":")
        stored = self.files.get(file_id)
        if action != "download" or request.query.get("alt") != "media" or stored is None:
            return _status_error(404, f"File {file_id} not found.")
        if stored.content_type == "redirect":
            raise web.HTTPFound(f"/storage/storage-{file_id}")
        return await _serve(request, stored)

    async def _handle_storage(self, request: web.Request) -> web.StreamResponse:
        stored = self.files.get(request.match_info["file"])
        if stored is None:
            return web.Response(status=404, text="NoSuchKey")
        return await _serve(request, stored)


# --------------------------------------------------------------------------- validation


def _check_generate_body(model: str, body: Any) -> tuple[str | None, dict[str, Any]]:
    """Why Google would refuse this generateContent body (None if it would not)."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received.", {}
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified", {}
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return "* GenerateContentRequest.contents.parts: contents.parts must not be empty", {}
        for part in parts:
            blob = part.get("inlineData") or part.get("inline_data")
            if blob is not None:
                mime = blob.get("mimeType") or blob.get("mime_type") or ""
                if not mime.startswith("image/"):
                    return f"Unsupported MIME type: {mime}", {}
                try:
                    base64.b64decode(blob.get("data", ""), validate=True)
                except (binascii.Error, ValueError):
                    return (
                        "Invalid value at 'contents[0].parts[1].inline_data.data' (TYPE_BYTES)",
                        {},
                    )
            elif not isinstance(part.get("text"), str):
                return "* GenerateContentRequest.contents.parts: part has no data", {}
    config = body.get("generationConfig") or body.get("generation_config") or {}
    image_config = config.get("imageConfig") or config.get("image_config") or {}
    ratio = image_config.get("aspectRatio") or image_config.get("aspect_ratio")
    if ratio is not None and ratio not in IMAGE_ASPECT_RATIOS:
        return f"Unsupported aspect ratio: {ratio}", config
    size = image_config.get("imageSize") or image_config.get("image_size")
    if size is not None and (size not in IMAGE_SIZES or model.startswith("gemini-2.5-")):
        return f"Image size {size} is not supported for {model}.", config
    seed = config.get("seed")
    if seed is not None and (not isinstance(seed, int) or not -(2**31) <= seed < 2**31):
        return f"Invalid value at 'generation_config.seed' (TYPE_INT32), {seed}", config
    return None, config


def _check_video_body(model: str, body: Any) -> str | None:
    """Why the Gemini API would refuse this predictLongRunning body (None if it would not)."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1:
        return "instances must hold exactly one instance"
    instance = instances[0]
    image = instance.get("image")
    if not instance.get("prompt") and not image:
        return "A prompt or an image is required."
    if image is not None:
        if not str(image.get("mimeType", "")).startswith("image/"):
            return "image.mimeType must be an image type"
        try:
            base64.b64decode(image.get("bytesBase64Encoded", ""), validate=True)
        except (binascii.Error, ValueError):
            return "image.bytesBase64Encoded is not valid base64"
    parameters = body.get("parameters") or {}
    refused = sorted(set(parameters) & VIDEO_REFUSED)
    if refused:
        return f"{refused[0]} parameter is not supported in Gemini API."
    unknown = sorted(set(parameters) - VIDEO_PARAMETERS)
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}"'
    if parameters.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
        return f"Aspect ratio {parameters['aspectRatio']} is not supported."
    seconds = parameters.get("durationSeconds")
    if seconds is not None and model.startswith("veo-3") and seconds not in VEO3_DURATIONS:
        return f"The number value for `durationSeconds` is out of bound: {seconds}"
    return None


# --------------------------------------------------------------------------- answers


def _status_error(
    status: int,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in google.rpc.Status form (spec 2.4)."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


def _not_found(model: str, action: str) -> web.Response:
    return _status_error(
        404,
        f"models/{model} is not found for API version v1beta, or is not supported "
        f"for {action or 'this method'}. Call ListModels to see the list of available "
        "models and their supported methods.",
    )


def _invalid_key() -> web.Response:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": INVALID_KEY_MESSAGE,
        },
    ]
    return _status_error(400, INVALID_KEY_MESSAGE, details=details)


def _scripted_error(failure: _Failure) -> web.Response:
    details: list[dict[str, Any]] = []
    if failure.status == 429:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            }
        )
    if failure.retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": failure.retry_delay}
        )
    headers = {}
    if failure.retry_after is not None:
        headers["Retry-After"] = f"{failure.retry_after:g}"
    message = failure.message or DEFAULT_MESSAGES.get(failure.status, "Error.")
    return _status_error(failure.status, message, details=details, headers=headers)


async def _serve(request: web.Request, stored: _File) -> web.StreamResponse:
    if stored.declared_length is None:
        return web.Response(body=stored.data, content_type=stored.content_type)
    # A huge file: declare its full length, then send only the start (a client that trusts
    # Content-Length stops at once; one that reads is cut off when the fake closes).
    response = web.StreamResponse(
        headers={"Content-Type": stored.content_type, "Content-Length": str(stored.declared_length)}
    )
    await response.prepare(request)
    await response.write(stored.data)
    return response


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _blob(data: bytes, image_format: str) -> dict[str, str]:
    return {"mimeType": f"image/{image_format.lower()}", "data": _b64(data)}


def _image(
    image_format: str, aspect_ratio: str, seed: int, long_edge: int = IMAGE_LONG_EDGE
) -> bytes:
    """A real image of the asked aspect ratio: noise from the seed, so each seed differs."""
    w_text, h_text = aspect_ratio.split(":")
    ratio = int(w_text) / int(h_text)
    if ratio >= 1:
        size = (long_edge, max(8, round(long_edge / ratio)))
    else:
        size = (max(8, round(long_edge * ratio)), long_edge)
    noise = random.Random(seed).randbytes(size[0] * size[1] * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, noise).save(buffer, image_format)
    return buffer.getvalue()


@functools.cache
def sample_mp4() -> bytes:
    """A real 64x64, one-second, 24-frame H.264 MP4, made once per process."""
    with tempfile.TemporaryDirectory(prefix="fake-gemini-") as folder:
        target = Path(folder) / "sample.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(target),
            (64, 64),
            fps=24,
            codec="libx264",
            macro_block_size=16,
            output_params=["-loglevel", "error"],
        )
        writer.send(None)  # start the generator
        for index in range(24):
            writer.send(bytes([index * 10]) * (64 * 64 * 3))
        writer.close()
        return target.read_bytes()
