"""What every cloud provider adapter shares: its HTTP client, error classification, and the
guarded download of outputs.

- :func:`provider_client` builds the ``httpx.AsyncClient`` of one provider: explicit timeouts
  (httpx's default is 5 s), and the provider's request rate from ``TIERBOT_PROVIDER_RATES``
  enforced by an ``aiolimiter`` leaky bucket in a request hook, so polls count too.
- :func:`error_from_response` maps an HTTP error to the runner's classes: 408/409/425/429/5xx
  are transient (429's ``Retry-After`` honoured), other 4xx permanent with the provider's own
  message; :func:`error_from_exception` does the same for timeouts and connection failures.
- :func:`download` fetches an output under guard: https only (plain http only to entries of
  ``TIERBOT_ALLOW_HTTP_HOSTS``, and for ComfyUI its own ``COMFYUI_URL`` host and port), never
  to a loopback, private, link-local or cloud metadata address unless the operator allowed it
  (see :class:`DownloadPolicy`; the name is resolved once and the connection pinned to the
  checked address), a size cap, a timeout, the content type checked, and the bytes decoded
  (images only up to :data:`MAX_IMAGE_PIXELS`, checked from the header before decoding by
  :func:`check_image_pixels`; videos probed with ffmpeg) before anything can enter the asset
  store. An inline ``data:`` output goes through the same size cap and decoding.
- :func:`read_reference` reads a reference image from the asset store for sending.
- :class:`Hiccups` rides out a transient failure of one poll or download while a generation
  runs (every provider's one retry rule, on tenacity).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import json
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from aiolimiter import AsyncLimiter
from PIL import Image
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
)

from bot import cpu, footage
from bot.imaging import (
    FORMAT_MIME,
    NotAnImageError,
    check_image_pixels,
)
from bot.providers import (
    GeneratedFile,
    PermanentError,
    ProviderCheck,
    ProviderError,
    TransientError,
)
from bot.settings import Settings

log = logging.getLogger(__name__)

#: Headers that carry credentials; stripped from downloads to other hosts.
SECRET_HEADERS = {"authorization", "x-goog-api-key", "x-api-key", "x-key", "cookie"}
TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
IMAGE_TYPES = set(FORMAT_MIME.values())
VIDEO_TYPES = {"video/mp4", "video/quicktime", "video/webm"}
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Cloud metadata endpoints, refused even where their range would pass for public (Azure's
#: WireServer and Oracle's endpoint do).
METADATA_ADDRESSES: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud
    )
)
#: NAT64: the last 32 bits are an IPv4 address the gateway connects to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def provider_client(
    settings: Settings,
    provider: str,
    *,
    base_url: str = "",
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """The HTTP client of one provider, with timeouts and its rate limit.

    Args:
        settings: for ``provider_timeout_s`` and ``provider_rates``.
        provider: the provider's name (``fal``, ``gemini``...), the key of its rate.
        base_url: the API base.
        headers: auth headers; they are sent only to ``base_url``'s requests made through this
            client, never to download hosts (see :func:`download`).
    """
    hooks: dict[str, list[Any]] = {}
    rate = settings.provider_rates.get(provider)
    if rate:
        limiter = AsyncLimiter(max_rate=rate, time_period=1.0)

        async def throttle(request: httpx.Request) -> None:
            await limiter.acquire()

        hooks["request"] = [throttle]
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers or {},
        timeout=httpx.Timeout(settings.provider_timeout_s, connect=10.0),
        event_hooks=hooks,
        follow_redirects=False,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def provider_message(response: httpx.Response) -> str:
    """The provider's own words for an error, from the usual JSON shapes, else the status."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    message = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("status") or "")
        elif isinstance(error, str):
            message = error
        detail = body.get("detail")
        if not message and isinstance(detail, str):
            message = detail
        elif not message and isinstance(detail, list) and detail:
            first = detail[0]
            message = str(first.get("msg", first)) if isinstance(first, dict) else str(first)
        message = message or str(body.get("message") or body.get("title") or "")
    text = message or response.reason_phrase or "error"
    return f"HTTP {response.status_code}: {text[:300]}"


