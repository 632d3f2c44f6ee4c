"""The writers' lock: one holder at a time across processes, on disk and on S3; killed holders expire."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time

import fsspec
import pytest

from nowcast.pipelines.stores.groups import local_path
from nowcast.pipelines.stores.lock import LockLostError, LockTimeoutError, held_fence, lock_url, store_lock

ROUNDS, WRITERS = 8, 4
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A store URL (it need not exist: the lock lives beside it) on local disk or on moto's S3."""
    if request.param == "local":
        return str(tmp_path / "archive.zarr")
    return f"{request.getfixturevalue('s3_bucket')}/archive.zarr"


def _count(store: str, counter: str, rounds: int) -> None:
    """Read-modify-write of a shared counter under the lock: without it, increments are lost."""
    for _ in range(rounds):
        with store_lock(store, "counting", poll_s=0.05):
            with fsspec.open(counter, "r") as handle:
                value = int(handle.read())
            time.sleep(0.01)  # widen the window another writer would slip into
            with fsspec.open(counter, "w") as handle:
                handle.write(str(value + 1))


@pytest.mark.fault("stores", "four writer processes at once",
                   "the store lock admits one at a time: no update lost")
def test_writers_in_separate_processes_never_overlap(store):
    counter = store + ".counter"
    with fsspec.open(counter, "w") as handle:
        handle.write("0")
    workers = [SPAWN.Process(target=_count, args=(store, counter, ROUNDS)) for _ in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    with fsspec.open(counter, "r") as handle:
        assert int(handle.read()) == ROUNDS * WRITERS
    fs, folder = fsspec.core.url_to_fs(lock_url(store))
    leases = fs.ls(folder, detail=False)
    assert len(leases) == 1, "older leases are cleaned away"
    lease = json.loads(fs.cat_file(leases[0]))
    assert lease["released"]
    assert lease["generation"] == ROUNDS * WRITERS


def _hold_then_wait(store: str, ready: str, go: str, lease_s: float) -> None:
    """Holds the lock, says so, then waits for ``go`` (exits 3 when the lock was lost meanwhile)."""
    try:
        with store_lock(store, "ingest", lease_s=lease_s):
            open(ready, "w").close()
            while not os.path.exists(go):
                time.sleep(0.05)
    except LockLostError as error:
        print(error, file=sys.stderr)
        sys.exit(3)


def _hold_then_write(store: str, ready: str, go: str, lease_s: float) -> None:
    """Holds the lock, says so, waits for ``go``, then writes ``<store>.written`` through a fence that was
    pickled as Beam ships it to a worker (exits 3 without writing when the lock was lost meanwhile)."""
    with contextlib.suppress(LockLostError), store_lock(store, "scoring", lease_s=lease_s):
        fence = pickle.loads(pickle.dumps(held_fence(store)))
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.05)
        try:
            fence.check()
        except LockLostError as error:
            print(error, file=sys.stderr)
            sys.exit(3)
        open(f"{local_path(store)}.written", "w").close()


def _wait_for(path: str, process, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert process.is_alive(), "the holder died before it held the lock"
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)


def _start_holder(store: str, tmp_path, lease_s: float, then=_hold_then_wait):
    """A process holding the lock of ``store`` (it has taken it on return), and the file that releases it."""
    ready, go = str(tmp_path / "ready"), str(tmp_path / "go")
    holder = SPAWN.Process(target=then, args=(store, ready, go, lease_s))
    holder.start()
    _wait_for(ready, holder)
    return holder, go


@pytest.mark.fault("stores", "a writer SIGKILLed while holding the store lock",
                   "others are refused while it is held, then take over when its lease ends")
