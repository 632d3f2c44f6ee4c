"""One writer at a time per store, on local disk and on object storage: a lease with expiry.

Two writers that read a store, merge and write whole chunks lose each
other's work (each rewrites a shared chunk from what it read: the last one
wins), so every job that writes a store holds its lock while it plans and
writes (docs/operations.md, "Concurrency"). Readers take no lock: every
chunk is replaced atomically (a rename on disk, one PUT on S3), so a reader
sees a chunk before or after a write, never half of one.

The lock of ``archive.zarr`` is the folder ``archive.zarr.lock/`` beside it
(the store's own bytes stay the job's), holding lease objects named by a
generation number. A writer

1. lists the folder; while the newest lease is held (not released, not
   expired) it waits, saying once who holds it;
2. creates the next generation with an exclusive create, which storage
   makes atomic (``O_EXCL`` on disk, a conditional PUT ``If-None-Match: *``
   on S3, ``ifGenerationMatch=0`` on GCS): of writers racing for it, one
   wins and the others list again;
3. lists once more and withdraws if a newer generation exists (a writer
   that listed before the old leases were cleaned away could recreate one);
4. renews its lease every third of its term while it works; a renewal that
   finds a newer generation means the lease ran out (the process was paused
   for longer than the term) and another writer went on, so the run fails
   with :class:`LockLostError` instead of reporting success;
5. marks its lease released and deletes the older generations.

A writer killed with SIGKILL leaves its lease held until it expires
(``lease_s``, default 60 s, or ``NOWCAST_LOCK_LEASE_S``); the next writer then
takes over. Expiry is read against the waiting machine's clock, so the
machines' clocks must agree to well within a lease (NTP does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from nowcast.pipelines.stores.groups import (
    StoreError,
    check_store_url,
    filesystem,
    is_local,
    local_path,
    storage_errors,
    storage_problem,
)

log = logging.getLogger(__name__)
LEASE_S = 60.0
MAX_LEASE_S = 86_400.0
SUFFIX = ".lock"
MAX_UNLISTED = 100  # tries in a row at a lease the lock folder does not show, before giving up
DIGITS = 12


class LockLostError(StoreError):
    """The writer's lease ran out and another writer took the store over while this one wrote."""

    transient = True


class LockTimeoutError(StoreError):
    """The lock was held by another writer for longer than this writer would wait."""

    transient = True


@dataclasses.dataclass(frozen=True)
class Lease:
    """One lease object: who holds the store, for what, until when (epoch seconds)."""

    generation: int
    owner: str
    purpose: str
    expires: float
    released: bool = False

    def held(self, now: float) -> bool:
        return not self.released and self.expires > now

    def describe(self) -> str:
        left = self.expires - time.time()
        return f"{self.purpose} by {self.owner} (lease runs {left:.0f} s more unless renewed)"


@dataclasses.dataclass(frozen=True)
class Fence:
    """A writer's hold on a store, for the steps that write it (in any process: it pickles): :meth:`check`
    before each write stops a writer whose lease ran out and whose store another writer took. A writer
    paused past its lease had gone on writing when it woke, over the finished work of the writer that
    took over (a scoring run left 80 of another's 93 init times overwritten, and check said none
    damaged); now at most the one write it had begun lands."""

    store: str
    folder: str
    generation: int
    purpose: str

    def check(self) -> None:
        """Raises:
            LockLostError: another writer holds the store now."""
        if _Folder(self.folder).generations()[-1:] != [self.generation]:
            raise LockLostError(_lost(self.store, self.purpose))


def held_fence(store: str) -> Fence | None:
    """The fence of the lock this thread holds on ``store``; None when it holds none (a store written
    without one: a new staging folder, a test)."""
    folder = lock_url(store)
    lease = _held.get((folder, threading.get_ident()))
    return None if lease is None else Fence(store, folder, lease.generation, lease.purpose)


def _lost(store: str, purpose: str) -> str:
    return (f"the lock of {store} ran out while this {purpose} wrote (its lease was not renewed in time: the "
            "process was paused or its storage unreachable) and another writer took the store over; this run "
            "stopped before its next write, leaving that writer's work. Check the store (`nowcast check`) "
            "and rerun this one if its work is still wanted: a rerun writes what is missing")


def lock_url(store: str) -> str:
    """The lock folder of a store: beside it (beside the folder a link leads to), named after it.

    >>> lock_url("s3://bucket/archive.zarr/"), lock_url("file:///data/forecasts.zarr")
    ('s3://bucket/archive.zarr.lock', '/data/forecasts.zarr.lock')
    """
    # a local store is locked by its real path: two writers reaching it through a link and by its own
    # name held two locks and did not exclude each other
    base = os.path.realpath(local_path(store)) if is_local(check_store_url(store)) else store
    return base.rstrip("/") + SUFFIX


