"""What the servers the project runs from Maven Central on this machine share (the Kafka broker,
``stepstream.kafka.local``; the schema registry, ``stepstream.avro.local_registry``): a lock around a
download into the cache, progress lines, and probes. Standard library only, so the registry's module
needs no Kafka client."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

COMPLETE_MARKER = ".stepstream-complete"  # written last into a fetched folder: only then is it used


def fetched_once(folder: Path, download: Callable[[Path], None], *, what: str, waiting_message: str) -> Path:
    """``folder``, filled on first use by ``download(staging)``, which puts ``staging / folder.name``
    together. Safe when several processes ask at once (a lock beside it), and a download that died
    half-way is never used: the staging folder is renamed into place, ``COMPLETE_MARKER`` in it, only
    when ``download`` returned; what a killed process left behind is removed first."""
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    cache = folder.parent
    cache.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache / ".lock", waiting_message=waiting_message):
        # Another process may have finished the download while this one waited for the lock.
        if (folder / COMPLETE_MARKER).is_file():
            return folder
        for leftover in cache.glob(".download-*"):  # from a process killed mid-download
            shutil.rmtree(leftover, ignore_errors=True)
        if folder.exists():  # a folder without the marker is not ours to trust
            shutil.rmtree(folder)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            started = time.monotonic()
            download(staging)
            (staging / folder.name / COMPLETE_MARKER).write_text(f"{what}\n", encoding="utf-8")
            os.rename(staging / folder.name, folder)
            progress(f"… done in {time.monotonic() - started:.0f} s ({folder})")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
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
