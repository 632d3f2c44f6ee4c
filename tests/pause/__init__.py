"""Deterministic pause points for kill tests: a process stops after its N-th matching chunk write.

Used two ways: :func:`pause_env` for a process the test starts (this folder's
``sitecustomize.py`` installs the pause at start-up, in that process and the
processes it starts), or :func:`install` called directly in a running process
(a dask worker, through ``client.run``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
ROOT = FOLDER.parents[1]
ENV = "NOWCAST_TEST_PAUSE"
SEED_ENV = "NOWCAST_FAULT_SEED"  # the kill points' seed: CI runs 0; set it to run others


BATCHES = "<training batches>"  # a pattern that counts finished training batches instead of writes


def pause_env(signal_file: Path, pattern: str, after: int, go: Path | None = None) -> dict[str, str]:
    """``os.environ`` plus what makes a started process pause after ``after`` writes matching ``pattern``
    (or, with ``pattern=BATCHES``, after its ``after``-th finished training batch)."""
    settings = {"signal": str(signal_file), "pattern": pattern, "after": after, "go": str(go) if go else None}
    path = os.pathsep.join(p for p in (str(FOLDER), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, ENV: json.dumps(settings), "PYTHONPATH": path}


def install_from_environment() -> None:
    settings = json.loads(os.environ[ENV])
    pause_at = install_batches if settings["pattern"] == BATCHES else install
    pause_at(settings["signal"], settings["pattern"], settings["after"], settings["go"])


def install_batches(signal_file: str, pattern: str, after: int, go: str | None = None) -> None:
    """Wraps Keras's ``CallbackList.on_train_batch_end``: the process pauses after its ``after``-th batch."""
    from keras.callbacks import CallbackList

    original = CallbackList.on_train_batch_end
    count = 0

    def on_train_batch_end(self, batch, logs=None):
        nonlocal count
        original(self, batch, logs)
        count += 1
        if count == after and _claim(signal_file):
            _wait_for(go)

    CallbackList.on_train_batch_end = on_train_batch_end


def _wait_for(go: str | None) -> None:
    while go is None or not os.path.exists(go):  # blocks the process's work here
        time.sleep(0.05)


def install(signal_file: str, pattern: str, after: int, go: str | None = None) -> None:
    """Wraps zarr's ``LocalStore.set`` in this process (see the module docstring of sitecustomize)."""
    from zarr.storage import LocalStore

    original = getattr(LocalStore.set, "__wrapped__", LocalStore.set)
    matching = re.compile(pattern)
    count = 0

    async def set(self, key, value):
        nonlocal count
        await original(self, key, value)
        if not matching.search(key):
            return
        count += 1
        if count == after and _claim(signal_file):
            _wait_for(go)  # blocks zarr's IO loop: the whole job stops here

    set.__wrapped__ = original
    LocalStore.set = set


def uninstall() -> None:
    """Gives zarr's ``LocalStore.set`` back its own (a long-lived process a test paused: a dask worker)."""
    from zarr.storage import LocalStore

    LocalStore.set = getattr(LocalStore.set, "__wrapped__", LocalStore.set)


def _claim(signal_file: str) -> bool:
    """Creates ``signal_file`` holding this pid; False when another process created it first."""
    try:
        descriptor = os.open(signal_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def paused_pid(signal_file: Path, process: subprocess.Popen | None = None, timeout_s: float = 300) -> int:
    """Waits for the pause (a bounded wait on an event, not on the job's speed); the paused pid.

    Raises AssertionError when ``process`` ended first or the timeout passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        text = signal_file.read_text() if signal_file.exists() else ""
        if text:
            return int(text)
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job ended (exit {process.returncode}) before its pause point")
        if time.monotonic() > deadline:
            raise AssertionError(f"no pause within {timeout_s:.0f} s")
        time.sleep(0.02)


def kill_when_paused(command: list[str], signal_file: Path, pattern: str, after: int,
                     cwd: Path = ROOT) -> None:
    """Runs ``command`` in its own process group, waits for its pause point and SIGKILLs the group."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env=pause_env(signal_file, pattern, after), cwd=cwd)
    try:
        paused_pid(signal_file, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def kill_points(budget: int, kills: int = 2, seed: int | None = None) -> list[int]:
    """``kills`` pause points (counts of matching writes), drawn with ``seed`` (default: $NOWCAST_FAULT_SEED
    or 0), each at most ``budget // (kills + 1)``: a run resumed after each kill still has writes left to
    pause at, whether it resumes (ingest, scoring) or starts over (windows).

    >>> kill_points(30, 2, seed=0) == kill_points(30, 2, seed=0)
    True
    >>> all(1 <= n <= 10 for n in kill_points(30, 2, seed=5))
    True
    """
    import numpy as np

    seed = int(os.environ.get(SEED_ENV, "0")) if seed is None else seed
    return [int(n) for n in np.random.default_rng(seed).integers(1, max(budget // (kills + 1), 1) + 1, kills)]


def kill_at_points(command: list[str], folder: Path, pattern: str, points: list[int],
                   after_each=None, cwd: Path = ROOT) -> None:
    """Runs ``command`` once per point, SIGKILLing each run at its pause point (its N-th matching write);
    ``after_each(i)`` checks the store between kills."""
    for i, after in enumerate(points):
        kill_when_paused(command, folder / f"paused{i}", pattern, after, cwd)
        if after_each is not None:
            after_each(i)
