"""The contract between input sources and the ingest job.

A source lists its frames from file names or headers alone (cheap, done once
on the launcher) and reads one frame at a time (done on workers), so the
ingest job can plan chunk-aligned writes before touching any data. Sources
are frozen dataclasses of plain configuration: Beam pickles them to workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import itertools
import logging
import os
import posixpath
import shutil
import stat
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pyproj

from nowcast.errors import InputError
from nowcast.pipelines.stores.archive import FieldSpec
from nowcast.pipelines.stores.grid import Grid, plain_value
from nowcast.pipelines.stores.groups import filesystem, is_local, local_path

# pyproj warns whenever a CRS is written as a PROJ string or CF attributes, which the
# archive's grid mapping always does (its crs_wkt keeps the full definition). The filters
# are installed once, by message, because swapping filters per call is not thread-safe.
for _message in ("You will likely lose important projection information",
                 "angle from rectified to skew grid parameter lost in conversion to CF"):
    warnings.filterwarnings("ignore", message=_message, category=UserWarning)

log = logging.getLogger(__name__)


class SourceError(InputError):
    """A bad input (file, folder or option): the message names it, the problem and the fix."""


@dataclasses.dataclass(frozen=True, order=True)
class SourceItem:
    """One frame of a source.

    Attributes:
        time: frame valid time, ``datetime64[s]``.
        path: file path, or ``synthetic:<index>`` for generated frames.
        index_in_file: position along ``time`` in a multi-time file (NetCDF).
    """

    time: np.datetime64
    path: str
    index_in_file: int = 0


@runtime_checkable
class Source(Protocol):
    """What the ingest job needs from an input source."""

    @property
    def name(self) -> str:
        """Short source kind, e.g. ``knmi``, ``netcdf``, ``synthetic``."""
        ...

    def fields(self) -> tuple[FieldSpec, ...]:
        """The archive variables this source fills (radar: ``(PRECIP,)``)."""
        ...

    def time_step(self) -> np.timedelta64 | None:
        """The native time step if the format defines one, else None."""
        ...

    def items(self) -> list[SourceItem]:
        """Every frame, sorted by time, from file names or headers only."""
        ...

    def read_grid(self, item: SourceItem) -> Grid:
        """The grid of one frame, from the file header where possible."""
        ...

    def read(self, item: SourceItem) -> dict[str, np.ndarray]:
        """Per field, a float32 ``(y, x)`` frame in archive units, NaN where unobserved."""
        ...


@runtime_checkable
class FolderSource(Source, Protocol):
    """A source of files under a folder, listed file by file (what a watcher needs)."""

    def files(self) -> list[str]:
        """The source's files, in path order."""
        ...

    def file_items(self, path: str) -> list[SourceItem]:
        """The frames of one file; a SourceError names that file alone."""
        ...

    def file_step(self, path: str) -> np.timedelta64 | None:
        """The time step one file's name states (an accumulation's period, a product's step), or None."""
        ...


def not_a_local_folder(path: str) -> bool:
    """Whether ``path`` is a local path but no folder: a file, a pattern, or nothing yet (an object-store
    prefix is a folder, even an empty one)."""
    return is_local(path) and not os.path.isdir(local_path(path))


