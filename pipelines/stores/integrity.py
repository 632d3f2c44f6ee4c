"""Reads every chunk of a store and reports what is damaged, with the fix for its kind of store.

A chunk can be damaged on disk or in a bucket (a truncated upload, a bad
sector, a copy stopped half way) while the store's metadata stays fine: zarr
reads a missing chunk as its fill value and only fails on a damaged one when
a job reads it, days later. :func:`check_store` reads them all now:

- **unreadable**: a chunk object that does not decode (truncated, not zstd,
  a zstd checksum that does not match: stores written since the checksums
  were switched on detect a flipped bit, older ones only a broken frame);
- **missing**: a frame (archive) or init time (forecasts) flagged complete
  whose data chunk does not exist, which would read as NaN without a word.

The report names the time range of each damaged chunk and the fix, which
never deletes anything: ``nowcast ingest --repair`` rewrites an archive's
damaged chunks from the source files; forecasts and windows are derived
stores, rewritten by rescoring those init times or rerunning the windows job.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import cast

import numpy as np
import zarr

from nowcast.pipelines.stores.groups import (
    StoreError,
    chunk_keys,
    damaged_metadata,
    dimension_names,
    filesystem,
    group_url,
    growing_to,
    metadata_damage,
    open_group,
    readable_members,
    stopped_publishing,
)
from nowcast.pipelines.stores.groups import array as group_array
from nowcast.pipelines.stores.windows import STORED_CHUNKS

log = logging.getLogger(__name__)
LOST_ARRAY = "gone (the whole array, its metadata and chunks)"
UNFLAGGED = "(a job stopped before flagging what it wrote, which its rerun completes, or flags lost)"
FLAGS = {"archive": "valid", "forecasts": "written"}  # per kind: the flag array along the first axis
AXES = {"archive": "time", "forecasts": "init_time"}


class StoreDamagedError(StoreError):
    """A store has chunks that cannot be read or that its flags say exist; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damaged chunk: the array, its chunk coordinates, what is wrong, and the axis indices it covers."""

    array: str
    chunk: tuple[int, ...]
    problem: str
    first: int
    stop: int


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What :func:`check_store` found in one store."""

    url: str
    kind: str
    chunks_read: int
    damaged: tuple[Damage, ...]
    times: np.ndarray | None = None  # the store's first axis as datetimes, to name damaged ranges

    @property
    def ok(self) -> bool:
        return not self.damaged

    def damaged_indices(self) -> list[int]:
        """Indices along the first axis (time, init_time, sample) covered by a damaged chunk."""
        return sorted({i for d in self.damaged for i in range(d.first, d.stop)})

    def _span(self, damage: Damage) -> str:
        if self.times is None or self.kind not in AXES:
            return f"{AXES.get(self.kind, 'index')} [{damage.first}, {damage.stop})"
        last = min(damage.stop, len(self.times)) - 1
        return f"{str(self.times[damage.first])[:16]} .. {str(self.times[last])[:16]}"

    def fix(self) -> str:
        """What to do, for this kind of store; never deletes the store."""
        if any(d.array in ("x", "y") for d in self.damaged):
            return "restore the store from a copy: its grid coordinates cannot be rebuilt from source files"
        if any(d.problem == LOST_ARRAY for d in self.damaged):
            return "restore the store from a copy, or ingest its files into a new archive"
        if any(d.array == AXES.get(self.kind) and not d.chunk for d in self.damaged):
            return ("rerun the job that writes the store (an ingest of any batch, a backfill): it completes "
                    "the interrupted extension of the axis")
        if self.kind == "forecasts" and all(d.problem.endswith(UNFLAGGED) for d in self.damaged):
            return ("rerun the scoring over those init times (the scoring run that stopped, or a backfill of "
                    "that range): it scores every init time not flagged written; no overwrite needed")
        if self.kind == "archive" and all(d.problem.endswith(UNFLAGGED) for d in self.damaged):
            return ("if an ingest was interrupted there, rerun it: it flags the frames last, and a rerun "
                    "completes them; otherwise rewrite those chunks from the source files: nowcast ingest "
                    f"--archive {self.url} --input <the files of those times> --repair")
        if self.kind == "archive":
            return (f"rewrite those chunks from the source files: nowcast ingest --archive {self.url} "
                    "--input <the files of those times> --repair")
        if self.kind == "forecasts":
            return ("rescore those init times: a backfill over that range with overwrite (or python -m "
                    "nowcast.pipelines.jobs.scoring ... --start FIRST --end LAST --overwrite)")
        return ("the windows are cut from the archive: rerun the windows job (`nowcast windows`, which "
                "replaces the store; check the archive first)")

    def _problems(self) -> list[str]:
        return [f"{d.array}{' chunk ' + '/'.join(map(str, d.chunk)) if d.chunk else ''}"
                f"{f' ({self._span(d)})' if d.stop > d.first else ''}: {d.problem}"
                for d in self.damaged[:20]]

    def text(self) -> str:
        if self.ok:
            return f"{self.url}: {self.kind} store, {self.chunks_read} chunks read, none damaged"
        more = f"\n  ... and {len(self.damaged) - 20} more" if len(self.damaged) > 20 else ""
        head = f"{self.url}: {self.kind} store, {self.chunks_read} chunks read, {len(self.damaged)} damaged:"
        return head + "\n  " + "\n  ".join(self._problems()) + more + f"\nFix: {self.fix()}"

    def line(self) -> str:
        """The findings and the fix on one line: what a job that hit them says (:func:`read_span`)."""
        return (f"{self.url}: {self.kind} store damaged: {'; '.join(self._problems())}. `nowcast check "
                f"{self.url}` lists every damaged chunk; fix: {self.fix()}")


