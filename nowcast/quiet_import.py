"""pysteps' imports without the line its first import prints on stdout.

Imports nothing of nowcast's, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator

_LOCK = threading.RLock()  # re-entered where a module that quiets its own import is imported quietly


@contextlib.contextmanager
def pysteps_quietly() -> Iterator[None]:
    """Wraps pysteps imports: the first prints where pysteps found its configuration file, on stdout, which
    is a command's report. Only the import is silenced (swapping ``sys.stdout`` around every call would
    not be thread-safe under Beam's multi-threaded workers), and one thread at a time swaps it."""
    with _LOCK, contextlib.redirect_stdout(io.StringIO()):
        yield
