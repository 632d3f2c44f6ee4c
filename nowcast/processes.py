"""Whether a process of this host still runs. Imports nothing of nowcast's, so every layer may use it."""

from __future__ import annotations

import contextlib
import os


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; a child that has exited (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    with contextlib.suppress(ChildProcessError):  # not our child: nothing to reap
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            return False
    return True
