"""Answering one chunk request: the checks before its body is read, the body, the receiver.

`ChunkHandler` is the server's route for ``PUT /v1/snapshots/<snapshot_id>`` (built by
`create_app`): the bearer token (compared in constant time), the snapshot id, the headers, and
the body's declared length against the receiver's chunk limit (413 without reading a byte) are
checked first; the body is read within the server's budget and its CRC32C computed as it
arrives; the receiver's answer, or error, becomes the HTTP answer (`fstransport.http.statuses`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web

from fstransport.errors import (
    BodyStalled,
    ChecksumMismatch,
    FstransportError,
    InvalidRequest,
    PayloadTooLarge,
    TooManyTransfers,
    Unauthorized,
)
from fstransport.http.incoming import Budget, read_body
from fstransport.http.logs import answer_error
from fstransport.http.wire import (
    H_CRC,
    H_DELTA,
    H_DELTA_KEY,
    H_DONE,
    H_EXTENTS,
    H_META,
    H_OFFSET,
    H_STAGED,
    H_VOTE,
    decode_key,
    decode_meta,
    decode_staged,
    decode_vote,
    encode_offer,
    encode_vote,
    parse_uint,
)
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, contiguous
from fstransport.protocol.delta_pack import split_extents
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.receiver import Receiver

__all__ = ["ChunkHandler", "authorization_check"]

_WIRE_HEADERS = (H_VOTE, H_META, H_OFFSET, H_DONE, H_CRC, H_STAGED, H_DELTA, H_DELTA_KEY, H_EXTENTS)


def authorization_check(token: str | None) -> Callable[[web.Request], bool]:
    """Whether a request carries exactly one ``Authorization: Bearer <token>`` header (always
    true for no token).  Compared as bytes in constant time; a header that is not valid
    UTF-8, or that comes twice, is simply not the token: authentication fails closed."""
    if token is None:
        return lambda request: True
    expected = f"Bearer {token}".encode("ascii")

    def authorized(request: web.Request) -> bool:
        try:
            given = request.headers.getall("Authorization", [])
            if len(given) != 1:
                return False
            # aiohttp decodes header bytes as UTF-8 with surrogate escapes: this gives them back
            raw = given[0].encode("utf-8", "surrogateescape")
        except (UnicodeError, ValueError, TypeError):
            return False
        return hmac.compare_digest(raw, expected)

    return authorized


def _int_header(request: web.Request, name: str) -> int:
    return parse_uint(request.headers.get(name, ""), name)


class ChunkHandler:
    """Answers one ``PUT`` of a chunk: checks it, reads its body within the budget, hands it
    to the receiver, and turns the receiver's answer or error into the HTTP answer."""

    def __init__(
        self,
        receiver: Receiver,
        authorized: Callable[[web.Request], bool],
        budget: Budget,
        hide: tuple[str, ...],
        idle_timeout: float,
        min_body_rate: float,
        on_request: Callable[[web.Request, web.StreamResponse], None] | None,
    ) -> None:
        self.receiver = receiver
        self.authorized = authorized
        self.budget = budget
        self.hide = hide
        self.idle_timeout = idle_timeout
        self.min_body_rate = min_body_rate
        self.on_request = on_request
        self.limit = receiver.limits.max_chunk_size

    async def answer(self, request: web.Request) -> web.StreamResponse:
        response = await self.install(request)
        if self.on_request is not None:
            self.on_request(request, response)
        return response

    async def install(self, request: web.Request) -> web.Response:
        snapshot_id: str | None = None
        if not self.authorized(request):
            return answer_error(Unauthorized("missing or wrong bearer token"), request)
        try:
            snapshot_id = check_snapshot_id(request.match_info["snapshot_id"])
            _check_headers(request)
            length = request.content_length
            if length is None:
                raise InvalidRequest("Content-Length is required", field="data")
            limit = self.limit
            if limit is not None and length > limit:
                too_large = PayloadTooLarge(f"chunk of {length} bytes exceeds {limit}", limit=limit)
                return answer_error(too_large, request, snapshot_id, self.hide)
            response = await self.receive(request, snapshot_id, length)
        except BodyStalled as exc:
            stalled = answer_error(exc, request, snapshot_id, self.hide)
            stalled.force_close()  # the rest of the body may still come: never read it as a request
            return stalled
        except _Unsupported as exc:
            unsupported = InvalidRequest(str(exc), field=exc.field)
            return answer_error(unsupported, request, snapshot_id, self.hide, status=415)
        except InvalidRequest as exc:
            answer = answer_error(exc, request, snapshot_id, self.hide)
            if exc.field == "data":  # the body was not read to its end: the connection is spent
                answer.force_close()
            return answer
        except FstransportError as exc:
            return answer_error(exc, request, snapshot_id, self.hide)
        held = [list(r) for r in response.held] if response.held else None
        answer_body: dict[str, object] = {"vote": encode_vote(response.vote), "held": held}
        if response.offer is not None:
            answer_body["offer"] = encode_offer(response.offer)
        if response.reused or response.fetched:  # a staged chunk's (docs/relay.md)
            answer_body.update(reused=response.reused, fetched=response.fetched)
        if response.extents:
            answer_body["extents"] = True
        return web.json_response(answer_body)

    async def receive(
        self, request: web.Request, snapshot_id: str, length: int
    ) -> InstallSnapshotResponse:
        """The headers decoded, the body read (its bytes reserved in the budget meanwhile),
        and the chunk handed to the receiver."""
        vote = decode_vote(request.headers.get(H_VOTE, ""))
        meta = decode_meta(snapshot_id, request.headers.get(H_META, "{}"))
        offset = _int_header(request, H_OFFSET)
        if H_CRC not in request.headers:  # only an in-process copy may leave it out
            raise InvalidRequest(f"header {H_CRC} (the body's CRC32C) is required", field=H_CRC)
        sent_crc = _int_header(request, H_CRC)
        done = _done_header(request)
        staged_header = request.headers.get(H_STAGED)
        staged = None if staged_header is None else decode_staged(staged_header)
        # (a staged chunk's bytes are fetched into memory by the receiver: count them too)
        reserved = length + (staged.length if staged is not None else 0)
        budget, receiver = self.budget, self.receiver
        if not budget.take(reserved):
            raise TooManyTransfers(
                f"the server holds {budget.used} bytes of chunks (at most {budget.limit}); "
                "try again"
            )
        try:
            with receiver.in_use(snapshot_id):  # its transfer must not expire meanwhile
                body, crc = await read_body(
                    request.content, length, self.idle_timeout, self.min_body_rate
                )
            delta = request.headers.get(H_DELTA)
            if delta is not None:  # the body is the recipe (if any), checked by its CRC
                if sent_crc != crc:
                    raise ChecksumMismatch("the delta recipe", f"{sent_crc:08x}", f"{crc:08x}")
                recipe = bytes(contiguous(body)) if len(body) else None
                key = decode_key(request.headers.get(H_DELTA_KEY))
                req = InstallSnapshotRequest(
                    vote, meta, offset, b"", done, 0, staged, delta, recipe, key
                )
                return await receiver.handle(req, trust_crc=True)
            if request.headers.get(H_EXTENTS) is not None:  # a table, then the data
                if sent_crc != crc:
                    raise ChecksumMismatch("a chunk with extents", f"{sent_crc:08x}", f"{crc:08x}")
                extents, data = split_extents(contiguous(body), _int_header(request, H_EXTENTS))
                req = InstallSnapshotRequest(
                    vote, meta, offset, data, done, None, staged, extents=extents
                )
                return await receiver.handle(req, trust_crc=True)  # (each range's CRC computed)
            if sent_crc == crc:
                # The CRC was just computed here from the bytes received: the receiver
                # takes it instead of reading the whole chunk once more.
                req = InstallSnapshotRequest(vote, meta, offset, body, done, crc, staged)
                return await receiver.handle(req, trust_crc=True)
            # corrupted on the way: the receiver refuses it with its usual checks
            req = InstallSnapshotRequest(vote, meta, offset, body, done, sent_crc, staged)
            return await receiver.handle(req)
        finally:
            budget.give(reserved)


class _Unsupported(InvalidRequest):
    """A request the server understands but will not take (answered with 415)."""


def _check_headers(request: web.Request) -> None:
    """The protocol's headers are ASCII (anything else came from no client of ours), and the
    body comes as it is: no Content-Encoding (a compressed body could inflate past every limit)."""
    for name in _WIRE_HEADERS:
        value = request.headers.get(name)
        if value is not None and not value.isascii():
            raise InvalidRequest(f"header {name} must be ASCII", field=name)
        if len(request.headers.getall(name, ())) > 1:
            raise InvalidRequest(f"header {name} must be given once", field=name)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _Unsupported("compressed bodies are not accepted", field="Content-Encoding")


def _done_header(request: web.Request) -> bool:
    value = request.headers.get(H_DONE, "0")
    if value not in ("0", "1"):
        raise InvalidRequest(f"header {H_DONE} must be 0 or 1", field=H_DONE)
    return value == "1"
