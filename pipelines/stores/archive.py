"""The archive store: schema, creation, validation and chunk-aligned writes.

``archive.zarr`` holds gridded fields on a regular time axis (see
docs/schemas.md). Its layout is read from metadata alone by
:func:`read_info`, which every job calls first and which names the exact
problem and its fix when the store does not follow the schema;
:func:`open_archive` adds a full check of the dataset for readers that load
values through xarray. Jobs read frames chunk by chunk with zarr
(:func:`nowcast.pipelines.stores.groups.open_group`). Writers go through
:func:`write_block`, which writes whole time chunks and sets the per-frame
``valid`` flag only after the data is in place, so an interrupted write is
redone on the next run and never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from zarr.codecs import ZstdCodec

from nowcast.pipelines.stores.grid import CRS_VAR, Grid
from nowcast.pipelines.stores.groups import (
    StoreError,
    array,
    arrays_along,
    consolidate,
    created_whole,
    damaged_metadata,
    dimension_names,
    grow_axis,
    growing_to,
    metadata_damage,
    not_a_store,
    open_group,
    readable_members,
    zarr_store,
)
from nowcast.pipelines.stores.timeaxis import (
    DEFAULT_TIME_CHUNK,
    MAX_TIME_CHUNK,
    TIME_UNITS,
    epoch_seconds,
    format_time_step,
    parse_time_step,
    time_values,
    to_datetime64,
)

FRAME_DIMS = ("time", "y", "x")
VALID = "valid"
# a writer holds one whole chunk of a field in memory (decompressed) to put a frame into it: 24 frames
# of the largest synthetic grid (4096 x 4096) fit, a chunk past this is refused before the store is made
MAX_CHUNK_BYTES = 2 * 1024**3
ZSTD_LEVEL = 3
FINGERPRINT_HEX = 16  # hex digits of an archive's fingerprint (64 bits)


class ArchiveError(StoreError):
    """The archive (or an input meant for it) does not follow the schema."""

    kind = "archive"
    missing_fix = "create it by ingesting data (nowcast ingest ...)"


class InterruptedExtensionError(ArchiveError):
    """The time axis is being extended by a writer, or was when one stopped; ``extend_time`` completes it."""

    transient = True

# spellings of one unit that files use (CF/UDUNITS, the radar services' own); the archive keeps the first
_UNIT_SPELLINGS = {"mm/h": "mm h-1", "mm/hr": "mm h-1", "mm hr-1": "mm h-1", "mm h^-1": "mm h-1",
                   "mm.h-1": "mm h-1", "mm h**-1": "mm h-1", "kg m-2 h-1": "mm h-1", "kg m-2": "mm"}


def same_units(a: str, b: str) -> bool:
    """Whether two unit strings name one unit (``mm/h`` and ``mm h-1`` do; ``mm`` and ``mm h-1`` do not).

    >>> same_units("mm/h", " mm h-1"), same_units("mm", "mm h-1")
    (True, False)
    """
    def canonical(units: str) -> str:
        spelt = " ".join(units.split())
        return _UNIT_SPELLINGS.get(spelt, spelt)
    return canonical(a) == canonical(b)


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One gridded variable of the archive.

    Attributes:
        name: variable name in the store, e.g. ``precip``.
        units: UDUNITS string, e.g. ``mm h-1``.
        long_name: human-readable name.
        standard_name: CF standard name, if one fits.
        valid_min: smallest physical value; ingest refuses inputs below it.
        valid_max: largest physical value; ingest refuses inputs above it.
        thresholds: values for the per-frame ``<name>_fraction_above`` statistic
            (e.g. rain-rate thresholds), so window planning needs no data pass.
    """

    name: str
    units: str
    long_name: str
    standard_name: str | None = None
    valid_min: float | None = None
    valid_max: float | None = None
    thresholds: tuple[float, ...] = ()

    def attrs(self) -> dict[str, object]:
        attrs: dict[str, object] = {
            "units": self.units,
            "long_name": self.long_name,
            "grid_mapping": CRS_VAR,
        }
        if self.standard_name:
            attrs["standard_name"] = self.standard_name
        if self.valid_min is not None:
            attrs["valid_min"] = float(self.valid_min)
        if self.valid_max is not None:
            attrs["valid_max"] = float(self.valid_max)
        if self.thresholds:
            attrs["stat_thresholds"] = [float(t) for t in self.thresholds]
        return attrs

    @classmethod
    def from_attrs(cls, name: str, attrs: Mapping[str, object]) -> FieldSpec:
        return cls(
            name=name,
            units=str(attrs.get("units", "")),
            long_name=str(attrs.get("long_name", name)),
            standard_name=attrs.get("standard_name"),  # type: ignore[arg-type]
            valid_min=attrs.get("valid_min"),  # type: ignore[arg-type]
            valid_max=attrs.get("valid_max"),  # type: ignore[arg-type]
            thresholds=tuple(float(t) for t in attrs.get("stat_thresholds") or ()),  # type: ignore[attr-defined]
        )


