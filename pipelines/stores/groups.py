"""One way to reach a store: every store is a URL (path, file://, memory://, s3://, gs://).

:func:`open_group` is the only place that opens a zarr group; the schema
modules (:mod:`.archive`, :mod:`.windows`, :mod:`.forecasts`) call it with
their own error class, so a missing store is reported with the fix that fits
it. :func:`grow_axis` is the one way an axis grows (the archive's ``time``,
the forecasts' ``init_time``) such that a writer stopped half way leaves a
state the next run can recognise and complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import logging
import os
import posixpath
import re
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from nowcast.errors import InputError, chain
from nowcast.processes import alive, host_id

log = logging.getLogger(__name__)

Mode = Literal["r", "r+", "a", "w", "w-"]


class StoreError(InputError):
    """A store that is missing or does not follow its schema; the message names the fix.

    Subclasses name the kind of store and what to do when it is missing.
    """

    kind: ClassVar[str] = "store"
    missing_fix: ClassVar[str] = "check the path or URL"


class StorageWriteError(StoreError):
    """The storage under a store refused a write (full, read-only, no permission); the message names it."""


# errno -> (the problem, the fix); the fixes never touch what the store holds
STORAGE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free space or move the store to a larger volume, then rerun"),
    errno.EDQUOT: ("the disk quota is used up", "free space or raise the quota, then rerun"),
    errno.EROFS: ("it is on a read-only file system", "give a writable location, or remount it writable"),
    errno.EACCES: ("permission denied", "give this user write permission on it, or another location"),
    errno.EPERM: ("operation not permitted", "give this user write permission on it, or another location"),
}


def storage_problem(error: BaseException) -> int | None:
    """The errno of a storage failure behind ``error``, or None.

    Looks through the exception chain and, for errors a Beam runner re-raised
    from a worker as text (``RuntimeError: OSError: [Errno 28] ...``), at the message.
    """
    for seen in chain(error):
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRORS:
            return seen.errno
        found = re.search(r"(?:OSError|PermissionError): \[Errno (\d+)\]", str(seen))
        if found and int(found.group(1)) in STORAGE_ERRORS:
            return int(found.group(1))
    return None


UNREACHABLE = "the object store cannot be reached"
# What s3fs, botocore and aiohttp raise (or a Beam worker re-raises as text) when the object store cannot be
# used at all, and the fix; matched on the exception's class name and message along its chain.
OBJECT_STORE_PROBLEMS = (
    (r"NoCredentialsError|PartialCredentialsError|Unable to locate credentials",
     "no credentials for the object store", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
     "AWS_PROFILE) where the command runs"),
    (r"EndpointConnectionError|ConnectTimeoutError|ReadTimeoutError|ClientConnector\w*Error|"
     r"Could not connect to the endpoint|Cannot connect to host",
     UNREACHABLE, "check that the object store runs and is reachable from here (for s3:// URLs its "
     "endpoint is AWS_ENDPOINT_URL, now {endpoint})"),
    (r"The specified bucket does not exist|NoSuchBucket",
     "the bucket does not exist", "create it, or fix the bucket's name in the URL"),
    (r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Access Denied|PermissionError: Forbidden|"
     r"^Forbidden$",
     "the object store refused the request", "check the credentials (AWS_ACCESS_KEY_ID, "
     "AWS_SECRET_ACCESS_KEY) and the bucket's permissions for this user"),
)


def object_store_problem(error: BaseException) -> str | None:
    """A sentence naming why the object store could not be used behind ``error``, and the fix; None if
    ``error`` is not such a failure. Looks through the exception chain, as :func:`storage_problem` does."""
    for seen in chain(error):
        text = f"{type(seen).__name__}: {seen}"
        for pattern, problem, fix in OBJECT_STORE_PROBLEMS:
            if re.search(pattern, text, re.MULTILINE) or re.fullmatch(pattern, str(seen)):
                endpoint = os.environ.get("AWS_ENDPOINT_URL") or "unset: AWS itself"
                said = str(seen).strip() or type(seen).__name__
                return f"{problem} ({said}): {fix.format(endpoint=endpoint)}"
    return None


def object_store_message(error: BaseException, urls: Iterable[object]) -> str | None:
    """:func:`object_store_problem` followed by the remote ones of ``urls`` (which bucket or endpoint);
    None if ``error`` is not an object-store failure. The command line and the flows word it alike."""
    problem = object_store_problem(error)
    if problem is None:
        return None
    remote = sorted({url for url in urls if isinstance(url, str) and url and not is_local(url)})
    return problem + (f" (URLs: {', '.join(remote)})" if remote else "")


@contextlib.contextmanager
def object_store_errors(*urls: str | None) -> Iterator[None]:
    """Turns an object store that cannot be used into a :class:`StoreError` naming why, the fix and the
    ``urls`` involved, as the command line words it (a flow run had failed with a bare "The specified
    bucket does not exist")."""
    try:
        yield
    except InputError:
        raise
    except Exception as error:
        message = object_store_message(error, urls)
        if message is None:
            raise
        worded = StoreError(message)
        worded.transient = message.startswith(UNREACHABLE)  # a timeout may pass; a missing bucket does not
        raise worded from error


@contextlib.contextmanager
def storage_errors(url: str, job: str, rerun: str = "a rerun writes only what is missing") -> Iterator[None]:
    """Turns a storage failure while ``job`` writes ``url`` into a :class:`StorageWriteError` with the fix.

    Everything a job writes is whole chunks flagged complete last, so the
    store opens as before the failed chunk and a rerun writes only what is
    missing; the message says so (``rerun``: what a rerun does instead, for a
    job that builds its store anew).
    """
    try:
        yield
    except StoreError:
        raise
    except Exception as error:
        code = storage_problem(error)
        if code is None:
            raise
        problem, fix = STORAGE_ERRORS[code]
        raise StorageWriteError(
            f"{job} could not write {url}: {problem} ({os.strerror(code)}). The store keeps what was "
            f"complete before ({rerun}): {fix}") from error


# what a Beam runner appends to the message of an exception it re-raises from a step
_STEP = re.compile(r"( \[while running '[^']*'\])+$")


def raised_in_worker(error: BaseException, kind: type[InputError]) -> InputError | None:
    """The ``kind`` error that a Beam worker raised behind ``error``, with its own message; None if none.

    In one process the runner re-raises the worker's exception with the
    step's name appended; from a worker process it arrives as the text of a
    ``RuntimeError`` (as :func:`storage_problem`'s errors do). Either way the
    user gets the message the worker raised, not the runner's traceback.
    """
    for seen in chain(error):
        if isinstance(seen, kind):
            return kind(_STEP.sub("", str(seen)))
        found = re.search(rf"\b{kind.__name__}: (.+)", str(seen))
        if found:
            return kind(_STEP.sub("", found.group(1).rstrip()))
    return None


@contextlib.contextmanager
def worker_errors(*kinds: type[InputError]) -> Iterator[None]:
    """Re-raises an error of ``kinds`` that a Beam worker raised as itself (:func:`raised_in_worker`)."""
    try:
        yield
    except Exception as error:
        for kind in kinds:
            found = raised_in_worker(error, kind)
            if found is not None:
                raise found from error
        raise


def is_local(url: str) -> bool:
    """True for plain paths and ``file://`` URLs.

    >>> is_local("runs/archive.zarr"), is_local("s3://bucket/archive.zarr")
    (True, False)
    """
    return "://" not in url or url.startswith("file://")


_ONE_SLASH = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def looks_like_url(text: str) -> bool:
    """Whether ``text`` is a URL (``s3://...``), or one a slash short (``s3:/...``), not a plain path."""
    return "://" in text or bool(_ONE_SLASH.match(text))


def check_url(url: str) -> str:
    """``url``, refused where it would silently land somewhere else than meant.

    ``s3:/bucket/a.zarr`` (a slash short) is a local folder named ``s3:``, and ``s3://bucket//a.zarr``
    an object key with an empty segment, which listings and writes spell differently (a store lock
    once spun for ever on one).

    Raises:
        StoreError: naming the URL and the spelling meant.
    """
    if is_local(url):
        typo = _ONE_SLASH.match(url)
        if typo:
            meant = f"{typo[1]}://{url[typo.end():]}"
            raise StoreError(f"{url} looks like the URL {meant} with a slash missing: write that (or ./{url} "
                             "for a local folder of that name)")
        return url
    scheme, rest = url.split("://", 1)
    if scheme != scheme.lower():  # fsspec knows schemes in lower case only: "S3" read as unreadable metadata
        raise StoreError(f"{url}: write the scheme in lower case: {scheme.lower()}://{rest}")
    if rest.startswith("/"):  # 's3:///bkt/a.zarr': garbled keys written into the bucket (zarrprecip, ...)
        raise StoreError(f"{url} has no bucket right after '{scheme}://' (a slash too many): write "
                         f"{scheme}://{rest.lstrip('/')}")
    if "//" in rest.rstrip("/"):
        raise StoreError(f"{url} has an empty path segment ('//'), which an object store keeps as a key of "
                         f"its own: write {scheme}://{re.sub('/+', '/', rest)}")
    segments = rest.rstrip("/").split("/")
    if {".", ".."} & set(segments):  # kept as keys: a second store, and lock, of its own
        raise StoreError(f"{url} has a '.' or '..' path segment, which an object store keeps as a key of its "
                         f"own (not the store the path names): write {scheme}://{posixpath.normpath(rest)}")
    if any(char in rest for char in _GLOB):
        raise StoreError(f"{url} holds one of {' '.join(_GLOB)}, which the object-store client reads as a "
                         "pattern when it copies or removes (a store was left garbled): name it without them")
    return url


_GLOB = "*?[]"  # fsspec's wildcards


def check_store_url(url: str) -> str:
    """``url`` (:func:`check_url`), refused also where it cannot be a store's: a bucket's root, beside which
    there is no place for the store's lock (``s3://bucket.lock`` is another bucket: "the bucket does not
    exist" was said of one that did).

    Raises:
        StoreError: naming the URL and the fix.
    """
    check_url(url)
    if not is_local(url) and "/" not in url.split("://", 1)[1].strip("/"):
        raise StoreError(f"{url} is a bucket's root, which cannot be a store: give a path inside it, e.g. "
                         f"{url.rstrip('/')}/archive.zarr")
    return url


def check_writable(url: str, what: str) -> None:
    """Finds out before a long run that it could not save its result under ``url``: on an object store it
    writes and removes a small object there; on disk it checks that the nearest existing folder up the
    path is a folder this user can write, and makes and removes an empty file in it (no folder is
    created: a refusal later left an empty folder).

    Raises:
        StoreError: naming ``what``, the URL and the storage's answer (object-store failures keep theirs:
            :func:`object_store_problem` words them).
    """
    if is_local(url):
        here = local_path(url)
        while not os.path.exists(here) and os.path.dirname(here) != here:
            here = os.path.dirname(here)
        if not os.path.isdir(here) or not os.access(here, os.W_OK | os.X_OK):
            problem = ("a file" if not os.path.isdir(here) else "on a read-only file system"
                       if os.statvfs(here).f_flag & os.ST_RDONLY else "a folder this user cannot write")
            raise StoreError(f"{what} {url} cannot be written ({here} is {problem}); give a location this "
                             "user can write, or fix its permissions")
        probe = os.path.join(here, f".nowcast-write-check-{uuid.uuid4().hex[:12]}")
        try:  # what access() cannot tell, root's above all: /proc, an immutable folder, no inodes left
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.unlink(probe)
        except OSError as error:
            raise StoreError(f"{what} {url} cannot be written (a file cannot be made in {here}: "
                             f"{error.strerror or error}); give a location this user can write") from None
        return
    fs, path = filesystem(url)
    probe = f"{path.rstrip('/')}/.nowcast-write-check-{uuid.uuid4().hex[:12]}"
    try:  # never makedirs here: on an object store it would create a misspelt bucket
        fs.pipe(probe, b"")
        fs.rm(probe)
    except OSError as error:
        if object_store_problem(error) is not None:
            raise
        raise StoreError(f"{what} {url} cannot be written ({error}); give a location this user can write, "
                         "or fix its permissions") from error


def chunk_keys(url: str, path: str) -> list[tuple[int, ...]]:
    """The chunk coordinates that exist as objects for the array at ``path`` (default key encoding)."""
    fs, root = filesystem(url)
    base = f"{root.rstrip('/')}/{path}/c"
    try:
        found = fs.find(base)
    except FileNotFoundError:
        return []
    keys: list[tuple[int, ...]] = []
    for name in found:
        if name == base:  # a 0-d array's one chunk
            keys.append(())
            continue
        parts = name[len(base) + 1:].split("/")
        if all(part.isdigit() for part in parts):
            keys.append(tuple(int(part) for part in parts))
    return sorted(keys)


def local_path(url: str) -> str:
    """The filesystem path of a local store URL, ``~`` expanded."""
    if not is_local(url):
        raise ValueError(f"{url} is not a local path")
    return os.path.abspath(os.path.expanduser(url[len("file://"):] if url.startswith("file://") else url))


# Stores, inputs and registries are written by other processes while this one runs: a cached listing
# would hide what they wrote (a long-lived process polling for a new store never saw it appear, and a
# stale size or absence is answered from the cache). Every lookup asks the storage.
FRESH = {"use_listings_cache": False}
# An object store that takes a connection and never answers held a command for 7 minutes before its error
# (botocore's 60 s read timeout, each request tried 5 times by botocore and 5 by s3fs). With these it gives
# up in under 3 minutes; a slow answer is still waited for 10 s, and tried again. AWS_MAX_ATTEMPTS, when
# set, chooses the tries instead.
S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 10}
S3_RETRIES = {"max_attempts": 2, "mode": "standard"}


