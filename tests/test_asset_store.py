"""Assets in an S3-compatible bucket (``TIERBOT_ASSET_URL``), against a real S3 emulator.

moto's server runs in this process on a free loopback port and boto3 talks HTTP to it exactly
as to MinIO or R2 (``TIERBOT_S3_ENDPOINT_URL``), so signing, content types, missing keys and
streaming downloads are exercised for real. Two asset dirs sharing one bucket are two machines.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from adapters import wire
from bot.settings import Settings, SettingsError, load_settings
from storage import AssetFiles, AssetStoreError, S3Bucket
from tests.conftest import Chat


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """One emulator for the module (starting one takes a moment); each test its own bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """moto's fake credentials through the standard variables boto3 reads, and nothing of
    the developer's own AWS set-up (config files, profiles, instance metadata)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"tierbot-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def machine(tmp_path: Path, endpoint: str, bucket: str) -> Callable[[str], AssetFiles]:
    """An asset store on its own local dir (a machine) over the shared bucket and prefix."""

    def make(name: str) -> AssetFiles:
        return AssetFiles(
            tmp_path / name / "assets",
            S3Bucket(f"s3://{bucket}/team/assets", endpoint_url=endpoint),
        )

    return make


def count_calls(files: AssetFiles, operation: str) -> list[str]:
    """The keys of each ``operation`` (e.g. PutObject) this store's client sends."""
    assert files.remote is not None
    calls: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(params["Key"])

    files.remote.client.meta.events.register(f"provide-client-params.s3.{operation}", record)
    return calls


def test_a_file_put_on_one_machine_is_read_on_another(
    machine: Callable[[str], AssetFiles], endpoint: str, bucket: str
) -> None:
    first, second = machine("one"), machine("two")
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4096  # 1 MiB: more than one chunk
    digest, relative = first.put(data, "image/png")

    assert not (second.root / relative).exists()
    path = second.path(relative)
    assert path == second.root / relative and path.read_bytes() == data
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not list(second.root.rglob(".tmp-*"))
    head = boto3.client("s3", endpoint_url=endpoint).head_object(
        Bucket=bucket, Key=f"team/assets/{relative}"
    )
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(data)
    gets = count_calls(second, "GetObject")
    assert second.path(relative).read_bytes() == data and gets == []  # cached now


def test_the_same_bytes_are_uploaded_once(machine: Callable[[str], AssetFiles]) -> None:
    first, second = machine("one"), machine("two")
    puts = count_calls(first, "PutObject")
    other_puts = count_calls(second, "PutObject")
    one = first.put(b"same bytes", "image/jpeg")
    assert first.put(b"same bytes", "image/jpeg") == one
    assert second.put(b"same bytes", "image/jpeg") == one  # another machine, same content
    assert puts == [f"team/assets/{one[1]}"] and other_puts == []


def test_a_local_file_missing_from_the_bucket_is_uploaded_by_the_next_put(
    tmp_path: Path, machine: Callable[[str], AssetFiles]
) -> None:
    """A file stored before the bucket was configured (or whose upload failed) is not left
    behind on this machine: put checks the bucket, not the local file."""
    digest, relative = AssetFiles(tmp_path / "one" / "assets").put(b"from before", "image/png")
    first = machine("one")
    assert first.put(b"from before", "image/png") == (digest, relative)
    assert machine("two").path(relative).read_bytes() == b"from before"


def test_a_missing_object_is_a_clear_error(machine: Callable[[str], AssetFiles]) -> None:
    files = machine("one")
    relative = f"ab/cd/{'ab' * 32}.png"
    with pytest.raises(FileNotFoundError, match=rf"s3://.+/team/assets/{relative} does not"):
        files.path(relative)
    assert not list(files.root.rglob("*.png")) and not list(files.root.rglob(".tmp-*"))


