"""The send rules for a network that stages chunks and orders its own references (a relay).

`SendWindow` keeps two requests in series: the chunk at offset 0 goes alone (a receiver opens a
stream only there, and its answer says what the receiver holds), and the final chunk goes only
once every other chunk was answered.  Through a relay (`fstransport.network.RelayNetwork`)
*handing a chunk over* is not *sending it*: the relay uploads the bytes to its staging bucket
first and sends the receiver a reference later, in an order it keeps itself.  So two rules move
from the sender's window to the relay's reference order, and the uploads run meanwhile:

- `RelaySendWindow` hands chunks past offset 0 over while the one at offset 0 is out, and the
  chunk at offset 0 while others are out (a retry); it hands the final chunk over once every
  chunk in flight was read (its CRC32C noted with `RelaySendWindow.on_read`), so that the
  snapshot's whole CRC32C is known without waiting for their answers.
- `ReferenceOrder` (what the relay's gate executes) lets references out at most ``limit`` at a
  time, in the order they were handed over, with two exceptions that keep what the receiver
  sees exactly as before: a reference at offset 0 *opens* its snapshot and may overtake any
  other; no other reference of the snapshot goes until an opening one was answered without
  error; and the final reference goes only when no other request of its snapshot is left in
  the order (every one answered) and none that failed waits to be handed over again (a retry
  after its backoff), without holding up younger ones.

Nothing here does I/O or reads a clock; `tests/test_protocol_send_order.py` tests every rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from fstransport.checksum import combine
from fstransport.protocol.ranges import ChunkLedger
from fstransport.protocol.sender import ChunkPlan, SendWindow

__all__ = ["ReferenceOrder", "RelaySendWindow"]


class RelaySendWindow(SendWindow):
    """`SendWindow` for a network that orders its references itself (see the module docstring).

    Only for such a network: a plain one would deliver chunks past 0 before the receiver opened
    the stream, and the final chunk before the others."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read = ChunkLedger()
        """The CRC32C of every chunk read (or named by a staged copy), answered or not."""
        self._unread: set[int] = set()  # tickets in flight whose CRC32C is not noted yet

    def next_chunk(self, now: float) -> ChunkPlan | None:
        plan = super().next_chunk(now)
        if plan is not None:
            self._unread.add(plan.ticket)
        return plan

    def on_read(self, plan: ChunkPlan, crc: int) -> None:
        """`plan`'s bytes were read (or found staged): their CRC32C is `crc`."""
        self._unread.discard(plan.ticket)
        self.read.add(plan.offset, plan.length, crc)

    def whole_crc(self, final: ChunkPlan, final_crc: int) -> int | None:
        """As `SendWindow.whole_crc`, from the chunks read when the answered ones do not tile
        the bytes before `final` (their answers may still be on the way)."""
        crc = super().whole_crc(final, final_crc)
        if crc is not None:
            return crc
        before = self.read.whole_crc(final.offset)
        return None if before is None else combine(before, final_crc, final.length)

    def _held_back(self, start: int, done: bool) -> bool:
        return done and bool(self._unread)  # (the whole CRC32C needs theirs)

    def _take(self, plan: ChunkPlan) -> None:
        super()._take(plan)
        self._unread.discard(plan.ticket)

    def on_abandoned(self, plan: ChunkPlan) -> None:
        super().on_abandoned(plan)
        self._unread.discard(plan.ticket)


@dataclass
class _Entry:
    key: str
    opening: bool  # at offset 0
    final: bool  # done, past offset 0 (a final chunk at 0 is an opening one)
    staged: bool = False
    sent: bool = False


class ReferenceOrder:
    """Which of a relay's requests go to its receiver now (see the module docstring).

    A request `enter`s when the sender hands it over (with its snapshot id as `key`), is
    `staged` once its bytes are in the bucket (or at once when it carries bytes), and `leave`s
    when answered (``ok``), failed or abandoned.  `release` names the requests that go now."""

    def __init__(self) -> None:
        self._next = 0
        self._entries: dict[int, _Entry] = {}  # in the order handed over
        self._closed: set[str] = set()  # snapshots whose opening request is not answered yet
        self._failed: dict[str, int] = {}  # requests per snapshot that failed, not yet retried

    @property
    def sent(self) -> int:
        """Requests out to the receiver now."""
        return sum(e.sent for e in self._entries.values())

    def enter(self, key: str, offset: int, done: bool) -> int:
        ticket = self._next
        self._next += 1
        opening = offset == 0
        entry = self._entries[ticket] = _Entry(key, opening, done and not opening)
        if opening:
            self._closed.add(key)
        if not entry.final and self._failed.get(key):
            self._failed[key] -= 1  # (a retry; or chunks cut anew: each counts)
        return ticket

    def staged(self, ticket: int) -> None:
        entry = self._entries.get(ticket)
        if entry is not None:
            entry.staged = True

    def leave(self, ticket: int, ok: bool = False) -> None:
        """`ticket` is answered (`ok`: without error), failed or abandoned."""
        entry = self._entries.pop(ticket, None)
        if entry is None:
            return
        if entry.opening and entry.sent and ok:  # the stream is open; what failed before never
            self._closed.discard(
                entry.key
            )  # reached it, and may be held (a resume): not waited for
            self._failed.pop(entry.key, None)
        if entry.final:  # (whatever failed is sent again before the final chunk, or never)
            self._failed.pop(entry.key, None)
        elif not ok:
            self._failed[entry.key] = self._failed.get(entry.key, 0) + 1

    def settled_before(self, ticket: int) -> bool:
        """Whether every request of `ticket`'s snapshot handed over before it is staged (or
        gone): then all its chunks are in the bucket, and the manifest may be written."""
        entry = self._entries.get(ticket)
        if entry is None:
            return True
        return all(e.staged for t, e in self._entries.items() if t < ticket and e.key == entry.key)

    def release(self, limit: int) -> list[int]:
        """The requests that go now (marked sent): at most `limit` out at once."""
        limit = max(1, limit)
        out = sum(e.sent for e in self._entries.values())
        released: list[int] = []
        blocked = False  # an older ordinary request waits: younger ordinary ones wait too
        for ticket, entry in self._entries.items():
            if out >= limit:
                break
            if entry.sent:
                continue
            if entry.opening or entry.final:  # (neither holds up the others)
                go = entry.staged and (entry.opening or self._alone(ticket, entry.key))
            else:
                go = entry.staged and not blocked and entry.key not in self._closed
                blocked = blocked or not go
            if go:
                entry.sent = True
                out += 1
                released.append(ticket)
        return released

    def _alone(self, ticket: int, key: str) -> bool:
        others = any(t != ticket and e.key == key for t, e in self._entries.items())
        return not others and not self._failed.get(key)