def test_a_killed_holder_blocks_only_until_its_lease_runs_out(store, tmp_path, caplog):
    holder, _ = _start_holder(store, tmp_path, lease_s=2.0)
    try:
        refused = r"being written: ingest by .*:\d+:\d+ .*lease to run out"
        with pytest.raises(LockTimeoutError, match=refused), store_lock(store, "scoring", wait_s=0.3):
            pass
        assert [r.levelname for r in caplog.records if "waiting for" in r.message] == ["WARNING"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with store_lock(store, "scoring", wait_s=60) as lease:
        assert lease.purpose == "scoring"
        assert lease.generation == 2


@pytest.mark.fault("stores", "a writer paused (SIGSTOP) past its lease while another takes over",
                   "it fails with LockLostError instead of reporting success")
def test_a_paused_holder_whose_lease_ran_out_fails_instead_of_reporting_success(store, tmp_path):
    holder, go = _start_holder(store, tmp_path, lease_s=1.5)
    os.kill(holder.pid, signal.SIGSTOP)  # a paused process (swapped out, a stopped VM) renews nothing
    try:
        with store_lock(store, "scoring", wait_s=60) as lease:
            assert lease.generation == 2
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    open(go, "w").close()
    holder.join(timeout=60)
    assert holder.exitcode == 3


@pytest.mark.fault("stores", "a writer paused (SIGSTOP) past its lease, whose store another writer took and "
                   "wrote, then woken part way through its writes",
                   "its next write finds the lock taken (the fence its writing steps check) and it stops "
                   "without writing; it had gone on writing over the other writer's finished work")
def test_a_writer_whose_lock_was_taken_stops_before_its_next_write(tmp_path):
    store = str(tmp_path / "forecasts.zarr")
    holder, go = _start_holder(store, tmp_path, lease_s=1.5, then=_hold_then_write)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        with store_lock(store, "scoring", wait_s=60):
            held_fence(store).check()  # this writer's own fence holds
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    open(go, "w").close()
    holder.join(timeout=60)
    assert holder.exitcode == 3
    assert not os.path.exists(f"{store}.written")
    assert held_fence(store) is None  # no lock held here any more


@pytest.mark.fault("backfill", "`backfill --concurrency 3`: its chunks wait for each other's turn at the "
                   "store", "logged at info, seen with -v (a warning that the store 'is being written' was "
                   "printed about the run's own chunks); another process's hold stays a warning")
def test_the_lock_is_reentrant_in_one_thread_and_exclusive_between_threads(tmp_path, caplog):
    caplog.set_level(logging.INFO, "nowcast")
    store = str(tmp_path / "forecasts.zarr")
    held, results = threading.Event(), []

    def other_thread() -> None:
        held.wait()
        try:
            with store_lock(store, "ingest", wait_s=0.3):
                results.append("got it")
        except LockTimeoutError:
            results.append("refused")

    thread = threading.Thread(target=other_thread)
    thread.start()
    with store_lock(store, "scoring") as outer, store_lock(store, "scoring") as inner:
        assert inner is outer
        held.set()
        thread.join()
    assert results == ["refused"]
    assert [r.levelname for r in caplog.records if "waiting for" in r.message] == ["INFO"]
    with store_lock(store, "ingest", wait_s=0.3) as lease:  # released on leaving the outer block
        assert lease.generation == 2


def test_the_lock_of_a_store_lies_beside_it():
    assert lock_url("runs/archive.zarr").endswith("/runs/archive.zarr.lock")
    assert lock_url("s3://bucket/a/forecasts.zarr/") == "s3://bucket/a/forecasts.zarr.lock"


@pytest.mark.fault("stores", "NOWCAST_LOCK_LEASE_S that is no number, 1 s or less, or huge (1e20)",
                   "refused naming the variable and its bounds (1e20 passed, and the renewal thread then "
                   "died with an OverflowError while the command exited 0)")
@pytest.mark.parametrize("value", ["soon", "1", "0", "-5", "nan", "inf", "86401", "1e20"])
def test_a_lease_term_out_of_bounds_is_refused(value, monkeypatch):
    from nowcast.pipelines.stores.groups import StoreError
    from nowcast.pipelines.stores.lock import default_lease_s

    monkeypatch.setenv("NOWCAST_LOCK_LEASE_S", value)
    with pytest.raises(StoreError, match=r"above 1 and at most 86400 \(a day\)"):
        default_lease_s()
    monkeypatch.setenv("NOWCAST_LOCK_LEASE_S", "86400")
    assert default_lease_s() == 86_400.0


@pytest.mark.fault("stores", "two writers reaching one store through a symbolic link and by its own name",
                   "they take one lock (the real path's) and exclude each other; each held its own")
def test_a_store_reached_through_a_link_has_one_lock(tmp_path):
    real = tmp_path / "real.zarr"
    real.mkdir()
    (tmp_path / "link.zarr").symlink_to(real)
    assert lock_url(str(tmp_path / "link.zarr")) == lock_url(str(real)) == f"{real}.lock"
    held, results = threading.Event(), []

    def other_thread() -> None:
        held.wait()
        try:
            with store_lock(str(tmp_path / "link.zarr"), "ingest", wait_s=0.3):
                results.append("got it")
        except LockTimeoutError:
            results.append("refused")

    thread = threading.Thread(target=other_thread)
    thread.start()
    with store_lock(str(real), "ingest"):
        held.set()
        thread.join()
    assert results == ["refused"]


@pytest.mark.fault("stores", "a file where a store's lock folder belongs",
                   "the writer stops naming the file and the fix (it spun at full CPU forever, silent)")
def test_a_file_in_place_of_the_lock_folder_is_named(tmp_path):
    from nowcast.pipelines.stores.groups import StoreError

    (tmp_path / "a.zarr.lock").write_text("x")
    with (pytest.raises(StoreError, match=r"a\.zarr\.lock is a file where the writers' lock folder"),
          store_lock(str(tmp_path / "a.zarr"), "ingest", wait_s=5)):
        pass


@pytest.mark.fault("stores", "a lease object nowcast did not write: JSON without its fields, not an object, "
                   "or running out in 1e30 s",
                   "it reads as expired and blocks no writer (a KeyError traceback, or a wait of 1e30 s)")
@pytest.mark.parametrize("lease", ["{}", "[]", '{"owner": "x", "purpose": "y", "expires": 1e30}',
                                   '{"owner": "x", "purpose": "y", "expires": "soon"}'])
def test_a_lease_nowcast_did_not_write_blocks_no_writer(tmp_path, lease):
    folder = tmp_path / "a.zarr.lock"
    folder.mkdir()
    (folder / "000000000001.json").write_text(lease)
    with store_lock(str(tmp_path / "a.zarr"), "ingest", wait_s=5):
        assert sorted(path.name for path in folder.glob("*.json"))[-1] == "000000000002.json"