def test_an_object_that_does_not_match_its_name_is_refused(
    machine: Callable[[str], AssetFiles], endpoint: str, bucket: str
) -> None:
    """The name is the content's hash, so a download is checked before it is used."""
    _, relative = machine("one").put(b"the real bytes", "image/png")
    boto3.client("s3", endpoint_url=endpoint).put_object(
        Bucket=bucket, Key=f"team/assets/{relative}", Body=b"tampered"
    )
    second = machine("two")
    with pytest.raises(AssetStoreError, match="does not match its content hash"):
        second.path(relative)
    assert not (second.root / relative).exists() and not list(second.root.rglob(".tmp-*"))


def test_the_bucket_failing_is_an_os_error_naming_the_object(tmp_path: Path, endpoint: str) -> None:
    files = AssetFiles(tmp_path / "assets", S3Bucket("s3://no-such-bucket", endpoint_url=endpoint))
    with pytest.raises(AssetStoreError, match=r"s3://no-such-bucket/.+NoSuchBucket") as error:
        files.put(b"x", "image/png")
    assert isinstance(error.value, OSError)
    with pytest.raises(AssetStoreError, match="NoSuchBucket"):  # not "no such object"
        files.path(f"ab/cd/{'ab' * 32}.png")
    assert "testing" not in str(error.value)  # no credential in the message


def test_the_traversal_guard_holds_and_nothing_is_fetched(
    machine: Callable[[str], AssetFiles],
) -> None:
    files = machine("one")
    gets = count_calls(files, "GetObject")
    for outside in ("../../etc/passwd", "../assets-other/x.png", "/etc/passwd"):
        with pytest.raises(ValueError, match="outside the asset store"):
            files.path(outside)
    assert gets == []


def test_local_only_stays_the_default(tmp_path: Path) -> None:
    files = AssetFiles(tmp_path / "assets")
    assert files.remote is None
    _, relative = files.put(b"hello", "image/png")
    assert files.path(relative).read_bytes() == b"hello"
    assert files.path("ab/cd/missing.png") == files.root / "ab/cd/missing.png"  # as before


def test_settings_take_the_url_and_refuse_anything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(_env_file=None).asset_url is None
    monkeypatch.setenv("TIERBOT_ASSET_URL", "s3://my-bucket/team/assets/")
    monkeypatch.setenv("TIERBOT_S3_ENDPOINT_URL", "http://minio:9000/")
    monkeypatch.setenv("TIERBOT_S3_REGION", "eu-west-1")
    settings = load_settings(_env_file=None)
    assert settings.asset_url == "s3://my-bucket/team/assets"
    assert settings.s3_endpoint_url == "http://minio:9000" and settings.s3_region == "eu-west-1"
    monkeypatch.setenv("TIERBOT_ASSET_URL", "")
    assert load_settings(_env_file=None).asset_url is None
    for bad in (
        "https://my-bucket.s3.amazonaws.com/x",
        "my-bucket/x",
        "s3://",
        "s3://My_Bucket",
        "s3://AKIAEXAMPLE:s3cr3t@my-bucket/x",
        "s3://my-bucket/a/../b",
        "s3://my-bucket/x?versionId=1",
    ):
        monkeypatch.setenv("TIERBOT_ASSET_URL", bad)
        with pytest.raises(SettingsError, match=r"TIERBOT_ASSET_URL: .*s3://bucket") as error:
            load_settings(_env_file=None)
        assert "s3cr3t" not in str(error.value)
    monkeypatch.setenv("TIERBOT_ASSET_URL", "s3://my-bucket")
    monkeypatch.setenv("TIERBOT_S3_ENDPOINT_URL", "minio:9000")
    with pytest.raises(SettingsError, match=r"TIERBOT_S3_ENDPOINT_URL: .*http"):
        load_settings(_env_file=None)