def default_lease_s() -> float:
    """The lease term: ``NOWCAST_LOCK_LEASE_S`` or 60 s.

    >>> os.environ["NOWCAST_LOCK_LEASE_S"] = "soon"
    >>> try:
    ...     default_lease_s()
    ... except StoreError as error:
    ...     print(str(error)[:54])
    NOWCAST_LOCK_LEASE_S='soon' is not a number of seconds
    >>> del os.environ["NOWCAST_LOCK_LEASE_S"]
    """
    value = os.environ.get("NOWCAST_LOCK_LEASE_S")
    if not value:
        return LEASE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    # renewed every third of it: a term of 1 s or less spins, and one past a day is a writer that died
    # blocking every other for longer than anyone waits (past ~1e10 s the renewal's wait overflowed)
    if not 1 < seconds <= MAX_LEASE_S:
        raise StoreError(f"NOWCAST_LOCK_LEASE_S={value!r} is not a number of seconds above 1 and at most "
                         f"{MAX_LEASE_S:.0f} (a day); set one (e.g. {LEASE_S:.0f}), or unset it for "
                         f"{LEASE_S:.0f} s")
    return seconds


class _Folder:
    """The lease objects of one lock folder, through fsspec (local paths through the OS, for O_EXCL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = is_local(url)
        self.fs, self.path = filesystem(url)

    def _name(self, generation: int) -> str:
        return f"{self.path}/{generation:0{DIGITS}d}.json"

    def generations(self) -> list[int]:
        try:
            names = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            stem = name.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit() and len(stem) == DIGITS:
                found.append(int(stem))
        return sorted(found)

    def read(self, generation: int) -> Lease | None:
        """The lease of ``generation``; one that nowcast did not write whole (cut short by a writer that
        died mid-write on a store without atomic puts, edited, or running past any term a writer takes)
        reads as expired, so it blocks no writer."""
        try:
            fields = json.loads(self.fs.cat_file(self._name(generation)))
            lease = Lease(generation, str(fields["owner"]), str(fields["purpose"]), float(fields["expires"]),
                          bool(fields.get("released", False)))
        except FileNotFoundError:  # cleaned away since the listing
            return None
        except (ValueError, KeyError, TypeError):
            return Lease(generation, "unknown", "unknown", 0.0)
        if not lease.expires < time.time() + MAX_LEASE_S:  # NaN, or a year: no writer renews that far
            return dataclasses.replace(lease, expires=0.0)
        return lease

    def create(self, lease: Lease) -> bool:
        """Writes a new generation exclusively; False when another writer created it first."""
        data = json.dumps(dataclasses.asdict(lease)).encode()
        name = self._name(lease.generation)
        try:
            if self.local:
                self._create_local(name, data)
            else:
                self.fs.pipe_file(name, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _create_local(self, name: str, data: bytes) -> None:
        """Creates ``name`` holding ``data`` whole, or raises FileExistsError: the lease is hard-linked
        into place from a written temporary file (atomic, and refused when the name exists), so no other
        writer ever reads it empty. An O_EXCL create written after would show an empty file for a
        moment, which a racing writer took for an expired lease and went on beside its holder."""
        if os.path.lexists(self.path) and not os.path.isdir(self.path):  # makedirs: FileExistsError forever
            raise StoreError(f"{self.path} is a file where the writers' lock folder of the store belongs: "
                             "move or delete it, then rerun")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:  # under /proc: a FileNotFoundError traceback (EACCES and EROFS are worded
            if storage_problem(error) is not None:  # by the jobs' storage_errors)
                raise
            raise StoreError(f"the store's lock folder {self.path} cannot be made "
                             f"({error.strerror or error}): give the store a location this user can write"
                             ) from None
        temporary = _written_temporary(name, data)
        try:
            os.link(temporary, name)
        finally:
            os.unlink(temporary)

    def replace(self, lease: Lease) -> None:
        """Rewrites a lease this writer holds (renewal, release): only its holder ever writes it."""
        data = json.dumps(dataclasses.asdict(lease)).encode()
        name = self._name(lease.generation)
        if self.local:
            os.replace(_written_temporary(name, data), name)
        else:
            self.fs.pipe_file(name, data)

    def remove_older(self, generation: int) -> None:
        for older in self.generations():
            if older < generation:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._name(older))


def _written_temporary(name: str, data: bytes) -> str:
    """A new file beside ``name`` holding ``data``, to be moved or linked into place whole."""
    temporary = f"{name}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
    return temporary


def _process() -> str:
    """The first part of every lease owner this process writes: ``host:pid:``."""
    return f"{socket.gethostname()}:{os.getpid()}:"


def _owner() -> str:
    return f"{_process()}{threading.get_ident()}"


_held: dict[tuple[str, int], Lease] = {}  # (lock folder, thread) -> the lease this thread holds


def _acquire(folder: _Folder, purpose: str, lease_s: float, wait_s: float | None, poll_s: float,
             store: str) -> Lease:
    started, told, unlisted = time.monotonic(), False, 0
    while True:
        generations = folder.generations()
        newest = folder.read(generations[-1]) if generations else None
        if newest is None or not newest.held(time.time()):
            lease = Lease((generations[-1] if generations else 0) + 1, _owner(), purpose,
                          time.time() + lease_s)
            if folder.create(lease):
                listed = folder.generations()
                if listed[-1:] == [lease.generation]:
                    return lease
                if listed and listed[-1] > lease.generation:
                    folder.replace(dataclasses.replace(lease, released=True))  # a newer one exists: withdraw
                    continue
            unlisted += 1  # a lease it could not create, or one the listing does not show
            if unlisted > MAX_UNLISTED:
                raise StoreError(f"the writers' lock of {store} at {folder.url} does not list the leases "
                                 f"it holds (generation {lease.generation} cannot be created, or is not "
                                 "listed once created): the storage lists keys otherwise than it writes "
                                 "them; check the store's URL")
            time.sleep(poll_s / 10)
            continue
        unlisted = 0
        if not told:  # another thread of this process (a backfill's next chunk) waits its turn as planned
            mine = newest.owner.startswith(_process())
            log.log(logging.INFO if mine else logging.WARNING, "waiting for %s: it is being written, %s",
                    store, newest.describe())
            told = True
        if wait_s is not None and time.monotonic() - started > wait_s:  # said above: a slow first look
            raise LockTimeoutError(  # (an object store's listing) once timed out without it
                f"{store} is being written: {newest.describe()}; waited {wait_s:.0f} s. Wait for that run "
                f"to end, or, if its process is gone, for its lease to run out (then rerun)")
        time.sleep(poll_s)


@contextlib.contextmanager
def store_lock(store: str, purpose: str, lease_s: float | None = None, wait_s: float | None = None,
               poll_s: float = 0.5) -> Iterator[Lease]:
    """Holds the writers' lock of ``store`` (any URL) for the body; see the module docstring.

    Args:
        store: the store's URL; it need not exist yet (creation is a write).
        purpose: what the writer does, shown to writers that wait (``ingest``).
        lease_s: the lease term (default :func:`default_lease_s`); renewed every third of it.
        wait_s: give up after waiting this long (default: wait while the holder renews).
        poll_s: how often a waiting writer looks again.

    The lock is re-entrant per thread: a job called inside a flow step that
    holds the lock already does not wait for itself.

    Raises:
        LockLostError: on leaving the body, when the lease ran out while it ran and another writer
            took the store; the body's writes may have been overwritten, so the run must not succeed.
        LockTimeoutError: ``wait_s`` passed with the lock held by another writer.
    """
    term = default_lease_s() if lease_s is None else lease_s
    folder = _Folder(lock_url(store))
    key = (folder.url, threading.get_ident())
    if key in _held:  # a job inside a flow that holds the lock already
        yield _held[key]
        return
    with storage_errors(store, "nowcast"):  # a read-only location was an OSError traceback at the lock
        lease = _acquire(folder, purpose, term, wait_s, poll_s, store)
    _held[key] = lease
    log.debug("locked %s: %s", store, lease)
    stop, lost = threading.Event(), threading.Event()

    def renew() -> None:
        nonlocal lease
        while not stop.wait(term / 3):
            try:
                if folder.generations()[-1] != lease.generation:
                    lost.set()
                    return
                lease = dataclasses.replace(lease, expires=time.time() + term)
                folder.replace(lease)
            except Exception as error:  # a storage hiccup: the next renewal tries again
                log.warning("could not renew the lock of %s: %s", store, error)

    renewer = threading.Thread(target=renew, name=f"lock-renewal {store}", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        del _held[key]
        stop.set()
        renewer.join()
        try:
            if not lost.is_set() and folder.generations()[-1:] == [lease.generation]:
                folder.replace(dataclasses.replace(lease, released=True, expires=time.time()))
                folder.remove_older(lease.generation)
            else:
                lost.set()
        except OSError as error:  # a full or failing disk: the lease then simply expires
            log.warning("could not release the lock of %s (%s); it frees itself within %.0f s",
                        store, error, term)
    if lost.is_set():
        raise LockLostError(_lost(store, purpose))
