"""windows.zarr: the schema, its writer and its reader, in one place.

The windows job creates the store at its final size from a
:class:`WindowsLayout` (:func:`create_windows_store`), its tasks fill whole
sample chunks (:func:`write_sample_chunk`) and the driver stores the train
normalisation last (:func:`write_normalization`). Training and verification
read it back through :class:`WindowsStore`. Both sides use the names defined
here, so a change to the layout is a change to this module (docs/schemas.md
describes it).

Layout: one group per split (:data:`SPLITS`), each with ``inputs``
``(sample, t_in, y, x, channel)``, ``targets`` ``(sample, t_out, y, x,
target_channel)``, and the sample index ``init_time``, ``y0``, ``x0``;
root attributes name the window spec, the archive, the time step, channels,
target, the plan's counts and the normalisation statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from nowcast.pipelines.stores.archive import ZSTD_LEVEL, ArchiveDescription, read_info
from nowcast.pipelines.stores.groups import (
    StoreError,
    array,
    building,
    chunk_keys,
    consolidate,
    exists,
    holds,
    not_a_store,
    open_group,
    subgroup,
)
from nowcast.pipelines.stores.timeaxis import TIME_UNITS, epoch_seconds

SPLITS = ("train", "val", "test")
INPUTS, TARGETS = "inputs", "targets"
INDEX = ("init_time", "y0", "x0")  # the sample index: when and where each sample was cut
INPUT_DIMS = ("sample", "t_in", "y", "x", "channel")
# targets get their own channel dimension: xarray needs one size per dimension name
TARGET_DIMS = ("sample", "t_out", "y", "x", "target_channel")
NORMALIZATION = "normalization"
STORED_CHUNKS = "nowcast_stored_chunks"  # per split: {array: the sample chunks the windows job stored}


class WindowsError(StoreError):
    """windows.zarr is missing, or lacks something its reader needs."""

    kind = "windows store"
    missing_fix = "run the windows job first (it creates windows.zarr)"


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """The samples of one split, in store order: init time and patch origin of each."""

    init_time: np.ndarray  # datetime64[s], the time of each sample's last input frame
    y0: np.ndarray
    x0: np.ndarray

    def __len__(self) -> int:
        return len(self.init_time)


@dataclasses.dataclass(frozen=True)
class WindowsLayout:
    """Everything :func:`create_windows_store` needs, decided before any frame is read.

    Attributes:
        t_in: input frames per sample.
        t_out: target frames per sample.
        patch_shape: ``(py, px)`` of a sample.
        channels: input variables, in channel order.
        target: the forecast variable.
        samples_per_chunk: samples per chunk along ``sample``.
        splits: the sample index of each split.
        attrs: further root attributes (window spec, archive, time step, counts).
    """

    t_in: int
    t_out: int
    patch_shape: tuple[int, int]
    channels: tuple[str, ...]
    target: str
    samples_per_chunk: int
    splits: Mapping[str, SplitIndex]
    attrs: Mapping[str, object]

    def num_chunks(self) -> int:
        """Sample chunks of every split: what the job writes (:func:`chunks_written` when done)."""
        return sum(-(-len(index) // self.samples_per_chunk) for index in self.splits.values())


def chunks_written(url: str) -> int:
    """Sample chunks the windows job has filled so far, over every split (a progress count).

    Counts the copy this process is building beside ``url`` while there is one
    (the job builds the store at a staging path, :func:`~.groups.created_whole`).
    """
    root = open_group(building(url) or url, error=WindowsError)
    return sum(array(subgroup(root, split), INPUTS).nchunks_initialized for split in SPLITS if split in root)


def check_replaceable(url: str, overwrite: bool = False) -> None:
    """Refuses windows at ``url`` over anything but a windows store, and over one without ``overwrite``.

    Raises:
        WindowsError: naming what is there and the fix.
    """
    if exists(url) and not overwrite:
        raise WindowsError(f"{url} already exists; pass overwrite=True (--overwrite) to replace it")
    if exists(url) and NORMALIZATION not in open_group(url, error=WindowsError).attrs:
        raise WindowsError(f"{url} is a zarr store but not a windows store; overwrite replaces only windows "
                           "stores: give the windows another path")
    problem = not_a_store(url)
    if problem:  # a file, a zarr v2 store, a folder of something else: never replaced
        raise WindowsError(problem)


def create_windows_store(url: str, layout: WindowsLayout, overwrite: bool = False) -> zarr.Group:
    """Creates windows.zarr with every array at its final size (the template).

    The sample index is written here; ``inputs`` and ``targets`` stay
    unwritten (NaN) until the tasks fill them. The windows job creates it at
    a staging path and moves it to its place once it is complete.

    Raises:
        WindowsError: if a store exists at ``url`` and ``overwrite`` is false (:func:`check_replaceable`).
    """
    check_replaceable(url, overwrite)
    root = open_group(url, "w", error=WindowsError)
    root.attrs.update({
        **layout.attrs,  # type: ignore[dict-item]
        "channels": list(layout.channels),
        "target": layout.target,
        NORMALIZATION: {},
        "sample_order": "init_time, then patch (y0, x0); chunks of samples_per_chunk consecutive samples",
    })
    py, px = layout.patch_shape
    per_chunk = layout.samples_per_chunk
    codec = [ZstdCodec(level=ZSTD_LEVEL, checksum=True)]  # a damaged chunk fails its read, never trains
    for split in SPLITS:
        index = layout.splits[split]
        n = len(index)
        group = root.create_group(split)
        group.attrs["count"] = n
        for name, steps, channels, dims in ((INPUTS, layout.t_in, len(layout.channels), INPUT_DIMS),
                                            (TARGETS, layout.t_out, 1, TARGET_DIMS)):
            group.create_array(name, shape=(n, steps, py, px, channels),
                               chunks=(per_chunk, steps, py, px, channels), dtype="float32",
                               fill_value=np.float32("nan"), compressors=codec, dimension_names=dims)
        init = group.create_array("init_time", shape=(n,), chunks=(max(n, 1),), dtype="int64",
                                  dimension_names=("sample",), fill_value=0)
        init.attrs.update({"units": TIME_UNITS, "calendar": "proleptic_gregorian",
                           "standard_name": "forecast_reference_time"})
        for name, values in (("y0", index.y0), ("x0", index.x0)):
            arr = group.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype="int32",
                                     dimension_names=("sample",), fill_value=0)
            arr.attrs["long_name"] = f"top-left {name[0]} pixel of the patch in the archive grid"
            if n:
                arr[:] = values
        if n:
            init[:] = epoch_seconds(index.init_time)
    consolidate(root)
    return root


def write_sample_chunk(root: zarr.Group, split: str, first: int, inputs: np.ndarray,
                       targets: np.ndarray) -> int:
    """Writes samples ``[first, first + len(inputs))`` of ``split`` (one whole chunk); returns bytes."""
    region = slice(first, first + len(inputs))
    group = subgroup(root, split)
    array(group, INPUTS)[region] = inputs
    array(group, TARGETS)[region] = targets
    return inputs.nbytes + targets.nbytes


def write_normalization(url: str, normalization: Mapping[str, object]) -> None:
    """Stores the train statistics per variable in the root ``normalization`` attribute (last)."""
    root = open_group(url, "r+", error=WindowsError)
    root.attrs[NORMALIZATION] = dict(normalization)  # type: ignore[arg-type]
    consolidate(root)


def _json_attr(value: object) -> object:
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


def record_stored_chunks(url: str) -> None:
    """Records per split which sample chunks the job stored. A chunk of patches outside radar coverage is
    never stored, so absence alone is no damage; with the record, `nowcast check` finds a chunk lost since
    (it read as NaN samples, and check had said none damaged)."""
    root = open_group(url, "r+", error=WindowsError)
    for split in SPLITS:
        subgroup(root, split).attrs[STORED_CHUNKS] = {
            name: sorted({key[0] for key in chunk_keys(url, f"{split}/{name}")})
            for name in (INPUTS, TARGETS)}
    consolidate(root)


class WindowsStore:
    """Read access to one split of windows.zarr, one sample chunk at a time."""

    def __init__(self, url: str, split: str = "train") -> None:
        if split not in SPLITS:
            raise WindowsError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = open_group(url, error=WindowsError)
        if not holds(self.root, split):
            raise WindowsError(f"{url!r} has no {split!r} group (has {sorted(self.root.group_keys())})")
        self.url, self.split = url, split
        self.group = subgroup(self.root, split)
        self.inputs, self.targets = array(self.group, INPUTS), array(self.group, TARGETS)
        self.attrs = {k: _json_attr(v) for k, v in self.root.attrs.items()}
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise WindowsError(f"{url}/{split}: {self.inputs.shape[0]} inputs but {self.targets.shape[0]} "
                               "targets; the windows job was interrupted, rerun it")
        if not self.attrs.get(NORMALIZATION):  # written last: without it samples may be missing
            raise WindowsError(f"{url} is incomplete: it has no normalisation statistics, which the windows "
                               "job writes after every sample, so it was interrupted and samples may be "
                               "missing; rerun `nowcast windows` to rewrite it")
        channels = self.attrs.get("channels")
        self.channels: tuple[str, ...] = (channels,) if isinstance(channels, str) else tuple(channels or ())  # type: ignore[arg-type]
        self.target = str(self.attrs.get("target", self.channels[0] if self.channels else ""))
        self.chunk = int(self.inputs.chunks[0])

    @property
    def num_samples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk)

    @property
    def sample_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(t_in, y, x, channel)`` and ``(t_out, y, x, channel)``."""
        return tuple(self.inputs.shape[1:]), tuple(self.targets.shape[1:])

    @property
    def normalization(self) -> dict[str, dict[str, float | int | None]]:
        """The train statistics per variable (never empty: checked on opening)."""
        return dict(self.attrs.get(NORMALIZATION) or {})  # type: ignore[call-overload]

    @property
    def time_step(self) -> str:
        return str(self.attrs.get("time_step"))

    def has_samples(self, split: str) -> bool:
        """Whether another split of the same store holds samples."""
        return holds(self.root, split) and array(subgroup(self.root, split), INPUTS).shape[0] > 0

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Physical inputs and targets of sample chunk ``index``."""
        sl = slice(index * self.chunk, min((index + 1) * self.chunk, self.num_samples))
        return np.asarray(self.inputs[sl], dtype="float32"), np.asarray(self.targets[sl], dtype="float32")

    def init_times(self) -> np.ndarray:
        """``init_time`` of every sample as datetime64[s]."""
        return np.asarray(array(self.group, "init_time")[:], dtype="int64").astype("datetime64[s]")

    def sample_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where every sample was cut: ``init_time`` (datetime64[s]), ``y0`` and ``x0`` (pixels)."""
        return (self.init_times(), np.asarray(array(self.group, "y0")[:], dtype="int64"),
                np.asarray(array(self.group, "x0")[:], dtype="int64"))

    def iter_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Physical ``(inputs, targets, init_time)`` chunk by chunk, in store order."""
        times = self.init_times()
        for i in range(self.num_chunks):
            inputs, targets = self.read_chunk(i)
            yield inputs, targets, times[i * self.chunk : i * self.chunk + len(inputs)]


def fingerprint(url: str, split: str = "train") -> str:
    """sha256 identifying a split's data without reading its pixels.

    Hashes the root attributes (window spec, archive URL, normalisation,
    counts), the arrays' shapes, chunks and codecs, and the sample index
    (``init_time``, ``y0``, ``x0``). Windows are a pure function of the
    archive and that index, so equal fingerprints mean equal data for an
    archive that is only appended to.
    """
    store = WindowsStore(url, split)
    digest = hashlib.sha256(json.dumps(store.attrs, sort_keys=True, default=str).encode())
    for name in (INPUTS, TARGETS, *INDEX):
        if name in store.group:
            arr = array(store.group, name)
            digest.update(f"{name}{arr.shape}{arr.chunks}{arr.dtype}".encode())
            digest.update(json.dumps(arr.attrs.asdict(), sort_keys=True, default=str).encode())
            digest.update(np.ascontiguousarray(arr[...]).tobytes() if arr.ndim == 1 else b"")
    return digest.hexdigest()


def describe_archive(url: str, variables: Sequence[str] | None = None) -> ArchiveDescription:
    """The archive behind windows.zarr (its ``archive`` attribute), as a model records it.

    Only ``variables`` (default: the channels and the target) are described,
    so a model does not come to require variables it never read.
    """
    store = WindowsStore(url, "train")
    archive_url = store.attrs.get("archive")
    if not archive_url:
        raise WindowsError(f"{url} does not name its archive (attrs['archive']); rerun the windows job")
    description = read_info(str(archive_url)).description()
    names = list(variables or dict.fromkeys((*store.channels, store.target)))
    return dataclasses.replace(description, variables={n: description.variables[n] for n in names})
