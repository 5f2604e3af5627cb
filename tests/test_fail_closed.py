"""The receiver server fails closed, in-process (a real aiohttp server on 127.0.0.1): tokens,
the Authorization header, votes kept per snapshot id, and the one table of errors on the wire."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fstransport import (
    ChecksumMismatch,
    ConfigurationError,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InvalidRequest,
    NetworkError,
    PayloadTooLarge,
    Receiver,
    RemoteError,
    SnapshotMeta,
    SnapshotMismatch,
    SnapshotSegmentId,
    StorageError,
    TooManyTransfers,
    TransferOptions,
    Unauthorized,
    Vote,
)
from fstransport.checksum import chunk_crc
from fstransport.errors import BodyStalled, FstransportError
from fstransport.http.app import RECEIVER_KEY, create_app
from fstransport.http.client import HttpNetwork
from fstransport.http.statuses import ERRORS, decode_error, encode_error
from fstransport.receiver import Receiver as ReceiverImpl
from tests.test_http_errors import serve

TOKEN = "fail-cl0sed"
OPTIONS = TransferOptions()


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """start(app) -> base URL; every runner cleaned up after the test."""
    runners: list[web.AppRunner] = []

    async def _start(app: web.Application) -> str:
        runner, url = await serve(app)
        runners.append(runner)
        return url

    yield _start
    for runner in runners:
        await runner.cleanup()


def chunk(
    data: bytes, snapshot_id: str, vote: Vote, *, offset: int = 0, done: bool = True
) -> InstallSnapshotRequest:
    meta = SnapshotMeta(snapshot_id=snapshot_id, size=len(data) if done else None)
    return InstallSnapshotRequest(vote, meta, offset, data, done, crc32c=chunk_crc(data))


# -- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a token"),
        ({"token": None}, "needs a token"),
        ({"token": ""}, "token is empty"),
        ({"token": "two words"}, "visible ASCII"),
        ({"token": "tök"}, "visible ASCII"),
        ({"token": "x\n"}, "visible ASCII"),
        ({"token": b"bytes"}, "must be a string"),
        ({"token": TOKEN, "no_auth": True}, "not both"),
        ({"no_auth": 1}, "no_auth must be True or False"),
    ],
)
def test_create_app_refuses_anything_but_a_token_or_an_explicit_no_auth(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    store = FsspecSnapshotStore(str(tmp_path))
    with pytest.raises(ConfigurationError, match=message):
        create_app(store, **kwargs)


def test_create_app_without_auth_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fstransport.server"):
        create_app(FsspecSnapshotStore(str(tmp_path)), no_auth=True)
    assert "without authentication" in caplog.text


def test_an_empty_client_token_is_refused_not_dropped() -> None:
    with pytest.raises(ConfigurationError, match="token is empty"):
        HttpNetwork("http://127.0.0.1:1", token="")


async def raw_put(url: str, head: bytes) -> tuple[int, dict[str, Any]]:
    """A chunk request written byte by byte, with `head` as extra header lines."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b"abc"
    request = (
        b"PUT /v1/snapshots/s.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b'X-Fstransport-Vote: 1,0,0\r\nX-Fstransport-Meta: {"size":3}\r\n'
        b"X-Fstransport-Offset: 0\r\nX-Fstransport-Done: 1\r\n"
        + f"X-Fstransport-Crc32c: {chunk_crc(body)}\r\nContent-Length: 3\r\n".encode()
        + head
        + b"\r\n"
        + body
    )
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\n",
        b"Authorization: Bearer " + TOKEN.encode() + b"\xc3\r\n",
        b"Authorization: Bearer " + TOKEN.encode()[:-1] + b"\r\n",
        b"Authorization: bearer " + TOKEN.encode() + b"\r\n",
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nAuthorization: Bearer wrong\r\n",
        b"Authorization: Bearer wrong\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n",
    ],
    ids=["none", "non-utf8", "trailing-byte", "short", "lowercase", "twice-1", "twice-2"],
)
async def test_every_unusable_authorization_is_401_unauthorized(
    start: Start, tmp_path: Path, head: bytes
) -> None:
    root = tmp_path / "r"
    url = await start(create_app(FsspecSnapshotStore(str(root)), token=TOKEN))
    status, body = await raw_put(url, head)
    assert status == 401
    assert body["error"] == "Unauthorized"
    assert body["retryable"] is False
    assert not root.exists() or not any(root.rglob("*"))
    # and the right one gets through the same way
    good = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    status, body = await raw_put(url, good)
    assert status == 200, body
    assert (root / "s.bin").read_bytes() == b"abc"


