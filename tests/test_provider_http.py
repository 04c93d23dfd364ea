"""The shared provider HTTP helpers: error classes and the guarded download."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest
from PIL import Image

from adapters.providers import _http
from adapters.providers._http import (
    DownloadPolicy,
    download,
    error_from_response,
    read_reference,
    same_origin,
    scrub,
)
from bot.providers import PermanentError, TransientError

#: Where the fake resolver sends every name: a public address (these tests run offline).
PUBLIC_ADDRESS = "93.184.215.14"


@pytest.fixture(autouse=True)
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads resolve their host before connecting; offline, every name is public."""

    async def resolve(host: str, port: int) -> list[str]:
        return [PUBLIC_ADDRESS]

    monkeypatch.setattr(_http, "resolve", resolve)


def _png(size: tuple[int, int] = (32, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


POLICY = DownloadPolicy(frozenset({"comfy.local"}), max_bytes=50_000, timeout_s=5)


def _client(handler, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), **kw)


async def test_download_decodes_an_image_and_never_sends_the_key_elsewhere() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=_png(), headers={"content-type": "image/png"})

    async with _client(
        handler,
        base_url="https://api.example.com",
        headers={"Authorization": "Key s3cret", "x-goog-api-key": "k"},
    ) as client:
        file = await download(
            client, "https://cdn.example.net/out.png", POLICY, expect="image", seed=7
        )
        await download(client, "https://api.example.com/v1/files/x", POLICY, expect="image")
    assert (file.mime, file.width, file.height, file.seed) == ("image/png", 32, 16, 7)
    assert "authorization" not in seen[0].headers and "x-goog-api-key" not in seen[0].headers
    assert seen[1].headers["authorization"] == "Key s3cret"  # its own API host keeps the key


@pytest.mark.parametrize(
    ("url", "body", "headers", "error"),
    [
        ("http://cdn.example.net/a.png", b"", {}, "only https"),
        ("ftp://cdn.example.net/a.png", b"", {}, "only https"),
        (
            "https://cdn.example.net/a.png",
            b"x" * 60_000,
            {"content-type": "image/png"},
            "over the 50,000 bytes limit",
        ),
        (
            "https://cdn.example.net/a.png",
            b"<html>",
            {"content-type": "text/html"},
            "expected an image, the provider sent text/html",
        ),
        (
            "https://cdn.example.net/a.png",
            b"not an image",
            {"content-type": "image/png"},
            "not a readable image",
        ),
    ],
)
async def test_download_refusals_are_permanent(url, body, headers, error) -> None:
    async with _client(lambda r: httpx.Response(200, content=body, headers=headers)) as client:
        with pytest.raises(PermanentError, match=error):
            await download(client, url, POLICY, expect="image")


async def test_http_is_allowed_for_listed_hosts_only() -> None:
    png = _png()
    async with _client(lambda r: httpx.Response(200, content=png)) as client:
        file = await download(client, "http://comfy.local/view?f=1", POLICY, expect="image")
    assert file.width == 32


async def test_decompression_bombs_are_refused() -> None:
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, "PNG")  # tiny file, 400 Mpx decoded
    async with _client(lambda r: httpx.Response(200, content=buffer.getvalue())) as client:
        policy = DownloadPolicy(frozenset(), max_bytes=10_000_000, timeout_s=5)
        with pytest.raises(PermanentError, match="400,000,000 pixels, over the limit of 40,0"):
            await download(client, "https://cdn.example.net/bomb.png", policy, expect="image")


async def test_a_video_that_is_not_a_video_is_refused() -> None:
    async with _client(
        lambda r: httpx.Response(200, content=_png(), headers={"content-type": "video/mp4"})
    ) as client:
        with pytest.raises(PermanentError, match="not a readable video"):
            await download(client, "https://cdn.example.net/v.mp4", POLICY, expect="video")


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after", "message"),
    [
        (
            429,
            {"retry-after": "7"},
            {"error": {"message": "slow down"}},
            TransientError,
            7.0,
            "HTTP 429: slow down",
        ),
        (503, {}, {"detail": "overloaded"}, TransientError, None, "HTTP 503: overloaded"),
        (
            422,
            {},
            {"detail": [{"msg": "prompt is required"}]},
            PermanentError,
            None,
            "HTTP 422: prompt is required",
        ),
        (401, {}, {"title": "Unauthenticated"}, PermanentError, None, "HTTP 401: Unauthenticated"),
    ],
)
def test_errors_are_classified_with_the_providers_words(
    status, headers, body, kind, retry_after, message
) -> None:
    error = error_from_response(httpx.Response(status, json=body, headers=headers))
    assert type(error) is kind and error.message == message
    if kind is TransientError:
        assert error.retry_after == retry_after


async def test_an_inline_data_uri_output_is_decoded_like_a_download() -> None:
    payload = base64.b64encode(_png()).decode()
    async with httpx.AsyncClient() as client:  # never used: nothing goes over the network
        file = await download(
            client, f"data:image/png;base64,{payload}", POLICY, expect="image", seed=3
        )
    assert (file.mime, file.width, file.height, file.seed) == ("image/png", 32, 16, 3)


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("data:image/png;base64," + "A" * 70_000, "over the 50,000 bytes limit"),
        ("data:image/png;base64,not*base64", "does not decode"),
        ("data:image/png,rawbytes", "not base64"),
        ("data:text/html;base64," + base64.b64encode(b"<html>").decode(), "sent text/html"),
    ],
)
async def test_inline_data_uri_refusals_are_permanent(uri: str, error: str) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(PermanentError, match=error):
            await download(client, uri, POLICY, expect="image")