def list_files(directory: str, suffixes: Sequence[str]) -> list[str]:
    """Files under ``directory`` (recursively, in path order) whose names end with a suffix.

    ``directory`` is a local folder or an fsspec URL (``s3://bucket/incoming``,
    where files arrive on an object store; a prefix that holds nothing yet is
    an empty folder). Local paths are absolute, so items stay valid on workers
    with another working directory; URLs stay URLs, read by every worker
    through :func:`local_file`. Hidden files and folders (``.name``) are skipped.

    Raises:
        SourceError: if ``directory`` is not a folder.
    """
    if not is_local(directory):
        return _list_url(directory, suffixes)
    directory = local_path(directory)
    if not os.path.isdir(directory) and (os.path.isfile(directory) or glob.has_magic(directory)):
        raise SourceError(f"input {directory!r} is a file or a pattern, which only --format netcdf reads; "
                          f"radar files are read from their folder: give {os.path.dirname(directory)!r}")
    if not os.path.isdir(directory):
        raise SourceError(f"input folder {directory!r} does not exist or is not a folder; "
                          "give the folder that holds the input files")
    found, walked = [], set()
    top = os.path.realpath(directory)
    # through linked folders (a day's folder linked into the input was passed over without a word), each
    # real folder once (a link to a folder above it would walk for ever), never up to the input's own
    # folders (`up -> ..` listed the files beside the input)
    for root, dirs, files in os.walk(os.path.abspath(directory), followlinks=True):
        real = os.path.realpath(root)
        if real in walked or (real != top and top.startswith(real.rstrip(os.sep) + os.sep)):
            dirs[:] = []
            continue
        walked.add(real)
        if "zarr.json" in files:  # a store written under the input folder holds no input (its chunk files
            dirs[:] = []          # made the format's detection fail every scheduled ingest)
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, name) for name in sorted(files)
                  if not name.startswith(".") and has_suffix(name, suffixes)]
    return sorted(path for path in found if _a_file(path))


def _a_file(path: str) -> bool:
    """Whether ``path`` is a file to read, or a link (a dangling one or a loop is refused by its read,
    naming it). A
    pipe, socket or device named like an input file is passed over with a warning: a pipe held ingest
    and watch for ever, deaf to signals."""
    try:
        mode = os.stat(path).st_mode  # through a link: a link to a pipe would hold the read as well
    except OSError:  # a dangling link, a loop of links (a traceback that ended a watch), or gone since
        return os.path.islink(path)
    if stat.S_ISREG(mode):
        return True
    if path not in _NOT_FILES_SAID:  # once a process: a run lists its folder several times (6 warnings)
        _NOT_FILES_SAID.add(path)
        log.warning("%s is not a file (a pipe, socket or device) and is not read: move it out of the input",
                    path)
    return False


_NOT_FILES_SAID: set[str] = set()


def has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    """Whether ``name`` ends in one of ``suffixes``, in any case (``.H5`` is an HDF5 file too: such ODIM
    files were not found)."""
    return name.lower().endswith(tuple(suffix.lower() for suffix in suffixes))


def _list_url(url: str, suffixes: Sequence[str]) -> list[str]:

    fs, root = filesystem(url)
    root = root.rstrip("/")
    if fs.isfile(root):
        raise SourceError(f"input folder {url!r} is a file; give the prefix (folder) that holds the files")
    found = []
    for path in fs.find(root):
        parts = posixpath.relpath(path, root).split("/")
        if not any(part.startswith(".") for part in parts) and has_suffix(path, suffixes):
            found.append(fs.unstrip_protocol(path))
    return sorted(found)