async def test_401_reaches_the_sender_as_unauthorized(start: Start, tmp_path: Path) -> None:
    url = await start(create_app(FsspecSnapshotStore(str(tmp_path)), token=TOKEN))
    for token in [None, "wrong"]:
        async with HttpNetwork(url, token=token) as net:
            with pytest.raises(RemoteError) as info:
                await net.install_snapshot(chunk(b"x", "s.bin", Vote(1, 0)), OPTIONS)
        assert type(info.value.source) is Unauthorized
        assert "missing or wrong bearer token" in str(info.value)


# -- votes --------------------------------------------------------------------------------------


async def test_a_node_receiver_has_one_vote_for_every_snapshot(tmp_path: Path) -> None:
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path)))  # the default: a Raft node
    assert receiver.vote_scope == "node"
    high, low = Vote(7, 3, True), Vote(0, 0)
    assert (await receiver.handle(chunk(b"a", "a.bin", high))).vote == high
    answer = await receiver.handle(chunk(b"b", "b.bin", low))
    assert answer.vote == high  # refused: the sender stops
    assert not (tmp_path / "b.bin").exists()
    assert receiver.vote == high


async def test_a_snapshot_scoped_receiver_keeps_a_vote_per_id(tmp_path: Path) -> None:
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path)), vote_scope="snapshot")
    high, low = Vote(7, 3, True), Vote(0, 0)
    assert (await receiver.handle(chunk(b"a", "a.bin", high))).vote == high
    # another id: its own vote, the first sender's does not refuse it
    assert (await receiver.handle(chunk(b"b", "b.bin", low))).vote == low
    assert (tmp_path / "b.bin").read_bytes() == b"b"
    # the same id with a stale vote: refused, nothing replaced
    assert (await receiver.handle(chunk(b"A", "a.bin", low))).vote == high
    assert (tmp_path / "a.bin").read_bytes() == b"a"
    # an equal or higher vote on it goes through
    assert (await receiver.handle(chunk(b"A", "a.bin", high))).vote == high
    assert (tmp_path / "a.bin").read_bytes() == b"A"
    assert receiver.vote_for("a.bin") == high
    assert receiver.vote_for("b.bin") == low
    assert receiver.vote_for("never.bin") is None
    assert receiver.vote is None


async def test_a_stale_vote_cannot_end_another_senders_transfer(tmp_path: Path) -> None:
    """A broken request for a transfer in progress ends it, but not from a lower vote."""
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path)), vote_scope="snapshot")
    await receiver.handle(chunk(b"x" * 10, "a.bin", Vote(5, 1), done=False))
    stale = InstallSnapshotRequest(Vote(1, 0), SnapshotMeta("a.bin"), -1, b"", False)
    with pytest.raises(InvalidRequest):
        await receiver.handle(stale)
    assert receiver.receiving == ["a.bin"]


async def test_the_floor_vote_applies_to_every_id(tmp_path: Path) -> None:
    floor = Vote(3, 0)
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path)), floor, vote_scope="snapshot")
    assert (await receiver.handle(chunk(b"a", "a.bin", Vote(2, 9)))).vote == floor
    assert not (tmp_path / "a.bin").exists()
    assert (await receiver.handle(chunk(b"a", "a.bin", Vote(3, 0)))).vote == floor
    assert (tmp_path / "a.bin").exists()


