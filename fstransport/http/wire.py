"""The HTTP wire format, shared by `HttpNetwork` (client) and the receiver server: headers.

One chunk is one ``PUT /v1/snapshots/<snapshot_id>`` request whose body is the raw chunk bytes;
everything else travels in headers:

=========================== =======================================================
``X-Fstransport-Vote``      ``term,node_id,committed`` (``committed`` is 0 or 1)
``X-Fstransport-Meta``      JSON: ``size``, ``checksum``, ``last_log_id`` ([term, index]),
                            ``last_membership`` (any JSON), ``kind`` (``"tree"`` for a
                            directory snapshot; left out for a file)
``X-Fstransport-Offset``    byte offset of the body in the snapshot
``X-Fstransport-Done``      ``1`` on the final chunk, else ``0``
``X-Fstransport-Crc32c``    CRC32C of the body, as an unsigned decimal integer (required)
``X-Fstransport-Staged``    JSON ``{"area", "name", "length", "crc32c"}``: the chunk's bytes are
                            staged in a bucket (`RelayNetwork`); the body is empty and the
                            CRC header is the staged bytes' CRC32C (optional; ≤ 1 KiB)
``X-Fstransport-Delta``     ``blocks`` or ``cdc``: a delta request (``docs/delta.md``); its body
                            is empty (asking for an offer) or the recipe, and the CRC header
                            is the body's CRC32C
``X-Fstransport-Delta-Key`` 32 hex digits: the key of the map offered (with a delta request
                            that asks for an offer; optional)
``X-Fstransport-Extents``   ``n`` (1 to 16,384): the request carries several ranges of a
                            delta's sent ones (``InstallSnapshotRequest.extents``); its body
                            is their table, ``n`` times offset and length (u64 little-endian
                            each), then their bytes joined; the CRC header is the whole
                            body's; the offset header is the first range's (optional)
``Authorization``           ``Bearer <token>`` when the server has a token
=========================== =======================================================

Answers are JSON.  ``200``: ``{"vote": "term,node_id,committed", "held": [[start, end], ...]}``,
plus ``"offer": {"base_id", "checksum", "size", "map"}`` (the map in base64) answering a delta
request when the receiver has a base; the client reads such an answer up to `offer_cap` bytes;
``"extents": true`` answering an accepted recipe: the receiver takes ``X-Fstransport-Extents``
requests (a sender never sends one to a receiver that did not say so: an older one).
An answer to a staged chunk may add ``"reused"`` and ``"fetched"`` (byte counts: taken from the
receiver's base, fetched from the staging bucket; ``docs/relay.md``).
Errors: ``{"error": <name>, "message": ..., "retryable": bool, ...fields}``, as the one table
`fstransport.http.statuses.ERRORS` says.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, NoReturn

from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import DeltaOffer, LogId, SnapshotMeta, StagedChunk, Vote
from fstransport.protocol.delta_session import max_map_bytes, max_offer_size

__all__ = [
    "API_PREFIX",
    "H_CRC",
    "H_DELTA",
    "H_DELTA_KEY",
    "H_DONE",
    "H_EXTENTS",
    "H_META",
    "H_OFFSET",
    "H_STAGED",
    "H_VOTE",
    "MAX_DIGITS",
    "MAX_JSON_DEPTH",
    "MAX_META_LENGTH",
    "MAX_STAGED_LENGTH",
    "check_token",
    "decode_key",
    "decode_meta",
    "decode_offer",
    "decode_staged",
    "decode_vote",
    "encode_meta",
    "encode_offer",
    "encode_staged",
    "encode_vote",
    "offer_cap",
    "parse_uint",
]

API_PREFIX = "/v1/snapshots/"
H_VOTE = "X-Fstransport-Vote"
H_META = "X-Fstransport-Meta"
H_OFFSET = "X-Fstransport-Offset"
H_DONE = "X-Fstransport-Done"
H_CRC = "X-Fstransport-Crc32c"
H_STAGED = "X-Fstransport-Staged"
H_DELTA = "X-Fstransport-Delta"
H_DELTA_KEY = "X-Fstransport-Delta-Key"
H_EXTENTS = "X-Fstransport-Extents"

MAX_DIGITS = 20
"""Digits an unsigned number on the wire may have: every 64-bit value fits, nothing near
Python's 4,300-digit limit for ``int()`` does."""
MAX_META_LENGTH = 4096
"""Characters of the meta header the server reads (aiohttp cuts every header at 8,190)."""
MAX_JSON_DEPTH = 16
"""How deeply arrays and objects may nest in the meta (``last_membership`` included)."""
MAX_STAGED_LENGTH = 1024
"""Characters of the staged-chunk header the server reads: a reference is small."""
_STAGED_KEYS = frozenset({"area", "name", "length", "crc32c"})
_ASCII_DIGITS = frozenset("0123456789")
_META_KEYS = frozenset({"size", "checksum", "last_log_id", "last_membership", "kind"})
META_KINDS = frozenset({"file", "tree"})


