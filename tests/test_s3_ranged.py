"""Parallel ranged reads of large S3 objects (`S3RangedSource`), on a real moto server."""

from __future__ import annotations

import asyncio
import os
import random
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fstransport import (
    ConfigurationError,
    FsspecSnapshotStore,
    Receiver,
    SourceChanged,
    StorageError,
    TransferOptions,
    ship,
)
from fstransport.options import KiB, MiB, RetryPolicy
from fstransport.protocol.parts import HandedOver
from fstransport.storage.backends.s3 import S3RangedSource, S3StreamSource, open_s3_source
from fstransport.storage.backends.s3 import ranged as s3_ranged
from fstransport.storage.source import open_source
from tests.conftest import payload
from tests.helpers import s3_calls, uploads
from tests.test_s3 import mismatch_once

PART = 256 * KiB
"""A small read part, so that tests cut a small object into many ranges."""
FAST_RETRY = RetryPolicy(initial_backoff=0.0, max_backoff=0.0, jitter=0.0)


def ranged_options(**changes: Any) -> TransferOptions:
    """Options under which ship() reads any S3 object of more than one part with ranged GETs."""
    values: dict[str, Any] = {
        "chunk_size": PART,
        "read_part_size": PART,
        "read_streams": 4,
        "ranged_read_threshold": 0,
        "retry": FAST_RETRY,
    }
    values.update(changes)
    return TransferOptions(**values)


@pytest.fixture(autouse=True)
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto answers a GET only after reading the whole object, so the ranged source would soon
    go over to one streaming GET there; these tests are about the ranged reads themselves."""
    monkeypatch.setattr(s3_ranged, "FALLBACK_RATIO", None)


@pytest.fixture
def gets() -> Iterator[list[dict[str, Any]]]:
    """The parameters of every ``get_object`` this process's s3fs clients make."""
    seen: list[dict[str, Any]] = []

    async def recording(method: str, kwargs: dict[str, Any]) -> None:
        if method == "get_object":
            seen.append(dict(kwargs))

    with s3_calls(before=recording):
        yield seen


class BreakingBody:
    """A response body that ends in a connection reset after `limit` bytes."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner = inner
        self.left = limit

    async def readinto(self, view: memoryview) -> int:
        if self.left <= 0:
            raise ConnectionResetError("injected: connection reset mid-body")
        got: int = await self.inner.readinto(view[: self.left])
        self.left -= got
        return got

    def close(self) -> None:
        self.inner.close()


@contextmanager
def break_gets(breaks: dict[int, int]) -> Iterator[list[str]]:
    """Make the GET whose range starts at offset `o` break after ``breaks[o]`` bytes, once."""
    ranges: list[str] = []

    def breaking(method: str, kwargs: dict[str, Any], response: Any) -> Any:
        if method == "get_object":
            ranges.append(str(kwargs.get("Range")))
            first = int(str(kwargs.get("Range", "bytes=0-")).split("=")[1].split("-")[0])
            if first in breaks:
                response["Body"] = BreakingBody(response["Body"], breaks.pop(first))
        return response

    with s3_calls(answer=breaking):
        yield ranges


@contextmanager
def replaced_when_read(client: Any, bucket: str, key: str, at: int, body: bytes) -> Iterator[Any]:
    """A writer replaces the object `key` with `body` just before the first GET of a range that
    starts at offset `at`; the yielded namespace's ``replaced`` says whether that happened."""
    seen = types.SimpleNamespace(replaced=False)

    async def replacing(method: str, kwargs: dict[str, Any]) -> None:
        starts_at = str(kwargs.get("Range", "")).startswith(f"bytes={at}-")
        if method == "get_object" and starts_at and not seen.replaced:
            seen.replaced = True
            client.put_object(Bucket=bucket, Key=key, Body=body)

    with s3_calls(before=replacing):
        yield seen


