"""The forecast store: schema, creation from a template, growth, and per-init-time writes.

``forecasts.zarr`` (docs/schemas.md) holds ``(init_time, lead_time, y, x)``
forecasts of one model (any of its versions) from one archive. Its
``init_time`` axis is the archive's time axis (same start, step and length),
so init time ``i`` is forecast from archive frames ``i - t_in + 1 .. i`` and a
new archive frame always has its slot; the first ``t_in - 1`` init times can
never be scored and stay unwritten.

Model versions: each init time records the version and the ``model.keras``
checksum that wrote it (``model_version``, ``model_sha256``), so a promotion
needs no new store: the scheduled forecast that follows ``latest`` writes the
next init times with the new version, and the init times already written
keep theirs. One store per version would make every reader stitch stores
together to see the forecasts users received; a variable along ``init_time``
keeps one store and one ``xr.open_zarr``. What must match for a run to add
to a store is what makes forecasts comparable: the model's name, target,
input and lead counts, and the archive's fingerprint (its grid, time axis and
variables, not its path, so a copied or moved pair of stores still fit).

Every array is chunked one init time deep (``written`` and the version
arrays too), so each write owns its chunks outright: a write never merges
with another, two runs that score the same init time with the same model
write the same bytes, and no lock is needed. The data of an init time is
written first, then its version and checksum, and its ``written`` flag last,
so an interrupted write is simply redone; readers trust only ``written`` init
times.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec

from nowcast.pipelines.stores.archive import ArchiveInfo, frame_digest, valid_flags
from nowcast.pipelines.stores.groups import (
    StoreError,
    array,
    consolidate,
    consolidate_if_behind,
    created_whole,
    exists,
    filesystem,
    grow_axis,
    growing_to,
    holds,
    is_local,
    local_path,
    not_a_store,
    open_group,
    readable_members,
    zarr_store,
)
from nowcast.pipelines.stores.integrity import require_stored
from nowcast.pipelines.stores.lock import store_lock
from nowcast.pipelines.stores.timeaxis import (
    TIME_UNITS,
    epoch_seconds,
    format_time_step,
    parse_time_step,
    time_values,
    to_datetime64,
)

WRITTEN = "written"
VALID_TIME = "valid_time"
MODEL_VERSION = "model_version"
MODEL_SHA256 = "model_sha256"
VERSION_ARRAYS = (MODEL_VERSION, MODEL_SHA256)  # strings along init_time, "" until written
STRING = np.dtypes.StringDType()  # zarr v3's variable-length UTF-8 ("string"), lazily: no object arrays
COORD_CHUNK = 4096  # init_time coordinate values per chunk (written by the driver only)
# Forecasts are compressed on every scoring run's hot path, so they use zstd level 1, cheaper than the
# archive's level 3 for the same size (measured in docs/scoring.md). Stores keep the codec they were
# created with.
FORECAST_ZSTD_LEVEL = 1

log = logging.getLogger(__name__)


class ForecastStoreError(StoreError):
    """The forecast store does not follow the schema, or belongs to another model or archive."""

    kind = "forecast store"
    missing_fix = "run the scoring job to create it"


@dataclasses.dataclass(frozen=True)
class StoreIdentity:
    """What a forecast store is a forecast of; every run that writes to a store has its identity.

    Attributes:
        model_name: registry name of the model (its versions may change from init time to init time).
        archive: the fingerprint of the archive the inputs come from
            (:meth:`~nowcast.pipelines.stores.archive.ArchiveInfo.fingerprint`).
        target: forecast variable.
        t_in: input frames per forecast.
        t_out: lead times per forecast.
    """

    model_name: str
    archive: str
    target: str
    t_in: int
    t_out: int

    def attrs(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """The model version a run writes with, recorded per init time.

    Attributes:
        version: the resolved version (never ``latest``).
        sha256: checksum of its ``model.keras``.
    """

    version: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    """Layout of an existing forecast store, from metadata only; ``probe`` (:func:`archive_probe`) where the
    store records one."""

    url: str
    identity: StoreIdentity
    start: np.datetime64
    time_step: np.timedelta64
    length: int
    probe: dict[str, object] | None = None


PROBE = "archive_probe"  # root attribute: {"index": i, "sha256": ...}, a frame of the archive it is made from


def archive_probe(archive: ArchiveInfo, target: str) -> dict[str, object] | None:
    """The first valid frame of ``target`` in ``archive``, by index and checksum (None: no valid frame).

    Archives of one grid, start and step have one fingerprint; forecasts of one were read, and written,
    against another's frames (another event, another seed) without a word. A valid frame never changes
    (a repair restores its bytes), so its checksum tells them apart at the cost of one chunk read.
    """
    valid = np.flatnonzero(valid_flags(archive.url))
    if not valid.size:
        return None
    index = first_wet(archive.url, target, valid, archive.time_chunk)
    return {"index": index, "sha256": frame_digest(archive.url, target, index)}


PROBE_CHUNKS = 4  # time chunks searched for a wet frame: dry frames of one network are alike


def first_wet(url: str, target: str, valid: np.ndarray, time_chunk: int) -> int:
    """The first of the ``valid`` frames with a value above 0 among the first :data:`PROBE_CHUNKS` time
    chunks; else the first valid frame."""
    values = array(open_group(url), target)
    for first in range(int(valid[0]) // time_chunk * time_chunk, values.shape[0], time_chunk)[:PROBE_CHUNKS]:
        try:
            frames = np.asarray(values[first:first + time_chunk])
        except Exception:  # a damaged chunk: the scoring job names it when it reads its windows
            continue
        wet = [i for i in valid[(valid >= first) & (valid < first + time_chunk)]
               if np.nanmax(frames[i - first], initial=0.0) > 0]
        if wet:
            return int(wet[0])
    return int(valid[0])


def check_probe(info: StoreInfo, archive_url: str) -> None:
    """Refuses an archive whose frame at the store's probe is not the one the forecasts were made from."""
    if info.probe is None:  # a store made before the probe, or before the archive held data
        return
    index = int(info.probe["index"])  # type: ignore[call-overload]
    try:
        if frame_digest(archive_url, info.identity.target, index) == info.probe["sha256"]:
            return
        values = array(open_group(archive_url), info.identity.target)  # a missing chunk reads as NaN:
        require_stored(archive_url, values, np.asarray(values[index:index + 1]), index)  # damage, not data
    except StoreError as damage:  # the jobs that read the frame name it; the runs that do not go on
        log.warning("%s: the check that %s is the archive its forecasts were made from is skipped (%s)",
                    info.url, archive_url, damage)
        return
    when = np.datetime64(info.start + index * info.time_step, "s")
    raise ForecastStoreError(f"{info.url} holds forecasts of another archive than {archive_url}: they share "
                             f"the grid and time axis, but its frame at {when} is not the one the forecasts "
                             "were made from (another event, or data ingested again): give the archive the "
                             "forecasts were made from, or write to a new forecast store")