def parse_uint(text: str, field: str) -> int:
    """`text` as an unsigned decimal integer; `InvalidRequest` naming `field` unless it is 1 to
    `MAX_DIGITS` ASCII digits.  (``str.isdigit`` lets ``²`` and Arabic-Indic digits through,
    and ``int`` takes spaces, ``+`` and ``_``: neither is a wire format.)"""
    if not 0 < len(text) <= MAX_DIGITS or not _ASCII_DIGITS.issuperset(text):
        raise InvalidRequest(
            f"{field} must be an unsigned decimal integer of at most {MAX_DIGITS} digits",
            field=field,
        )
    return int(text)


def encode_vote(vote: Vote) -> str:
    return f"{vote.term},{vote.node_id},{int(vote.committed)}"


def decode_vote(text: str) -> Vote:
    """The vote in a header or answer; `InvalidRequest` for anything malformed."""
    parts = text.split(",")
    if len(parts) != 3 or parts[2].strip() not in ("0", "1"):
        raise InvalidRequest(f"malformed vote {text[:64]!r}", field="vote")
    term, node_id = (parse_uint(p.strip(), "vote") for p in parts[:2])
    return Vote(term, node_id, parts[2].strip() == "1")


def encode_meta(meta: SnapshotMeta) -> str:
    log = [meta.last_log_id.term, meta.last_log_id.index] if meta.last_log_id else None
    fields = {
        "size": meta.size,
        "checksum": meta.checksum,
        "last_log_id": log,
        "last_membership": meta.last_membership,
    }
    if meta.kind != "file":  # (a receiver that knows no kinds refuses the key: never a file)
        fields["kind"] = meta.kind
    return json.dumps(fields, separators=(",", ":"))


def _bad_meta(message: str) -> NoReturn:
    raise InvalidRequest(message, field="meta")


def _json_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON `text` (brackets inside strings aside);
    checked before parsing, so that no nesting reaches the parser's recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        _bad_meta("meta header repeats a key")
    return fields


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        _bad_meta(f"a number in the meta header has more than {MAX_DIGITS} digits")
    return int(text)


def _no_float(text: str) -> NoReturn:
    _bad_meta(f"meta header holds a non-integer number {text[:32]!r}")