def aspect(aspect_ratio: str) -> tuple[int, int]:
    """``"16:9"`` as ``(16, 9)``; anything else is a :class:`PermanentError`."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*:\s*(\d{1,3})\s*", aspect_ratio)
    if not match or not int(match[1]) or not int(match[2]):
        raise PermanentError(f"unsupported aspect ratio {aspect_ratio!r}")
    return int(match[1]), int(match[2])


def image_size(ratio: tuple[int, int], pixels: int, multiple: int = 16) -> dict[str, int]:
    """``{"width", "height"}`` with about ``pixels`` pixels in ``ratio``, in steps of
    ``multiple`` (for models that take a size rather than an aspect ratio)."""
    width = math.sqrt(pixels * ratio[0] / ratio[1])
    height = width * ratio[1] / ratio[0]
    return {
        "width": max(multiple, round(width / multiple) * multiple),
        "height": max(multiple, round(height / multiple) * multiple),
    }


async def check_models(
    models: Sequence[str],
    probe: Callable[[str], Awaitable[httpx.Response]],
    *,
    key_refused: Callable[[httpx.Response], bool] = lambda r: r.status_code in (401, 403),
    found: Callable[[httpx.Response, str], bool | None] | None = None,
) -> ProviderCheck:
    """A provider's live check (``Provider.check``): ``probe`` each model id with a request
    that spends nothing; 2xx is found (or what ``found`` reads in the answer), 404 missing,
    a refused key ends the check at once.
    """
    exists: dict[str, bool | None] = {}
    notes: dict[str, str] = {}
    for model in dict.fromkeys(models):
        try:
            response = await probe(model)
        except httpx.HTTPError as exc:
            return ProviderCheck(key_problem=f"unreachable: {error_from_exception(exc).message}")
        if key_refused(response):
            return ProviderCheck(key_problem=f"the key was refused ({provider_message(response)})")
        if response.status_code == 404:
            exists[model] = False
            notes[model] = provider_message(response)
        elif response.is_success:
            exists[model] = True if found is None else found(response, model)
        else:
            exists[model] = None
            notes[model] = provider_message(response)
    return ProviderCheck(exists=exists, notes=notes)


def error_from_response(response: httpx.Response) -> ProviderError:
    """The runner's error class for a failed HTTP response."""
    message = provider_message(response)
    if response.status_code in TRANSIENT_STATUS:
        return TransientError(message, retry_after=_retry_after(response))
    return PermanentError(message)


def error_from_exception(exc: httpx.HTTPError) -> ProviderError:
    """Timeouts and connection failures are transient; anything else httpx raises too."""
    kind = type(exc).__name__
    return TransientError(f"{kind} talking to the provider")


async def checked(
    response_or_call: Any,
    classify: Callable[[httpx.Response], ProviderError] = error_from_response,
) -> httpx.Response:
    """Await an httpx call and raise the runner's error class unless it succeeded.

    Args:
        response_or_call: the awaitable httpx call (``client.post(...)``).
        classify: the error for an error answer; a provider with its own words for some
            answers (a content-policy refusal, a rejected workflow) passes its own.
    """
    try:
        response: httpx.Response = await response_or_call
    except httpx.HTTPError as exc:
        raise error_from_exception(exc) from None
    if response.is_error:
        raise classify(response)
    return response


_T = TypeVar("_T")
Sleep = Callable[[float], Awaitable[None]]


class GenerationLost(TransientError):
    """The provider no longer knows a generation (expired, or its server restarted): polling
    again cannot bring it back, so :class:`Hiccups` does not retry it; only a new submission
    (the runner's retry) can still produce the output."""


class GaveUpWaiting(TransientError):
    """A poll or download kept failing until the generation's deadline (see :class:`Hiccups`)."""