async def open_ranged(
    bucket: str, key: str, options: dict[str, Any], *, streams: int = 4, part: int = PART
) -> S3RangedSource:
    source = await open_s3_source(
        f"s3://{bucket}/{key}", options, streams=streams, part_size=part, threshold=0
    )
    assert isinstance(source, S3RangedSource)
    source.retry = FAST_RETRY
    return source


async def test_large_object_ships_byte_exact_with_ranged_gets(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    gets: list[dict[str, Any]],
) -> None:
    data = payload(10 * PART + 123, seed=1)  # 11 parts, the last short
    s3_client.put_object(Bucket=s3_bucket, Key="big.bin", Body=data)
    target = tmp_path / "big.bin"
    report = await ship(
        f"s3://{s3_bucket}/big.bin",
        str(target),
        source_options=s3_storage_options,
        options=ranged_options(),
    )
    assert target.read_bytes() == data
    assert report.size == len(data)
    ranges = sorted(str(g["Range"]) for g in gets)
    expected = sorted(
        f"bytes={o}-{min(len(data), o + PART) - 1}" for o in range(0, len(data), PART)
    )
    assert ranges == expected  # each part once, nothing twice
    etag = s3_client.head_object(Bucket=s3_bucket, Key="big.bin")["ETag"]
    assert all(g["IfMatch"] == etag for g in gets)


async def test_small_object_is_read_with_one_get(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    gets: list[dict[str, Any]],
) -> None:
    data = payload(3 * MiB, seed=2)
    s3_client.put_object(Bucket=s3_bucket, Key="small.bin", Body=data)
    # the default threshold (256 MiB) keeps a 3 MiB object on one streaming GET
    await ship(
        f"s3://{s3_bucket}/small.bin",
        str(tmp_path / "small.bin"),
        source_options=s3_storage_options,
        options=TransferOptions(chunk_size=256 * KiB),
    )
    assert (tmp_path / "small.bin").read_bytes() == data
    assert len(gets) == 1
    assert gets[0]["Range"] == "bytes=0-"


async def test_source_below_threshold_or_single_stream_is_a_stream_source(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="o", Body=payload(4 * PART, seed=3))
    url = f"s3://{s3_bucket}/o"
    cases: list[tuple[int, int, type]] = [  # (streams, threshold, kind)
        (4, 4 * PART + 1, S3StreamSource),
        (1, 0, S3StreamSource),
        (4, 4 * PART, S3RangedSource),
    ]
    for streams, threshold, kind in cases:
        source = await open_source(
            url,
            read_streams=streams,
            read_part_size=PART,
            ranged_read_threshold=threshold,
            **s3_storage_options,
        )
        try:
            assert isinstance(source, kind), (streams, threshold)
        finally:
            await source.close()
    with pytest.raises(ConfigurationError):
        await open_source(url, read_streams=0, **s3_storage_options)


