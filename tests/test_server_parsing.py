"""The server's parsing and guards, piece by piece, in this process: wire numbers, the strict
meta, the accept guard's once-a-minute note, and what `create_app` hands its receiver."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from fstransport import FsspecSnapshotStore, InvalidRequest, Receiver
from fstransport.http.app import RECEIVER_KEY, create_app
from fstransport.http.runner import AcceptGuard
from fstransport.http.wire import (
    MAX_DIGITS,
    decode_meta,
    decode_vote,
    encode_meta,
    parse_uint,
)
from fstransport.messages import LogId, SnapshotMeta, Vote


@pytest.mark.parametrize("text", ["0", "7", "18446744073709551615", "0" * MAX_DIGITS])
def test_ascii_numbers_parse(text: str) -> None:
    assert parse_uint(text, "x") == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "+1",
        "-1",
        "1_0",
        "0x1",
        "1.0",
        "²",
        "\u0663",
        "\uff11",
        "1" * 21,
        "9" * 5000,
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_uint(text, "X-Field")
    assert info.value.field == "X-Field"


@pytest.mark.parametrize("text", ["1,2,0", "0,0,1", " 3 , 4 , 1 "])
def test_votes_parse(text: str) -> None:
    vote = decode_vote(text)
    assert isinstance(vote, Vote)


@pytest.mark.parametrize("text", ["1,2", "1,2,3", "²,0,0", "1,-1,0", "9" * 4400 + ",0,0", "a,b,c"])
def test_malformed_votes_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_vote(text)


def test_meta_round_trips() -> None:
    meta = SnapshotMeta("s", LogId(3, 9), {"nodes": [1, 2, [3]]}, size=10, checksum="crc32c:0")
    assert decode_meta("s", encode_meta(meta)) == meta


@pytest.mark.parametrize(
    "text",
    [
        "[" * 17 + "]" * 17,
        '{"last_membership":' + "[" * 16 + "]" * 16 + "}",
        '{"size":1,"size":1}',
        '{"size":true}',
        '{"size":-1}',
        '{"size":1.0}',
        '{"size":1e3}',
        '{"size":NaN}',
        '{"size":Infinity}',
        '{"size":' + "1" * 21 + "}",
        '{"last_log_id":[true,1]}',
        '{"last_log_id":[1,false]}',
        '{"last_log_id":[1,-2]}',
        '{"last_log_id":[1]}',
        '{"checksum":1}',
        '{"extra":1}',
        '{"last_membership":"\\udc80"}',
        "[]",
        '"text"',
        "{",
        "x" * 5000,
    ],
)
def test_meta_is_checked_strictly(text: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_meta("s", text)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = '{"last_membership":"' + "[" * 100 + '\\"{{"}'
    assert decode_meta("s", text).last_membership == "[" * 100 + '"{{'


async def test_out_of_descriptors_is_noted_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    passed_on: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: passed_on.append(context))
    guard = AcceptGuard(loop)
    loop.set_exception_handler(guard)
    try:
        emfile = OSError(errno.EMFILE, "Too many open files")
        context = {"message": AcceptGuard.MESSAGE, "exception": emfile}
        with caplog.at_level(logging.ERROR, logger="fstransport.server"):
            for _ in range(1000):
                guard(loop, context)
        assert len(caplog.records) == 1
        assert "Too many open files" in caplog.records[0].getMessage()
        guard(loop, {"message": "something else"})  # not ours: handed on
        assert passed_on == [{"message": "something else"}]
    finally:
        guard.close()
        loop.set_exception_handler(None)


def test_a_receiver_without_an_idle_timeout_takes_the_servers(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path))
    app = create_app(store, no_auth=True, receiver=Receiver(store), idle_timeout=7)
    assert app[RECEIVER_KEY].idle_timeout == 7
    own = Receiver(store, idle_timeout=3)
    with_own = create_app(store, no_auth=True, receiver=own, idle_timeout=7)
    assert with_own[RECEIVER_KEY].idle_timeout == 3
    assert create_app(store, no_auth=True, idle_timeout=5)[RECEIVER_KEY].idle_timeout == 5