def store_kind(group: zarr.Group) -> str:
    """``archive``, ``forecasts`` or ``windows``, from the arrays the schema defines."""
    with readable_members(group_url(group)):  # a damaged member's zarr.json named
        names = {name for name, _ in group.arrays()}
        if {"time", "valid"} <= names:
            return "archive"
        if {"init_time", "written"} <= names:
            return "forecasts"
        if "normalization" in group.attrs or any(name == "train" for name, _ in group.groups()):
            return "windows"
    raise StoreError(f"{group.store} is not a nowcast archive, forecasts or windows store")


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, member in group.members():
        if isinstance(member, zarr.Array):
            yield f"{prefix}{name}", member
        else:
            yield from _arrays(member, f"{prefix}{name}/")


def unreadable(array: zarr.Array, chunk: tuple[int, ...]) -> str | None:
    """Why chunk ``chunk`` of ``array`` does not decode, or None when it reads."""
    try:
        array.get_block_selection(chunk) if chunk else array[...]
    except Exception as error:  # any decode failure is the finding, whatever the codec raises
        return f"unreadable ({type(error).__name__}: {str(error)[:120]})"
    return None


def check_store(url: str, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Reads every chunk of the store at ``url`` and reports the damaged ones.

    Args:
        url: an archive, forecasts or windows store.
        progress: called as ``progress(done, total)`` after each array's chunks.

    Raises:
        StoreError: no store there, or metadata that cannot be read (with its fix).
    """
    stopped = stopped_publishing(url)
    if stopped:
        raise StoreError(stopped)
    damaged_members = damaged_metadata(url)
    if damaged_members:  # zarr would fail on them, or skip an array that lost its zarr.json
        raise StoreError(metadata_damage(url, damaged_members))
    group = open_group(url)
    kind = store_kind(group)
    arrays = dict(_arrays(group))
    keys = {path: chunk_keys(url, path) for path in arrays}
    total, done, damaged = sum(map(len, keys.values())), 0, _lost_statistics(kind, arrays)
    for path, array in arrays.items():
        first_chunk = array.chunks[0] if array.ndim else 1
        for chunk in keys[path]:
            problem = unreadable(array, chunk)
            if problem and kind in AXES and not (array.ndim and dimension_names(array)[:1] == (AXES[kind],)):
                damaged.append(Damage(path, chunk, problem, 0, 0))  # no times to name: x, y, thresholds
            elif problem:
                first = chunk[0] * first_chunk if chunk else 0
                damaged.append(Damage(path, chunk, problem, first, min(first + first_chunk, array.shape[0]
                                                                       if array.ndim else 1)))
        done += len(keys[path])
        if progress:
            progress(done, total)
    if kind == "windows":
        damaged += _unfinished_windows(group, keys)
    times = None
    if kind in FLAGS:
        damaged += _missing_chunks(group, kind, arrays, keys, {d.array for d in damaged})
        with np.errstate(all="ignore"):
            times = _axis_times(group, kind)
        damaged += _inconsistent(kind, arrays, keys, {d.array for d in damaged}, times)
    damaged.sort(key=lambda d: (d.first, d.array))
    return CheckReport(url=url, kind=kind, chunks_read=total, damaged=tuple(damaged), times=times)


def _lost_statistics(kind: str, arrays: dict[str, zarr.Array]) -> list[Damage]:
    """An archive's per-frame statistics that are gone, folder and all (check said none damaged; the jobs
    refuse the archive)."""
    from nowcast.pipelines.stores.archive import lacking_statistics

    if kind != "archive":
        return []
    return [Damage(name, (), LOST_ARRAY, 0, 0) for name in lacking_statistics(arrays)]


def _axis_times(group: zarr.Group, kind: str) -> np.ndarray | None:
    from nowcast.pipelines.stores.timeaxis import parse_time_step, time_values, to_datetime64

    try:
        start = to_datetime64(group.attrs["time_start"])
        step = parse_time_step(str(group.attrs["time_step"]))
        return time_values(start, step, group_array(group, AXES[kind]).shape[0])
    except Exception:  # the names of damaged ranges fall back to indices
        return None


def _missing_chunks(group: zarr.Group, kind: str, arrays: dict[str, zarr.Array],
                    keys: dict[str, list[tuple[int, ...]]], unreadable: set[str]) -> list[Damage]:
    """Time chunks of the data arrays that the flags say hold data but that have no chunk object at all.

    Per time chunk, not per tile: a tile that is NaN throughout (outside radar
    coverage) is legitimately never stored, but a frame flagged valid has data
    somewhere.
    """
    flag_name, axis = FLAGS[kind], AXES[kind]
    if flag_name in unreadable:
        return []  # the flags themselves are damaged: the unreadable chunks are reported already
    flags = np.asarray(arrays[flag_name][:], dtype=bool)
    missing = []
    for path, array in arrays.items():
        if path == flag_name or dimension_names(array)[:1] != (axis,) or array.ndim < 3:
            continue
        chunk = array.chunks[0]
        present = {key[0] for key in keys[path]}
        for index in range(0, array.shape[0], chunk):
            if flags[index:index + chunk].any() and index // chunk not in present:
                stop = min(index + chunk, array.shape[0])
                missing.append(Damage(path, (index // chunk,), f"missing (flagged {flag_name} but no chunk)",
                                      index, stop))
    return missing


def _inconsistent(kind: str, arrays: dict[str, zarr.Array], keys: dict[str, list[tuple[int, ...]]],
                  unreadable: set[str], times: np.ndarray | None) -> list[Damage]:
    """What reads without error but contradicts the rest of the store: arrays along the axis of other
    lengths, an axis coordinate off the store's start and step, a time chunk whose data chunks exist but
    whose flags are all off (flags lost), per-frame values (statistics) missing at flagged frames, and
    grid coordinates that are not finite. A chunk lost from a small array reads as its fill value."""
    flag_name, axis = FLAGS[kind], AXES[kind]
    along = {path: a for path, a in arrays.items()
             if dimension_names(a)[:1] == (axis,) and path not in unreadable}
    lengths = {a.shape[0] for a in along.values()}
    if len(lengths) > 1:
        return [Damage(axis, (), f"the arrays along {axis} have lengths {sorted(lengths)}: an extension of "
                       "the axis was interrupted", 0, 0)]
    if axis in arrays and growing_to(arrays[axis]) is not None:  # jobs refuse it: check said none damaged
        return [Damage(axis, (), "an extension of the axis was interrupted while its values were written",
                       0, 0)]
    found = []
    if times is not None and axis in along:
        expected = (times.astype("datetime64[s]") - np.datetime64(0, "s")).astype("int64")
        chunk = along[axis].chunks[0]
        wrong = np.flatnonzero(np.asarray(along[axis][:]) != expected).tolist()
        for index in sorted({i // chunk for i in wrong}):
            found.append(Damage(axis, (index,), "values off the store's start and step (a lost or "
                                "overwritten chunk)", index * chunk, min((index + 1) * chunk, len(expected))))
    if flag_name not in along:
        return found
    flags = np.asarray(along[flag_name][:], dtype=bool)
    chunk = along[flag_name].chunks[0]
    holding: dict[int, list[str]] = {}  # flag chunk -> the data arrays with objects there
    for path, a in along.items():
        if a.ndim >= 3:
            for index in {key[0] * a.chunks[0] // chunk for key in keys[path]}:
                holding.setdefault(index, []).append(path)
    for index, paths in sorted(holding.items()):  # data objects but no flagged frame: the flags were lost
        first, stop = index * chunk, min((index + 1) * chunk, len(flags))
        if not flags[first:stop].any():
            held = f"{' and '.join(paths)} {'holds' if len(paths) == 1 else 'hold'}"
            found.append(Damage(flag_name, (index,), f"no frame flagged, though {held} data there "
                                f"{UNFLAGGED}", first, stop))
    for path, a in along.items():
        statistic = a.ndim == 1 and np.issubdtype(a.dtype, np.floating) and path not in (axis, flag_name)
        if statistic:
            with np.errstate(invalid="ignore"):
                missing = np.flatnonzero(flags & np.isnan(np.asarray(a[:], dtype="float64"))).tolist()
            for index in sorted({i // a.chunks[0] for i in missing}):
                first = index * a.chunks[0]
                found.append(Damage(path, (index,), f"no value at {flag_name} entries (a lost chunk)", first,
                                    min(first + a.chunks[0], len(flags))))
    for path, a in arrays.items():  # an unreadable chunk of them is listed already (it was a traceback)
        if path in unreadable:
            continue
        if dimension_names(a) in (("x",), ("y",)) and not np.isfinite(np.asarray(a[:], "float64")).all():
            found.append(Damage(path, (), "grid coordinates that are not finite (a lost chunk)", 0, 0))
    return sorted(found, key=lambda d: (d.first, d.array))


def _unfinished_windows(group: zarr.Group, keys: dict[str, list[tuple[int, ...]]]) -> list[Damage]:
    """What a windows job that did not finish leaves: no normalisation (written last), splits without data.

    A sample chunk whose patches hold no data at all (outside the radar's
    coverage) is legitimately never stored, so absence alone is no damage: a
    split that promises samples and stores none is reported, and a chunk that
    the job recorded as stored (``nowcast_stored_chunks``) and is gone.
    """
    found = []
    if not group.attrs.get("normalization"):
        found.append(Damage("normalization", (), "missing (the windows job that wrote this store did not "
                            "finish: its statistics are written last)", 0, 0))
    for split, member in group.groups():
        count = member.attrs.get("count", 0)
        stored = any(keys.get(f"{split}/{name}") for name in ("inputs", "targets"))
        if isinstance(count, int) and count and not stored:
            found.append(Damage(f"{split}/inputs", (), f"missing: {count} samples promised, none stored",
                                0, count))
            continue
        recorded = member.attrs.get(STORED_CHUNKS)  # stores cut since stop 47 say what they stored
        listed = cast(Mapping[str, list[int]], recorded if isinstance(recorded, Mapping) else {})
        for name, chunks in sorted(listed.items()):
            present = {key[0] for key in keys.get(f"{split}/{name}", [])}
            per_chunk = group_array(member, name).chunks[0] if name in member else 1
            for index in sorted(set(chunks) - present):  # read as NaN samples, which evaluate passed over
                first = index * per_chunk
                promised = count if isinstance(count, int) else int(first + per_chunk)
                found.append(Damage(f"{split}/{name}", (index,), "missing: the windows job stored this chunk "
                                    "(lost since)", first, min(first + per_chunk, promised)))
    return found


def read_span(url: str, array: zarr.Array, first: int, stop: int, kind: str = "archive") -> np.ndarray:
    """``array[first:stop]``; a chunk there that does not decode raises :class:`StoreDamagedError` naming it.

    Jobs read chunks in Beam workers, where a codec's error would reach the
    user as a runner's traceback; this names the chunk, its times and the
    fix, as ``nowcast check`` does. Only a failed read costs more: the span's
    chunks are then read one by one. Any other failure keeps its traceback.
    """
    try:
        data = np.asarray(array[first:stop])
    except Exception as error:
        step = array.chunks[0]
        chunks = itertools.product(range(first // step, (stop - 1) // step + 1),
                                   *(range(n) for n in array.cdata_shape[1:]))
        damaged = []
        for chunk in chunks:
            problem = unreadable(array, chunk)
            if problem:
                begin = chunk[0] * step
                damaged.append(Damage(array.path, chunk, problem, begin, min(begin + step, array.shape[0])))
        if not damaged:
            raise
        raise _damaged(url, kind, damaged) from error
    require_stored(url, array, data, first, kind)
    return data


def require_stored(url: str, array: zarr.Array, data: np.ndarray, first: int, kind: str = "archive") -> None:
    """Raises :class:`StoreDamagedError` naming the chunks when a frame of ``data`` (``array[first:...]``
    of an archive) reads fewer observed pixels than ingest wrote (its ``<name>_finite_fraction``): a chunk
    object of that frame is missing.

    zarr reads a missing chunk as its fill value (NaN) without a word:
    unchecked, a deleted chunk became NaN windows, a model trained on them,
    forecasts of NaN marked written and a blank map, all with exit 0. The
    stored fraction is per variable and per frame, so a variable that is
    legitimately empty in a frame, or a tile outside coverage that was never
    stored, is no finding. Costs one pass over ``data`` and a read of the
    fractions' span; an archive without them (written before they were
    stored) is not checked. A frame that an ingest writes meanwhile is no
    finding: on a mismatch the fractions are read again, then the data.
    """
    name = f"{array.basename}_finite_fraction"
    if kind != "archive" or data.ndim != 3 or not np.issubdtype(data.dtype, np.floating):
        return
    group = open_group(url)
    if name not in group:
        return
    fractions = group_array(group, name)
    pixels = data.shape[1] * data.shape[2]
    for again in (False, True):
        written = np.asarray(fractions[first:first + len(data)], dtype="float64")
        if again:  # an ingest may have written the frame between the data's read and the fractions': read
            data = np.asarray(array[first:first + len(data)])  # again, after them (it writes data first)
        read = np.count_nonzero(~np.isnan(data), axis=(1, 2)) / pixels
        lost = np.flatnonzero(read < written - 0.5 / pixels)  # NaN fractions (lost stats) compare false
        if not lost.size:
            return
    step = array.chunks[0]
    damaged = []
    for chunk in sorted({(first + int(i)) // step for i in lost}):
        begin = chunk * step
        one = next(int(i) for i in lost if (first + int(i)) // step == chunk)
        problem = (f"a chunk object is missing: {read[one]:.3g} of a frame's pixels read as observed where "
                   f"ingest wrote {written[one]:.3g}")
        damaged.append(Damage(array.path, (chunk,), problem, begin, min(begin + step, array.shape[0])))
    raise _damaged(url, kind, damaged)


def _damaged(url: str, kind: str, damaged: list[Damage]) -> StoreDamagedError:
    """The error a job raises for ``damaged`` chunks it read: ``nowcast check``'s line, times and fix."""
    with np.errstate(all="ignore"):
        times = _axis_times(open_group(url), kind) if kind in AXES else None
    report = CheckReport(url=url, kind=kind, chunks_read=len(damaged), damaged=tuple(damaged), times=times)
    return StoreDamagedError(report.line())


def time_chunk_stored(url: str, array: zarr.Array, chunk: int) -> bool:
    """Whether any object of time chunk ``chunk`` of ``array`` exists (a listing of that prefix alone; on a
    disk, the empty folders a deleted chunk leaves do not count)."""
    fs, root = filesystem(url)
    try:
        return bool(fs.find(f"{root.rstrip('/')}/{array.path}/c/{chunk}"))
    except FileNotFoundError:
        return False


def require_intact(url: str) -> CheckReport:
    """:func:`check_store`, raising :class:`StoreDamagedError` with the report when anything is damaged."""
    report = check_store(url)
    if not report.ok:
        raise StoreDamagedError(report.text())
    return report