def storage_options(url: str) -> dict[str, Any]:
    """fsspec's options for ``url``: no listings cache; for s3:// the timeouts and tries above."""
    if not url.startswith("s3://"):
        return dict(FRESH)
    config: dict[str, Any] = dict(S3_TIMEOUTS)
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        config["retries"] = dict(S3_RETRIES)
    return {**FRESH, "config_kwargs": config}


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and path for ``url`` (local or remote), without a listings cache.

    Raises:
        StoreError: the URL's scheme needs a package that is not installed (s3fs for s3://, ...).
    """
    import fsspec

    check_url(url)
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as error:
        raise StoreError(f"{url}: {error} (extras: pip install 'nowcast[s3]' or 'nowcast[gcs]')") from None
    except ValueError as error:  # an unknown protocol
        raise StoreError(f"{url}: {error}; give a local path or an s3://, gs:// or file:// URL") from None


def zarr_store(url: str, read_only: bool = False) -> Store:
    """A zarr v3 store for ``url``: LocalStore on disk, fsspec (no listings cache) for everything else."""
    if is_local(check_store_url(url)):
        return LocalStore(local_path(url), read_only=read_only)
    filesystem(url)  # a clear error for a scheme whose package is missing
    return FsspecStore.from_url(url, storage_options=storage_options(url), read_only=read_only)


def enclosing_store(path: str | os.PathLike[str]) -> str | None:
    """The zarr store that ``path`` (a local path or a URL) is, or lies inside (the nearest folder or
    prefix up with a ``zarr.json``); None when there is none."""
    if not is_local(str(path)):
        fs, key = filesystem(str(path))
        scheme, parts = str(path).split("://", 1)[0], key.strip("/").split("/")
        for depth in range(len(parts), 1, -1):  # up to the bucket's top prefixes, not the bucket itself
            prefix = "/".join(parts[:depth])
            if fs.exists(f"{prefix}/zarr.json"):
                return f"{scheme}://{prefix}"
        return None
    here = os.path.abspath(path)
    while True:
        if os.path.isfile(os.path.join(here, "zarr.json")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def not_a_store(url: str) -> str | None:
    """Why something at ``url`` is not a zarr v3 store, when something is there; None when nothing is.

    Tells a file, a zarr v2 store and a folder whose ``zarr.json`` is gone
    apart from a path where nothing exists yet, so no message advises
    creating (or overwriting) a store over data that is there.
    """
    fs, path = filesystem(url)
    path = path.rstrip("/")
    if fs.isfile(path):
        return f"{url} is a file, not a store folder: give the store another path"
    if not fs.isdir(path):
        return None
    names = {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path, detail=False)}
    if "zarr.json" in names or PUBLISHING in names:  # a store, or one whose creation stopped part way
        return None
    if names & {".zgroup", ".zarray", ".zattrs"}:
        return (f"{url} is a zarr v2 store; nowcast reads and writes zarr v3. Convert a copy (for example "
                "xr.open_zarr(old).to_zarr(new, zarr_format=3)) or give another path")
    if names:
        return (f"{url} exists and holds {len(names)} entries but no zarr.json: it is not a zarr store, or "
                "its root metadata was deleted (restore zarr.json from a copy). Nothing was written to it; "
                "give the path of a store (or, for a new one, a path where nothing is)")
    return None


def exists(url: str) -> bool:
    """Whether a store (its root metadata) exists at ``url``."""
    if is_local(check_url(url)):
        return os.path.exists(os.path.join(local_path(url), "zarr.json"))
    fs, path = filesystem(url)
    return fs.exists(f"{path.rstrip('/')}/zarr.json")


# a remote store being published: present from its first member's copy until its root metadata is written
PUBLISHING = ".publishing"


def being_published(url: str) -> bool:
    """Whether ``url`` holds a copy in progress (or stopped part way): :data:`PUBLISHING` is there."""
    fs, path = filesystem(url)
    return bool(fs.exists(f"{path.rstrip('/')}/{PUBLISHING}"))


def stopped_publishing(url: str) -> str | None:
    """What to do about a store at ``url`` whose publishing stopped part way (:func:`being_published`);
    None when it did not. Its members would read as damaged metadata, or as no store, with the wrong fix."""
    if not being_published(url):
        return None
    return (f"{url} is a copy that stopped part way while it was published (it replaces the store that was "
            "there, which is gone): rerun the command that writes it, into the same path; it publishes the "
            "store whole")


PID_MAX = 2**22  # the largest process id Linux hands out
UNIQUE_HEX = 12  # hex digits that make a name beside a store unique: enough, and short beside a long name


def staging_suffix(pid: int | None = None) -> str:
    """The suffix of a staging copy this host's process ``pid`` (this one) makes beside a store:
    ``.creating-HOST-PID-HEX``, which :func:`_remove_abandoned_staging` reads back once it is gone."""
    return f".creating-{host_id()}-{os.getpid() if pid is None else pid}-{uuid.uuid4().hex[:UNIQUE_HEX]}"


CHECK = "check"


def check_suffix() -> str:
    """The suffix of one ingest run's check folder beside its archive: ``.check-HEX``, short beside a
    long name (:func:`remove_untouched` removes one that a killed run left)."""
    return f".{CHECK}-{uuid.uuid4().hex[:UNIQUE_HEX]}"


@contextlib.contextmanager
def created_whole(url: str, replace: bool = False) -> Iterator[str]:
    """Yields a staging URL to build a store at; on success the store appears at ``url`` whole.

    Readers and :func:`exists` see nothing at ``url`` (or, with ``replace``,
    the previous store) or every member of the new store, never a root
    without its arrays: on disk the staging folder is renamed into place (one
    atomic step; a previous store is swapped out in one step too where Linux
    allows it, :func:`_swap`); elsewhere its objects are copied with the root
    ``zarr.json`` last, behind a marker that tells an interrupted copy
    (:func:`not_a_store`) from other data. A build that fails or is
    interrupted leaves ``url`` as it was. The staging copy is removed
    whatever happens, and on disk so is one left beside ``url`` by a creation
    killed on this host (:func:`_remove_abandoned_staging`).

    Args:
        url: where the store appears.
        replace: replace a store at ``url`` (the caller checked it may); otherwise
            only an empty folder is replaced, never data.
    """
    _remove_abandoned_staging(url)
    staging = f"{url.rstrip('/')}{staging_suffix()}"
    fs, staged = filesystem(staging)
    try:
        yield staging
        if is_local(url):
            _move_into_place(local_path(staging), local_path(url), replace)
        else:
            with signals_held():  # a copy stopped part way is no store: the previous one is gone by then
                _copy_root_last(fs, staged, filesystem(url)[1].rstrip("/"), replace)
    finally:
        if fs.exists(staged):  # the build, or after a swap the previous store
            fs.rm(staged, recursive=True)


def building(url: str) -> str | None:
    """Where this process is building the store for ``url`` (:func:`created_whole`): a staging URL, or None.

    Lets a progress count follow a build that is not at ``url`` yet.
    """
    fs, path = filesystem(url)
    found = fs.glob(f"{path.rstrip('/')}.creating-{glob.escape(host_id())}-{os.getpid()}-*")
    if not found:
        return None
    return url.rstrip("/") + found[0][len(path.rstrip("/")):]


def _move_into_place(staged: str, target: str, replace: bool) -> None:
    """Renames the folder ``staged`` to ``target``; with ``replace``, a previous store there goes.

    The previous store is swapped out in one step where the file system can
    (it is then at ``staged``, which the caller removes); elsewhere it is
    renamed aside first, leaving nothing at ``target`` for an instant.
    """
    if not (replace and os.path.exists(target)):
        os.rename(staged, target)  # replaces an empty folder, never data
    elif not _swap(staged, target):
        aside = f"{target}{staging_suffix()}"
        os.rename(target, aside)  # named as a staging folder: removed by the next creation if killed now
        os.rename(staged, target)
        shutil.rmtree(aside)


def _swap(first: str, second: str) -> bool:
    """Exchanges two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported.

    Readers of ``second`` then see the old folder or the new one, never nothing.
    """
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    if rename(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EXDEV):  # a file system or kernel without it
        return False
    raise OSError(code, os.strerror(code), second)


def _remove_abandoned_staging(url: str) -> None:
    """Removes the staging copies beside ``url`` whose creator, on this host, is gone.

    A creation killed part way (SIGKILL, power loss, an object store lost in
    mid-publish) cannot clean up after itself; its copy names the host and
    process that made it (:func:`~nowcast.processes.host_id`: the host name
    and PID namespace, so a container sharing the host name is another
    host). Copies of another host, or of a process still running, are left
    alone: no process there can be asked.
    """
    fs, path = filesystem(url)
    path = (local_path(url) if is_local(url) else path).rstrip("/")
    folder, name = posixpath.split(path)
    pattern = re.compile(rf"{re.escape(name)}\.creating-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+")
    host = host_id()
    if is_local(url):
        entries = os.listdir(folder) if os.path.isdir(folder) else []
    else:  # the names beside it only: a listing of the whole folder may be long
        entries = [found.rsplit("/", 1)[-1] for found in fs.glob(f"{glob.escape(path)}.creating-*")]
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match and match["host"] == host and not alive(int(match["pid"])) \
                and (is_local(url) or _untouched_for(fs, f"{folder}/{entry}", ABANDONED_S3_S)):
            log.info("removing %s, left by a process killed part way", f"{folder}/{entry}")
            with contextlib.suppress(OSError):  # best effort: the work that follows is the news
                fs.rm(f"{folder}/{entry}", recursive=True)


def remove_untouched(url: str, kind: str, seconds: float) -> None:
    """Removes the folders ``<url>.<kind>-*`` beside ``url`` in which nothing was written for ``seconds``:
    what a run killed part way left (an ingest's check reports, written frame by frame while it runs)."""
    fs, path = filesystem(url)
    path = (local_path(url) if is_local(url) else path).rstrip("/")
    ours = re.compile(rf"{re.escape(posixpath.basename(path))}\.{kind}-[0-9a-f]{{{UNIQUE_HEX}}}")
    for found in fs.glob(f"{glob.escape(path)}.{kind}-*"):  # the names it makes: a user's folder stays
        if ours.fullmatch(found.rstrip("/").rsplit("/", 1)[-1]) and fs.isdir(found) \
                and _untouched_for(fs, found, seconds):
            log.info("removing %s, left by a run killed part way", found)
            with contextlib.suppress(OSError):  # best effort: the work that follows is the news
                fs.rm(found, recursive=True)


# on an object store, machines of one host name (and the same, initial, PID namespace) share a host id: a
# staging copy is only taken for abandoned once nothing in it has been written for this long
ABANDONED_S3_S = 3600.0


def _untouched_for(fs: Any, path: str, seconds: float) -> bool:
    """Whether no object under ``path`` was written in the last ``seconds``; False for a folder gone since
    it was listed (its run finished and removed it: three ingests at once on S3 had failed on it)."""
    try:
        found = list(fs.find(path, detail=True).values()) or [fs.info(path)]  # an empty folder: its own time
    except FileNotFoundError:
        return False
    stamps = [info.get("LastModified") or info.get("mtime") for info in found]
    newest = max((stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)
                  for stamp in stamps if stamp is not None), default=0.0)
    return time.time() - newest > seconds


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Holds SIGINT and SIGTERM until the body is done, then acts on the first one as before.

    For a step that must not stop half way and takes seconds (publishing a store on an object store,
    which deletes the previous store before it copies the new one). Only the main thread can receive
    signals; elsewhere the body just runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum))
                                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def _copy_root_last(fs: Any, source: str, target: str, replace: bool = False) -> None:
    """Copies the store ``source`` to ``target`` with its root ``zarr.json`` last, behind :data:`PUBLISHING`.

    What is at ``target`` first goes (a copy stopped part way, or with
    ``replace`` the previous store, root first), so no member of it is mixed in.
    """
    marker = f"{target}/{PUBLISHING}"
    if fs.exists(marker) or (replace and fs.exists(target)):
        fs.pipe(marker, b"")  # from here on, what is at target is a copy in progress
        if fs.exists(f"{target}/zarr.json"):
            fs.rm(f"{target}/zarr.json")
        stale = [path for path in fs.find(target) if path != marker]
        if stale:
            fs.rm(stale)
    fs.pipe(marker, b"")
    members = [path for path in fs.find(source) if path != f"{source}/zarr.json"]
    for path in members:
        fs.copy(path, target + path[len(source):])
    fs.copy(f"{source}/zarr.json", f"{target}/zarr.json")
    fs.rm(marker)