@dataclass
class Hiccups:
    """How every provider rides out a transient failure (429, 5xx, timeout, dropped
    connection) of one poll or one download while a generation runs.

    The generation is already submitted and usually paid for: raising would make the runner
    submit it again (and pay again), so the call is retried here, waiting ``first_wait_s``,
    then twice as long each time up to ``max_wait_s`` (``TIERBOT_POLL_INTERVAL_S`` and
    ``TIERBOT_MAX_BACKOFF_S``), at least as long as the provider's ``Retry-After`` asks (within
    the same cap), until the generation's deadline (``TIERBOT_MAX_GENERATION_S``): the one
    set of limits of every adapter. A wait that would end past the deadline is not started:
    :class:`GaveUpWaiting` is raised with the last failure.

    ``sleep`` and ``clock`` are injectable (tests record the waits instead of sleeping them);
    a provider uses the same two for its ordinary poll interval and deadlines.

    Attributes:
        provider: the provider's name, for the log.
        first_wait_s: the first wait.
        max_wait_s: the longest wait, ``Retry-After`` included.
        sleep: awaits a number of seconds.
        clock: monotonic seconds; deadlines are on this clock.
        scrub: removes the provider's key from a message before it is logged.
    """

    provider: str
    first_wait_s: float
    max_wait_s: float
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    scrub: Callable[[str], str] = lambda text: text

    @classmethod
    def from_settings(
        cls, settings: Settings, provider: str, scrub: Callable[[str], str] | None = None
    ) -> Hiccups:
        """The limits of ``settings`` for ``provider``."""
        hiccups = cls(provider, settings.poll_interval_s, settings.max_backoff_s)
        if scrub is not None:
            hiccups.scrub = scrub
        return hiccups

    def deadline(self, seconds: float) -> float:
        """The time on :attr:`clock` ``seconds`` from now."""
        return self.clock() + seconds

    def wait_s(self, failures: int, error: BaseException | None) -> float:
        """The wait after the ``failures``-th failure in a row."""
        wait = self.first_wait_s * 2 ** min(failures - 1, 32)
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.max_wait_s)

    async def through(self, call: Callable[[], Awaitable[_T]], doing: str, deadline: float) -> _T:
        """``await call()``, retrying a :class:`TransientError` by the rule above.

        Args:
            call: one poll or download; raises the runner's error classes.
            doing: what it is, for the log and the final error (``"polling 1a2b"``).
            deadline: on :attr:`clock`; no wait is started that would end after it.

        Raises:
            GaveUpWaiting: it still failed when the deadline came.
            ProviderError: any other failure (a :class:`GenerationLost` too), at once.
        """

        def wait(state: RetryCallState) -> float:
            return self.wait_s(state.attempt_number, state.outcome and state.outcome.exception())

        def past_deadline(state: RetryCallState) -> bool:
            return self.clock() + state.upcoming_sleep > deadline

        def log_wait(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            message = self.scrub(getattr(error, "message", str(error)))
            log.info(
                "%s: %s failed (%s); again in %.2f s",
                self.provider,
                doing,
                message,
                state.upcoming_sleep,
            )

        def give_up(state: RetryCallState) -> _T:
            error = state.outcome.exception() if state.outcome else None
            message = self.scrub(getattr(error, "message", str(error)))
            raise GaveUpWaiting(f"{doing} kept failing: {message}") from None

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError)
            & retry_if_not_exception_type(GenerationLost),
            wait=wait,
            stop=past_deadline,
            sleep=self.sleep,
            before_sleep=log_wait,
            retry_error_callback=give_up,
        )
        return await retrying(call)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's JSON body if it is an object, else None (not JSON, or another type)."""
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return None
    return body if isinstance(body, dict) else None


def same_origin(url: str, base: str) -> bool:
    """Whether ``url`` has the scheme and host (with port) of ``base``."""
    given, ours = urlsplit(url), urlsplit(base)
    return (given.scheme, given.netloc.lower()) == (ours.scheme, ours.netloc.lower())


def scrub(text: str, secret: str, placeholder: str = "[redacted]") -> str:
    """``text`` with ``secret``, and either half (8 characters or more) of an ``id:secret``
    key, replaced by ``placeholder``."""
    halves = {part for part in secret.split(":") if len(part) >= 8}
    for part in sorted({secret, *halves} - {""}, key=len, reverse=True):
        text = text.replace(part, placeholder)
    return text


