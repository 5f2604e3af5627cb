"""``fstransport serve``'s log: one line per finished or failed transfer, refusals rate-limited.

The server tells every chunk request and its response (`create_app(on_request=...)`); this
log adds them up per snapshot id and writes a line when a transfer finishes (its last chunk
is accepted) or a request fails.  Flow control (409: resend from another offset, 503: busy,
try again) is part of a healthy transfer and is not logged.  Refused bearer tokens are logged
at most once per peer every `REFUSAL_EVERY` seconds, with the number left out since.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from fstransport.units import format_rate, format_size

__all__ = ["REFUSAL_EVERY", "AccessLog"]

REFUSAL_EVERY = 10.0
"""Seconds between two refusal lines for one peer (a wrong token retried in a loop)."""

_QUIET_STATUSES = {409, 503}


@dataclass
class _Transfer:
    started: float
    received: int = 0


class AccessLog:
    """Writes the server's transfer lines to `stream`, each with a UTC time stamp."""

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self._clock = clock
        self._transfers: dict[str, _Transfer] = {}
        self._refused: dict[str, tuple[float, int]] = {}  # peer -> (last line, left out since)

    def write(self, text: str) -> None:
        """One line, time-stamped."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.stream.write(f"{stamp} {text}\n")
        self.stream.flush()

    def __call__(self, request: Any, response: Any) -> None:
        """`create_app`'s `on_request`: note one answered chunk request."""
        peer = str(request.remote or "?")
        status = int(response.status)
        snapshot_id = str(request.match_info.get("snapshot_id", "?"))
        if status == 401:
            self._refusal(peer)
            return
        now = self._clock()
        transfer = self._transfers.setdefault(snapshot_id, _Transfer(started=now))
        if status == 200:
            transfer.received += int(request.content_length or 0)
            if request.headers.get("X-Fstransport-Done") == "1":
                del self._transfers[snapshot_id]
                seconds = max(now - transfer.started, 1e-9)
                self.write(
                    f"finished {snapshot_id}  {format_size(transfer.received)} "
                    f"({transfer.received} bytes) in {seconds:.2f} s  "
                    f"{format_rate(transfer.received / seconds)}  from {peer}"
                )
            return
        if status in _QUIET_STATUSES:
            return
        self.write(
            f"failed {snapshot_id}  HTTP {status}: {_message(response)}  after "
            f"{format_size(transfer.received)} in {now - transfer.started:.2f} s  from {peer}"
        )

    def _refusal(self, peer: str) -> None:
        now = self._clock()
        last, left_out = self._refused.get(peer, (None, 0))
        if last is not None and now - last < REFUSAL_EVERY:
            self._refused[peer] = (last, left_out + 1)
            return
        more = f" ({left_out} more since the last line)" if left_out else ""
        self.write(f"refused {peer}: missing or wrong bearer token{more}")
        self._refused[peer] = (now, 0)


def _message(response: Any) -> str:
    """The error message of one of the server's JSON error responses."""
    try:
        body = json.loads(response.body)
        return f"{body['error']}: {body['message']}"
    except (TypeError, ValueError, AttributeError):
        return str(getattr(response, "reason", "") or "")
