"""RelayNetwork over HTTP: references in the X-Fstransport-Staged header, fetched by the server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fstransport import (
    Chunked,
    FsspecSnapshotStore,
    HttpNetwork,
    InvalidRequest,
    Receiver,
    RelayNetwork,
    StagedChunk,
    TransferOptions,
    Vote,
)
from fstransport.http.app import create_app
from fstransport.http.wire import MAX_STAGED_LENGTH, decode_staged, encode_staged
from tests.conftest import payload
from tests.helpers import staged_files
from tests.test_http import start
from tests.test_relay import snapshot

TOKEN = "relay-token"
V1 = Vote(1, 1)
OPTIONS = TransferOptions(chunk_size=256 << 10, max_in_flight=3)


async def serve(receiver: Receiver) -> AsyncIterator[str]:
    runner, url = await start(create_app(receiver.store, token=TOKEN, receiver=receiver))
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.fixture
async def relay_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path / "recv")), relay_options={})
    async for url in serve(receiver):
        yield url, tmp_path / "recv"


@pytest.fixture
async def plain_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path / "recv")))
    async for url in serve(receiver):
        yield url, tmp_path / "recv"


class CountingBodies(HttpNetwork):
    """An `HttpNetwork` that counts the chunk bytes it puts on the wire."""

    body_bytes = 0

    async def install_snapshot(self, req: Any, option: TransferOptions) -> Any:
        self.body_bytes += len(req.data)
        return await super().install_snapshot(req, option)


async def relayed(url: str, data: bytes) -> tuple[RelayNetwork, int]:
    """Sends `data` through a `RelayNetwork` (staging in ``memory://stage``) over HTTP to the
    server at `url`; the relay (still open) and the chunk bytes that went over HTTP."""
    http = CountingBodies(url, token=TOKEN)
    async with http:
        relay = RelayNetwork(http, "memory://stage")
        await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    return relay, http.body_bytes


async def test_a_snapshot_through_the_bucket_and_a_server(
    relay_server: tuple[str, Path],
) -> None:
    url, root = relay_server
    data = payload(1_000_000, seed=30)
    relay, body_bytes = await relayed(url, data)
    assert body_bytes == 0, "only references travel over HTTP"
    assert (root / "snap").read_bytes() == data
    assert relay.bytes_uploaded == len(data)
    assert staged_files() == []
    await relay.close()


async def test_a_server_that_takes_no_references_gets_the_bytes(
    plain_server: tuple[str, Path],
) -> None:
    url, root = plain_server
    data = payload(1_000_000, seed=31)
    relay, body_bytes = await relayed(url, data)
    assert body_bytes == len(data)
    assert (root / "snap").read_bytes() == data
    await relay.close()
    assert staged_files() == []


async def test_a_malformed_staged_header_is_a_400(relay_server: tuple[str, Path]) -> None:
    import aiohttp

    url, root = relay_server
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-Fstransport-Vote": "1,1,0",
        "X-Fstransport-Meta": "{}",
        "X-Fstransport-Offset": "0",
        "X-Fstransport-Done": "0",
        "X-Fstransport-Crc32c": "0",
        "X-Fstransport-Staged": '{"area": "memory://stage", "name": 5}',
    }
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{url}/v1/snapshots/snap", data=b"", headers=headers) as answer,
    ):
        body = await answer.json()
    assert answer.status == 400
    assert body["field"] == "staged"
    assert not root.exists() or not any(root.iterdir())


def test_the_staged_header_round_trips_and_is_strict() -> None:
    ref = StagedChunk("s3://bucket/stage/snap/v1-1-0/" + "a" * 32, "0" * 16 + "-1-00000000", 1, 0)
    text = encode_staged(ref)
    assert text.isascii()
    assert len(text) <= 1024
    assert decode_staged(text) == ref
    unicode = StagedChunk("s3://b/ünïcode", ref.name, 1, 0)
    assert decode_staged(encode_staged(unicode)) == unicode
    fields = json.loads(text)
    for bad in (
        "[]",
        "not json",
        json.dumps({**fields, "extra": 1}),
        json.dumps({**fields, "length": -1}),
        json.dumps({**fields, "crc32c": 1.5}),
        json.dumps({**fields, "length": True}),
        json.dumps({**fields, "area": ["nested"]}),
        '{"area":"a","area":"b","name":"n","length":1,"crc32c":0}',
        json.dumps({**fields, "area": "x" * MAX_STAGED_LENGTH}),
    ):
        with pytest.raises(InvalidRequest) as caught:
            decode_staged(bad)
        assert caught.value.field == "staged"


@pytest.fixture
async def s3_relay_server(
    tmp_path: Path, s3_storage_options: dict[str, Any]
) -> AsyncIterator[tuple[str, Path]]:
    store = FsspecSnapshotStore(str(tmp_path / "recv"))
    receiver = Receiver(store, relay_options=s3_storage_options)
    runner, url = await start(create_app(store, token=TOKEN, receiver=receiver))
    try:
        yield url, tmp_path / "recv"
    finally:
        await runner.cleanup()


async def test_through_s3_and_a_server(
    s3_relay_server: tuple[str, Path],
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
) -> None:
    url, root = s3_relay_server
    data = payload(1_500_000, seed=32)
    http = CountingBodies(url, token=TOKEN)
    async with http:
        relay = RelayNetwork(http, f"s3://{s3_bucket}/stage", **s3_storage_options)
        await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
        assert http.body_bytes == 0
    assert (root / "snap").read_bytes() == data
    await relay.close()
    assert not s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents")
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
