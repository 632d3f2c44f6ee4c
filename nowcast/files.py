"""Small local-file helpers shared by the flows, jobs and model."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from nowcast.errors import InputError


def write_atomically(path: str | Path, text: str) -> None:
    """Replaces the file at ``path`` with ``text`` in one step: a reader, or the next run after a kill,
    sees the old file or the new one, never half of one."""
    temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def make_folder(path: Path, what: str) -> Path:
    """Makes the folder ``path`` (and its parents) or refuses naming ``what`` and the reason: a path the
    system cannot hold (under /proc, a name too long) passed the permission checks and was a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{what} {path} cannot be made ({error.strerror or error}): give a folder this "
                         "user can create and write") from None
    return path
