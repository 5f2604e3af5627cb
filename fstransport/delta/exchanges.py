"""The sender's delta exchanges, I/O: the first before any chunk, and again after the receiver
started over mid-delta (`fstransport.protocol.delta_restart.ExchangeRule` decides when;
``docs/delta.md``, "A receiver restarted mid-delta")."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fstransport.delta.send import RecipeMemory, run_exchange
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse
from fstransport.network.base import carries_delta
from fstransport.protocol.delta_restart import ExchangeRule
from fstransport.protocol.sender import Verdict

if TYPE_CHECKING:
    from fstransport.sender import _Sender

__all__ = ["SenderExchanges"]

log = logging.getLogger("fstransport.sender")


class SenderExchanges:
    """The delta exchanges of one send (`sender`'s): `run` one, `verdict`/`rewound` on each
    failed request, and `ready` says when one is due and may run (nothing in flight)."""

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        self.rule = ExchangeRule()
        self.memory = RecipeMemory()

    def applies(self) -> bool:
        """Whether the send takes a delta exchange: a file or tree snapshot of more than one
        chunk sent directly (a relay sends references; one chunk costs one round trip, a
        delta at least two)."""
        s = self.sender
        return not (
            s.options.delta == "off"
            or s.meta.kind not in ("file", "tree")
            or s.source.size <= s.options.chunk_size
            or s.staged_chunk is not None
            or not carries_delta(s.net)
        )

    def ready(self, now: float, in_flight: int) -> bool:
        """Whether an exchange is due and may run now: every request answered, no backoff."""
        return self.rule.due and not in_flight and self.sender.window.wake_at(now) is None

    def verdict(self, verdict: Verdict) -> Verdict:
        """The verdict to apply to a failed request (`ExchangeRule.verdict`)."""
        return self.rule.verdict(verdict)

    def rewound(self, applied: bool) -> None:
        """A verdict was applied; `applied`: it rewound the window."""
        self.rule.rewound(applied)
        if self.rule.due:
            log.info("the receiver started over mid-delta: the delta exchange runs again")

    async def run(self, cancel_task: asyncio.Future[Any] | None) -> None:
        """Run an exchange (`run_exchange`) and skip what the receiver holds after it."""
        s = self.sender
        if not self.applies():
            return
        if self.rule.ran:  # (since the rewind every byte is pending: skipped ones count anew)
            s.window.stats.bytes_skipped = 0

        async def ask(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
            ttl = s.options.install_timeout  # the receiver maps its base meanwhile
            rpc = lambda: s.net.install_snapshot(req, s.options)  # noqa: E731
            return await s._answer_within(rpc, req, ttl)

        about = (s.vote, s.meta, s.source, s.options, s.window, cancel_task)
        early = not s.trusted  # (see `negotiate`)
        checksum = await run_exchange(ask, *about, early=early, memory=self.memory)
        if cancel_task is not None and cancel_task.done():
            raise s._closed(cancel_task)
        self.rule.ended(accepted=s.window.stats.bytes_reused > 0)
        if checksum is not None and s.meta.checksum is None:
            s.meta = replace(s.meta, checksum=checksum)
            s.checksum = checksum