async def test_a_fresh_machine_gets_the_files_back_from_the_bucket(
    make_settings: Callable[..., Settings], endpoint: str, bucket: str
) -> None:
    """The whole core on S3: drafts stored through the runner and the grid reach the bucket;
    with the local asset dir gone (a process on a machine that never had it) the bot's own
    path lookups bring every file back, byte for byte."""
    settings = make_settings(asset_url=f"s3://{bucket}/tierbot", s3_endpoint_url=endpoint)
    services = wire(settings)
    try:
        chat = Chat(services)
        replies = await chat.command("draft", "a lighthouse at dawn --n 2 --seed 7")
        grid = next(r for r in replies if r.asset_id and r.files)
        assets = [services.store.get_asset(grid.asset_id), *services.store.parents(grid.asset_id)]
        assert len(assets) == 3
        listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
            Bucket=bucket, Prefix="tierbot/"
        )
        keys = {item["Key"] for item in listed.get("Contents", [])}
        assert {f"tierbot/{asset['path']}" for asset in assets} <= keys

        shutil.rmtree(settings.asset_dir)
        for asset in assets:
            path = services.bot.asset_path(asset)
            assert path.is_file()
            assert hashlib.sha256(path.read_bytes()).hexdigest() == asset["sha256"]
    finally:
        await services.aclose()


async def test_a_bot_and_a_worker_on_two_machines_share_files_through_the_bucket(
    tmp_path: Path, endpoint: str, bucket: str, postgres_server: Any
) -> None:
    """The many-machines set-up: Postgres for state and the queue, the bucket for files, and
    each process its own local dir. The worker's drafts reach the bot's grid through the
    bucket."""
    from tests.conftest import registry_with
    from tests.postgres import fresh_database
    from tests.test_workers import refusing, working

    with fresh_database(postgres_server) as url:

        def machine_settings(name: str) -> Settings:
            return Settings(
                data_dir=tmp_path / name,
                database_url=url,
                run_jobs="workers",
                asset_url=f"s3://{bucket}/shared",
                s3_endpoint_url=endpoint,
                _env_file=None,
            )

        async with working(machine_settings("worker-machine")):
            settings = machine_settings("bot-machine")
            bot = wire(settings, providers=registry_with(settings, local=refusing()))
            bot.start()
            try:
                replies = await Chat(bot).command("draft", "two lanterns --n 2")
                grid = bot.store.get_asset(next(r.asset_id for r in replies if r.asset_id))
                assert grid["kind"] == "grid"
                drafts = bot.store.parents(grid["id"])
                assert len(drafts) == 2
                for draft in drafts:  # made on the worker's machine, fetched here from S3
                    assert (tmp_path / "bot-machine" / "assets" / draft["path"]).exists()
                    assert (tmp_path / "worker-machine" / "assets" / draft["path"]).exists()
            finally:
                await bot.aclose()


async def test_a_commands_raw_bytes_leave_the_bucket_once_checked(
    tmp_path: Path, endpoint: str, bucket: str
) -> None:
    from bot.domain import CommandEvent, InboundFile, Origin
    from tests.images import png

    settings = Settings(
        data_dir=tmp_path / "data",
        asset_url=f"s3://{bucket}/kept",
        s3_endpoint_url=endpoint,
        _env_file=None,
    )
    services = wire(settings)
    try:
        event_keys = lambda: [  # noqa: E731
            o["Key"]
            for o in boto3.client("s3", endpoint_url=endpoint)
            .list_objects_v2(Bucket=bucket)
            .get("Contents", [])
        ]
        puts = count_calls(services.files, "PutObject")
        event = CommandEvent(
            origin=Origin(surface="test", team="T1", channel="C1", user="alice"),
            command="draft",
            text="a kite like this --n 1",
            files=[InboundFile(name="kite.png", data=png())],
        )
        event = await services.bot.keep(event)  # as a surface does before it acknowledges
        replies = [reply async for reply in services.bot.handle_command(event)]
        assert any(r.asset_id for r in replies)
        assert [k for k in puts if k.endswith(".bin")]  # kept when received, as sent
        keys = event_keys()
        assert keys and not [k for k in keys if k.endswith(".bin")]  # only checked images
    finally:
        await services.aclose()