PRECIP = FieldSpec(
    name="precip",
    units="mm h-1",
    long_name="precipitation rate",
    standard_name="lwe_precipitation_rate",
    valid_min=0.0,
    # no radar rain rate reaches it: the five networks in ../shared peak at 29-167 mm/h, a 70 dBZ hail
    # core reads about 1000 mm/h by Z-R; a KNMI pixel of raw 65534 read 7864 mm/h and went in, exit 0
    valid_max=1000.0,
    thresholds=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0),
)


def stat_names(field: FieldSpec) -> list[str]:
    """Names of the per-frame statistics stored for ``field``."""
    names = [f"{field.name}_mean", f"{field.name}_max", f"{field.name}_finite_fraction"]
    if field.thresholds:
        names.append(f"{field.name}_fraction_above")
    return names


def frame_stats(field: FieldSpec, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame statistics of a ``(time, y, x)`` block, NaN for all-NaN frames.

    The fractions are over finite (observed) pixels, so a static radar
    coverage mask does not dilute them. NaN compares false with every
    threshold, so the counts need no mask.
    """
    frames = np.asarray(frames, dtype="float32")
    axes = (1, 2)
    counts = np.count_nonzero(~np.isnan(frames), axis=axes)
    observed = counts > 0
    safe_counts = np.maximum(counts, 1)
    with np.errstate(invalid="ignore"):
        mean = np.where(observed, np.nansum(frames, axis=axes, dtype="float64") / safe_counts, np.nan)
        maximum = np.where(observed, np.fmax.reduce(frames, axis=axes), np.nan)
    pixels = frames.shape[1] * frames.shape[2]
    stats = {
        f"{field.name}_mean": mean.astype("float32"),
        f"{field.name}_max": maximum.astype("float32"),
        # NaN as the others: 0 for a missing frame in a rewritten chunk, NaN past an old chunk's end
        f"{field.name}_finite_fraction": np.where(observed, counts / pixels, np.nan).astype("float32"),
    }
    if field.thresholds:
        above = np.stack([np.count_nonzero(frames >= t, axis=axes) for t in field.thresholds], axis=1)
        fraction = np.where(observed[:, None], above / safe_counts[:, None], np.nan)
        stats[f"{field.name}_fraction_above"] = fraction.astype("float32")
    return stats


@dataclasses.dataclass(frozen=True)
class ArchiveDescription:
    """What a model records about the archive it was trained on, and checks before it forecasts.

    Attributes:
        time_step: ISO 8601 step of the archive, e.g. ``PT5M``.
        variables: units of each variable, e.g. ``{"precip": "mm h-1"}``.
        grid_shape: ``(y, x)`` size of the archive grid.
    """

    time_step: str
    variables: Mapping[str, str]
    grid_shape: tuple[int, int]

    def to_dict(self) -> dict[str, object]:
        return {"time_step": self.time_step, "variables": dict(self.variables),
                "grid_shape": [int(n) for n in self.grid_shape]}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ArchiveDescription:
        return cls(time_step=str(data["time_step"]), variables=dict(data["variables"]),  # type: ignore[call-overload]
                   grid_shape=tuple(int(n) for n in data["grid_shape"]))  # type: ignore[arg-type, attr-defined]


@dataclasses.dataclass(frozen=True)
class ArchiveInfo:
    """What a job needs to know about an archive without touching its data."""

    url: str
    fields: tuple[FieldSpec, ...]
    grid: Grid
    start: np.datetime64
    time_step: np.timedelta64
    length: int
    time_chunk: int
    spatial_chunks: tuple[int, int]

    @property
    def end(self) -> np.datetime64:
        """The last timestamp on the axis."""
        return self.start + (self.length - 1) * self.time_step

    def description(self) -> ArchiveDescription:
        """The archive as a model's metadata records it."""
        return ArchiveDescription(time_step=format_time_step(self.time_step),
                                  variables={f.name: f.units for f in self.fields},
                                  grid_shape=self.grid.shape)

    def fingerprint(self) -> str:
        """What the archive is, as a short hash: grid, time axis origin and step, variables and units.

        Not where it lies (a copy, another mount point or a bucket gives the
        same fingerprint) and not its length (it grows): the forecast store
        names its archive by this.
        """
        described = {"fields": sorted((f.name, f.units) for f in self.fields),
                     "crs": sorted((str(k), str(v)) for k, v in self.grid.crs_attrs.items()),
                     "units": self.grid.units,
                     "y": hashlib.sha256(np.asarray(self.grid.y, "float64").tobytes()).hexdigest(),
                     "x": hashlib.sha256(np.asarray(self.grid.x, "float64").tobytes()).hexdigest(),
                     "start": str(to_datetime64(self.start)), "time_step": format_time_step(self.time_step)}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_HEX]

    def field(self, name: str) -> FieldSpec:
        for field in self.fields:
            if field.name == name:
                return field
        raise ArchiveError(
            f"archive {self.url} has no variable {name!r}; it holds "
            f"{[f.name for f in self.fields]}"
        )


