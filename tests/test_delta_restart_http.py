"""A real ``fstransport serve`` killed with SIGKILL mid-delta and started again on the same port
and folder (docs/delta.md, "A receiver restarted mid-delta"): the one ``ship()`` call retries,
runs its delta exchange again with the new process, and completes with the right bytes having
sent about the delta again, not the snapshot.  The server fixture is
`tests.test_http_e2e.serve`; the rules and in-process restarts: test_delta_restart.py."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from fstransport import RetryPolicy, TransferOptions
from fstransport.http.client import HttpNetwork
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse
from fstransport.options import KiB
from fstransport.transfer import ship
from tests.test_delta_ship import edited
from tests.test_http_e2e import SHIP_TIMEOUT, TOKEN, ServerProcess, StartServer, serve

__all__ = ["serve"]  # the fixture, used by name

SIZE = 8192 * KiB
PATIENT = RetryPolicy(max_attempts=1000, initial_backoff=0.02, max_backoff=0.2, give_up_after=60)
OPTIONS = TransferOptions(chunk_size=16 * KiB, max_in_flight=4, delta="blocks", retry=PATIENT)


class KillsAtExtents:
    """An `HttpNetwork` whose server is killed (SIGKILL) just before the `at`-th request with
    extents goes, and started again on the same port and folder; requests are kept."""

    carries_delta = True

    def __init__(self, inner: HttpNetwork, restart: object, at: int = 2) -> None:
        self.inner, self.restart, self.at = inner, restart, at
        self.requests: list[InstallSnapshotRequest] = []
        self.restarted: ServerProcess | None = None

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.requests.append(req)
        packed = sum(1 for r in self.requests if r.extents)
        if req.extents and packed == self.at and self.restarted is None:
            self.restarted = await asyncio.to_thread(self.restart)  # type: ignore[arg-type]
        return await self.inner.install_snapshot(req, option)


async def test_a_server_killed_mid_delta_costs_about_the_delta_again(
    serve: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    first = serve(str(root), "--token", TOKEN)
    base = random.Random(80).randbytes(SIZE)
    new = edited(base, SIZE // 4096 // 100, seed=81)  # 1% of the pages
    source = tmp_path / "snap.bin"

    def restart() -> ServerProcess:
        first.kill()
        return serve(str(root), "--token", TOKEN, port=first.port)

    async with HttpNetwork(first.url, token=TOKEN) as http:
        source.write_bytes(base)
        await asyncio.wait_for(ship(str(source), "snap.bin", network=http, options=OPTIONS), 60)
        source.write_bytes(new)
        net = KillsAtExtents(http, restart)
        report = await asyncio.wait_for(
            ship(str(source), "snap.bin", network=net, options=OPTIONS), SHIP_TIMEOUT
        )
    assert net.restarted is not None, "the server was killed mid-delta"
    assert net.restarted.url == first.url
    assert (root / "snap.bin").read_bytes() == new
    offers = [r for r in net.requests if r.delta is not None and r.recipe is None]
    assert len(offers) == 2, "the exchange ran again with the new process"
    assert report.rewinds >= 1
    assert report.bytes_reused > 0.9 * SIZE
    # (bytes_sent counts every attempt, those refused while no server ran too: each at most a
    # chunk; without the new exchange the rest went in full: 100.4% of the snapshot)
    sent = report.bytes_sent - report.retries * OPTIONS.chunk_size
    assert sent < 0.05 * SIZE, f"{report.bytes_sent} bytes sent for a 1% delta"
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["snap.bin"]
