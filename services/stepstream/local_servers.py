"""What the servers the project runs from Maven Central on this machine share (the Kafka broker,
``stepstream.kafka.local``; the schema registry, ``stepstream.avro.local_registry``): a lock around a
download into the cache, progress lines, and probes. Standard library only, so the registry's module
needs no Kafka client."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

COMPLETE_MARKER = ".stepstream-complete"  # written last into a fetched folder: only then is it used


def fetched_once(folder: Path, download: Callable[[], None], waiting_message: str) -> Path:
    """``folder``, filled by ``download`` on first use. Safe when several processes ask at once (a
    lock beside it), and a download that died half-way is never used: ``download`` fills a staging
    folder and renames it into place with ``COMPLETE_MARKER`` in it, only when complete."""
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.parent / ".lock", waiting_message=waiting_message):
        # Another process may have finished the download while this one waited for the lock.
        if not (folder / COMPLETE_MARKER).is_file():
            download()
    return folder


@contextlib.contextmanager
def exclusive_lock(path: Path, *, waiting_message: str | None = None) -> Iterator[None]:
    """Held by one process at a time (two processes fetching the same server wait for each other)."""
    # Opened for appending so that taking the lock never truncates anything.
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                progress(f"{waiting_message}…")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def progress(message: str) -> None:
    """A line on stderr while long work (a download, a start) goes on."""
    print(f"stepstream: {message}", file=sys.stderr, flush=True)


def last_lines(text: str, count: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-count:])


def port_answers(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