def open_group(url: str, mode: Mode = "r", error: type[StoreError] = StoreError) -> zarr.Group:
    """The root group of the zarr v3 store at ``url`` (read-only store for ``mode='r'``).

    Always from the members' own metadata, never the consolidated copy, which
    may lag a writer that stopped before consolidating (:func:`consolidate`).

    Raises:
        StoreError: (of class ``error``) when there is no store at ``url`` and
            ``mode`` needs one, with the fix the store kind names.
    """
    store = zarr_store(url, read_only=mode == "r")  # a refused URL says so, not "unreadable metadata"
    try:
        return zarr.open_group(store, mode=mode, zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, NotADirectoryError) as missing:
        raise error(not_a_store(url) or stopped_publishing(url)
                    or f"no {error.kind} at {url}: {error.missing_fix}") from missing
    except ValueError as unreadable:  # zarr.json that is not JSON, or not zarr metadata
        raise error(f"the root metadata {url}/zarr.json cannot be read ({unreadable}); restore it from a "
                    f"copy of the store (the data chunks are untouched)") from unreadable


def damaged_metadata(url: str) -> list[str]:
    """The members of the store at ``url`` whose ``zarr.json`` is not zarr v3 metadata (not JSON, no
    ``node_type``), or that hold chunks but no ``zarr.json``: what zarr fails on, or silently skips,
    when it lists a group's members. Lists every object of the store: for the error path and checks.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return []
    keys = {key[len(root) + 1:]: key for key in found}
    damaged = set()
    for rel, key in keys.items():
        parts = rel.split("/")
        if parts[-1] == "zarr.json" and len(parts) > 1:
            try:
                document = json.loads(fs.cat_file(key))
                if not isinstance(document, dict) or "node_type" not in document:
                    raise ValueError("no 'node_type'")
            except ValueError as error:
                damaged.add(f"{rel} ({str(error)[:80]})")
        elif "c" in parts[1:]:  # a chunk: <array path>/c/<index>/...
            array_path = "/".join(parts[:parts.index("c", 1)])
            if f"{array_path}/zarr.json" not in keys:
                damaged.add(f"{array_path}/zarr.json (missing, though the array holds chunks)")
    return sorted(damaged)


@contextlib.contextmanager
def readable_members(url: str, error: type[StoreError] = StoreError) -> Iterator[None]:
    """Turns the ValueError zarr raises on a member's damaged ``zarr.json`` (json's decode error,
    zarr's MetadataValidationError) into ``error`` naming the file and the fix; any other ValueError
    passes on unchanged. A member without its ``zarr.json`` is left to the caller, which names it; zarr's
    own warning of it (a raw ZarrUserWarning line before the message) is not shown."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".* is not recognized as a component of a Zarr")
            yield
    except ValueError as unreadable:
        damaged = damaged_metadata(url)
        if not damaged:
            raise
        raise error(metadata_damage(url, damaged)) from unreadable


