"""`HttpNetwork`: the `Network` adapter that sends chunks to a receiver server over HTTP(S).

One chunk is one request with the raw bytes as its body (see `fstransport.http.wire`); one
connection pool per adapter, shared by the chunks in flight.  aiohttp's errors become ours:
a refused connection is `Unreachable`, a timeout `Timeout`, anything else on the wire
`NetworkError`, and the server's own errors `RemoteError(source)` with their types and fields
kept (`fstransport.http.statuses`).
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
import urllib.parse
from typing import Any

import aiohttp

from fstransport.checksum import chunk_crc, combine
from fstransport.errors import (
    InvalidRequest,
    NetworkError,
    Timeout,
    Unreachable,
    UntrustedPeer,
)
from fstransport.http.body import BufferBody
from fstransport.http.statuses import decode_error
from fstransport.http.wire import (
    API_PREFIX,
    H_CRC,
    H_DELTA,
    H_DELTA_KEY,
    H_DONE,
    H_EXTENTS,
    H_META,
    H_OFFSET,
    H_STAGED,
    H_VOTE,
    check_token,
    decode_offer,
    decode_vote,
    encode_meta,
    encode_staged,
    encode_vote,
    offer_cap,
)
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    contiguous,
)
from fstransport.options import TransferOptions
from fstransport.protocol.delta_pack import encode_extents

__all__ = ["MAX_ANSWER", "HttpNetwork"]

MAX_ANSWER = 1 << 20
"""Bytes of an answer the client reads: a receiver's answers are small JSON (a vote and the
ranges it holds); a longer one is a `NetworkError`, never read into memory whole."""


class HttpNetwork:
    """Sends chunks to the receiver server at `base_url` (``http://host:port``).

    `token` is sent as ``Authorization: Bearer <token>`` (an empty one is a
    `ConfigurationError`, not "no token"); `ssl` is an `ssl.SSLContext` for
    HTTPS (or False to skip verification, for tests only).  Close with ``await net.close()``
    or use ``async with HttpNetwork(...) as net``.
    """

    carries_delta = True
    """Delta requests and offers travel (see `fstransport.network.base.carries_delta`)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        *,
        connections: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = None if token is None else check_token(token)
        self._ssl = ssl
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpNetwork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl = True if self._ssl is None else self._ssl
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=ssl)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        snapshot_id = req.meta.snapshot_id
        url = self.base_url + API_PREFIX + urllib.parse.quote(snapshot_id, safe="")
        headers = {
            H_VOTE: encode_vote(req.vote),
            H_META: encode_meta(req.meta),
            H_OFFSET: str(req.offset),
            H_DONE: "1" if req.done else "0",
            "Content-Type": "application/octet-stream",
        }
        if req.crc32c is not None:
            headers[H_CRC] = str(req.crc32c)
        if req.staged is not None:  # its bytes wait in a bucket (`RelayNetwork`)
            headers[H_STAGED] = encode_staged(req.staged)
        payload = contiguous(req.data)
        if req.extents is not None:  # the extent table, then the data (see `wire`)
            table = encode_extents(req.extents)
            crc = req.crc32c if req.crc32c is not None else chunk_crc(payload)
            headers[H_CRC] = str(combine(chunk_crc(table), crc, len(payload)))
            headers[H_EXTENTS], payload = str(len(req.extents)), table + payload
        cap = MAX_ANSWER
        if req.delta is not None:  # the body is the recipe, if any; the answer may hold a map
            headers[H_DELTA] = req.delta
            if req.delta_key is not None:
                headers[H_DELTA_KEY] = req.delta_key.hex()
            payload = req.recipe or b""
            headers[H_CRC] = str(chunk_crc(payload))
            cap = offer_cap(req.meta.size, MAX_ANSWER) if req.recipe is None else MAX_ANSWER
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self._client().put(url, data=BufferBody(payload), headers=headers) as answer:
                raw = await _read_answer(answer, self.base_url, cap)
                status = answer.status
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = getattr(exc.certificate_error, "verify_message", None) or str(
                exc.certificate_error
            )
            raise UntrustedPeer(
                f"the TLS certificate of {self.base_url} cannot be verified ({reason})"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {exc}") from exc
        except asyncio.TimeoutError as exc:
            raise Timeout(f"no answer from {self.base_url}") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise NetworkError(f"{type(exc).__name__} talking to {self.base_url}: {exc}") from exc
        try:
            body: Any = json.loads(raw)
        except ValueError as exc:
            if status == 200:
                raise NetworkError(f"malformed answer from {self.base_url}: {raw[:200]!r}") from exc
            body = None  # a proxy's error page: the status alone tells what happened
        if status == 200 and isinstance(body, dict):
            try:
                held = body.get("held")
                ranges = tuple((int(a), int(b)) for a, b in held) if held else None
                vote, offer = decode_vote(str(body["vote"])), decode_offer(body.get("offer"))
                reused, fetched = _count(body.get("reused")), _count(body.get("fetched"))
                extents = body.get("extents") is True  # (a receiver that takes them)
                return InstallSnapshotResponse(
                    vote, held=ranges, offer=offer, reused=reused, fetched=fetched, extents=extents
                )
            except (KeyError, TypeError, ValueError, InvalidRequest) as exc:
                shown = repr(body)[:200]
                raise NetworkError(f"malformed answer from {self.base_url}: {shown}") from exc
        raise decode_error(status, body, snapshot_id, self.base_url)

    def __repr__(self) -> str:
        return f"HttpNetwork({self.base_url!r})"


async def _read_answer(answer: aiohttp.ClientResponse, where: str, cap: int) -> bytes:
    """The answer's body, at most `cap` bytes of it (else `NetworkError`)."""
    if answer.content_length is not None and answer.content_length > cap:
        raise NetworkError(f"answer of {answer.content_length} bytes from {where} (too long)")
    raw = bytearray()
    while len(raw) <= cap:
        piece = await answer.content.read(cap + 1 - len(raw))
        if not piece:
            return bytes(raw)
        raw += piece
    raise NetworkError(f"answer longer than {cap} bytes from {where}")


def _count(value: object) -> int:
    """A byte count of an answer (0 when absent); `ValueError` unless a non-negative int."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ValueError(f"not a byte count: {value!r}")
    return value