def test_only_the_allow_list_gives_plain_http_comfyuis_host_is_comfyuis_own(
    make_settings,
) -> None:
    settings = make_settings(comfyui_url="http://gpu-box:8188", allow_http_hosts=["Cdn.Lan"])
    assert DownloadPolicy.from_settings(settings).allow_http_hosts == {"cdn.lan"}
    own = DownloadPolicy.from_settings(settings, http_hosts=["gpu-box"])
    assert own.allow_http_hosts == {"cdn.lan", "gpu-box:8188"}  # its port, not the machine


def test_a_reference_is_read_from_its_header(tmp_path) -> None:
    path = tmp_path / "ref.png"
    path.write_bytes(_png((40, 30)))
    image = read_reference(path)
    assert (image.format, image.mime, image.width, image.height) == ("PNG", "image/png", 40, 30)
    assert image.data == path.read_bytes()


@pytest.mark.parametrize(
    ("content", "accept", "error"),
    [
        (None, None, "reference image 'ref.img' does not exist"),
        (b"not an image", None, "reference image 'ref.img' is not a readable image"),
        ("GIF", {"image/png"}, "reference image 'ref.img' is a GIF image"),
    ],
)
def test_unusable_references_are_refused(tmp_path, content, accept, error) -> None:
    path = tmp_path / "ref.img"
    if content == "GIF":
        Image.new("P", (4, 4)).save(path, "GIF")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(PermanentError, match=error):
        read_reference(path, accept)


def test_scrub_removes_the_key_and_both_halves_of_an_id_secret_key() -> None:
    key = "0123456789ab:secret-part-xyz"
    text = f"bad key {key}; id 0123456789ab; secret secret-part-xyz"
    assert scrub(text, key) == "bad key [redacted]; id [redacted]; secret [redacted]"
    assert scrub("short k", "k:v") == "short k"  # halves under 8 characters are left


def test_same_origin_compares_scheme_host_and_port() -> None:
    assert same_origin("https://Queue.fal.run/a/b", "https://queue.fal.run")
    assert not same_origin("http://queue.fal.run/a", "https://queue.fal.run")
    assert not same_origin("https://queue.fal.run:8443/a", "https://queue.fal.run")


class _Clock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def _hiccups(clock: _Clock) -> _http.Hiccups:
    return _http.Hiccups("test", 1.0, 8.0, sleep=clock.sleep, clock=lambda: clock.now)


def _failing(*errors: Exception, then: str = "ok") -> Callable[[], Awaitable[str]]:
    queue = list(errors)

    async def call() -> str:
        if queue:
            raise queue.pop(0)
        return then

    return call


async def test_hiccups_wait_longer_each_time_up_to_the_cap_and_honour_retry_after() -> None:
    clock = _Clock()
    errors = [TransientError("503")] * 5 + [TransientError("429", retry_after=3.0)]
    assert await _hiccups(clock).through(_failing(*errors), "polling", 1000) == "ok"
    # 1, 2, 4, 8, then the cap; a Retry-After longer than the backoff wins (within the cap).
    assert clock.waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    clock = _Clock()
    errors = [TransientError("429", retry_after=3.0), TransientError("429", retry_after=60.0)]
    assert await _hiccups(clock).through(_failing(*errors), "polling", 1000) == "ok"
    assert clock.waits == [3.0, 8.0]


async def test_hiccups_give_up_rather_than_wait_past_the_deadline() -> None:
    clock = _Clock()
    errors = [TransientError("HTTP 503: down")] * 10
    with pytest.raises(_http.GaveUpWaiting, match="polling kept failing: HTTP 503: down"):
        await _hiccups(clock).through(_failing(*errors), "polling", deadline=10.0)
    assert clock.waits == [1.0, 2.0, 4.0]  # the next wait (8 s) would end at 15 s
    assert clock.now <= 10.0


@pytest.mark.parametrize(
    "error",
    [PermanentError("HTTP 422: bad"), _http.GenerationLost("the provider forgot it")],
    ids=["permanent", "lost"],
)
async def test_hiccups_do_not_retry_what_waiting_cannot_fix(error: Exception) -> None:
    clock = _Clock()
    with pytest.raises(type(error)):
        await _hiccups(clock).through(_failing(error), "polling", deadline=1000)
    assert clock.waits == []


async def test_hiccups_keep_the_key_out_of_the_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = _Clock()
    hiccups = _hiccups(clock)
    hiccups.scrub = lambda text: text.replace("sk-secret", "[redacted]")
    errors = [TransientError("bad gateway for sk-secret")] * 3
    with pytest.raises(_http.GaveUpWaiting) as raised:
        await hiccups.through(_failing(*errors), "polling", deadline=2.5)
    assert "sk-secret" not in raised.value.message
    assert "[redacted]" in caplog.text and "sk-secret" not in caplog.text