def metadata_damage(url: str, damaged: list[str]) -> str:
    """The message for members whose metadata :func:`damaged_metadata` found, with the fix."""
    return (f"{url}: the metadata of {'; '.join(damaged)} is damaged: restore the store from a copy, or "
            "write it anew (ingest into a new archive, rerun the job into a new store)")


def group_url(group: zarr.Group) -> str:
    """The URL of the store that holds ``group`` (a plain path for one on disk), as messages name it."""
    return str(group.store).removeprefix("file://")


@contextlib.contextmanager
def _member_read(group: zarr.Group, name: str) -> Iterator[None]:
    """A member's ``zarr.json`` that is not zarr metadata, met in the block, named with the fix (it was
    json's bare "Expecting value: line 1 column 1")."""
    try:
        yield
    except ValueError as unreadable:  # json's decode error, zarr's MetadataValidationError
        member = "/".join(part for part in (group.path, name) if part)
        raise StoreError(metadata_damage(group_url(group),
                                         [f"{member}/zarr.json ({str(unreadable)[:80]})"])) from unreadable


def _member(group: zarr.Group, name: str) -> zarr.Array | zarr.Group:
    with _member_read(group, name):
        return group[name]


def holds(group: zarr.Group, name: str) -> bool:
    """Whether ``group`` has the member ``name`` (one whose metadata is damaged is named, with the fix)."""
    with _member_read(group, name):
        return name in group


