"""`fstransport bench`: which chunk size and window suit a given source, target and link?

`run_bench(plan)` ships one generated snapshot from a source to a target once per cell of a
sweep (chunk sizes x windows), through `ship()` exactly as users call it, and measures each
copy: wall time, chunks per second and the peak memory the copy added to this process.  A
simulated link (`BenchPlan.latency` round trip, `BenchPlan.bandwidth`) puts a `FaultyNetwork`
between sender and receiver.  `BenchResult` prints the table, names the best setting, writes
JSON, and `plot_result` draws throughput against chunk size, one line per window.

Endpoints are kinds, not URLs: ``memory`` (``memory://``), ``file`` (a temporary folder) and
``s3`` (an embedded moto server in a child process, or a given bucket and endpoint).  Every
copy is checked (size and whole CRC32C) and removed before the next one.

The pieces: `plan` (what to sweep, the measurements, the table and the best setting),
`sweep` (`run_bench`: one checked, timed `ship()` per setting), `endpoints` (where the source
lies and the targets go: memory, local files, S3 on moto or a given bucket), `memory` (peak
memory per copy), `output` (JSON and the plot).
"""

from fstransport.bench.output import check_output, plot_result, write_json
from fstransport.bench.plan import (
    DEFAULT_CHUNK_SIZES,
    DEFAULT_WINDOWS,
    BenchCell,
    BenchError,
    BenchPlan,
    BenchResult,
    Kind,
)
from fstransport.bench.sweep import run_bench

__all__ = [
    "DEFAULT_CHUNK_SIZES",
    "DEFAULT_WINDOWS",
    "BenchCell",
    "BenchError",
    "BenchPlan",
    "BenchResult",
    "Kind",
    "check_output",
    "plot_result",
    "run_bench",
    "write_json",
]