def template(identity: StoreIdentity, archive: ArchiveInfo, length: int) -> tuple[xr.Dataset, dict]:
    """The store as lazy all-missing arrays plus its zarr encoding (nothing computed)."""
    import dask.array as da

    ny, nx = archive.grid.shape
    field = archive.field(identity.target)
    chunks = (1, identity.t_out, *archive.spatial_chunks)
    lazy = (COORD_CHUNK, identity.t_out, ny, nx)  # dask chunks: whole store chunks, few tasks, never computed
    attrs = {**field.attrs(), "long_name": f"forecast {field.long_name}",
             "comment": f"forecast by {identity.model_name} (the version per init time in {MODEL_VERSION}); "
                        f"trust only init times with {WRITTEN}=true"}
    attrs.pop("stat_thresholds", None)
    init_times = time_values(archive.start, archive.time_step, length).astype("datetime64[ns]")
    leads = (np.arange(1, identity.t_out + 1) * archive.time_step).astype("timedelta64[ns]")
    ds = xr.Dataset(
        {identity.target: (("init_time", "lead_time", "y", "x"),
                           da.full((length, identity.t_out, ny, nx), np.nan, dtype="float32", chunks=lazy),
                           attrs),
         WRITTEN: (("init_time",), da.zeros((length,), dtype=bool, chunks=COORD_CHUNK),
                   {"long_name": "forecast of this init time complete (false: not scored yet)"}),
         MODEL_VERSION: (("init_time",), da.full((length,), "", dtype=STRING, chunks=COORD_CHUNK),
                         {"long_name": f"version of {identity.model_name} that wrote this init time"}),
         MODEL_SHA256: (("init_time",), da.full((length,), "", dtype=STRING, chunks=COORD_CHUNK),
                        {"long_name": "sha256 of the model.keras that wrote this init time"})},
        coords={"init_time": ("init_time", init_times,
                              {"standard_name": "forecast_reference_time",
                               "long_name": "initialisation time"}),
                "lead_time": ("lead_time", leads, {"standard_name": "forecast_period",
                                                    "long_name": "lead time"}),
                VALID_TIME: (("init_time", "lead_time"), init_times[:, None] + leads[None, :],
                             {"standard_name": "time", "long_name": "valid time (init_time + lead_time)"}),
                **archive.grid.coords(), **archive.grid.geographic_coords(),
                **archive.grid.mapping_coord()})
    ds.attrs.update({"Conventions": "CF-1.8", "title": f"{identity.target} nowcasts",
                     "time_step": format_time_step(archive.time_step),
                     "time_start": str(to_datetime64(archive.start)), "archive_url": archive.url,
                     **identity.attrs()})
    encoding = {
        identity.target: {"chunks": chunks, "fill_value": np.float32("nan"),  # checksum: a flipped bit fails
                          "compressors": [ZstdCodec(level=FORECAST_ZSTD_LEVEL, checksum=True)]},
        WRITTEN: {"chunks": (1,), "fill_value": False},
        **{name: {"chunks": (1,), "fill_value": ""} for name in VERSION_ARRAYS},
        "init_time": {"units": TIME_UNITS, "dtype": "int64", "chunks": (COORD_CHUNK,)},
        VALID_TIME: {"units": TIME_UNITS, "dtype": "int64", "chunks": (COORD_CHUNK, identity.t_out)},
        "lead_time": {"units": "seconds", "dtype": "int64"},
    }
    return ds, encoding


