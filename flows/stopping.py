"""A clean stop for the command line's streams: SIGINT (Ctrl-C) or SIGTERM ends them after the poll in
progress, with their summary and exit status 0; a second signal ends them at once."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(what: str) -> Iterator[threading.Event]:
    """An Event set by the first SIGINT or SIGTERM while the block runs (a service manager's stop).

    Off the main thread (a test calling ``main`` from a thread) no handler can be
    installed; the Event then never fires and the signals keep their usual effect.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, _frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"{what}: stopping after the poll in progress ({signal.Signals(signum).name} again to stop "
              "at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
