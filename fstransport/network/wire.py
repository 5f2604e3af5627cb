"""The HTTP wire format, shared by `HttpNetwork` (client) and the receiver server.

One chunk is one ``PUT /v1/snapshots/<snapshot_id>`` request whose body is the raw chunk bytes;
everything else travels in headers:

=========================== =======================================================
``X-Fstransport-Vote``      ``term,node_id,committed`` (``committed`` is 0 or 1)
``X-Fstransport-Meta``      JSON: ``size``, ``checksum``, ``last_log_id`` ([term, index]),
                            ``last_membership`` (any JSON)
``X-Fstransport-Offset``    byte offset of the body in the snapshot
``X-Fstransport-Done``      ``1`` on the final chunk, else ``0``
``X-Fstransport-Crc32c``    CRC32C of the body, as an unsigned decimal integer (required)
``Authorization``           ``Bearer <token>`` when the server has a token
=========================== =======================================================

Answers are JSON.  ``200``: ``{"vote": "term,node_id,committed", "held": [[start, end], ...]}``.
Errors: ``{"error": <name>, "message": ..., ...}`` with the status telling the kind: 409
``SnapshotMismatch`` (with ``expect`` and ``got`` offsets), 400 ``InvalidRequest`` (with
``field``), 422 ``ChecksumMismatch``, 413 payload too large (with ``limit``), 401 unauthorized,
408 ``BodyStalled`` (the body stopped coming), 503 ``TooManyTransfers`` (try again), 500
``StorageError`` and anything else.
"""

from __future__ import annotations

import json
from typing import Any

from fstransport.errors import InvalidRequest
from fstransport.messages import LogId, SnapshotMeta, Vote

__all__ = [
    "API_PREFIX",
    "H_CRC",
    "H_DONE",
    "H_META",
    "H_OFFSET",
    "H_VOTE",
    "decode_meta",
    "decode_vote",
    "encode_meta",
    "encode_vote",
]

API_PREFIX = "/v1/snapshots/"
H_VOTE = "X-Fstransport-Vote"
H_META = "X-Fstransport-Meta"
H_OFFSET = "X-Fstransport-Offset"
H_DONE = "X-Fstransport-Done"
H_CRC = "X-Fstransport-Crc32c"


def encode_vote(vote: Vote) -> str:
    return f"{vote.term},{vote.node_id},{int(vote.committed)}"


def decode_vote(text: str) -> Vote:
    """The vote in a header or answer; `InvalidRequest` for anything malformed."""
    parts = text.split(",")
    if (
        len(parts) != 3
        or not all(p.strip().isdigit() for p in parts)
        or parts[2].strip() not in "01"
    ):
        raise InvalidRequest(f"malformed vote {text!r}", field="vote")
    return Vote(int(parts[0]), int(parts[1]), parts[2].strip() == "1")


def encode_meta(meta: SnapshotMeta) -> str:
    log = [meta.last_log_id.term, meta.last_log_id.index] if meta.last_log_id else None
    fields = {
        "size": meta.size,
        "checksum": meta.checksum,
        "last_log_id": log,
        "last_membership": meta.last_membership,
    }
    return json.dumps(fields, separators=(",", ":"))


def decode_meta(snapshot_id: str, text: str) -> SnapshotMeta:
    """The meta in a header; `InvalidRequest` for anything malformed (fields are validated
    further by the receiver)."""
    try:
        fields: Any = json.loads(text)
    except ValueError:
        raise InvalidRequest("meta header is not JSON", field="meta") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("meta header must be a JSON object", field="meta")
    log = fields.get("last_log_id")
    last_log_id = None
    if log is not None:
        if not (isinstance(log, list) and len(log) == 2 and all(isinstance(x, int) for x in log)):
            raise InvalidRequest("last_log_id must be [term, index]", field="meta")
        last_log_id = LogId(log[0], log[1])
    return SnapshotMeta(
        snapshot_id=snapshot_id,
        last_log_id=last_log_id,
        last_membership=fields.get("last_membership"),
        size=fields.get("size"),
        checksum=fields.get("checksum"),
    )