async def test_reads_rewind_and_memory_stays_bounded(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(12 * PART + 777, seed=4)
    s3_client.put_object(Bucket=s3_bucket, Key="r.bin", Body=data)
    source = await open_ranged(s3_bucket, "r.bin", s3_storage_options, streams=3)
    try:
        step = 100 * KiB  # chunks that straddle parts
        first = await asyncio.gather(*(source.read(o, step) for o in range(0, 6 * PART, step)))
        assert b"".join(bytes(b) for b in first) == data[: len(first) * step]
        # the sender's window rewinds to an earlier offset, then goes on from there
        again = [bytes(await source.read(o, step)) for o in range(PART + 5, len(data), step)]
        assert b"".join(again) == data[PART + 5 :]
        assert source.max_held <= 3 * PART
        # a read within one part is that part's buffer itself, or a view of it: no copy
        whole = await source.read(2 * PART, PART)
        assert isinstance(whole, HandedOver)
        assert bytes(whole) == data[2 * PART : 3 * PART]
        inner = await source.read(2 * PART + 10, 20)
        assert isinstance(inner, memoryview)
        assert isinstance(inner.obj, HandedOver)
        assert bytes(inner) == data[2 * PART + 10 : 2 * PART + 30]
        assert source.max_held <= 3 * PART
    finally:
        await source.close()


async def test_memory_bound_holds_with_a_window_wider_than_the_streams(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = payload(16 * PART, seed=5)
    s3_client.put_object(Bucket=s3_bucket, Key="w.bin", Body=data)
    held: list[int] = []
    real_close = S3RangedSource.close

    async def recording_close(self: S3RangedSource) -> None:
        held.append(self.max_held)
        await real_close(self)

    monkeypatch.setattr(S3RangedSource, "close", recording_close)
    await ship(
        f"s3://{s3_bucket}/w.bin",
        str(tmp_path / "w.bin"),
        source_options=s3_storage_options,
        # 8 chunks of 2 parts each in flight, against 2 streams
        options=ranged_options(chunk_size=2 * PART, max_in_flight=8, read_streams=2),
    )
    assert (tmp_path / "w.bin").read_bytes() == data
    assert held
    assert 0 < held[0] <= 2 * PART


async def test_a_range_failing_mid_way_is_asked_again_from_where_it_stopped(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(8 * PART, seed=6)
    s3_client.put_object(Bucket=s3_bucket, Key="f.bin", Body=data)
    cut = 100 * KiB + 3
    with break_gets({3 * PART: cut, 5 * PART: 0}) as ranges:
        report = await ship(
            f"s3://{s3_bucket}/f.bin",
            str(tmp_path / "f.bin"),
            source_options=s3_storage_options,
            options=ranged_options(),
        )
    assert (tmp_path / "f.bin").read_bytes() == data
    assert report.retries == 0  # the source recovered on its own; the sender saw nothing
    # the broken GET of part 4 was followed by one for the rest of it only
    assert f"bytes={3 * PART + cut}-{4 * PART - 1}" in ranges
    assert ranges.count(f"bytes={5 * PART}-{6 * PART - 1}") == 2
    assert len(ranges) == 8 + 2


async def test_a_range_that_keeps_failing_ends_in_a_storage_error(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(6 * PART, seed=7)
    s3_client.put_object(Bucket=s3_bucket, Key="k.bin", Body=data)
    source = await open_ranged(s3_bucket, "k.bin", s3_storage_options)
    source.retry = RetryPolicy(max_attempts=3, initial_backoff=0.0, jitter=0.0)
    try:
        with break_gets({2 * PART: 10, 2 * PART + 10: 10, 2 * PART + 20: 10}) as ranges:
            assert bytes(await source.read(0, 2 * PART)) == data[: 2 * PART]
            with pytest.raises(StorageError) as caught:
                await source.read(2 * PART, PART)
        assert caught.value.retryable
        assert ranges.count(f"bytes={2 * PART + 20}-{3 * PART - 1}") == 1  # the third try
    finally:
        await source.close()


async def test_source_replaced_mid_transfer_is_a_typed_error_and_nothing_lands(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(12 * PART, seed=8)
    s3_client.put_object(Bucket=s3_bucket, Key="c.bin", Body=data)
    new = payload(12 * PART, seed=9)
    with (
        replaced_when_read(s3_client, s3_bucket, "c.bin", 6 * PART, new) as seen,
        pytest.raises(SourceChanged) as caught,
    ):
        await ship(
            f"s3://{s3_bucket}/c.bin",
            str(tmp_path / "c.bin"),
            source_options=s3_storage_options,
            options=ranged_options(),
        )
    assert seen.replaced
    assert isinstance(caught.value, StorageError)
    assert not caught.value.retryable
    assert not (tmp_path / "c.bin").exists()
    leftovers = [name for _, _, names in os.walk(tmp_path) for name in names]
    assert leftovers == []  # no partial file or journal either


async def test_source_replaced_mid_transfer_to_s3_leaves_no_object_or_upload(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(24 * PART, seed=10)
    s3_client.put_object(Bucket=s3_bucket, Key="c.bin", Body=data)
    with (
        replaced_when_read(s3_client, s3_bucket, "c.bin", 20 * PART, b"new") as seen,
        pytest.raises(SourceChanged),
    ):
        await ship(
            f"s3://{s3_bucket}/c.bin",
            f"s3://{s3_bucket}/copy.bin",
            source_options=s3_storage_options,
            target_options=s3_storage_options,
            store_options={"part_size": 5 * MiB},
            options=ranged_options(chunk_size=PART),
            server_side=False,
        )
    assert seen.replaced
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == ["c.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_stream_source_rewind_after_replacement_is_a_typed_error(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(2 * MiB, seed=11)
    s3_client.put_object(Bucket=s3_bucket, Key="s.bin", Body=data)
    source = await open_source(f"s3://{s3_bucket}/s.bin", **s3_storage_options)
    assert isinstance(source, S3StreamSource)
    try:
        assert bytes(await source.read(0, 1000)) == data[:1000]
        s3_client.put_object(Bucket=s3_bucket, Key="s.bin", Body=payload(2 * MiB, seed=12))
        with pytest.raises(SourceChanged):
            await source.read(10, 1000)  # a rewind opens a new GET: If-Match fails
    finally:
        await source.close()


async def test_sender_window_rewinds_to_an_earlier_offset(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    gets: list[dict[str, Any]],
) -> None:
    """The receiver answers the 8th chunk with a mismatch asking for an offset inside part 2:
    the sender rewinds there, and the source serves the earlier bytes again, by new GETs for
    parts it had let go."""
    data = payload(10 * PART + 50, seed=13)
    s3_client.put_object(Bucket=s3_bucket, Key="rw.bin", Body=data)
    rewind_to = PART + 1234
    async with FsspecSnapshotStore(str(tmp_path / "store")) as store:
        net = mismatch_once(Receiver(store), after=7, expect=rewind_to)
        report = await ship(
            f"s3://{s3_bucket}/rw.bin",
            str(tmp_path / "store" / "rw.bin"),
            source_options=s3_storage_options,
            network=net,
            options=ranged_options(chunk_size=PART // 2, max_in_flight=2),
        )
    assert (tmp_path / "store" / "rw.bin").read_bytes() == data
    assert report.rewinds >= 1
    assert rewind_to in net.offsets
    assert net.offsets.index(rewind_to) > 7
    # part 2 was fetched a second time after the rewind
    assert [g["Range"] for g in gets].count(f"bytes={PART}-{2 * PART - 1}") >= 2


# -- the window policy, against an in-memory double of the S3 client (no server) ---------------


class FakeBody:
    """A GET's body that hands out its bytes in small, random pieces, yielding in between."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data = memoryview(data)
        self.rng = rng

    async def readinto(self, view: memoryview) -> int:
        await asyncio.sleep(0)
        n = min(len(view), len(self.data), self.rng.randint(1, 5000))
        view[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def close(self) -> None:
        pass


class FakeS3:
    """Answers ranged ``get_object`` calls from `data`, as S3 does (ETag, Content-Range);
    with `answer_delay`, each answer comes that late (as moto's, which reads the whole object
    first)."""

    def __init__(self, data: bytes, seed: int, answer_delay: float | None = None) -> None:
        self.data = data
        self.rng = random.Random(seed)
        self.ranges: list[tuple[int, int | None]] = []
        self.answer_delay = answer_delay

    async def _call_s3(self, method: str, **kwargs: Any) -> dict[str, Any]:
        assert method == "get_object"
        assert kwargs["IfMatch"] == '"etag"'
        first_text, last_text = kwargs["Range"].removeprefix("bytes=").split("-")
        first = int(first_text)
        last = int(last_text) if last_text else len(self.data) - 1
        self.ranges.append((first, int(last_text) if last_text else None))
        delay = self.answer_delay
        await asyncio.sleep(self.rng.random() / 1000 if delay is None else delay)
        body = FakeBody(self.data[first : last + 1], self.rng)
        content_range = f"bytes {first}-{last}/{len(self.data)}"
        return {"Body": body, "ETag": '"etag"', "ContentRange": content_range}


@pytest.mark.parametrize("seed", range(8))
async def test_random_windows_of_reads_get_their_bytes_within_the_memory_bound(seed: int) -> None:
    """Windows of concurrent reads of random sizes, with rewinds and skips ahead, as the sender
    makes them: every read gets exactly its bytes, and at most streams x part are held."""
    rng = random.Random(seed)
    part = rng.choice([1000, 4096, 10_000])
    streams = rng.randint(1, 5)
    data = payload(rng.randint(5 * part, 40 * part), seed=seed)
    fake = FakeS3(data, seed)
    source = S3RangedSource(
        fake, "b", "k", len(data), "fake", etag='"etag"', streams=streams, part_size=part
    )
    offset = 0
    for _ in range(25):
        chunk = rng.randint(1, 3 * part)
        window = rng.randint(1, 6)
        offsets = [offset + i * chunk for i in range(window) if offset + i * chunk < len(data)]
        got = await asyncio.gather(*(source.read(o, chunk) for o in offsets))
        for o, buffer in zip(offsets, got, strict=True):
            assert bytes(buffer) == data[o : o + chunk]
        assert source.max_held <= streams * part
        move = rng.random()
        if move < 0.2:  # a rewind
            offset = rng.randrange(0, offset + 1)
        elif move < 0.3:  # the receiver holds the next bytes: skip ahead
            offset = min(len(data) - 1, offsets[-1] + rng.randint(1, 10 * part))
        else:
            offset = offsets[-1] + chunk
        if offset >= len(data):
            offset = 0
    await source.close()
    assert source.max_held <= streams * part


async def test_a_server_slow_to_answer_each_get_gets_one_streaming_get(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes far longer to answer a GET than to send a part (moto reads the whole
    object for each) is read with the one streaming GET the source starts with."""
    monkeypatch.setattr(s3_ranged, "FALLBACK_RATIO", 3.0)
    part = 64 * KiB
    data = payload(40 * part + 7, seed=21)
    fake = FakeS3(data, seed=21, answer_delay=0.05)
    source = S3RangedSource(
        fake, "b", "k", len(data), "fake", etag='"etag"', streams=3, part_size=part
    )
    try:
        step = part // 2
        for offset in range(0, len(data), 4 * step):
            got = await asyncio.gather(
                *(
                    source.read(o, step)
                    for o in range(offset, min(len(data), offset + 4 * step), step)
                )
            )
            assert b"".join(bytes(g) for g in got) == data[offset : offset + 4 * step]
        assert source.fell_back
        assert fake.ranges == [(0, None)]  # one streaming GET for everything
        assert source.max_held == 0
    finally:
        await source.close()


async def test_a_server_quick_to_answer_gets_ranged_gets_after_the_first_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "quick" judged with a generous ratio: on a loaded machine an instant fake's first answer
    # can still take a few times longer than sending 64 KiB, which is not what this test is about
    monkeypatch.setattr(s3_ranged, "FALLBACK_RATIO", 1000.0)
    part = 64 * KiB
    data = payload(12 * part, seed=22)
    fake = FakeS3(data, seed=22, answer_delay=0.0)
    source = S3RangedSource(
        fake, "b", "k", len(data), "fake", etag='"etag"', streams=3, part_size=part
    )
    try:
        step = part // 4
        got = [bytes(await source.read(o, step)) for o in range(0, len(data), step)]
        assert b"".join(got) == data
        assert source.mode == "ranged"
        assert fake.ranges[0] == (0, None)  # the probe: one streaming GET for the first part
        ranged = fake.ranges[1:]
        assert ranged == [(n * part, (n + 1) * part - 1) for n in range(1, 12)]
    finally:
        await source.close()