async def test_votes_per_id_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fstransport.protocol.receiver_state.VOTES_MEMORY", 3)
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path)), vote_scope="snapshot")
    await receiver.handle(chunk(b"p" * 4, "pending.bin", Vote(9, 9), done=False))  # in progress
    for n in range(6):
        await receiver.handle(chunk(b"x", f"{n}.bin", Vote(1, n)))
    assert len(receiver.rules.votes) == 3
    assert receiver.vote_for("pending.bin") == Vote(9, 9), "a transfer in progress keeps its vote"
    assert receiver.vote_for("5.bin") == Vote(1, 5)
    assert receiver.vote_for("0.bin") is None


def test_an_unknown_vote_scope_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="vote_scope"):
        Receiver(FsspecSnapshotStore(str(tmp_path)), vote_scope="cluster")  # type: ignore[arg-type]


async def test_the_server_keeps_votes_per_snapshot_id_by_default(
    start: Start, tmp_path: Path
) -> None:
    app = create_app(FsspecSnapshotStore(str(tmp_path)), token=TOKEN)
    assert app[RECEIVER_KEY].vote_scope == "snapshot"
    url = await start(app)
    async with HttpNetwork(url, token=TOKEN) as net:
        high = await net.install_snapshot(chunk(b"a", "a.bin", Vote(7, 3, True)), OPTIONS)
        other = await net.install_snapshot(chunk(b"b", "b.bin", Vote(0, 0)), OPTIONS)
        stale = await net.install_snapshot(chunk(b"A", "a.bin", Vote(0, 0)), OPTIONS)
    assert high.vote == Vote(7, 3, True)
    assert other.vote == Vote(0, 0)
    assert stale.vote == Vote(7, 3, True)
    assert (tmp_path / "a.bin").read_bytes() == b"a"
    assert (tmp_path / "b.bin").read_bytes() == b"b"
    node = ReceiverImpl(FsspecSnapshotStore(str(tmp_path)))
    assert create_app(node.store, token=TOKEN, receiver=node)[RECEIVER_KEY] is node


# -- errors on the wire ------------------------------------------------------------------------


def test_permanent_storage_errors_are_not_retryable() -> None:
    for name in ["ENOSPC", "EROFS", "ENOENT", "EACCES", "ENAMETOOLONG", "EFBIG", "EDQUOT"]:
        code = getattr(errno, name)
        cause = OSError(code, "x")
        assert not StorageError("/r/s.bin", "write", cause).retryable, name
    for name in ["EIO", "EAGAIN", "ECONNRESET", "EINTR"]:
        cause = OSError(getattr(errno, name), "x")
        assert StorageError("/r/s.bin", "write", cause).retryable, name
    assert StorageError("s", "v", RuntimeError("x")).retryable
    assert not StorageError("s", "v", RuntimeError("x"), retryable=False).retryable
    assert StorageError("s", "v", FileNotFoundError("x"), retryable=True).retryable