@dataclass(frozen=True)
class DownloadPolicy:
    """Where a download may go, and how much it may fetch.

    The rule, in order:

    1. Only ``https``, and plain ``http`` only to a destination in ``allow_http_hosts``.
    2. A destination in ``allow_http_hosts`` is the operator's own: it is fetched as is.
    3. So is an https URL on the origin of a configured provider API (``api_origins``): the
       operator chose that server (a proxy, a regional endpoint, a test fake) and already sends
       it the key, so outputs served from it (Gemini's files endpoint) stay allowed.
    4. Anything else must be public: its host is resolved once, every address it resolves to
       must be globally routed unicast (not loopback, private, shared, link-local,
       unspecified, reserved, multicast, nor a cloud metadata endpoint; IPv6 forms embedding
       an IPv4 address are judged by that address too), and the connection is made to the
       address that was checked (:func:`download`).

    Attributes:
        allow_http_hosts: ``TIERBOT_ALLOW_HTTP_HOSTS`` plus a provider's own server: ``host``
            allows every port of it, ``host:port`` that port only (IPv6 as ``[::1]:8080``).
            Normalised on creation (lower case, IP addresses in their short form).
        max_bytes: the size cap.
        timeout_s: the time cap of one download, name resolution included.
        api_origins: ``https://host:port`` origins of the configured provider APIs.
    """

    allow_http_hosts: frozenset[str]
    max_bytes: int
    timeout_s: float
    api_origins: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        entries = frozenset(_entry(*parse_host_entry(e)) for e in self.allow_http_hosts)
        object.__setattr__(self, "allow_http_hosts", entries)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http_hosts: Collection[str] = ()
    ) -> DownloadPolicy:
        """The settings' limits and allowed destinations.

        Args:
            settings: ``allow_http_hosts``, the provider API URLs, the limits.
            http_hosts: a provider's own servers, allowed for that provider only (ComfyUI
                passes its host). A bare host that is ``COMFYUI_URL``'s host is narrowed to
                ``COMFYUI_URL``'s port: the server, not every service on its machine.
        """
        hosts = [*settings.allow_http_hosts]  # normalised by the policy itself
        comfy = urlsplit(settings.comfyui_url or "")
        for given in http_hosts:
            if not given:
                continue
            host, port = parse_host_entry(given)
            if port is None and comfy.hostname and _canonical_host(comfy.hostname) == host:
                port = comfy.port or DEFAULT_PORTS.get(comfy.scheme)
            hosts.append(_entry(host, port))
        apis = (settings.fal_queue_url, settings.gemini_api_url, settings.replicate_api_url)
        origins = frozenset(origin for url in apis if (origin := _https_origin(url or "")))
        return cls(
            frozenset(hosts), settings.max_download_bytes, settings.provider_timeout_s, origins
        )

    def allows(self, host: str, port: int) -> bool:
        """Whether ``host`` (canonical, see :func:`parse_host_entry`) and ``port`` are allowed
        by an entry of :attr:`allow_http_hosts`."""
        return bool(host) and (
            _entry(host, None) in self.allow_http_hosts
            or _entry(host, port) in self.allow_http_hosts
        )


def parse_host_entry(entry: str) -> tuple[str, int | None]:
    """``(host, port)`` of an allow-list entry; the port is None for a bare host (every port).

    Accepts ``host``, ``host:port``, ``[ipv6]``, ``[ipv6]:port`` and a bare IPv6 address. The
    host comes back canonical: lower case, IDNA-encoded, an IP address in its short form.

    Raises:
        ValueError: not one of those forms.
    """
    text = entry.strip().lower()
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]"  # a bare IPv6 address: no port can be told apart
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
        host = _canonical_host(parts.hostname or "")
    except ValueError:
        raise ValueError(f"{entry!r} is not host or host:port") from None
    if not host or port == 0 or parts.path or parts.query or parts.fragment or "@" in text:
        raise ValueError(f"{entry!r} is not host or host:port")
    return host, port


def _canonical_host(host: str) -> str:
    """A host as compared with allow-list entries (see :func:`parse_host_entry`)."""
    host = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if not host:
        return ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return httpx.URL(scheme="http", host=host).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError):
        raise ValueError(f"{host!r} is not a host name") from None


