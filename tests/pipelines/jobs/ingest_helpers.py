"""Test helpers: a small in-memory source and store snapshots."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from nowcast.pipelines.sources.base import SourceError, SourceItem
from nowcast.pipelines.stores.archive import PRECIP, FieldSpec
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.groups import filesystem

STEREO = "+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +a=6378137 +b=6356752 +x_0=0 +y_0=0"


def make_grid(ny: int = 16, nx: int = 20, x0: float = 0.0, proj: str = STEREO) -> Grid:
    return Grid.from_coords(y=(np.arange(ny)[::-1] + 0.5) * 1000.0, x=x0 + (np.arange(nx) + 0.5) * 1000.0,
                            crs=proj)


def frame_for(time: np.datetime64, shape: tuple[int, int]) -> np.ndarray:
    """A deterministic, time-dependent non-negative frame."""
    seed = int((time - np.datetime64(0, "s")) / np.timedelta64(1, "s")) % 2**31
    return np.random.default_rng(seed).gamma(0.5, 2.0, size=shape).astype("float32")


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A real source over frames computed from their timestamps (picklable).

    ``overrides`` maps a timestamp string to a special frame kind: ``nan``
    (all-NaN), ``negative``, ``infinite``, ``huge`` (above rain's valid_max), ``corrupt`` (read raises
    SourceError) or ``grid``
    (the frame claims another grid).
    """

    times: tuple[str, ...]
    shape: tuple[int, int] = (16, 20)
    overrides: tuple[tuple[str, str], ...] = ()
    field: FieldSpec = PRECIP
    step: str = "PT5M"
    name: str = "array"

    def fields(self) -> tuple[FieldSpec, ...]:
        return (self.field,)

    def time_step(self) -> np.timedelta64:
        from nowcast.pipelines.stores.timeaxis import parse_time_step

        return parse_time_step(self.step)

    def items(self) -> list[SourceItem]:
        return [SourceItem(np.datetime64(t, "s"), f"array:{t}") for t in self.times]

    def _kind(self, item: SourceItem) -> str | None:
        return dict(self.overrides).get(str(item.time))

    def read_grid(self, item: SourceItem) -> Grid:
        if self._kind(item) == "grid":
            return make_grid(*self.shape, x0=5000.0)
        return make_grid(*self.shape)

    def read(self, item: SourceItem) -> dict[str, np.ndarray]:
        kind = self._kind(item)
        if kind == "corrupt":
            raise SourceError(f"{item.path}: cannot be decoded (corrupt file); replace it")
        frame = frame_for(item.time, self.shape)
        if kind == "nan":
            frame[:] = np.nan
        elif kind == "negative":
            frame[0, 0] = -1.0
        elif kind == "infinite":
            frame[1, :2] = np.inf
        elif kind == "huge":
            frame[2, :3] = 7864.08  # a KNMI pixel of raw 65534
        return {self.field.name: frame}


def times(start: str, count: int, step_minutes: int = 5, skip: tuple[int, ...] = ()) -> tuple[str, ...]:
    base = np.datetime64(start, "s")
    return tuple(str(base + np.timedelta64(i * step_minutes, "m")) for i in range(count) if i not in skip)


def snapshot(path: str) -> dict[str, str]:
    """Relative path -> sha256 of every file in a store (for byte-identity checks)."""
    digests = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                digests[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return digests



def store_digests(url: str) -> dict[str, str]:
    """Relative path -> sha256 of every object of a store, local or on S3."""
    fs, root = filesystem(url)
    return {path[len(root.rstrip("/")) + 1:]: hashlib.sha256(fs.cat_file(path)).hexdigest()
            for path in fs.find(root)}