def read_store_info(url: str) -> StoreInfo:
    """Reads a forecast store's identity and init-time axis from metadata."""
    group = open_group(url, error=ForecastStoreError)
    attrs = dict(group.attrs)
    if "model_version" in attrs:
        raise ForecastStoreError(
            f"{url} was written by an older nowcast, which kept one model version per store; score into a "
            "new forecast store (or move this one aside) to record the version per init time")
    try:
        identity = StoreIdentity(**{f.name: attrs[f.name]  # type: ignore[arg-type]
                                    for f in dataclasses.fields(StoreIdentity)})
    except KeyError as error:
        raise ForecastStoreError(
            f"{url} lacks the attribute {error.args[0]!r}; it is not a nowcast forecast store, or its "
            "creation was interrupted: give the forecasts another path (or, if nowcast created it, move it "
            "aside and rerun; it holds no forecasts yet)") from None
    with readable_members(url, ForecastStoreError):
        arrays = dict(group.arrays())
    missing = {identity.target, WRITTEN, *VERSION_ARRAYS, "init_time"} - set(arrays)
    if missing:
        raise ForecastStoreError(f"{url} lacks {sorted(missing)}; its creation was interrupted before any "
                                 "forecast was written: move it aside (rename it) and rerun the scoring job")
    return StoreInfo(url=url, identity=identity, start=to_datetime64(attrs["time_start"]),
                     time_step=parse_time_step(str(attrs["time_step"])),
                     length=int(arrays["init_time"].shape[0]),
                     probe=dict(probe) if isinstance(probe := attrs.get(PROBE), dict) else None)


def check_made_from(info: StoreInfo, archive: ArchiveInfo, archive_url: str) -> None:
    """Refuses to read a forecast store's init times against an archive it was not made from: init time i
    would meet the other archive's frame i (the archive's fingerprint: grid, axis, variables)."""
    if info.identity.archive != archive.fingerprint():
        raise ForecastStoreError(f"{info.url} holds forecasts of another archive than {archive_url} "
                                 f"(fingerprint {info.identity.archive}, this archive "
                                 f"{archive.fingerprint()}): give the archive the forecasts were made from")
    check_probe(info, archive_url)


