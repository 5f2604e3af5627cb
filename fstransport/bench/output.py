"""A benchmark's JSON document and its plot (throughput against chunk size, a line per window)."""

from __future__ import annotations

import json
import os

from fstransport.bench.plan import BenchResult, MiB
from fstransport.errors import ConfigurationError
from fstransport.storage._errors import storage_errors
from fstransport.units import format_size

PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
"""The plot's format, by the file name's extension."""


def plot_format(path: str) -> str:
    """The format `path`'s extension names (png, svg or pdf); `ConfigurationError` for others."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in PLOT_FORMATS:
        known = ", ".join(PLOT_FORMATS)
        raise ConfigurationError(f"cannot tell the plot's format from {path!r}: use {known}")
    return PLOT_FORMATS[extension]


def check_output(path: str, option: str) -> None:
    """Refuse an output path whose folder does not exist, before minutes of measuring."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or os.path.isdir(path):
        raise ConfigurationError(f"cannot write {option} {path!r}: no such folder, or a folder")


def write_json(result: BenchResult, path: str) -> None:
    with storage_errors(path, "write"), open(path, "w", encoding="utf-8") as fh:
        json.dump(result.to_dict(), fh, indent=2)
        fh.write("\n")


def plot_result(result: BenchResult, path: str) -> None:
    """Throughput against chunk size (log scale), one line per window, at `path` in the format
    its extension names (`PLOT_FORMATS`: PNG, SVG or PDF).

    Needs matplotlib (``pip install "fstransport[plot]"``); raises `ConfigurationError`
    without it.
    """
    fmt = plot_format(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as exc:
        raise ConfigurationError(
            'plotting needs matplotlib: pip install "fstransport[plot]"'
        ) from exc
    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=100)
    try:
        for window in sorted({c.window for c in result.cells}):
            row = sorted(
                (c for c in result.cells if c.window == window), key=lambda c: c.chunk_size
            )
            axes.plot(
                [c.chunk_size for c in row],
                [c.throughput / MiB for c in row],
                marker="o",
                label=f"window {window}",
            )
        best = result.best()
        axes.scatter(
            [best.chunk_size],
            [best.throughput / MiB],
            s=200,
            facecolors="none",
            edgecolors="black",
            zorder=3,
            label="best",
        )
        axes.set_xscale("log", base=2)
        ticks = sorted({c.chunk_size for c in result.cells})
        axes.set_xticks(ticks, [format_size(t).replace(".0 ", " ") for t in ticks])
        axes.set_xlabel("chunk size")
        axes.set_ylabel("MiB/s (median)")
        bound = result.plan.bound_seconds()
        if bound is not None:
            axes.axhline(
                result.plan.snapshot_size / bound / MiB,
                color="grey",
                linestyle="--",
                label="bandwidth-delay limit",
            )
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.set_title(f"fstransport bench\n{result.describe()}", fontsize=9)
        axes.legend(fontsize=8)
        figure.tight_layout()
        with storage_errors(path, "write"):
            figure.savefig(path, format=fmt)
    finally:
        pyplot.close(figure)
