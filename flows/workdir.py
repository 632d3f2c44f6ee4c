"""A flow's working folder (checkpoints, logs, pictures) on local disk or on an object store.

Training and evaluation write through libraries that need a local folder
(Keras checkpoints, matplotlib). A workdir given as a URL (``s3://bucket/train``,
as infra/prefect.yaml gives the workers) is a folder on the worker's own disk
whose contents are copied to the URL when the flow ends, whether it succeeded
or not.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nowcast.pipelines.stores.groups import filesystem, is_local, local_path


@contextlib.contextmanager
def local_workdir(workdir: str) -> Iterator[Path]:
    """The folder a flow writes into: ``workdir``, or for a URL a folder on this worker's disk (the same
    one for the same URL) copied to the URL afterwards. Checkpoints then stay on the worker: a training
    run restarted there resumes, one restarted on another machine starts over."""
    if is_local(workdir):
        yield Path(local_path(workdir))
        return

    digest = hashlib.sha256(workdir.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "nowcast-workdir" / digest
    local.mkdir(parents=True, exist_ok=True)
    try:
        yield local
    finally:
        fs, root = filesystem(workdir)
        fs.put(f"{local}/", root.rstrip("/") + "/", recursive=True)


def published(path: Path, local: Path, workdir: str) -> str:
    """Where a file written under ``local`` ends up under ``workdir``."""
    if is_local(workdir):
        return str(path)
    return f"{workdir.rstrip('/')}/{path.relative_to(local).as_posix()}"