def array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group`` (a member that is a group is refused with its name)."""
    member = _member(group, name)
    if not isinstance(member, zarr.Array):
        raise StoreError(f"{name!r} in {group.store} is a group where the schema has an array")
    return member


def consolidate(group: zarr.Group) -> None:
    """Copies every member's metadata into the root ``zarr.json``, so a reader opens the store in one request.

    Plain ``xr.open_zarr`` then reads one object instead of one per array
    (and does not warn). Writers call it after every change of metadata
    (creation, growing an axis, attributes set last); data writes do not
    touch metadata. A writer stopped before it leaves the consolidated copy
    one change behind: readers of it see the store as it was (a shorter
    axis, whose init times or frames are simply not there yet), the jobs
    read the members' own metadata (:func:`open_group`), and the next
    change consolidates again. zarr warns that consolidated metadata is not
    yet in the v3 specification; zarr-python and xarray read it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(group.store, zarr_format=3)


def consolidate_if_behind(group: zarr.Group) -> bool:
    """Consolidates when the consolidated copy lacks a root array or has an old shape; True if it did.

    Lets a run repair what a writer stopped before consolidating left behind
    (:func:`consolidate`), at the cost of reading the root metadata once more.
    """
    copy = zarr.open_group(group.store, mode="r", zarr_format=3, use_consolidated=None).metadata
    known = copy.consolidated_metadata.metadata if copy.consolidated_metadata is not None else {}
    behind = any(name not in known or tuple(getattr(known[name], "shape", ())) != member.shape
                 for name, member in group.arrays())
    if behind:
        consolidate(group)
    return behind


