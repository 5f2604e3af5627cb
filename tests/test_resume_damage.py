"""A resumed partial is never trusted over its bytes: damaged, truncated or over-claimed partial
data (and S3 upload state) is re-verified, the bad ranges are sent again, the intact ones are
not, and the installed snapshot is exact (issue #11, "Broken 1")."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import (
    Chunked,
    FsspecSnapshotStore,
    Receiver,
    ReplicationClosed,
    Snapshot,
    SnapshotMeta,
    TransferOptions,
    Vote,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.options import KiB, MiB
from fstransport.protocol.ranges import RangeSet
from fstransport.storage.backends.local import journal
from fstransport.storage.journal import parse_records
from fstransport.testing.mock import MockNetwork, deliver_to, stop_after
from tests.conftest import payload

V = Vote(1, 0)
ID = "snap"


@pytest.fixture(autouse=True)
def journal_commits_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit local journals as soon as a line is queued, so that what a test's first
    receiver acknowledged is recorded when the second one starts (`interrupted` waits)."""
    monkeypatch.setattr(journal, "QUIET_COMMIT", 0.0)


def sent_ranges(net: MockNetwork) -> RangeSet:
    """The byte ranges `net` was sent, requests repeated or not."""
    sent = RangeSet()
    for seen in net.seen:
        sent.add(seen.offset, seen.offset + seen.length)
    return sent


def meta_for(data: bytes) -> SnapshotMeta:
    return SnapshotMeta(ID, size=len(data), checksum=format_checksum(chunk_crc(data)))


async def interrupted(
    receiver: Receiver,
    data: bytes,
    options: TransferOptions,
    acks: int,
    meta: SnapshotMeta | None = None,
) -> None:
    """A sender of `data` that dies without a word after `acks` acknowledged chunks."""
    stopped = asyncio.Event()
    net = MockNetwork(stop_after(acks, deliver_to(receiver, interleave=False), stopped))
    snap = Snapshot(meta or meta_for(data), io.BytesIO(data))
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(net, V, snap, stopped.wait(), options)
    await asyncio.sleep(0.2)  # the receiver's journal commits what it was sent


async def resend(
    receiver: Receiver, data: bytes, options: TransferOptions, meta: SnapshotMeta | None = None
) -> MockNetwork:
    """A sender of `data` to the end; the network records what it sent."""
    net = MockNetwork(deliver_to(receiver, interleave=False))
    snap = Snapshot(meta or meta_for(data), io.BytesIO(data))
    await Chunked.send_snapshot(net, V, snap, None, options)
    return net


CHUNK = 64 * KiB
OPTIONS = TransferOptions(chunk_size=CHUNK, max_in_flight=1)
SIZE = 32 * CHUNK + 17
ACKS = 20  # chunks [0, 20) held when the first sender dies


def _local_partial(root: Path) -> Path:
    return root / ".fstransport" / "partial" / ID


def _memory_partial(url: str) -> Any:
    fs = fsspec.filesystem("memory")
    path = url.removeprefix("memory://").rstrip("/") + f"/.fstransport/partial/{ID}"
    return fs.store["/" + path.lstrip("/")]


Damage = Callable[[bytearray], bytearray]


def flip(offset: int) -> Damage:
    def damage(data: bytearray) -> bytearray:
        data[offset] ^= 0x40
        return data

    return damage


def truncate(length: int) -> Damage:
    return lambda data: data[:length]


DAMAGES: dict[str, tuple[Damage, tuple[int, int]]] = {
    # what is done to the partial file, and the bytes that must be sent again for it
    "flip": (flip(5 * CHUNK + 100), (5 * CHUNK, 6 * CHUNK)),
    "truncate": (truncate(12 * CHUNK + 5), (12 * CHUNK, ACKS * CHUNK)),
}


def damage_local(root: Path, damage: Damage) -> None:
    path = _local_partial(root)
    path.write_bytes(bytes(damage(bytearray(path.read_bytes()))))


def damage_memory(url: str, damage: Damage) -> None:
    entry = _memory_partial(url)
    damaged = bytes(damage(bytearray(entry.getvalue())))
    entry.seek(0)
    entry.truncate(0)
    entry.write(damaged)


