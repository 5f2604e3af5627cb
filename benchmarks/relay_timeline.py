"""The S3 requests of one relayed ship, in time order: what a relay x1 waits for when every S3
data request is slow (``--latency``), so that latency and not CPU is the limit.

    python benchmarks/relay_timeline.py [--size 64MiB] [--latency 0.5] [--stage-ahead N]

One `ship(SRC, T, relay="s3://.../stage")` to an in-process receiver, the staging bucket on a
moto server (its own process); each line is one S3 call: when it was sent (after its injected
delay), when it was answered, the operation and the end of its key.  Not a timed benchmark.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from bench_relay import BUCKET, STAGE, s3_latency
from harness import MiB, make_data, make_parser, moto_process, s3_client, size_arg, workspace

from fstransport import TransferOptions, ship
from fstransport.moto_server import REGION, TEST_CREDENTIALS


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--size", type=size_arg, default=64 * MiB, help="snapshot size (64 MiB)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per data request")
    parser.add_argument(
        "--stage-ahead",
        type=int,
        default=None,
        help="relay_options['stage_ahead'] (default: the relay's)",
    )
    args = parser.parse_args()
    import s3fs

    events: list[tuple[float, float, str, str]] = []
    original = s3fs.S3FileSystem._call_s3
    began = time.perf_counter()

    async def recorded(fs: Any, method: str, *a: Any, **kwargs: Any) -> Any:
        sent = time.perf_counter() - began
        answer = await original(fs, method, *a, **kwargs)
        events.append((sent, time.perf_counter() - began, method, str(kwargs.get("Key", ""))))
        return answer

    s3fs.S3FileSystem._call_s3 = recorded  # under the delay s3_latency adds
    with workspace("fstransport-relay-timeline-", None) as (folder, _), moto_process() as moto:
        key, secret = TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"]
        s3_client(moto.address, key, secret, REGION).create_bucket(Bucket=BUCKET)
        source = os.path.join(folder, "src.bin")
        with open(source, "wb") as fh:
            fh.write(make_data(args.size, 1))
        options: dict[str, Any] = {"endpoint_url": moto.address, "key": key, "secret": secret}
        if args.stage_ahead is not None:
            options["stage_ahead"] = args.stage_ahead
        target = os.path.join(folder, "t", "snap.bin")
        with s3_latency(args.latency):
            began = time.perf_counter()
            asyncio.run(
                ship(source, target, relay=STAGE, relay_options=options, options=TransferOptions())
            )
            total = time.perf_counter() - began
    for sent, answered, method, name in sorted(events):
        print(f"{sent:7.2f} {answered:7.2f}  {method:<16} {name[-40:]}")
    print(f"total {total:.2f} s, {args.latency} s per data request", file=sys.stderr)


if __name__ == "__main__":
    main()