def _template(
    grid: Grid,
    fields: Sequence[FieldSpec],
    start: np.datetime64,
    time_step: np.timedelta64,
    length: int,
    attrs: Mapping[str, object],
    chunks: tuple[int, int, int],
) -> xr.Dataset:
    """The archive as lazy all-missing arrays, dask-chunked like the store (nothing computed)."""
    import dask.array as da

    times = time_values(start, time_step, length).astype("datetime64[ns]")
    ny, nx = grid.shape
    data_vars: dict[str, xr.Variable] = {}
    for field in fields:
        data_vars[field.name] = xr.Variable(
            FRAME_DIMS, da.full((length, ny, nx), np.nan, dtype="float32", chunks=chunks), field.attrs()
        )
        for name in stat_names(field):
            if name.endswith("_fraction_above"):
                data_vars[name] = xr.Variable(
                    ("time", f"{field.name}_threshold"),
                    da.full((length, len(field.thresholds)), np.nan, dtype="float32"),
                    {"long_name": "fraction of observed pixels at or above each threshold"},
                )
            else:
                data_vars[name] = xr.Variable(
                    ("time",), da.full((length,), np.nan, dtype="float32"),
                    {"long_name": name.replace("_", " ")},
                )
    data_vars[VALID] = xr.Variable(
        ("time",), da.zeros((length,), dtype=bool),
        {"long_name": "frame present and written (false: missing, NaN)"},
    )
    coords: dict[str, object] = {
        "time": ("time", times, {"standard_name": "time"}),
        **grid.coords(),
        **grid.geographic_coords(),
    }
    for field in fields:
        if field.thresholds:
            coords[f"{field.name}_threshold"] = (
                f"{field.name}_threshold",
                np.asarray(field.thresholds, dtype="float32"),
                {"units": field.units},
            )
    ds = xr.Dataset(data_vars, coords=coords).assign_coords(grid.mapping_coord())
    ds.attrs.update(
        {
            "Conventions": "CF-1.8",
            "time_step": format_time_step(time_step),
            "time_start": str(to_datetime64(start)),
            **attrs,
        }
    )
    return ds


def time_chunk_problem(time_chunk: int) -> str | None:
    """Why ``time_chunk`` is not a number of frames an archive chunk can hold; None when it is."""
    if 1 <= time_chunk <= MAX_TIME_CHUNK:
        return None
    return (f"time chunk {time_chunk} must be 1..{MAX_TIME_CHUNK} frames; the default {DEFAULT_TIME_CHUNK} "
            "suits 5-minute frames (--time-chunk)")


