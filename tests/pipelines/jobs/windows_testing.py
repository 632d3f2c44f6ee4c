"""Tiny archives and a brute-force oracle for the windows tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from nowcast.pipelines.plans.window_spec import WindowSpec
from nowcast.pipelines.plans.windows import frame_splits
from nowcast.pipelines.stores.archive import PRECIP, ArchiveInfo, FieldSpec, create_archive, write_block
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.windows import SPLITS

TEMP = FieldSpec(name="temp", units="K", long_name="air temperature")


def make_archive(path: Path, frames: dict[str, np.ndarray], present: np.ndarray, time_chunk: int,
                 step: str = "PT1H", start: str = "2021-03-01T00:00") -> ArchiveInfo:
    """Writes ``frames`` (per field, (time, y, x)) into a new archive, chunk by chunk."""
    length, ny, nx = next(iter(frames.values())).shape
    grid = Grid.from_coords(np.arange(ny)[::-1] * 1000.0, np.arange(nx) * 1000.0,
                            "+proj=stere +lat_0=90 +lon_0=10 +lat_ts=60")
    fields = [PRECIP if name == "precip" else TEMP for name in frames]
    info = create_archive(str(path), grid, fields, start, step, length, time_chunk=time_chunk)
    for first in range(0, length, time_chunk):
        part = slice(first, first + time_chunk)
        write_block(info.url, first, {k: v[part] for k, v in frames.items()}, present[part])
    return info


def random_frames(rng: np.random.Generator, length: int, ny: int, nx: int) -> dict[str, np.ndarray]:
    """Rain (gamma, many zeros, some NaN pixels) and temperature frames."""
    rain = rng.gamma(0.6, 2.0, (length, ny, nx)).astype("float32")
    rain[rng.random(rain.shape) < 0.3] = 0.0
    rain[:, 0, 0] = np.nan  # a static unobserved pixel
    temp = (270 + 10 * rng.standard_normal((length, ny, nx))).astype("float32")
    return {"precip": rain, "temp": temp}


def read_split(url: str, split: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(url, mode="r")[split]
    return {name: np.asarray(group[name][:]) for name in ("inputs", "targets", "init_time", "y0", "x0")}


def oracle(frames: dict[str, np.ndarray], present: np.ndarray, info: ArchiveInfo,
           spec: WindowSpec) -> tuple[dict[str, list[tuple[int, int, int]]], dict[str, int]]:
    """Samples per split as (start, y0, x0), and skip counts, by brute force."""
    length, ny, nx = frames[spec.target].shape
    times = info.start + np.arange(length) * info.time_step
    split_of = frame_splits(times, spec.split)
    py, px = spec.patch_size or (ny, nx)
    sy, sx = spec.patch_stride or (ny, nx)
    patches = [(y, x) for y in range(0, ny - py + 1, sy) for x in range(0, nx - px + 1, sx)]
    samples: dict[str, list[tuple[int, int, int]]] = {s: [] for s in SPLITS}
    skipped = {"missing_frame": 0, "straddles_split": 0, "too_dry": 0}
    for start in range(0, length - spec.length + 1, spec.stride):
        frames_of = range(start, start + spec.length)
        if not all(present[f] for f in frames_of):
            skipped["missing_frame"] += 1
            continue
        if len({int(split_of[f]) for f in frames_of}) > 1:
            skipped["straddles_split"] += 1
            continue
        if spec.wet is not None:
            wet = []
            for f in range(start + spec.t_in, start + spec.length):
                frame = frames[spec.wet_variable][f]
                finite = np.isfinite(frame)
                wet.append(float(np.float32((frame[finite] >= spec.wet.threshold).sum() / finite.sum())))
            total = 0.0
            for value in wet:
                total += value
            if total / spec.t_out < spec.wet.min_fraction:
                skipped["too_dry"] += 1
                continue
        samples[SPLITS[split_of[start]]].extend((start, y, x) for y, x in patches)
    return samples, skipped
