"""Everything HTTP in one place: the client, the server, the wire format and the bodies.

=================== =========================================================================
`client`            `HttpNetwork`, the `Network` adapter that sends chunks over HTTP(S)
`app`               `create_app`: the receiver server's aiohttp application
`handler`           `ChunkHandler`: one chunk request checked, its body read, the receiver called
`runner`            `make_runner`: connection limits, header deadline, the accept guard
`incoming`          reading a request body: pieces, CRC32C, the stall watchdog, the budget
`logs`              the server's one-line log (logger ``fstransport.server``)
`wire`              the headers of a chunk request and their strict parsers
`statuses`          `ERRORS`: the one table of HTTP statuses and error types, both ways
`body`              `BufferBody`: a chunk or an S3 part sent by aiohttp without a copy
=================== =========================================================================

Names are imported on first use: ``import fstransport.http`` (or its `wire` and `statuses`
modules) loads no aiohttp.
"""

from typing import TYPE_CHECKING

from fstransport._lazy import lazy_exports

if TYPE_CHECKING:
    from fstransport.http.app import create_app
    from fstransport.http.body import BufferBody
    from fstransport.http.client import HttpNetwork
    from fstransport.http.incoming import IDLE_TIMEOUT, MAX_BUFFERED, MIN_BODY_RATE
    from fstransport.http.runner import MAX_HEADER_LINE, MAX_HEADERS, make_runner
    from fstransport.http.statuses import ERRORS, decode_error, encode_error
else:
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {
            "BufferBody": "fstransport.http.body",
            "ERRORS": "fstransport.http.statuses",
            "HttpNetwork": "fstransport.http.client",
            "IDLE_TIMEOUT": "fstransport.http.incoming",
            "MAX_BUFFERED": "fstransport.http.incoming",
            "MAX_HEADERS": "fstransport.http.runner",
            "MAX_HEADER_LINE": "fstransport.http.runner",
            "MIN_BODY_RATE": "fstransport.http.incoming",
            "create_app": "fstransport.http.app",
            "decode_error": "fstransport.http.statuses",
            "encode_error": "fstransport.http.statuses",
            "make_runner": "fstransport.http.runner",
        },
    )

__all__ = [
    "ERRORS",
    "IDLE_TIMEOUT",
    "MAX_BUFFERED",
    "MAX_HEADERS",
    "MAX_HEADER_LINE",
    "MIN_BODY_RATE",
    "BufferBody",
    "HttpNetwork",
    "create_app",
    "decode_error",
    "encode_error",
    "make_runner",
]