def subgroup(group: zarr.Group, name: str) -> zarr.Group:
    """The group ``name`` of ``group`` (a member that is an array is refused with its name)."""
    member = _member(group, name)
    if not isinstance(member, zarr.Group):
        raise StoreError(f"{name!r} in {group.store} is an array where the schema has a group")
    return member


def dimension_names(array: zarr.Array) -> tuple[str | None, ...]:
    """The array's dimension names (empty for an array without them)."""
    return tuple(getattr(array.metadata, "dimension_names", None) or ())


def arrays_along(group: zarr.Group, dim: str) -> dict[str, zarr.Array]:
    """The arrays of ``group`` whose first dimension is ``dim``, by name."""
    return {name: member for name, member in group.arrays() if dimension_names(member)[:1] == (dim,)}


GROWING = "nowcast_growing_to"  # the axis coordinate's attribute while it grows: the length it grows to


def grow_axis(group: zarr.Group, dim: str, values: np.ndarray,
              derived: Mapping[str, np.ndarray] | None = None) -> None:
    """Grows every array along ``dim`` to ``len(values)``; the coordinate ``dim`` last.

    The data arrays are resized first (new entries read as their fill values,
    so no chunk is written), then the coordinate takes its new values. A
    writer stopped in between leaves arrays of unequal length; while the
    coordinate is resized and written it carries the attribute
    :data:`GROWING`, so a writer stopped then leaves a state the schema
    modules report as an interrupted extension too (:func:`growing_to`),
    though every array has its new length: zarr writes a coordinate's chunks
    in any order, and a kill had left a middle chunk at its fill value (times
    of 1970) that no rerun saw. Calling this again with the same values
    completes it. Never shrinks. (The mark is not in the root's attributes:
    writing them drops the consolidated metadata that plain readers open.)

    Args:
        group: the store's root group, writable.
        dim: the axis, e.g. ``time`` or ``init_time``.
        values: the whole coordinate after growing (encoded, e.g. epoch seconds).
        derived: arrays whose new entries are known values rather than fill values (the whole
            array after growing, e.g. a forecast store's ``valid_time``); written before the coordinate.
    """
    length = len(values)
    arrays = arrays_along(group, dim)
    coord = arrays[dim]
    if length < coord.shape[0]:
        raise ValueError(f"cannot shrink {dim} from {coord.shape[0]} to {length}")
    resumed = GROWING in coord.attrs
    for name, array in sorted(arrays.items()):
        if name != dim and array.shape[0] < length:
            array.resize((length, *array.shape[1:]))
    for name, whole in (derived or {}).items():  # rewritten from the coordinate's old end: restartable
        arrays[name][coord.shape[0]:length] = whole[coord.shape[0]:length]
    # a stopped extension may have written any of the new chunks: compare them all, from its start
    written = _first_difference(coord, values) if resumed else _written_prefix(coord, values)
    if written < length and not resumed:  # only while the coordinate itself is written: readers refuse it
        coord.attrs[GROWING] = length
    if coord.shape[0] < length:
        coord.resize((length,))
    if written < length:
        coord[written:] = values[written:]
    if written < length or resumed:
        del coord.attrs[GROWING]
    consolidate(group)


def growing_to(coord: zarr.Array) -> int | None:
    """The length an interrupted :func:`grow_axis` of the axis ``coord`` was growing to, or None."""
    growing = coord.attrs.get(GROWING)
    return int(growing) if isinstance(growing, int | float) else None


def _first_difference(coord: zarr.Array, values: np.ndarray) -> int:
    """How many leading coordinate values hold ``values`` (the whole coordinate read)."""
    end = min(coord.shape[0], len(values))
    differ = np.flatnonzero(np.asarray(coord[:end]) != values[:end])
    return int(differ[0]) if len(differ) else end


def _written_prefix(coord: zarr.Array, values: np.ndarray) -> int:
    """How many leading coordinate values already hold ``values``, checked from the end chunk by chunk.

    Normally the last chunk matches and only it is read; after a writer was
    stopped between resizing the coordinate and writing it, the walk finds
    where its values stop.
    """
    end = min(coord.shape[0], len(values))
    chunk = coord.chunks[0]
    while end > 0:
        first = (end - 1) // chunk * chunk
        if np.array_equal(coord[first:end], values[first:end]):
            return end
        end = first
    return 0
