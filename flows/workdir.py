"""A flow's working folder (checkpoints, logs, pictures) on local disk or on an object store.

Training and evaluation write through libraries that need a local folder
(Keras checkpoints, matplotlib). A workdir given as a URL (``s3://bucket/train``,
as infra/prefect.yaml gives the workers) is a folder on the worker's own disk
whose contents are copied to the URL when the flow ends, whether it succeeded
or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from nowcast.errors import InputError
from nowcast.pipelines.stores.groups import check_writable, filesystem, is_local, local_path


@contextlib.contextmanager
def local_workdir(workdir: str) -> Iterator[Path]:
    """The folder a flow writes into: ``workdir``, or for a URL a folder on this worker's disk (the same
    one for the same URL) copied to the URL afterwards. Checkpoints then stay on the worker: a training
    run restarted there resumes, one restarted on another machine starts over. One run at a time has it
    (:func:`held`)."""
    if is_local(workdir):
        local = Path(local_path(workdir))
        with held(local, workdir):
            yield local
        return

    digest = hashlib.sha256(workdir.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "nowcast-workdir" / digest
    local.mkdir(parents=True, exist_ok=True)
    with held(local, workdir):
        try:
            yield local
        finally:
            fs, root = filesystem(workdir)
            fs.put(f"{local}/", root.rstrip("/") + "/", recursive=True)


@contextlib.contextmanager
def held(folder: Path, name: str, what: str = "the work folder",
         fix: str = "give this run another --workdir") -> Iterator[None]:
    """Holds ``folder`` for this run: an exclusive lock on ``<folder>.lock`` beside it, which the system
    releases when the holder ends, however it ends.

    Two trainings in one work folder wrote each other's checkpoints and history (one ended in an HDF5
    locking traceback, the other with two runs' rows in history.csv, exit 0).

    Raises:
        InputError: another run holds it, naming that run and the fix.
    """
    check_writable(str(folder), what)  # a read-only one was an OSError traceback from the lock's file
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f"{folder.name}.lock"
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"{what} {name} is in use by another run ({holder}): wait for it to end, or "
                             f"{fix}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def published(path: Path, local: Path, workdir: str) -> str:
    """Where a file written under ``local`` ends up under ``workdir``."""
    if is_local(workdir):
        return str(path)
    return f"{workdir.rstrip('/')}/{path.relative_to(local).as_posix()}"
