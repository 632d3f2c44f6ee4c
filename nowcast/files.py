"""Small local-file helpers shared by the flows, jobs and model."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


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
