"""The command line's progress bars follow a job's own count and stay off where nobody watches."""

from __future__ import annotations

import io
import time

from rich.console import Console

from nowcast.flows.progress import count_true, progress


def test_the_bar_follows_the_count_and_ends_at_the_total():
    flags = [True, True] + [False] * 4  # two set before the job: not counted
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with progress("score init times", 4, count_true(lambda: flags, 2), enabled=True, console=console,
                  poll_s=0.05):
        flags[2:4] = [True, True]
        deadline = time.monotonic() + 10
        while "2/4" not in screen.getvalue():  # drawn while the job runs, not only at the end
            assert time.monotonic() < deadline, screen.getvalue()
            time.sleep(0.05)
        flags[4:] = [True, True]
    assert "4/4" in screen.getvalue()


def test_no_bar_off_a_terminal_or_when_nothing_is_to_do():
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True)
    with progress("ingest frames", 0, lambda: 0, enabled=True, console=console):
        pass
    with progress("ingest frames", 3, lambda: 3, console=console):  # pytest's stderr is no terminal
        pass
    assert screen.getvalue() == ""