def assert_resent_only(net: MockNetwork, bad: tuple[int, int]) -> None:
    """The damaged range was sent again; of the intact held ranges, nothing but chunk 0 (a new
    sender always sends it) and the last chunk the dead sender had in flight."""
    resent = sent_ranges(net)
    for start, end in [(CHUNK, bad[0]), (bad[1], (ACKS - 1) * CHUNK)]:
        if end > start:
            held = RangeSet([(start, end)])
            for s, e in resent:
                held.remove(s, e)
            assert held.total() == end - start, f"intact [{start}, {end}) was sent again"
    for offset in range(bad[0], bad[1], CHUNK):
        assert offset in resent, f"damaged chunk at {offset} was not sent again"


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_a_damaged_partial_is_never_installed(kind: str, damage: str, tmp_path: Path) -> None:
    data = payload(SIZE, seed=11)
    change, bad = DAMAGES[damage]
    url = str(tmp_path / "r") if kind == "local" else "memory://damaged"
    first = FsspecSnapshotStore(url)
    await interrupted(Receiver(first), data, OPTIONS, acks=ACKS)
    if kind == "local":
        damage_local(tmp_path / "r", change)
    else:
        damage_memory(url, change)
    store = FsspecSnapshotStore(url)  # a restarted receiver over the same root
    net = await resend(Receiver(store), data, OPTIONS)
    with await store.open(ID) as f:
        assert f.read() == data
    assert_resent_only(net, bad)
    await first.abort(ID)  # (closes the first receiver's descriptors)


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_a_journal_claiming_more_than_the_partial_holds(kind: str, tmp_path: Path) -> None:
    """Journal lines for chunks whose bytes never reached the file (a power loss between the
    two, or a journal written ahead of its data) are not believed."""
    data = payload(SIZE, seed=12)
    url = str(tmp_path / "r") if kind == "local" else "memory://claims"
    first = FsspecSnapshotStore(url)
    await interrupted(Receiver(first), data, OPTIONS, acks=ACKS)
    lines = [
        f"{offset} {CHUNK} {chunk_crc(data[offset : offset + CHUNK])}\n"
        for offset in range(ACKS * CHUNK, 28 * CHUNK, CHUNK)
    ]  # right CRCs, bytes never written
    lines.append(f"{30 * CHUNK} {CHUNK} 12345\n")  # a wrong CRC for bytes never written
    journal = first.journal_path(ID)
    if kind == "local":
        with Path(journal).open("a") as f:  # noqa: ASYNC230 (a test's own small file)
            f.write("".join(lines))
    else:
        entry = fsspec.filesystem("memory").store[journal]
        entry.seek(0, 2)
        entry.write("".join(lines).encode())
    store = FsspecSnapshotStore(url)
    net = await resend(Receiver(store), data, OPTIONS)
    with await store.open(ID) as f:
        assert f.read() == data
    sent = sent_ranges(net)
    for offset in range(ACKS * CHUNK, 28 * CHUNK, CHUNK):
        assert offset in sent, f"chunk at {offset} was claimed, not held, and not sent"
    await first.abort(ID)


async def test_a_live_receiver_reverifies_what_it_holds_for_a_new_sender(tmp_path: Path) -> None:
    """The sender dies, the receiver lives on (a `fstransport serve`), the partial is damaged
    meanwhile: the next sender's transfer continues the live stream, which re-reads its bytes."""
    data = payload(SIZE, seed=13)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    receiver = Receiver(store)
    await interrupted(receiver, data, OPTIONS, acks=ACKS)
    damage_local(tmp_path / "r", flip(7 * CHUNK + 3))
    net = await resend(receiver, data, OPTIONS)
    assert (tmp_path / "r" / ID).read_bytes() == data
    assert_resent_only(net, (7 * CHUNK, 8 * CHUNK))


# -- S3: the upload state object is a claim, checked against ListParts --------------------------

PART = 5 * MiB
S3_SIZE = 4 * PART + 123  # five parts, the last one short
S3_OPTIONS = TransferOptions(chunk_size=MiB, max_in_flight=2)


def _state(s3_client: Any, bucket: str) -> tuple[str, dict[str, Any]]:
    key = f"resume/.fstransport/journal/{ID}"
    state: dict[str, Any] = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return key, state


async def parts_landed(s3_client: Any, bucket: str, count: int) -> None:
    """Wait (up to 20 s) until the upload in `bucket` lists `count` parts, and a moment more
    for their answers to reach the receiver."""
    for _ in range(200):
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
        if uploads:
            upload = uploads[0]
            listed = s3_client.list_parts(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            if len(listed.get("Parts") or []) >= count:
                await asyncio.sleep(0.3)
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} parts never landed")


def _spoil_etag(state: dict[str, Any], _: Any, __: str) -> None:
    state["parts"]["2"][0] = '"0123456789abcdef0123456789abcdef"'