def _nat(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_meta(snapshot_id: str, text: str) -> SnapshotMeta:
    """The meta in a header; `InvalidRequest` for anything malformed.

    Strict: a JSON object of at most `MAX_META_LENGTH` characters nesting at most
    `MAX_JSON_DEPTH` deep, no repeated key, no key but ``size`` (unsigned integer or null),
    ``checksum`` (string or null), ``last_log_id`` (null or ``[term, index]``, unsigned
    integers, booleans refused), ``last_membership`` (any JSON) and ``kind`` (``"file"`` or
    ``"tree"``); no fractions, NaN or
    numbers over `MAX_DIGITS` digits.  The receiver checks the values further."""
    if len(text) > MAX_META_LENGTH:
        _bad_meta(f"meta header is longer than {MAX_META_LENGTH} characters")
    if _json_depth(text) > MAX_JSON_DEPTH:
        _bad_meta(f"meta header nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        fields: Any = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_json_int,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (ValueError, RecursionError):  # InvalidRequest is neither
        _bad_meta("meta header is not JSON")
    if not isinstance(fields, dict):
        _bad_meta("meta header must be a JSON object")
    try:  # a "\\ud800" escape makes a lone surrogate, which no file or journal can store
        json.dumps(fields, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        _bad_meta("meta header holds a string that is not valid Unicode")
    unknown = set(fields) - _META_KEYS
    if unknown:
        _bad_meta(f"meta header has unknown keys {sorted(unknown)[:4]!r}")
    size = fields.get("size")
    if size is not None and not _nat(size):
        raise InvalidRequest("size must be an unsigned integer or null", field="size")
    checksum = fields.get("checksum")
    if checksum is not None and not isinstance(checksum, str):
        raise InvalidRequest("checksum must be a string or null", field="checksum")
    log = fields.get("last_log_id")
    last_log_id = None
    if log is not None:
        if not (isinstance(log, list) and len(log) == 2 and all(_nat(x) for x in log)):
            _bad_meta("last_log_id must be [term, index] of unsigned integers")
        last_log_id = LogId(log[0], log[1])
    kind = fields.get("kind", "file")
    if kind not in META_KINDS:
        raise InvalidRequest(f"kind must be one of {sorted(META_KINDS)}", field="kind")
    return SnapshotMeta(
        snapshot_id=snapshot_id,
        last_log_id=last_log_id,
        last_membership=fields.get("last_membership"),
        size=size,
        checksum=checksum,
        kind=kind,
    )


# -- the bearer token ---------------------------------------------------------------------------


def check_token(token: object, what: str = "token") -> str:
    """`token` if it can travel as ``Authorization: Bearer <token>``: a non-empty string of
    visible ASCII characters (no spaces).  Else `ConfigurationError`: an empty token must never
    mean "no authentication"."""
    if not isinstance(token, str):
        raise ConfigurationError(f"{what} must be a string, got {type(token).__name__}")
    if not token:
        raise ConfigurationError(f"{what} is empty")
    if not all("!" <= ch <= "~" for ch in token):
        raise ConfigurationError(
            f"{what} must be visible ASCII characters without spaces (it travels in an HTTP header)"
        )
    return token


def encode_staged(ref: StagedChunk) -> str:
    """The staged-chunk header for `ref` (ASCII: other characters are escaped)."""
    fields = {"area": ref.area, "name": ref.name, "length": ref.length, "crc32c": ref.crc32c}
    return json.dumps(fields, separators=(",", ":"))


def decode_staged(text: str) -> StagedChunk:
    """The `StagedChunk` in a header; `InvalidRequest` (field ``"staged"``) unless it is a JSON
    object of at most `MAX_STAGED_LENGTH` characters with exactly the keys ``area`` and
    ``name`` (strings) and ``length`` and ``crc32c`` (unsigned integers).  The receiver checks
    the values further (`Receiver`)."""

    def bad(message: str) -> InvalidRequest:
        return InvalidRequest(message, field="staged")

    if len(text) > MAX_STAGED_LENGTH:
        raise bad(f"staged header is longer than {MAX_STAGED_LENGTH} characters")
    if _json_depth(text) > 1:
        raise bad("staged header must be a flat JSON object")
    try:
        fields: Any = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_json_int,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (ValueError, RecursionError):
        raise bad("staged header is not JSON") from None
    except InvalidRequest as exc:
        raise bad(str(exc)) from None
    if not isinstance(fields, dict) or set(fields) != _STAGED_KEYS:
        raise bad(f"staged header must hold exactly the keys {sorted(_STAGED_KEYS)}")
    area, name, length, crc = (fields[k] for k in ("area", "name", "length", "crc32c"))
    if not isinstance(area, str) or not isinstance(name, str):
        raise bad("area and name must be strings")
    if not (_nat(length) and _nat(crc)):
        raise bad("length and crc32c must be unsigned integers")
    return StagedChunk(area, name, length, crc)


# -- delta offers -------------------------------------------------------------------------------


def offer_cap(size: int | None, answer: int) -> int:
    """Bytes of an answer to a delta request for a snapshot of `size` bytes the client reads:
    the usual `answer` cap plus the base64 of the longest map of a base it would take."""
    if size is None:
        return answer
    base = max_offer_size(size)
    return answer + 4 * (max_map_bytes(base) // 3 + 1)


def encode_offer(offer: DeltaOffer) -> dict[str, Any]:
    """The ``offer`` of a JSON answer."""
    return {
        "base_id": offer.base_id,
        "checksum": offer.checksum,
        "size": offer.size,
        "map": base64.b64encode(offer.map).decode("ascii"),
    }


def decode_offer(fields: object) -> DeltaOffer | None:
    """The `DeltaOffer` of an answer's ``offer`` (None for null); `InvalidRequest` (field
    ``"delta_map"``) for anything malformed (the sender checks the map itself further)."""
    if fields is None:
        return None
    keys = {"base_id", "checksum", "size", "map"}
    if not isinstance(fields, dict) or set(fields) != keys:
        raise InvalidRequest("malformed delta offer", field="delta_map")
    base_id, checksum, size, raw = (fields[k] for k in ("base_id", "checksum", "size", "map"))
    if not (isinstance(base_id, str) and isinstance(checksum, str) and isinstance(raw, str)):
        raise InvalidRequest("malformed delta offer", field="delta_map")
    if not _nat(size):
        raise InvalidRequest("malformed delta offer size", field="delta_map")
    try:
        encoded = base64.b64decode(raw.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidRequest("the delta offer's map is not base64", field="delta_map") from None
    return DeltaOffer(base_id, checksum, size, encoded)


def decode_key(text: str | None) -> bytes | None:
    """The delta key in a header (32 hex digits); `InvalidRequest` for anything else."""
    if text is None:
        return None
    if len(text) != 32 or not all(ch in "0123456789abcdefABCDEF" for ch in text):
        raise InvalidRequest(f"{H_DELTA_KEY} must be 32 hex digits", field="delta_key")
    return bytes.fromhex(text)