def check_identity(info: StoreInfo, identity: StoreIdentity, archive: ArchiveInfo) -> None:
    """Refuses to add forecasts of another model version, archive or layout to a store."""
    problems = [f"{name}: store has {getattr(info.identity, name)!r}, this run {getattr(identity, name)!r}"
                for name in ("model_name", "archive", "target", "t_in", "t_out")
                if getattr(info.identity, name) != getattr(identity, name)]
    if info.start != archive.start or info.time_step != archive.time_step:
        problems.append(f"init_time axis starts {info.start} every {format_time_step(info.time_step)}, the "
                        f"archive {archive.start} every {format_time_step(archive.time_step)}")
    if problems:
        raise ForecastStoreError(f"{info.url} holds other forecasts (" + "; ".join(problems)
                                 + "): write this model's forecasts of this archive to a new forecast store")
    check_probe(info, archive.url)


def ensure_store(url: str, identity: StoreIdentity, archive: ArchiveInfo) -> StoreInfo:
    """Creates the store from its template once, or checks it and grows it to the archive's length.

    Created whole (built beside ``url`` and moved into place, :func:`created_whole`) under the store's
    writers' lock: a run interrupted while creating leaves no store, never a root without its arrays
    that every rerun refuses, and of two runs that start together the second finds the first's store
    and checks it like any existing one.
    """
    if not exists(url):
        problem = not_a_store(url)
        if problem:  # a file or a folder of something else at the path: never written over
            raise ForecastStoreError(problem)
        with store_lock(url, "create the forecast store"):
            if not exists(url):
                ds, encoding = template(identity, archive, archive.length)
                if (probe := archive_probe(archive, identity.target)) is not None:
                    ds.attrs[PROBE] = probe
                with created_whole(url) as staging:
                    ds.to_zarr(zarr_store(staging), mode="w-", compute=False, encoding=encoding,
                               consolidated=False, zarr_format=3)
                    consolidate(open_group(staging, "r+", error=ForecastStoreError))
    info = _read_when_complete(url)
    check_identity(info, identity, archive)
    group = open_group(url, "r+", error=ForecastStoreError)
    if info.length < archive.length or growing_to(array(group, "init_time")) is not None:  # one stopped
        info = extend_init_time(url, archive.length)
    else:
        consolidate_if_behind(group)
    return info


def _read_when_complete(url: str, timeout_s: float = 30.0) -> StoreInfo:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return read_store_info(url)
        except ForecastStoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def extend_init_time(url: str, length: int) -> StoreInfo:
    """Grows the init_time axis to ``length`` (never shrinks; idempotent, restartable).

    New init times read as unwritten from the fill values. Data arrays grow
    first and the ``init_time`` coordinate last, as in the archive
    (:func:`~nowcast.pipelines.stores.groups.grow_axis`).
    """
    group = open_group(url, "r+", error=ForecastStoreError)
    attrs = dict(group.attrs)
    length = max(length, array(group, "init_time").shape[0])
    times = time_values(to_datetime64(attrs["time_start"]), parse_time_step(str(attrs["time_step"])), length)
    leads = np.asarray(array(group, "lead_time")[:])  # seconds
    derived = {VALID_TIME: epoch_seconds(times)[:, None] + leads[None, :]} if holds(group, VALID_TIME) else {}
    grow_axis(group, "init_time", epoch_seconds(times), derived)
    return read_store_info(url)