@pytest.mark.parametrize(
    ("code", "retryable"),
    [("InvalidRequest", False), ("InvalidArgument", False), ("BadDigest", True),
     ("IncompleteBody", True), ("InternalError", True)],
)  # fmt: skip
def test_s3_errors_are_judged_by_their_code_not_only_their_errno(
    code: str, retryable: bool
) -> None:
    """s3fs turns all five into ``OSError(EINVAL or EREMOTEIO)``; only the ClientError behind
    it tells a malformed request (the same answer every time) from a body damaged on the way."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    client_error = ClientError({"Error": {"Code": code, "Message": "m"}}, "CopyObject")
    cause = translate_boto_error(client_error)
    assert isinstance(cause, OSError)
    assert StorageError("s3://b/k", "copy", cause).retryable is retryable


ROOT = "/srv/secret/place"

EXAMPLES: list[FstransportError] = [
    SnapshotMismatch(SnapshotSegmentId("s.bin", 8), SnapshotSegmentId("s.bin", 16)),
    PayloadTooLarge("chunk of 9 bytes exceeds 8", limit=8),
    Unauthorized("missing or wrong bearer token"),
    TooManyTransfers("already receiving 16 snapshots"),
    BodyStalled("no body bytes for 60 s", field="data"),
    InvalidRequest("bad offset", field="offset"),
    ChecksumMismatch("chunk [0, 8) of 's.bin'", "0000abcd", "0000abce"),
    ChecksumMismatch("snapshot 's.bin'", "crc32c:00000001", "crc32c:00000002", whole=True),
    StorageError(
        f"{ROOT}/.fstransport/partial/s.bin",
        "write",
        OSError(errno.ENOSPC, "No space left on device"),
    ),
    StorageError(
        f"{ROOT}/.fstransport/partial/s.bin",
        "open",
        OSError(errno.ENAMETOOLONG, "File name too long", f"{ROOT}/x"),
    ),
    StorageError(f"{ROOT}/s.bin", "install", RuntimeError(f"odd failure under {ROOT}/s.bin")),
    StorageError("s3://bucket/p/s.bin", "upload", ConnectionResetError("reset")),
    FstransportError(f"something else in {ROOT}"),
]


@pytest.mark.parametrize("exc", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_survives_the_wire_with_its_fields(exc: FstransportError) -> None:
    status, body = encode_error(exc, "s.bin", hide=(ROOT,))
    rule = next(r for r in ERRORS if isinstance(exc, r.kind))
    assert status == rule.status
    text = json.dumps(body)
    assert ROOT not in text, "no server path in an answer"
    assert body["error"] == type(exc).__name__
    assert isinstance(body["retryable"], bool)
    got = decode_error(status, json.loads(text), "s.bin", "http://peer")
    if isinstance(exc, PayloadTooLarge):
        assert isinstance(got, PayloadTooLarge)
        assert got.limit == exc.limit
        return
    assert isinstance(got, RemoteError)
    source = got.source
    assert type(source) is type(exc)
    if isinstance(exc, SnapshotMismatch):
        assert isinstance(source, SnapshotMismatch)
        assert (source.expect, source.got) == (exc.expect, exc.got)
    elif isinstance(exc, InvalidRequest):
        assert isinstance(source, InvalidRequest)
        assert str(source) == str(exc)
        assert source.field == exc.field
    elif isinstance(exc, ChecksumMismatch):
        assert isinstance(source, ChecksumMismatch)
        assert str(source) == str(exc)
        assert source.whole == exc.whole
    elif isinstance(exc, StorageError):
        assert isinstance(source, StorageError)
        assert source.retryable == exc.retryable
        assert source.verb == exc.verb
        assert source.subject == "s.bin"
        assert source.reason in str(source)
        if isinstance(exc.cause, OSError) and exc.cause.errno is not None:
            assert isinstance(source.cause, OSError)
            assert source.cause.errno == exc.cause.errno
            assert str(source) == f"cannot {exc.verb} s.bin: {exc.cause.strerror}"


def test_a_storage_answer_names_its_reason_and_errno() -> None:
    exc = StorageError(f"{ROOT}/x", "write", OSError(errno.ENOSPC, "No space left on device"))
    status, body = encode_error(exc, "s.bin", hide=(ROOT,))
    assert (status, body["errno"], body["retryable"]) == (500, "ENOSPC", False)
    assert body["message"] == "cannot write s.bin: No space left on device"
    assert body["reason"] == "No space left on device"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, None, Unauthorized),  # a proxy's bare 401
        (503, "<html>busy</html>", TooManyTransfers),
        (500, {"error": "KeyError", "message": "x"}, NetworkError),
        (502, None, NetworkError),
        (409, {"expect": "zero"}, None),  # malformed: NetworkError, not wrapped
        (500, {"error": "StorageError", "retryable": "no", "errno": "__name__"}, StorageError),
    ],
)
def test_odd_answers_decode_to_typed_errors(status: int, body: object, kind: type | None) -> None:
    got = decode_error(status, body, "s.bin", "http://peer")
    if kind is None:
        assert isinstance(got, NetworkError)
        return
    assert isinstance(got, RemoteError)
    assert isinstance(got.source, kind)
    if isinstance(got.source, StorageError):
        assert got.source.retryable  # unknown: retried, as before this table
        assert got.source.cause is None
