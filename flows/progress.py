"""Progress bars for long command-line jobs, driven by what the job has written so far.

A Beam job runs its work in worker processes, so its counters reach the
command only when it ends; what it has written shows at once in the store's
own flags (an archive's ``valid`` frames, a forecast store's ``written`` init
times). A background thread reads that count every second and moves a bar on
stderr. Bars show on a terminal only, never with ``-q``; flow runs report the
same counts as Prefect progress artifacts.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

POLL_S = 1.0


@contextlib.contextmanager
def progress(description: str, total: int, done: Callable[[], int], *, enabled: bool | None = None,
             console=None, poll_s: float = POLL_S) -> Iterator[None]:
    """Shows ``done()`` of ``total`` while the block runs.

    Args:
        description: what is counted, e.g. "ingest frames".
        total: the count at the end.
        done: the count so far; an error reading it (a store not created yet) counts as no change.
        enabled: None: only when stderr is a terminal.
        console: a rich Console to draw on (default: stderr).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total <= 0:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    stop = threading.Event()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console or Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)

        def update() -> None:
            with contextlib.suppress(Exception):
                bar.update(task, completed=min(done(), total))

        def poll() -> None:
            while not stop.wait(poll_s):
                update()

        thread = threading.Thread(target=poll, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            update()


def count_true(read: Callable[[], Any], before: int = 0) -> Callable[[], int]:
    """A ``done`` for :func:`progress`: the flags ``read()`` returns that are set, less ``before``."""
    import numpy as np

    return lambda: int(np.count_nonzero(read())) - before


def count_now(read: Callable[[], Any]) -> int:
    """The flags set before a job starts; 0 when they cannot be read (a store not created yet, or one a
    repair is about to mend): the bar is a guide, never a reason to refuse the job."""
    try:
        return count_true(read)()
    except Exception:
        return 0
