"""Prefect's temporary server, for a command-line run without ``PREFECT_API_URL``, started so that Ctrl-C
leaves it running until the command has reported its end.

Prefect starts that server on first use as a child in the command's process
group, so the terminal's Ctrl-C (sent to the whole foreground group) stopped
it together with the command; the interrupted flow then reported its crash to
a server that was gone, retrying for 140-240 s before the command exited.
Started here first, in a process group of its own, it outlives the Ctrl-C and
is stopped by Prefect at the command's exit as before. On Linux it is also
told to end with the command (``PR_SET_PDEATHSIG``), so a command killed
outright (SIGKILL, a closed terminal) leaves no server behind, which Prefect's
own start did.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STARTUP_S = 90  # Prefect's default, 20 s, ran out on a loaded 2-core machine (database migrations, imports)
log = logging.getLogger(__name__)


# The settings of every Prefect server nowcast starts. Leases on the file system (under PREFECT_HOME,
# beside the server's database): Prefect keeps them in memory by default, so a server stopped while a
# run held a store's slot came back with the slot taken and no lease to expire, and every later writer
# of that store waited for ever
SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
}


def start() -> None:
    """Starts Prefect's temporary server unless flows report to a server (or Prefect may not start one).

    Only from the main thread: the parent-death signal follows the thread that started the child, so a
    server started from a thread that ends would die with it.
    """
    from prefect.server.api import server as prefect_server
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return
    if threading.current_thread() is not threading.main_thread():
        return
    server = prefect_server.SubprocessASGIServer()  # the instance every Prefect client of this process uses
    if server.running:
        return
    try:
        with _children_apart():
            server.start(timeout=max(STARTUP_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    except Exception as error:  # Prefect starts its own on first use, as it did before
        log.warning("Prefect's temporary server did not start apart from Ctrl-C (%s); Prefect starts it "
                    "itself", error)
        server.stop()  # a server that did not answer in time is not left running


@contextlib.contextmanager
def _children_apart() -> Iterator[None]:
    """``subprocess.Popen`` starts children in their own process group (and, on Linux, ending with this
    process) while the block runs; Prefect's server module starts its server through it."""
    original = subprocess.Popen
    subprocess.Popen = functools.partial(  # type: ignore[misc,assignment]
        original, process_group=0, preexec_fn=end_with_parent)
    try:
        yield
    finally:
        subprocess.Popen = original  # type: ignore[misc]


# looked up here, not in the forked child, where only async-signal-safe work is sure not to deadlock
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def end_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the parent dies (Linux only; elsewhere nothing)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
