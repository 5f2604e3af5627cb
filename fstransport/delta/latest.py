"""The snapshot a receiver installed last, kept across restarts: the delta base for a snapshot
under a new name (``docs/delta.md``).  A hint, not a fact: the id is written after each install
(``Receiver(long_lived=True)``) and read when an offer is due; whatever it names is mapped and
checked like any base, so a stale, torn or foreign file costs at most a full transfer."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fstransport.errors import InvalidRequest
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.storage.layout import LATEST_FILE

__all__ = ["last_installed", "note_latest", "read_latest"]

log = logging.getLogger("fstransport.receiver")


def _where(store: Any) -> tuple[Any, str] | None:
    backend, folder = getattr(store, "backend", None), getattr(store, "folder", None)
    if backend is None or folder is None or getattr(backend, "delta_base", None) is None:
        return None  # a store of its own making: nothing kept
    return backend, str(folder(LATEST_FILE))


async def note_latest(store: Any, snapshot_id: str) -> None:
    """Remember `snapshot_id` as `store`'s last installed snapshot (failures are logged: the
    install itself succeeded)."""
    where = _where(store)
    if where is None:
        return
    backend, path = where
    try:
        await backend.call("makedirs", path.rpartition("/")[0], exist_ok=True)
        await backend.call("pipe_file", path, snapshot_id.encode("utf-8"))
    except Exception as exc:
        log.warning("could not note %r as the last installed snapshot: %s", snapshot_id, exc)


async def read_latest(store: Any) -> str | None:
    """The id `note_latest` last wrote into `store`, or None (none, unreadable, not an id)."""
    where = _where(store)
    if where is None:
        return None
    backend, path = where
    try:
        raw = await backend.call("cat_file", path)
        return check_snapshot_id(bytes(raw[:1024]).decode("utf-8"))
    except (OSError, UnicodeDecodeError, InvalidRequest):
        return None
    except Exception as exc:  # a backend's own error type: no hint
        log.info("the last installed snapshot could not be read: %s", exc)
        return None


async def last_installed(installed: Iterable[str], store: Any, long_lived: bool) -> str | None:
    """The id a receiver installed last: the newest of `installed` (its memory, oldest first),
    else, for a `long_lived` one, what `note_latest` wrote before a restart."""
    latest = next(reversed(list(installed)), None)
    if latest is None and long_lived:
        latest = await read_latest(store)
    return latest
