"""`Prefill`: a block-mode delta base copied into a fresh local partial file while the sender
plans, so that the assembly at install has little left to copy.

A receiver that offers a base for a file snapshot in ``delta="blocks"`` expects most of the new
snapshot to be the base at the same offsets (a block is reused only at its own offset).  Between
the offer and the recipe the sender maps its source (its sketch, then the blocks of the
super-blocks that differ): up to a second for 1 GiB.  A `Prefill` uses that time: one worker
thread copies the base into the partial file, piece by piece at the same offsets, with
``os.copy_file_range`` (a reflink or an in-kernel copy), and starts each piece's write-back
(`fstransport.storage.backends.local.writeback`).

Correctness does not depend on it (``docs/delta.md``, "Prefill"):

* **Received bytes always win.**  Every write of received bytes to the partial file first
  `claim`\\ s its range: a piece being copied that overlaps it is waited for, and a claimed
  range is never copied afterwards.  So a byte holds the base's content only where nothing was
  received for it.
* **The assembly trusts only what is left.**  `stop` ends the thread (waiting for it) and
  returns the ranges that still hold the base's bytes at the same offsets (copied, never
  claimed).  The assembly copies every other range the recipe copies, then reads the whole
  result back for its CRC32C, compared with the snapshot's checksum as ever: a base that
  changed under the copy is caught there, never installed.
* **A sender that sends in full** (no recipe) stops it at its first received byte; the partial
  file's sink stops it before it finishes, releases or aborts, and a sink opening the same file
  again waits for it first (`settle`), so no copy outlives its stream.
* **Only this copy of this base**: it notes the base's `file_identity` as it opened it, and
  `LocalDelta` trusts its ranges only for the same path still holding that file.

One prefill at a time per store (`LocalDelta`): an offer a peer asks for costs at most one
background copy of a base at once.
"""

from __future__ import annotations

import logging
import os
import threading

from fstransport.protocol.ranges import RangeSet
from fstransport.storage.backends.local.writeback import Writeback

__all__ = ["PREFILL_PIECE", "Prefill", "file_identity", "settle"]

log = logging.getLogger("fstransport.receiver")

PREFILL_PIECE = 8 * 1024 * 1024
"""Bytes copied at a time (the unit a received write may wait for)."""


_RUNNING: dict[str, Prefill] = {}
_RUNNING_LOCK = threading.Lock()


def settle(target: str) -> None:
    """Wait until no prefill writes into the file at `target` (a sink opening that file again,
    to resume or truncate it, calls it first: an earlier stream's copy may still be finishing a
    piece there, and the new sink's writes would not claim from it).  Blocking."""
    with _RUNNING_LOCK:
        running = _RUNNING.get(target)
    if running is not None:
        running.stop()


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: device, inode, size, modification time."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Prefill:
    """Copies ``[0, length)`` of the file `base` into `target` at the same offsets, in a thread
    of its own, skipping every range claimed by received bytes."""

    def __init__(self, base: str, target: str, length: int, base_size: int) -> None:
        self.base, self.target, self.length, self.base_size = base, target, length, base_size
        self.recipe = False
        """Set once the stream accepted a recipe: a received byte before that stops the copy
        (the sender sends everything)."""
        self._lock = threading.Condition()
        self._claimed = RangeSet()
        self._busy: tuple[int, int] | None = None
        self._done = 0
        self._stopped = False
        self.identity: tuple[int, int, int, int] | None = None
        """`file_identity` of the base as the copy opened it (None: it never opened it)."""
        self._thread = threading.Thread(target=self._run, name="fstransport-prefill", daemon=True)

    def start(self) -> None:
        with _RUNNING_LOCK:
            _RUNNING[self.target] = self
        try:
            self._thread.start()
        except BaseException:
            self._forget()
            raise

    def _forget(self) -> None:
        with _RUNNING_LOCK:
            if _RUNNING.get(self.target) is self:
                del _RUNNING[self.target]

    def claim(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` the received bytes' (called before they are
        written): never copied from now on; a piece being copied over it is waited for."""
        end = offset + length
        with self._lock:
            self._claimed.add(offset, end)
            if not self.recipe:
                self._stopped = True
            while self._busy is not None and self._busy[0] < end and offset < self._busy[1]:
                self._lock.wait()

    def stop(self) -> RangeSet:
        """End the copy (waiting for the piece in hand) and return the ranges that hold the
        base's bytes at the same offsets now.  Blocking: call it in a worker thread."""
        with self._lock:
            self._stopped = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            held = RangeSet([(0, self._done)] if self._done else ())
            for start, end in self._claimed:
                held.remove(start, end)
            return held

    def _run(self) -> None:
        try:
            self._copy()
        except (OSError, EOFError) as exc:  # the assembly copies what is left: nothing lost
            log.info("prefill of %s from its base stopped: %s", self.target, exc)
        finally:
            with self._lock:
                self._busy = None
                self._lock.notify_all()
            self._forget()

    def _copy(self) -> None:
        from fstransport.delta.local import copy_range

        flags = getattr(os, "O_NOFOLLOW", 0)
        src = os.open(self.base, os.O_RDONLY | flags)
        try:
            found = os.fstat(src)
            if found.st_size != self.base_size:
                return  # not the base offered: the assembly will say so
            self.identity = file_identity(found)
            dst = os.open(self.target, os.O_WRONLY | flags)
            try:
                writeback = Writeback(dst)
                for lo in range(0, self.length, PREFILL_PIECE):
                    hi = min(lo + PREFILL_PIECE, self.length)
                    with self._lock:
                        if self._stopped:
                            return
                        self._busy = (lo, hi)
                        parts = self._claimed.gaps(lo, hi)
                    for at, end in parts:
                        copy_range(src, dst, at, at, end - at, kernel=True)
                        writeback.wrote(at, end - at)
                    with self._lock:
                        self._busy, self._done = None, hi
                        self._lock.notify_all()
                writeback.flush()
            finally:
                os.close(dst)
        finally:
            os.close(src)