def _spoil_crc(state: dict[str, Any], _: Any, __: str) -> None:
    state["parts"]["2"][2] ^= 1  # the CRC no longer agrees with the recorded checksum header


def _claim_missing(state: dict[str, Any], _: Any, __: str) -> None:
    state["parts"]["4"] = ['"feedfacefeedfacefeedfacefeedface"', "AAAAAA==", 0]


def _replace_part(state: dict[str, Any], s3_client: Any, bucket: str) -> None:
    """Another writer uploads other bytes of the same size as part 2 (the bucket's ETag
    changes; the state still names the old one)."""
    s3_client.upload_part(
        Bucket=bucket,
        Key=f"resume/{ID}",
        UploadId=state["upload_id"],
        PartNumber=2,
        Body=payload(PART, seed=99),
    )


S3_DAMAGES = {
    # how the state (or the bucket) is spoiled, and the parts that must be sent again
    "etag": (_spoil_etag, {2}),
    "crc": (_spoil_crc, {2}),
    "claims a part never uploaded": (_claim_missing, {4}),
    "part replaced in the bucket": (_replace_part, {2}),
}


async def interrupted_on_s3(
    data: bytes, bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> tuple[str, dict[str, Any]]:
    """A first sender of `data` to ``s3://BUCKET/resume`` dies after 17 chunks, once 3 parts have
    landed; the upload state object's key and contents (closing the store records them)."""
    url = f"s3://{bucket}/resume"
    async with FsspecSnapshotStore(url, part_size=PART, **s3_storage_options) as first:
        await interrupted(Receiver(first), data, S3_OPTIONS, acks=17)
        await parts_landed(s3_client, bucket, 3)
    return _state(s3_client, bucket)


@pytest.mark.parametrize("damage", sorted(S3_DAMAGES))
async def test_s3_parts_that_differ_from_their_record_are_sent_again(
    damage: str, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(S3_SIZE, seed=21)
    url = f"s3://{s3_bucket}/resume"
    key, state = await interrupted_on_s3(data, s3_bucket, s3_storage_options, s3_client)
    recorded = {int(n) for n in state["parts"]}
    # (part 3 may have landed without its answer reaching the receiver before it stopped)
    assert {1, 2} <= recorded <= {1, 2, 3}, state["parts"]
    spoil, bad_parts = S3_DAMAGES[damage]
    spoil(state, s3_client, s3_bucket)
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(state).encode())
    async with FsspecSnapshotStore(url, part_size=PART, **s3_storage_options) as store:
        net = await resend(Receiver(store), data, S3_OPTIONS)
    got = s3_client.get_object(Bucket=s3_bucket, Key=f"resume/{ID}")["Body"].read()
    assert got == data
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    sent = sent_ranges(net)
    for number in recorded | bad_parts:
        middle = (number - 1) * PART + PART // 2
        if number in bad_parts:
            assert middle in sent, f"part {number} differs from its record: not sent again"
        else:
            assert middle not in sent, f"intact part {number} was sent again"


async def test_s3_upload_aborted_behind_the_receivers_back(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """The recorded upload is gone (aborted by a clean-up, say): the receiver starts afresh."""
    data = payload(S3_SIZE, seed=22)
    url = f"s3://{s3_bucket}/resume"
    _, state = await interrupted_on_s3(data, s3_bucket, s3_storage_options, s3_client)
    s3_client.abort_multipart_upload(
        Bucket=s3_bucket, Key=f"resume/{ID}", UploadId=state["upload_id"]
    )
    async with FsspecSnapshotStore(url, part_size=PART, **s3_storage_options) as store:
        net = await resend(Receiver(store), data, S3_OPTIONS)
    got = s3_client.get_object(Bucket=s3_bucket, Key=f"resume/{ID}")["Body"].read()
    assert got == data
    assert net.data_bytes >= len(data)
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


async def test_a_live_stream_taken_over_by_other_bytes_without_a_checksum(tmp_path: Path) -> None:
    """The rule behind ``ship --via`` without ``--checksum``: a stream still open in a running
    receiver is continued by the next sender of a snapshot of the same id and size.  If that
    sender's bytes are other bytes, the whole check fails, the receiver drops what it held and
    the sender starts over: exactly the new bytes are installed."""
    old, new = payload(SIZE, seed=14), payload(SIZE, seed=15)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    receiver = Receiver(store)
    await interrupted(receiver, old, OPTIONS, ACKS, SnapshotMeta(ID))
    await resend(receiver, new, OPTIONS, SnapshotMeta(ID))
    assert (tmp_path / "r" / ID).read_bytes() == new


async def test_a_restarted_receiver_resumes_nothing_without_a_checksum(tmp_path: Path) -> None:
    """After a restart, partial data is resumed only for a snapshot named by its checksum."""
    data = payload(SIZE, seed=16)
    first = FsspecSnapshotStore(str(tmp_path / "r"))
    await interrupted(Receiver(first), data, OPTIONS, ACKS, SnapshotMeta(ID))
    second = Receiver(FsspecSnapshotStore(str(tmp_path / "r")))
    net = await resend(second, data, OPTIONS, SnapshotMeta(ID))
    assert (tmp_path / "r" / ID).read_bytes() == data
    assert net.data_bytes == len(data)
    await first.abort(ID)


def test_a_released_local_sink_writes_its_journal_down(tmp_path: Path) -> None:
    """`store.close()` lets a transfer go with every line of its journal committed."""

    async def main() -> None:
        data = payload(SIZE, seed=17)
        first = FsspecSnapshotStore(str(tmp_path / "r"))
        await interrupted(Receiver(first), data, OPTIONS, acks=ACKS)
        await first.close()
        store = FsspecSnapshotStore(str(tmp_path / "r"))
        net = await resend(Receiver(store), data, OPTIONS)
        assert (tmp_path / "r" / ID).read_bytes() == data
        assert net.data_bytes <= len(data) - (ACKS - 2) * CHUNK

    journal.QUIET_COMMIT, saved = 60.0, journal.QUIET_COMMIT  # no commit but the release's
    journal.SYNC_INTERVAL, saved_interval = 60.0, journal.SYNC_INTERVAL
    try:
        asyncio.run(main())
    finally:
        journal.QUIET_COMMIT, journal.SYNC_INTERVAL = saved, saved_interval


async def test_s3_part_crc_spoiled_where_the_bucket_cannot_tell(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """A part's CRC and checksum header both changed in the state object: moto (like Ceph RGW)
    reports neither in ListParts, so the part passes; the whole-snapshot check, which combines
    that CRC, fails, the receiver drops the resumed upload and the sender starts over — the
    object is exact, never completed from a record that lies."""
    from fstransport.storage.backends.s3 import crc32c_header

    data = payload(S3_SIZE, seed=23)
    url = f"s3://{s3_bucket}/resume"
    key, state = await interrupted_on_s3(data, s3_bucket, s3_storage_options, s3_client)
    crc = (state["parts"]["2"][2] + 1) % 2**32
    state["parts"]["2"][1:] = [crc32c_header(crc), crc]
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(state).encode())
    async with FsspecSnapshotStore(url, part_size=PART, **s3_storage_options) as store:
        await resend(Receiver(store), data, S3_OPTIONS)
    got = s3_client.get_object(Bucket=s3_bucket, Key=f"resume/{ID}")["Body"].read()
    assert got == data
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


async def test_journal_lines_are_written_only_after_the_data_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit syncs the partial file first; if that sync fails, no line reaches the journal
    (it stays queued for the next commit)."""
    from fstransport.storage.sink import PwriteSink

    data = payload(3 * CHUNK, seed=18)
    meta = meta_for(data)
    journal_path = str(tmp_path / "journal")
    monkeypatch.setattr(journal, "QUIET_COMMIT", 60.0)  # commits only when the test says
    monkeypatch.setattr(journal, "SYNC_INTERVAL", 60.0)
    sink = await PwriteSink.create(str(tmp_path / "part"), journal_path=journal_path, meta=meta)
    synced: list[int] = []

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal, "_datasync", failing_sync)
    for offset in range(0, len(data), CHUNK):
        await sink.write(
            offset, data[offset : offset + CHUNK], chunk_crc(data[offset : offset + CHUNK])
        )
    assert sink._journal is not None
    with pytest.raises(OSError, match="Input/output"):
        await asyncio.to_thread(sink._journal.commit)
    text = await asyncio.to_thread(Path(journal_path).read_text)
    assert text.count("\n") == 1, "a line ran ahead of its data"
    monkeypatch.setattr(journal, "_datasync", synced.append)
    await asyncio.to_thread(sink._journal.commit)
    assert len(synced) == 1
    records = parse_records(await asyncio.to_thread(Path(journal_path).read_text), meta)
    assert records is not None
    assert [r.offset for r in records] == [0, CHUNK, 2 * CHUNK]
    await sink.abort()