def check_chunk_size(time_chunk: int, chunks_yx: tuple[int, int]) -> None:
    """Refuses a chunk layout whose chunks a writer could not hold in memory.

    Raises:
        ArchiveError: naming the chunk, its size and the largest time chunk that fits.
    """
    problem = time_chunk_problem(time_chunk)
    if problem:
        raise ArchiveError(problem)
    frame_bytes = 4 * int(np.prod(chunks_yx))  # float32
    if time_chunk * frame_bytes > MAX_CHUNK_BYTES:
        fits = max(1, MAX_CHUNK_BYTES // frame_bytes)
        raise ArchiveError(
            f"a chunk of {time_chunk} frames of {chunks_yx[0]}x{chunks_yx[1]} pixels is "
            f"{time_chunk * frame_bytes / 1024**3:.1f} GiB, more than the {MAX_CHUNK_BYTES // 1024**3} GiB a "
            f"writer may hold in memory to write a frame into it; use --time-chunk {fits} or less")


def create_archive(
    url: str,
    grid: Grid,
    fields: Sequence[FieldSpec],
    start: object,
    time_step: str | np.timedelta64,
    length: int,
    time_chunk: int = DEFAULT_TIME_CHUNK,
    spatial_chunks: tuple[int, int] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> ArchiveInfo:
    """Creates an empty archive (all frames missing) with its chunk layout.

    Only metadata and coordinates are written: data chunks appear as frames
    are ingested, and a chunk never written reads as NaN.
    """
    step = parse_time_step(time_step) if isinstance(time_step, str) else time_step
    problem = not_a_store(url)
    if problem:  # a file or a folder of something else at the path: never written over
        raise ArchiveError(problem)
    if length < 1:
        raise ArchiveError("an archive needs at least one time step")
    if not fields:
        raise ArchiveError("an archive needs at least one field")
    chunks_yx = spatial_chunks or grid.shape
    check_chunk_size(time_chunk, chunks_yx)
    ds = _template(grid, fields, to_datetime64(start), step, length, attrs or {},
                   chunks=(time_chunk, *chunks_yx))
    encoding: dict[str, dict[str, object]] = {
        "time": {"units": TIME_UNITS, "dtype": "int64", "chunks": (time_chunk,)},
        VALID: {"chunks": (time_chunk,), "fill_value": False, "compressors": [ZstdCodec(checksum=True)]},
    }
    for field in fields:
        encoding[field.name] = {
            "chunks": (time_chunk, *chunks_yx),
            "compressors": [ZstdCodec(level=ZSTD_LEVEL, checksum=True)],  # a flipped bit fails the read
            "fill_value": np.float32("nan"),
        }
        for name in stat_names(field):
            chunks = (time_chunk, len(field.thresholds)) if name.endswith("_above") else (time_chunk,)
            encoding[name] = {"chunks": chunks, "fill_value": np.float32("nan")}
    with created_whole(url) as staging:  # an ingest or reader never sees a root without its arrays
        ds.to_zarr(zarr_store(staging), mode="w-", compute=False, encoding=encoding, consolidated=False,
                   zarr_format=3)
        consolidate(open_group(staging, "r+", error=ArchiveError))
    return read_info(url)


def _refuse_damage_or_other_kind(url: str, group: Any) -> None:
    """Names a forecasts or windows store given as an archive (it was called "not written by nowcast"),
    or an array whose zarr.json is gone (zarr then does not see it: "no (time, y, x) variable")."""
    from nowcast.pipelines.stores.integrity import store_kind

    damaged = damaged_metadata(url)
    if damaged:
        raise ArchiveError(metadata_damage(url, damaged))
    try:
        kind = store_kind(group)
    except (StoreError, ValueError):
        return
    if kind != "archive":
        raise ArchiveError(f"{url} is a {kind} store, not an archive: give an archive's path (ingest creates "
                           "one at a new path)")


EXTENSION_WAIT_S = (0.2, 0.5, 1.0)  # a reader's waits for a live ingest's extension to end, before it refuses


def read_info(url: str, waits: Sequence[float] = EXTENSION_WAIT_S) -> ArchiveInfo:
    """Reads the archive's layout from metadata only and checks it is consistent.

    An archive part way through a time-axis extension is read again after each of ``waits`` (seconds): a
    live ingest takes well under a second to grow it, and a reader (score, windows) then goes on; one a
    stopped ingest left is refused, naming the fix. A writer that holds the store's lock waits for none
    (no other ingest can be extending it).
    """
    for wait in waits:
        try:
            return _read_info(url)
        except InterruptedExtensionError:
            time.sleep(wait)
    return _read_info(url)


def frame_fields(arrays: Mapping[str, Any]) -> tuple[FieldSpec, ...]:
    """The (time, y, x) fields among an archive's ``arrays`` (name -> zarr array), in name order."""
    return tuple(FieldSpec.from_attrs(name, dict(arr.attrs)) for name, arr in sorted(arrays.items())
                 if dimension_names(arr) == FRAME_DIMS)


def lacking_statistics(arrays: Mapping[str, Any]) -> list[str]:
    """The per-frame statistics of the fields among ``arrays`` that are not there (their zarr.json, or
    the whole array, lost)."""
    return [name for field in frame_fields(arrays) for name in stat_names(field) if name not in arrays]


def _read_info(url: str) -> ArchiveInfo:
    group = open_group(url, error=ArchiveError)
    attrs = dict(group.attrs)
    for key in ("time_step", "time_start"):
        if key not in attrs:
            _refuse_damage_or_other_kind(url, group)
            raise ArchiveError(
                f"archive {url} lacks the attribute {key!r}; it was not written by nowcast. "
                "Re-ingest the data with nowcast ingest"
            )
    with readable_members(url, ArchiveError):  # a member's zarr.json that is not zarr metadata
        arrays = dict(group.arrays())
    if not {"time", "y", "x"} <= arrays.keys():  # a coordinate's zarr.json deleted: a KeyError traceback
        _refuse_damage_or_other_kind(url, group)
        raise ArchiveError(f"archive {url} lacks its {sorted({'time', 'y', 'x'} - arrays.keys())} "
                           "coordinates: restore the store from a copy")
    fields = frame_fields(arrays)
    if not fields:
        _refuse_damage_or_other_kind(url, group)
        raise ArchiveError(f"archive {url} has no (time, y, x) variable")
    if VALID not in arrays:
        _refuse_damage_or_other_kind(url, group)
        raise ArchiveError(f"archive {url} lacks the per-frame {VALID!r} flag")
    if lacking := lacking_statistics(arrays):
        # a statistic's zarr.json deleted: ingest said fine and left it so, and windows lost the check that
        # finds a lost data chunk (its samples went out as NaN)
        _refuse_damage_or_other_kind(url, group)
        raise ArchiveError(f"archive {url} lacks the per-frame statistics {lacking}: restore the store "
                           "from a copy, or ingest its files into a new archive")
    time_lengths = {name: arr.shape[0] for name, arr in arrays_along(group, "time").items()}
    if len(set(time_lengths.values())) != 1 or growing_to(arrays["time"]) is not None:
        lengths = sorted(set(time_lengths.values()))
        state = f"lengths {lengths}" if len(lengths) > 1 else "its time coordinate not yet all written"
        raise InterruptedExtensionError(
            f"archive {url} is part way through a time-axis extension ({state}): an ingest is extending it, "
            "or was stopped while it did; if none runs, rerun one to complete it"
        )
    first = arrays[fields[0].name]
    try:
        grid = Grid.from_zarr_group(group)
    except Exception as error:  # whatever the codec raises for a damaged chunk of x or y (a traceback)
        raise ArchiveError(f"the grid coordinates of {url} cannot be read ({type(error).__name__}: "
                           f"{str(error)[:100]}): restore the store from a copy (they are not in the source "
                           f"files a repair reads); `nowcast check {url}` lists the damage") from error
    return ArchiveInfo(
        url=url,
        fields=fields,
        grid=grid,
        start=to_datetime64(attrs["time_start"]),
        time_step=parse_time_step(str(attrs["time_step"])),
        length=int(first.shape[0]),
        time_chunk=int(first.chunks[0]),
        spatial_chunks=(int(first.chunks[1]), int(first.chunks[2])),
    )


def open_archive(url: str, fields: Sequence[FieldSpec] | None = None,
                 grid: Grid | None = None) -> xr.Dataset:
    """Opens and validates an archive; every job reads archives through this.

    Args:
        url: store URL or path.
        fields: if given, variables that must be present with these units.
        grid: if given, the grid the archive must be on.

    Returns:
        The lazily loaded dataset.

    Raises:
        ArchiveError: naming the problem and the fix.
    """
    read_info(url)  # refuses an interrupted time-axis extension before xarray reads the arrays
    ds = xr.open_zarr(zarr_store(url, read_only=True), consolidated=False, chunks=None,
                      zarr_format=3)
    validate_archive(ds, fields=fields, grid=grid, url=url)
    return ds


def validate_archive(ds: xr.Dataset, fields: Sequence[FieldSpec] | None = None,
                     grid: Grid | None = None, url: str = "<dataset>") -> None:
    """Checks a dataset against the archive schema (docs/schemas.md).

    Raises:
        ArchiveError: naming the first problem found and how to fix it.
    """
    if "time_step" not in ds.attrs:
        raise ArchiveError(f"{url}: attribute 'time_step' (ISO 8601, e.g. 'PT5M') is missing")
    step = parse_time_step(str(ds.attrs["time_step"]))
    for dim in FRAME_DIMS:
        if dim not in ds.dims:
            raise ArchiveError(f"{url}: dimension {dim!r} is missing; archives are (time, y, x)")
    times = ds["time"].values.astype("datetime64[s]")
    if times.size:
        deltas = np.diff(times)
        if np.any(deltas == np.timedelta64(0, "s")):
            dup = times[1:][deltas == np.timedelta64(0, "s")][0]
            raise ArchiveError(f"{url}: time {dup} appears twice; drop the duplicate frame")
        if np.any(deltas < np.timedelta64(0, "s")):
            bad = times[1:][deltas < np.timedelta64(0, "s")][0]
            raise ArchiveError(f"{url}: time is not increasing at {bad}; sort by time")
        if np.any(deltas != step):
            bad = times[1:][deltas != step][0]
            raise ArchiveError(
                f"{url}: time axis is irregular at {bad} (step {format_time_step(step)} expected); "
                "insert missing frames as NaN with valid=false"
            )
    if VALID not in ds or ds[VALID].dims != ("time",) or ds[VALID].dtype != bool:
        raise ArchiveError(f"{url}: per-frame boolean variable {VALID!r} over time is missing")
    frame_vars = [name for name, var in ds.data_vars.items() if "y" in var.dims and "x" in var.dims]
    if not frame_vars:
        raise ArchiveError(f"{url}: no gridded variable with dims (time, y, x)")
    for name in frame_vars:
        var = ds[name]
        if var.dims != FRAME_DIMS:
            raise ArchiveError(
                f"{url}: variable {name!r} has dims {var.dims}, expected {FRAME_DIMS}; "
                f"use ds[{name!r}].transpose('time', 'y', 'x')"
            )
        if var.dtype != np.float32:
            raise ArchiveError(
                f"{url}: variable {name!r} is {var.dtype}, expected float32; cast with .astype('float32')"
            )
        if "units" not in var.attrs:
            raise ArchiveError(f"{url}: variable {name!r} has no 'units' attribute")
    for spec in fields or ():
        if spec.name not in ds:
            raise ArchiveError(
                f"{url}: variable {spec.name!r} is missing (present: {frame_vars}); "
                "ingest it or pick another variable"
            )
        if ds[spec.name].attrs.get("units") != spec.units:
            raise ArchiveError(
                f"{url}: variable {spec.name!r} is in {ds[spec.name].attrs.get('units')!r}, "
                f"expected {spec.units!r}; convert the input before ingest"
            )
    if grid is not None:
        problem = grid.mismatch(Grid.from_dataset(ds))
        if problem:
            raise ArchiveError(f"{url}: grid differs from the expected one: {problem}")


def complete_extension(url: str) -> ArchiveInfo:
    """Completes a time-axis extension that a stopped writer left part way, to the length it was growing
    to: its longest array, or the length its coordinate's mark names (completed to the coordinate's old
    length, the archive stayed part way for good)."""
    along = arrays_along(open_group(url, error=ArchiveError), "time")
    lengths = [each.shape[0] for each in along.values()]
    return extend_time(url, max([*lengths, growing_to(along["time"]) or 0]))


def extend_time(url: str, length: int) -> ArchiveInfo:
    """Extends the time axis to ``length`` steps (idempotent, restartable).

    New frames read as missing (NaN, ``valid`` false) from the fill values, so
    no data chunk is written. The time coordinate grows last
    (:func:`~nowcast.pipelines.stores.groups.grow_axis`), so :func:`read_info`
    can tell an interrupted extension, and a rerun with the same length
    completes it.
    """
    group = open_group(url, "r+", error=ArchiveError)
    current = array(group, "time").shape[0]
    if length < current:
        raise ArchiveError(f"cannot shrink {url} from {current} to {length} time steps")
    attrs = dict(group.attrs)
    times = time_values(to_datetime64(attrs["time_start"]), parse_time_step(str(attrs["time_step"])), length)
    grow_axis(group, "time", epoch_seconds(times))
    return read_info(url)


def valid_flags(url: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """The archive's per-frame ``valid`` flags, of frames ``start .. stop - 1`` (all by default).

    Raises:
        ArchiveError: a chunk of the flags cannot be read (damaged on disk), with the fix.
    """
    flags = array(open_group(url, error=ArchiveError), VALID)
    try:
        return np.asarray(flags[start:stop], dtype=bool)
    except Exception as error:  # whatever the codec raises for a damaged chunk
        raise ArchiveError(f"the valid flags of {url} cannot be read ({type(error).__name__}: "
                           f"{str(error)[:100]}); `nowcast check {url}` lists the damaged chunks and "
                           "`nowcast ingest ... --repair` rewrites them from the source files") from error


def write_block(url: str, first_index: int, frames: Mapping[str, np.ndarray],
                present: np.ndarray) -> int:
    """Writes whole time chunks of frames, their stats, then their ``valid`` flags.

    Args:
        url: archive URL.
        first_index: time index of the first frame; must start a chunk.
        frames: per field, a ``(n, y, x)`` float32 block; ``n`` must end a chunk or
            the axis, so the write is chunk-aligned and never races another task.
        present: ``(n,)`` bool, which frames hold data (the rest stay missing).

    Returns:
        Bytes of uncompressed field data written.
    """
    group = open_group(url, "r+", error=ArchiveError)
    time_chunk = array(group, next(iter(frames))).chunks[0]
    length = array(group, "time").shape[0]
    count = len(present)
    if first_index % time_chunk or (
        (first_index + count) % time_chunk and first_index + count != length
    ):
        raise ArchiveError(
            f"write of frames [{first_index}, {first_index + count}) is not aligned to the "
            f"{time_chunk}-frame chunks of {url}"
        )
    region = slice(first_index, first_index + count)
    written = 0
    for name, block in frames.items():
        block = np.asarray(block, dtype="float32")
        block = np.where(present[:, None, None], block, np.float32("nan"))
        array(group, name)[region] = block
        written += block.nbytes
        spec = FieldSpec.from_attrs(name, dict(group[name].attrs))
        for stat, values in frame_stats(spec, block).items():
            array(group, stat)[region] = values
    array(group, VALID)[region] = present
    return written


def frame_digest(url: str, name: str, index: int) -> str:
    """The sha256 of frame ``index`` of variable ``name`` (its float32 values): what the archive holds
    there, to tell two archives of one grid and time axis apart (:class:`ArchiveInfo.fingerprint` names
    what an archive is, not what it holds)."""
    values = array(open_group(url, error=ArchiveError), name)
    if not 0 <= index < values.shape[0]:
        return ""
    try:
        frame = np.ascontiguousarray(values[index], dtype="float32")
    except Exception as error:  # whatever the codec raises for a damaged chunk
        raise ArchiveError(f"frame {index} of {url}/{name} cannot be read ({type(error).__name__}: "
                           f"{str(error)[:100]}); `nowcast check {url}` lists the damaged chunks and "
                           "`nowcast ingest ... --repair` rewrites them from the source files") from error
    return hashlib.sha256(frame.tobytes()).hexdigest()

