"""Signals on the command line.

The streams (``watch``, ``score --follow``) stop cleanly: SIGINT (Ctrl-C) or
SIGTERM ends them after the poll in progress, with their summary and exit
status 0; a second signal ends them at once. Every other command is
interrupted by either signal as Ctrl-C interrupts Python: the command unwinds,
so the store locks it holds are released (SIGTERM's default, an instant death,
left the lock for the next writer to wait out), and :func:`interruptible`
tells the command line which signal it was.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from nowcast.errors import chain

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_RECEIVED: list[int] = []  # the signals that interrupted the command, newest last


def interrupt(signum: int, _frame: object) -> None:
    """Python's own SIGINT behaviour, for SIGTERM too, remembering which signal it was (a Beam job wraps
    the KeyboardInterrupt in its own error)."""
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[Callable[[BaseException], int | None]]:
    """SIGINT and SIGTERM raise KeyboardInterrupt while the block runs (off the main thread they keep their
    usual effect); yields ``signalled(error)``: the signal that ended the command with ``error``, or None."""
    _RECEIVED.clear()

    def signalled(error: BaseException) -> int | None:
        return _RECEIVED[-1] if _RECEIVED else signal_in(error)

    with _handling(interrupt), _interrupts_not_dropped():
        yield signalled


@contextlib.contextmanager
def _interrupts_not_dropped() -> Iterator[None]:
    """A KeyboardInterrupt that the signal raised inside a finaliser (``__del__``), where Python drops it
    after printing a traceback fragment, goes unprinted here; :func:`check_dropped` then ends the command as
    interrupted (it once went on and exited 0)."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def check_dropped() -> None:
    """Raises KeyboardInterrupt when a signal arrived while the command ran but its interrupt was dropped
    on the way (see :func:`_interrupts_not_dropped`)."""
    if _RECEIVED:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _handling(handler: Callable[[int, object], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM while the block runs, the previous ones after. Off the main
    thread (a test calling ``main`` from a thread) none can be installed: the signals keep their effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def signal_in(error: BaseException | None) -> int | None:
    """The signal behind ``error`` or an error it caused: Python's KeyboardInterrupt, or the
    TerminationSignal of Prefect's own SIGTERM handler during a flow run, whose crash report then fails
    when the same signal stopped Prefect's local server (a Ctrl-C reaches the whole process group)."""
    terminated = getattr(sys.modules.get("prefect.exceptions"), "TerminationSignal", ())
    for seen in chain(error):
        if isinstance(seen, KeyboardInterrupt):
            return signal.SIGINT
        if isinstance(seen, terminated):
            return int(seen.signal)
    return None


@contextlib.contextmanager
def stop_on_signals(what: str) -> Iterator[threading.Event]:
    """An Event set by the first SIGINT or SIGTERM while the block runs (a service manager's stop).

    Off the main thread (a test calling ``main`` from a thread) no handler can be
    installed; the Event then never fires and the signals keep their usual effect.
    """
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            interrupt(signum, frame)
        stop.set()
        print(f"{what}: stopping after the poll in progress ({signal.Signals(signum).name} again to stop "
              "at once)", file=sys.stderr, flush=True)

    with _handling(handle):
        yield stop