def _entry(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return f"{name}:{port}" if port else name


def _https_origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        return f"https://{_entry(_canonical_host(parts.hostname), parts.port or 443)}"
    except ValueError:
        return None


def _destination(url: httpx.URL) -> tuple[str, str, int]:
    """``(scheme, canonical host, port)`` of a URL as httpx will connect to it."""
    scheme = url.scheme
    try:
        host = _canonical_host(url.raw_host.decode("ascii"))
    except ValueError:
        host = ""
    return scheme, host, url.port or DEFAULT_PORTS.get(scheme, 0)


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a download may connect to ``address`` without the operator's say-so.

    Only globally routed unicast addresses pass: loopback, private, shared (100.64/10),
    link-local, unspecified, reserved, documentation and multicast ranges do not, nor the
    cloud metadata endpoints of :data:`METADATA_ADDRESSES`. An IPv6 address that carries an
    IPv4 one (``::ffff:a.b.c.d``, 6to4, Teredo, NAT64 ``64:ff9b::/96``) must pass for both.
    """
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return _is_public(ip.ipv4_mapped)  # the IPv4 address itself, on a dual-stack socket
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.sixtofour, *(ip.teredo or ())]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
        candidates += [e for e in embedded if e is not None]
    return all(_is_public(candidate) for candidate in candidates)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_reserved
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip in METADATA_ADDRESSES
    )


def _address_kind(address: str) -> str:
    """What kind of non-public address this is, for the refusal message."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP"
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped or ip
    checks = (
        (ip in METADATA_ADDRESSES, "cloud metadata"),
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
    )
    return next((kind for hit, kind in checks if hit), "non-public")


def _refused_address(host: str, port: int, address: str) -> PermanentError:
    kind = f"a {_address_kind(address)} address, not a public one"
    what = kind if _canonical_host(address) == host else f"it resolves to {address}, {kind}"
    return PermanentError(
        f"refused to download from {_entry(host, port)}: {what} (an operator may allow it "
        "in TIERBOT_ALLOW_HTTP_HOSTS)"
    )


def _parse_url(url: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise PermanentError("refused to download a malformed URL") from None


def _vet(url: httpx.URL, policy: DownloadPolicy) -> bool:
    """Refuse a URL that may never be fetched; True when its destination is the operator's
    (allow-listed, or a provider API origin) and so needs no address check."""
    scheme, host, port = _destination(url)
    allowed = policy.allows(host, port)
    if scheme == "http" and allowed:
        return True
    if scheme != "https" or not host:
        raise PermanentError(
            f"refused to download {scheme or 'a'} URL from {host or 'nowhere'}: only https "
            "(or http to a host in TIERBOT_ALLOW_HTTP_HOSTS)"
        )
    if allowed or f"https://{_entry(host, port)}" in policy.api_origins:
        return True
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: its addresses are checked once resolved
    if not is_public_address(literal):
        raise _refused_address(host, port, host)
    return False


def check_url(url: str, policy: DownloadPolicy) -> None:
    """Refuse a download URL by its scheme, host and port, without resolving its name: not
    https (or http to an allowed host), or an IP address that is not public and not allowed.

    :func:`download` runs this and then checks (and pins) the addresses a name resolves to;
    a caller fetching by itself, as Gemini does from its own API origin, gets this part only.
    """
    _vet(_parse_url(url), policy)


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the system resolver's order of preference."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def public_addresses(url: httpx.URL) -> list[str]:
    """Resolve ``url``'s host once; its addresses, if every one of them is public.

    Raises:
        PermanentError: one of the addresses is not public (:func:`is_public_address`).
        TransientError: the name does not resolve.
    """
    _, host, port = _destination(url)
    name = url.raw_host.decode("ascii")
    try:
        addresses = await resolve(name, port)
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise TransientError(f"could not resolve {host or 'the download host'}")
    for address in addresses:
        if not is_public_address(address):
            raise _refused_address(host, port, address)
    return addresses


def _direct(client: httpx.AsyncClient, url: httpx.URL) -> bool:
    """Whether ``client`` connects to ``url`` itself, not through a proxy (``HTTPS_PROXY``
    and the like become httpx mounts; httpx has no public way to ask which one applies)."""
    pick = getattr(client, "_transport_for_url", None)
    return pick is None or pick(url) is getattr(client, "_transport", None)


async def _send(client: httpx.AsyncClient, request: httpx.Request, vetted: bool) -> httpx.Response:
    """Send a download request; unless its destination is the operator's, to an address
    checked by :func:`public_addresses`.

    The check and the connection use the same answer: the request goes to the checked IP,
    with the ``Host`` header it was built with and the name as TLS SNI (httpcore's
    ``sni_hostname`` extension), so certificates are still verified for the name and a DNS
    answer that changes between check and connect (rebinding) is never used. Addresses are
    tried in the resolver's order while connecting fails. The connection is closed after the
    response (``Connection: close``): httpx pools by address, and a connection verified for
    one name must not serve another name on the same address.

    Residual risk, through a proxy only (``HTTPS_PROXY``...): a proxy resolves and connects by
    itself (and httpcore does not pass ``sni_hostname`` through a tunnel), so there the name's
    addresses are checked as resolved here but not pinned; what the proxy may reach is its
    own policy. A name that does not resolve here is not fetched, proxy or not.
    """
    if vetted:
        return await client.send(request, stream=True, follow_redirects=False)
    original = request.url
    addresses = await public_addresses(original)
    pinned = [original.copy_with(host=address) for address in addresses]
    if not (_direct(client, original) and _direct(client, pinned[0])):
        return await client.send(request, stream=True, follow_redirects=False)
    request.extensions = {**request.extensions, "sni_hostname": original.raw_host.decode("ascii")}
    # httpx pools connections by scheme, address and port: one verified for this name must not
    # carry a later request for another name that resolves to the same address.
    request.headers["Connection"] = "close"
    for index, url in enumerate(pinned):
        request.url = url
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if index == len(pinned) - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def download(
    client: httpx.AsyncClient,
    url: str,
    policy: DownloadPolicy,
    *,
    expect: str,
    seed: int | None = None,
    headers: dict[str, str] | None = None,
) -> GeneratedFile:
    """Fetch one output under guard and return it decoded.

    Args:
        client: an HTTP client; its credential headers go only to its own base URL's origin
            (a Gemini file download needs the key), never to a CDN or other host.
        url: the output's URL, or an inline base64 ``data:`` URI (some models answer so).
        policy: schemes, destinations, size and time limits (see :class:`DownloadPolicy`).
        expect: ``"image"`` or ``"video"``.
        seed: the seed to record on the file.
        headers: headers for this download only (a ComfyUI behind auth, say).

    Raises:
        PermanentError: refused URL or address, too large, wrong content type, undecodable.
        TransientError: timeout, name resolution or connection failure, 5xx.
    """
    if url.startswith("data:"):
        mime, data = _data_uri(url, policy)
        return await decode_in_worker(data, mime, expect=expect, seed=seed)
    target = _parse_url(url)
    vetted = _vet(target, policy)
    request = client.build_request("GET", target, headers=headers or {})
    if _destination(request.url) != _destination(client.base_url):
        # httpx merges the client's default headers into every request: an API key must
        # never travel to a CDN or any other host the provider points us at.
        for name in list(request.headers):
            if name.lower() in SECRET_HEADERS and not (headers and name in headers):
                del request.headers[name]
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(policy.timeout_s):
            response = await _send(client, request, vetted)
            try:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise _too_large(int(declared), policy)
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise _too_large(size, policy)
                    chunks.append(chunk)
            finally:
                await response.aclose()
    except TimeoutError:
        raise TransientError(f"download timed out after {policy.timeout_s:.0f} s") from None
    except httpx.HTTPError as exc:
        raise error_from_exception(exc) from None
    return await decode_in_worker(b"".join(chunks), content_type, expect=expect, seed=seed)


def _data_uri(uri: str, policy: DownloadPolicy) -> tuple[str, bytes]:
    """``(mime, bytes)`` of a base64 ``data:`` URI, its size checked before decoding."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.endswith(";base64"):
        raise PermanentError("the provider sent an output data URI that is not base64")
    estimated = len(payload) * 3 // 4
    if estimated > policy.max_bytes:  # before decoding: do not build a huge buffer
        raise _too_large(estimated, policy)
    mime = header.removeprefix("data:").removesuffix(";base64").split(";")[0].strip()
    try:
        return mime, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError("the provider sent an output data URI that does not decode") from None


def _too_large(size: int, policy: DownloadPolicy) -> PermanentError:
    return PermanentError(
        f"the provider's output is {_megabytes(size)}, over the {_megabytes(policy.max_bytes)} "
        "limit (TIERBOT_MAX_DOWNLOAD_BYTES)"
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def decode(
    data: bytes, content_type: str, *, expect: str, seed: int | None = None
) -> GeneratedFile:
    """Check and decode bytes claimed to be an image (through :func:`image_info`, so over
    :data:`MAX_IMAGE_PIXELS` is refused before decoding) or a video."""
    if expect == "image":
        if content_type and content_type not in IMAGE_TYPES | {
            "application/octet-stream",
            "binary/octet-stream",
        }:
            raise PermanentError(f"expected an image, the provider sent {content_type}")
        mime, width, height = image_info(data)
        return GeneratedFile(data=data, mime=mime, width=width, height=height, seed=seed)
    if content_type and content_type not in VIDEO_TYPES | {
        "application/octet-stream",
        "binary/octet-stream",
    }:
        raise PermanentError(f"expected a video, the provider sent {content_type}")
    try:
        width, height, seconds = footage.video_info(data)
    except PermanentError:
        raise PermanentError("the provider sent something that is not a readable video") from None
    return GeneratedFile(
        data=data, mime="video/mp4", width=width, height=height, duration_s=seconds, seed=seed
    )


def image_info(data: bytes) -> tuple[str, int, int]:
    """``(mime, width, height)`` of an image: its pixel count checked from the header by
    :func:`check_image_pixels`, then fully decoded.

    Raises:
        PermanentError: not an image, an unsupported type, or over :data:`MAX_IMAGE_PIXELS`.
    """
    try:
        kind, width, height = check_image_pixels(data, subject="the provider's image")
    except NotAnImageError:
        raise PermanentError("the provider sent something that is not a readable image") from None
    mime = FORMAT_MIME.get(kind)
    if mime is None:
        raise PermanentError(f"the provider sent an unsupported image type {kind}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes: truncated or hostile data fails here, not later
    except Exception:
        raise PermanentError("the provider sent something that is not a readable image") from None
    return mime, width, height


@dataclass(frozen=True)
class ReferenceImage:
    """A reference image read for sending to a provider.

    Attributes:
        data: the file's bytes, as stored.
        format: Pillow's name of its type (``PNG``, ``JPEG``...).
        mime: its MIME type; ``application/octet-stream`` for a type outside
            :data:`FORMAT_MIME` (only when :func:`read_reference` was told to accept any).
        width: in pixels.
        height: in pixels.
    """

    data: bytes
    format: str
    mime: str
    width: int
    height: int


def read_reference(path: Path, accept: Collection[str] | None = IMAGE_TYPES) -> ReferenceImage:
    """Read a reference image and its type and size from its header (file I/O: run it in a
    thread). References come from the asset store, where :func:`decode` checked them fully,
    so they are not decoded again.

    Args:
        path: the image file.
        accept: the MIME types the provider takes; None takes any type Pillow recognises.

    Raises:
        PermanentError: the file is missing, unreadable, not an image, over
            :data:`MAX_IMAGE_PIXELS` (checked from the header), or of a type not in ``accept``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PermanentError(f"reference image {path.name!r} does not exist") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PermanentError(f"reference image {path.name!r} could not be read: {reason}") from None
    kind, width, height = check_image_pixels(data, subject=f"reference image {path.name!r}")
    mime = FORMAT_MIME.get(kind, "application/octet-stream")
    if accept is not None and mime not in accept:
        raise PermanentError(f"reference image {path.name!r} is a {kind or 'unknown'} image")
    return ReferenceImage(data=data, format=kind, mime=mime, width=width, height=height)


async def decode_in_worker(
    data: bytes, content_type: str, *, expect: str, seed: int | None = None
) -> GeneratedFile:
    """:func:`decode` in a worker process (Pillow and ffmpeg are CPU work); an image's pixel
    count is checked from its header there (:func:`check_image_pixels`) before it is decoded."""
    return await cpu.run(decode, data, content_type, expect=expect, seed=seed)
