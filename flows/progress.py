"""Progress bars for long command-line jobs, driven by what the job has written so far.

A Beam job runs its work in worker processes, so its counters reach the
command only when it ends; what it has written shows at once in the store's
own flags (an archive's ``valid`` frames, a forecast store's ``written`` init
times); in-process counts (a training run's epochs) are read directly. A
background thread reads that count every second and moves a bar on stderr, and
inside a flow run a Prefect progress artifact. Bars show on a terminal only, never with ``-q``.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

POLL_S = 1.0
_COMMAND_LINE: dict[str, bool | None] = {"bars": None}  # what the command line decided (-q: no bars)


def command_line_bars(enabled: bool | None) -> None:
    """The command line's choice for bars drawn by flows it runs in-process (``nowcast evaluate``);
    None leaves it to whether stderr is a terminal."""
    _COMMAND_LINE["bars"] = enabled


@contextlib.contextmanager
def progress(description: str, total: int, done: Callable[[], int], *, enabled: bool | None = None,
             console=None, poll_s: float = POLL_S, artifact: str | None = None) -> Iterator[None]:
    """Shows ``done()`` of ``total`` while the block runs.

    Args:
        description: what is counted, e.g. "ingest frames".
        total: the count at the end.
        done: the count so far; an error reading it (a store not created yet) counts as no change.
        enabled: the bar on stderr; None: as the command line chose (:func:`command_line_bars`), else
            only when stderr is a terminal.
        console: a rich Console to draw on (default: stderr).
        artifact: inside a Prefect flow or task run, also keep a progress
            artifact of this key at the same percentage (the run's page in the UI).
    """
    if enabled is None:
        enabled = _COMMAND_LINE["bars"]
    if enabled is None:
        enabled = sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        shows = []
        if enabled and total > 0:
            shows.append(stack.enter_context(_bar(description, total, console)))
        if artifact and total > 0 and _in_prefect_run():
            shows.append(_artifact(artifact, description, total))
        if not shows:
            yield
            return

        def update() -> None:
            with contextlib.suppress(Exception):
                count = min(done(), total)
                for show in shows:
                    show(count)

        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(poll_s):
                update()

        # the run's context (which run an artifact belongs to, the API's settings) goes with the thread
        thread = threading.Thread(target=contextvars.copy_context().run, args=(poll,), name="progress",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            update()


@contextlib.contextmanager
def reported(description: str, total: int, *, artifact: str | None = None) -> Iterator[Callable[[int], None]]:
    """:func:`progress` of a count the block reports itself: yields ``report(count)`` (a verification's
    ``on_samples``)."""
    seen = [0]
    with progress(description, total, lambda: seen[0], artifact=artifact):
        yield lambda count: seen.__setitem__(0, count)


@contextlib.contextmanager
def _bar(description: str, total: int, console=None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields its ``show(count)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console or Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda count: bar.update(task, completed=count)


def _artifact(key: str, description: str, total: int) -> Callable[[int], None]:
    """A Prefect progress artifact at 0 %; returns its ``show(count)``, which moves it only forward."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)
    shown = [0]

    def show(count: int) -> None:
        if count > shown[0]:
            update_progress_artifact(artifact_id, 100.0 * count / total)  # type: ignore[arg-type]
            shown[0] = count

    return show


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


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