def file_signature(path: str) -> tuple[object, ...]:
    """What changes when a file is written again: its size and modification time (object stores: also
    the ETag), so a file refused once can be told from its repaired copy under the same name."""
    if is_local(path):
        stat = os.stat(local_path(path))
        return stat.st_size, stat.st_mtime_ns
    fs, remote_path = filesystem(path)
    info = fs.info(remote_path)
    return tuple(str(info.get(key)) for key in ("size", "mtime", "LastModified", "ETag"))


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local file to read ``path`` from: ``path`` itself, or for a URL a temporary copy.

    The copy keeps the file's name (some formats' readers parse it), lies in the
    reading process's TMPDIR (a worker's own disk) and is removed afterwards.
    """
    if is_local(path):
        yield local_path(path)
        return

    with tempfile.TemporaryDirectory(prefix="nowcast-input-") as folder:
        local = os.path.join(folder, posixpath.basename(path.rstrip("/")))
        fs, remote_path = filesystem(path)
        with fs.open(remote_path, "rb") as remote, open(local, "wb") as copy:
            shutil.copyfileobj(remote, copy, length=1 << 20)
        yield local


def sorted_unique(items: Iterable[SourceItem]) -> list[SourceItem]:
    """Items sorted by time; two items at the same time are an error.

    Raises:
        SourceError: naming both inputs of a duplicated time.
    """
    ordered = sorted(items)
    for previous, current in itertools.pairwise(ordered):
        if previous.time == current.time:
            raise SourceError(
                f"time {current.time} appears twice: {_where(previous)} and {_where(current)}; "
                "remove one of the duplicate inputs"
            )
    return ordered


def most_common_step(times: Iterable[np.datetime64]) -> np.timedelta64 | None:
    """The most common spacing of sorted ``times`` (the shorter on a tie), None with fewer than two.

    The mode rather than the minimum, so that gaps (missing files) and an odd
    early file do not change the step.
    """
    return most_common_spacing(times)[0]


def most_common_spacing(times: Iterable[np.datetime64]) -> tuple[np.timedelta64 | None, int]:
    """:func:`most_common_step` and how many spacings of ``times`` are that step (one alone cannot tell a
    step from a missing frame: two files 10 minutes apart may be a 5-minute feed with a gap)."""
    ordered = np.array(sorted(times), dtype="datetime64[s]")
    if len(ordered) < 2:
        return None, 0
    counts = Counter(np.diff(ordered).tolist())
    step, seen = max(counts.items(), key=lambda kv: (kv[1], -kv[0].total_seconds()))
    return np.timedelta64(step, "s"), seen


def step_from_spacing(source: object) -> bool:
    """Whether ``source``'s time step is only the spacing of its frames (ODIM, a BoM product of unknown
    step, NetCDF), not one its format or its files' names state."""
    told = getattr(source, "step_from_spacing", None)
    return bool(told()) if callable(told) else False


def check_frame_shape(item: SourceItem, name: str, frame: np.ndarray,
                      shape: tuple[int, int] | None) -> np.ndarray:
    """Checks that a frame is 2-D (and of ``shape`` when given); returns it as float32.

    Raises:
        SourceError: naming the file, the shape found and the shape expected.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2 or (shape is not None and frame.shape != tuple(shape)):
        expected = f"{tuple(shape)}" if shape is not None else "a 2-D (y, x) frame"
        raise SourceError(
            f"{_where(item)}: variable {name!r} has shape {frame.shape}, expected {expected}; "
            "the file is truncated or on another grid: replace it or ingest it separately"
        )
    return frame.astype("float32", copy=False)


def grid_from_cf(y: np.ndarray, x: np.ndarray, grid_mapping: Mapping[str, object],
                 units: str = "m") -> Grid:
    """A grid from pixel-centre coordinates and a file's CF grid-mapping attributes.

    The stored mapping is pyproj's full CF form, with ``crs_wkt`` (``Grid.from_coords``
    goes through PROJ strings, which drop the datum of CRSs such as EPSG:3035).

    Raises:
        pyproj.exceptions.CRSError: if the attributes are not a CF grid mapping.
    """
    frozen = tuple(sorted((str(k), _hashable(v)) for k, v in grid_mapping.items()))
    return Grid(y=np.asarray(y, "float64"), x=np.asarray(x, "float64"),
                crs_attrs=dict(_cf_attrs(frozen)), units=units)


@functools.lru_cache(maxsize=64)
def _cf_attrs(frozen: tuple[tuple[str, object], ...]) -> dict[str, object]:
    """pyproj's CF attributes for a grid mapping; cached because ``CRS.from_cf`` can take
    ~0.75 s (a datum search in the PROJ database) and every file of a folder repeats it."""
    crs = pyproj.CRS.from_cf({key: (list(value) if isinstance(value, tuple) else value)
                              for key, value in frozen})
    attrs = {key: plain_value(value) for key, value in crs.to_cf().items()}
    attrs["proj4"] = crs.to_proj4()
    return attrs


def _hashable(value: object) -> object:
    value = plain_value(value.tolist() if isinstance(value, np.ndarray) else value)
    return tuple(value) if isinstance(value, list) else value


def _where(item: SourceItem) -> str:
    return item.path if item.index_in_file == 0 else f"{item.path} (time index {item.index_in_file})"
