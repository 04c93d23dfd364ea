"""The download guard's two hard limits: no image over ``MAX_IMAGE_PIXELS`` is decoded, and no
output is fetched from a loopback, private, link-local or metadata address the operator did not
allow (after DNS, and pinned to the address that was checked)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image, ImageFile

from adapters.providers import _http
from adapters.providers._http import (
    DownloadPolicy,
    check_url,
    download,
    image_info,
    is_public_address,
    read_reference,
)
from bot.imaging import MAX_IMAGE_PIXELS, NotAnImageError, check_image_pixels
from bot.providers import PermanentError, TransientError
from bot.settings import Settings, SettingsError, load_settings

#: The bombs here are meant to make Pillow warn: that is the range the guard must catch.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

PUBLIC = "93.184.215.14"
OTHER_PUBLIC = "2606:4700::1111"
POLICY = DownloadPolicy(frozenset(), max_bytes=10_000_000, timeout_s=5)
KEY = "0123456789ab:very-secret-key-part"


def _png(size: tuple[int, int] = (32, 16), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """12000x12000 = 144 Mpx: between Pillow's warning (89.5 Mpx) and its error (179 Mpx), the
    range it decodes with only a warning; about 18 KB as a one-bit PNG."""
    return _png((12_000, 12_000), mode="1")


class Server:
    """A MockTransport provider CDN that records what reached it."""

    def __init__(self, content: bytes | None = None) -> None:
        self.content = _png() if content is None else content
        self.seen: list[httpx.Request] = []
        self.unreachable: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in self.unreachable:
            raise httpx.ConnectError("no route to host", request=request)
        self.seen.append(request)
        return httpx.Response(200, content=self.content, headers={"content-type": "image/png"})

    def client(self, **kw: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self), **kw)  # type: ignore[arg-type]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[list[str]]]]:
    """A fake resolver: ``dns[name]`` is the list of answers it gives, one per lookup (the
    last one repeats); ``dns["lookups"]`` records the names looked up."""
    table: dict[str, list[list[str]]] = {"lookups": []}

    async def resolve(host: str, port: int) -> list[str]:
        table["lookups"].append([host])
        answers = table[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(_http, "resolve", resolve)
    yield table


# --------------------------------------------------------------------------- pixels


def test_check_image_pixels_reads_the_header_and_refuses_over_the_limit(bomb: bytes) -> None:
    assert MAX_IMAGE_PIXELS == 40_000_000
    assert check_image_pixels(_png((6_000, 6_000), mode="1")) == ("PNG", 6_000, 6_000)  # 36 Mpx
    assert check_image_pixels(_png((100, 100)), limit=10_000) == ("PNG", 100, 100)
    with pytest.raises(PermanentError, match=r"is 100x101 = 10,100 pixels, over the limit of 10,0"):
        check_image_pixels(_png((100, 101)), limit=10_000)
    with pytest.raises(
        PermanentError,
        match=r"^an upload is 12,000x12,000 = 144,000,000 pixels, over the limit of 40,000,000 "
        "pixels: refused before decoding$",
    ):
        check_image_pixels(bomb, subject="an upload")
    with pytest.raises(NotAnImageError, match=r"^the image is not a readable image$"):
        check_image_pixels(b"not an image")


def test_image_info_refuses_a_bomb_before_decoding_it(
    bomb: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(PermanentError, match="144,000,000 pixels, over the limit of 40,000,000"):
        image_info(bomb)


async def test_a_bomb_in_pillows_warning_range_is_refused_as_download_and_data_uri(
    bomb: bytes, dns: dict[str, list[list[str]]]
) -> None:
    dns["cdn.example.net"] = [[PUBLIC]]
    error = "the provider's image is 12,000x12,000 = 144,000,000 pixels, over the limit of 40,0"
    async with Server(bomb).client() as client:
        with pytest.raises(PermanentError, match=error):
            await download(client, "https://cdn.example.net/b.png", POLICY, expect="image")
        uri = "data:image/png;base64," + base64.b64encode(bomb).decode()
        with pytest.raises(PermanentError, match=error):
            await download(client, uri, POLICY, expect="image")


def test_a_reference_bomb_is_refused_from_its_header(bomb: bytes, tmp_path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(bomb)
    with pytest.raises(PermanentError, match=r"^reference image 'big.png' is 12,000x12,000 = "):
        read_reference(path)


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "fd00:ec2::254",
        "fc00::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "::127.0.0.1",
        "not an address",
    ],
)
def test_only_public_addresses_pass(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", [PUBLIC, OTHER_PUBLIC, "8.8.8.8", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1:8443/out.png", "127.0.0.1:8443: a loopback address"),
        ("https://[::1]/out.png", r"\[::1\]:443: a loopback address"),
        ("https://10.0.0.7/out.png", "a private address"),
        ("https://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("https://[fd00:ec2::254]/latest/meta-data/", "a cloud metadata address"),
        ("https://[::ffff:169.254.169.254]/x", "a cloud metadata address"),
        ("https://[::ffff:127.0.0.1]:9000/x", "a loopback address"),
        ("https://0.0.0.0:8765/x", "an? \\w+ address"),
        ("https://[2002:7f00:1::]/x", "not a public one"),
        ("https://224.0.0.1/x", "a multicast address"),
    ],
)
async def test_literal_non_public_addresses_are_never_fetched(url: str, message: str) -> None:
    server = Server()
    async with server.client() as client:
        with pytest.raises(PermanentError, match=f"refused to download from .*{message}"):
            await download(client, url, POLICY, expect="image")
        with pytest.raises(PermanentError, match="refused to download"):
            check_url(url, POLICY)
    assert server.seen == []


async def test_a_name_that_resolves_to_loopback_is_refused_after_dns() -> None:
    server = Server()  # "localhost" goes through the real resolver (the hosts file)
    async with server.client() as client:
        with pytest.raises(PermanentError, match=r"localhost:8443: it resolves to .*loopback"):
            await download(client, "https://localhost:8443/out.png", POLICY, expect="image")
    assert server.seen == []


async def test_every_resolved_address_must_be_public(dns: dict[str, list[list[str]]]) -> None:
    dns["metadata.google.internal"] = [["169.254.169.254"]]
    dns["mixed.example"] = [[PUBLIC, "10.1.2.3"]]
    server = Server()
    async with server.client() as client:
        with pytest.raises(PermanentError, match=r"to 169\.254\.169\.254, a cloud metadata"):
            await download(client, "https://metadata.google.internal/x", POLICY, expect="image")
        with pytest.raises(PermanentError, match=r"mixed\.example:443: it resolves to 10\.1\.2\.3"):
            await download(client, "https://mixed.example/x.png", POLICY, expect="image")
    assert server.seen == []


async def test_the_connection_is_pinned_to_the_checked_address(
    dns: dict[str, list[list[str]]],
) -> None:
    # DNS rebinding: public for the check, loopback for whoever asks again.
    dns["rebind.example"] = [[PUBLIC], ["127.0.0.1"]]
    server = Server()
    async with server.client() as client:
        file = await download(client, "https://rebind.example:8443/o.png", POLICY, expect="image")
    assert file.width == 32
    assert dns["lookups"] == [["rebind.example"]]  # resolved once, by the guard
    (request,) = server.seen
    assert (request.url.host, request.url.port) == (PUBLIC, 8443)  # the checked address
    assert request.headers["host"] == "rebind.example:8443"
    assert request.extensions["sni_hostname"] == "rebind.example"  # TLS verifies the name
    assert request.headers["connection"] == "close"  # never pooled for another name


async def test_the_next_checked_address_is_tried_when_one_is_unreachable(
    dns: dict[str, list[list[str]]],
) -> None:
    dns["cdn.example.net"] = [[OTHER_PUBLIC, PUBLIC]]
    server = Server()
    server.unreachable.add(OTHER_PUBLIC)
    async with server.client() as client:
        await download(client, "https://cdn.example.net/o.png", POLICY, expect="image")
    assert [r.url.host for r in server.seen] == [PUBLIC]


async def test_a_name_that_does_not_resolve_is_transient(
    dns: dict[str, list[list[str]]],
) -> None:
    dns["gone.example"] = [[]]
    async with Server().client() as client:
        with pytest.raises(TransientError, match=r"could not resolve gone\.example"):
            await download(client, "https://gone.example/o.png", POLICY, expect="image")


async def test_through_a_proxy_the_name_is_checked_but_not_rewritten(
    dns: dict[str, list[list[str]]],
) -> None:
    dns["cdn.example.net"] = [[PUBLIC]]
    dns["inside.example"] = [["10.0.0.9"]]
    proxy = Server()
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(Server()), mounts={"all://": httpx.MockTransport(proxy)}
    ) as client:
        await download(client, "https://cdn.example.net/o.png", POLICY, expect="image")
        with pytest.raises(PermanentError, match="a private address"):
            await download(client, "https://inside.example/o.png", POLICY, expect="image")
    (request,) = proxy.seen
    assert request.url.host == "cdn.example.net"  # the proxy resolves it, with its own rules


# --------------------------------------------------------------------------- the allow-list


@pytest.fixture
def allow(make_settings: Callable[..., Settings]) -> Callable[..., DownloadPolicy]:
    def policy(*entries: str, **settings: object) -> DownloadPolicy:
        made = make_settings(allow_http_hosts=",".join(entries), **settings)
        return DownloadPolicy.from_settings(made, http_hosts=settings.get("http_hosts", ()))  # type: ignore[arg-type]

    return policy


async def _fetches(policy: DownloadPolicy, url: str) -> bool:
    server = Server()
    async with server.client() as client:
        try:
            await download(client, url, policy, expect="image")
        except PermanentError as refused:
            assert "refused to download" in refused.message
            return False
    assert len(server.seen) == 1
    return True


async def test_host_port_entries_allow_that_port_only(allow) -> None:
    policy = allow("127.0.0.1:8080", "[::1]:9000", "GPU.lan")
    assert policy.allow_http_hosts == {"127.0.0.1:8080", "[::1]:9000", "gpu.lan"}
    assert await _fetches(policy, "http://127.0.0.1:8080/o.png")
    assert await _fetches(policy, "https://127.0.0.1:8080/o.png")
    assert not await _fetches(policy, "http://127.0.0.1:8081/o.png")
    assert not await _fetches(policy, "https://127.0.0.1:8081/o.png")
    assert await _fetches(policy, "http://[::1]:9000/o.png")
    assert not await _fetches(policy, "http://[::1]:9001/o.png")
    assert not await _fetches(policy, "http://localhost:8080/o.png")  # the name as written
    assert await _fetches(policy, "http://gpu.lan:1234/o.png")  # a bare host: every port
    assert await _fetches(policy, "https://gpu.lan/o.png")


async def test_a_bare_ip_allows_every_port_of_it(allow) -> None:
    policy = allow("127.0.0.1")
    assert await _fetches(policy, "http://127.0.0.1:8080/o.png")
    assert await _fetches(policy, "https://127.0.0.1:9999/o.png")
    assert not await _fetches(policy, "https://10.0.0.1/o.png")


async def test_comfyuis_own_host_and_port_are_allowed_for_comfyui_only(allow) -> None:
    own = allow(comfyui_url="http://user:pw@gpu-box:8188", http_hosts=["gpu-box"])
    assert own.allow_http_hosts == {"gpu-box:8188"}
    assert await _fetches(own, "http://gpu-box:8188/view?filename=a.png")
    assert not await _fetches(own, "http://gpu-box:22/")
    others = allow(comfyui_url="http://gpu-box:8188")
    assert not await _fetches(others, "http://gpu-box:8188/view?filename=a.png")


async def test_a_configured_provider_api_origin_stays_allowed(allow) -> None:
    policy = allow(gemini_api_url="https://10.0.0.5:8443")  # a proxy on the LAN
    assert await _fetches(policy, "https://10.0.0.5:8443/v1beta/files/v:download?alt=media")
    check_url("https://10.0.0.5:8443/v1beta/files/v:download", policy)  # Gemini's own path
    assert not await _fetches(policy, "https://10.0.0.5:9999/o.png")
    plain = allow(replicate_api_url="http://10.0.0.6:8080")
    assert not await _fetches(plain, "http://10.0.0.6:8080/o.png")  # http still needs the list


def test_the_setting_takes_host_and_host_port_entries() -> None:
    settings = Settings(
        _env_file=None, allow_http_hosts=" Cdn.Lan, 127.0.0.1:8080 ,[::1]:9000, ::1,,"
    )
    assert settings.allow_http_hosts == ["cdn.lan", "127.0.0.1:8080", "[::1]:9000", "[::1]"]


@pytest.mark.parametrize(
    "entry", ["http://cdn.lan", "cdn.lan:99999", "cdn.lan:x", "a/b", "a:0", "a#b", "u@cdn.lan"]
)
def test_a_malformed_allow_list_entry_stops_the_start(entry: str) -> None:
    with pytest.raises(SettingsError, match="TIERBOT_ALLOW_HTTP_HOSTS"):
        load_settings(_env_file=None, allow_http_hosts=f"ok.lan,{entry}")


async def test_refusals_never_carry_the_key() -> None:
    async with Server().client(headers={"Authorization": f"Key {KEY}"}) as client:
        for url in (f"https://{KEY}@127.0.0.1/o.png", f"https://127.0.0.1/o.png?key={KEY}"):
            with pytest.raises(PermanentError) as refused:
                await download(client, url, POLICY, expect="image")
            assert "very-secret" not in refused.value.message
            assert "0123456789ab" not in refused.value.message
