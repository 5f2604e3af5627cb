"""The text report of one copy, as ``ship`` and ``demo`` print it."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from fstransport.options import TransferOptions
from fstransport.units import format_rate, format_size

if TYPE_CHECKING:
    from fstransport.transfer import TransferReport

__all__ = ["print_report"]


def print_report(
    report: TransferReport,
    options: TransferOptions,
    *,
    verified: str | None,
    file: TextIO | None = None,
) -> None:
    """Print `report` as a few aligned lines on stdout."""
    chunk = format_size(options.chunk_size)
    chunks = f"{report.chunks_sent} x up to {chunk}, window {options.max_in_flight}"
    if report.retries or report.rewinds:
        chunks += f" ({report.retries} retries, {report.rewinds} rewinds)"
    if report.server_side:
        how = f"{report.chunks_sent} part copies" if report.chunks_sent else "one CopyObject"
        chunks = f"copied by the S3 server ({how})"
    lines = [
        f"{report.source} -> {report.target}",
        f"  size        {format_size(report.size)} ({report.size} bytes)"
        + ("" if report.files is None else f", {report.files} files packed"),
        f"  chunks      {chunks}",
        f"  time        {report.elapsed:.3f} s",
        f"  throughput  {format_rate(report.throughput)}",
        f"  checksum    {report.checksum}",
    ]
    # a delta's reused ranges are skipped too; the final byte is sent even where reused
    resumed = max(0, report.bytes_skipped - report.bytes_reused)
    if report.bytes_reused:
        lines.insert(
            3,
            f"  reused      {format_size(report.bytes_reused)} ({report.bytes_reused} bytes) "
            "taken from the snapshot the target held (delta), not sent",
        )
    if resumed:
        lines.insert(
            3,
            f"  resumed     {format_size(resumed)} ({resumed} bytes) "
            "were already there and not sent again",
        )
    if report.targets or report.bytes_uploaded:
        lines.append(f"  read        {format_size(report.bytes_read)} from the source")
    if report.bytes_uploaded:
        lines.append(f"  uploaded    {format_size(report.bytes_uploaded)} to the relay")
    for one in report.targets:
        lines.append(f"  -> {one.target}  ({format_size(one.bytes_sent)} sent)")
    if verified:
        lines.append(f"  verified    {verified}")
    print("\n".join(lines), file=file)