def written_flags(url: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """The per-init-time ``written`` flags, of init times ``start .. stop - 1`` (all by default).

    A range reads only its own chunks: what a scheduled run reads does not grow with the store's age.
    """
    return np.asarray(array(open_group(url, error=ForecastStoreError), WRITTEN)[start:stop], dtype=bool)


def last_writer(url: str) -> str | None:
    """The model version that wrote the store's newest written init time; None when nothing is written
    (or there is no store)."""
    if not exists(url):
        return None
    group = open_group(url, error=ForecastStoreError)
    written = np.flatnonzero(np.asarray(array(group, WRITTEN)[:], dtype=bool))
    if not len(written):
        return None
    return str(array(group, MODEL_VERSION)[written[-1]]) or None


def remove_if_unwritten(url: str) -> bool:
    """Removes the forecast store at ``url`` when none of its init times is written; True if it did.

    A first run that fails before its first forecast (a damaged archive
    chunk, a model that cannot run) would otherwise leave an empty store that
    fixes the model and archive of every later run at that path, though it
    holds nothing a rerun does not create again. Its root goes first, so no
    reader sees a store without its arrays. Called under the store's lock.
    """
    group = open_group(url, error=ForecastStoreError) if exists(url) else None
    if group is None or not holds(group, WRITTEN) or array(group, WRITTEN).nchunks_initialized:
        return False
    fs, path = filesystem(url)
    fs.rm(f"{path.rstrip('/')}/zarr.json")
    fs.rm(path, recursive=True)
    return True


def remove_stale_temporaries(url: str, target: str, indices: Iterable[int]) -> int:
    """Deletes the chunk temporaries a killed writer left for init times ``indices``; returns how many.

    zarr's LocalStore writes a chunk to ``<chunk>.<uuid>.partial`` and then
    renames it, so a SIGKILL between the two leaves the temporary behind.
    Readers ignore it, but the store would no longer be byte-identical to an
    uninterrupted run. A run calls this while planning, for the init times it
    is about to score (not written). Should another run be writing one of
    them at that moment, its rename fails and :func:`write_forecast` writes
    the chunk again. Stores off the local disk make no temporaries.
    """
    if not is_local(url):
        return 0
    wanted = {int(i) for i in indices}
    removed = 0
    for name in (target, *VERSION_ARRAYS, WRITTEN):
        top = os.path.join(local_path(url), name, "c")
        for folder, _, files in os.walk(top):
            for file in files:
                if not file.endswith(".partial"):
                    continue
                relative = os.path.relpath(os.path.join(folder, file), top)
                if int(relative.split(os.sep)[0].split(".")[0]) in wanted:
                    os.unlink(os.path.join(folder, file))
                    removed += 1
    return removed


def write_forecast(url: str, index: int, target: str, forecast: np.ndarray, model: ModelVersion) -> int:
    """Writes one init time's ``(t_out, y, x)``, its model version, then ``written``; returns bytes."""
    group = open_group(url, "r+", error=ForecastStoreError)
    data = np.asarray(forecast, dtype="float32")
    forecasts = array(group, target)
    if data.shape != forecasts.shape[1:]:
        raise ForecastStoreError(f"forecast of shape {data.shape} does not fit {url} ({forecasts.shape[1:]})")
    _set(forecasts, index, data)
    _set(array(group, MODEL_VERSION), index, np.asarray(model.version, dtype=STRING))
    _set(array(group, MODEL_SHA256), index, np.asarray(model.sha256, dtype=STRING))
    _set(array(group, WRITTEN), index, np.True_)
    return data.nbytes


def _set(target: zarr.Array, index: int, value: np.ndarray | np.bool_) -> None:
    try:
        target[index] = value
    except FileNotFoundError:  # a run starting meanwhile took our temporary for a stale one: write again
        target[index] = value


def open_forecasts(url: str, attempts: int = 3) -> xr.Dataset:
    """The store as an xarray Dataset (lazy); only ``written`` init times hold trusted values.

    A writer grows the init_time axis one array after another, so a reader can
    catch the arrays at different lengths: it reads again (``attempts`` times,
    half a second apart), then says so.
    """
    read_store_info(url)
    for attempt in range(attempts):
        try:
            ds = xr.open_zarr(zarr_store(url, read_only=True), consolidated=False, zarr_format=3)
            break
        except ValueError as error:
            if "conflicting sizes" not in str(error):
                raise
            if attempt == attempts - 1:
                raise ForecastStoreError(f"{url} is being extended by a writer (its arrays differ in length "
                                         f"along init_time: {error}); read it again in a moment") from error
            time.sleep(0.5)
    if VALID_TIME not in ds.coords:  # a store created before valid_time was stored
        ds = ds.assign_coords({VALID_TIME: ds["init_time"] + ds["lead_time"]})
    return ds
