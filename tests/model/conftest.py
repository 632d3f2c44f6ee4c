"""Tiny windows.zarr and archive.zarr stores written through their schema modules.

The windows job is tested on its own; these fixtures write arbitrary samples
with the same schema writer (nowcast.pipelines.stores.windows) the job uses,
so the model tests depend only on that contract, not on the job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nowcast.pipelines.stores.archive import PRECIP, create_archive
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.timeaxis import parse_time_step
from nowcast.pipelines.stores.windows import (
    SPLITS,
    SplitIndex,
    WindowsLayout,
    create_windows_store,
    write_normalization,
    write_sample_chunk,
)


def write_archive(path: Path, length: int, shape: tuple[int, int], time_step: str = "PT5M") -> str:
    """An empty archive.zarr with one ``precip`` field (values unused by the model tests)."""
    grid = Grid.from_coords(np.arange(shape[0])[::-1] * 1000.0, np.arange(shape[1]) * 1000.0,
                            "+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +ellps=WGS84")
    create_archive(str(path), grid, [PRECIP], "2020-01-01", time_step, length, time_chunk=4)
    return str(path)


def rain_like(rng: np.random.Generator, shape: tuple[int, ...], nan_border: int = 2) -> np.ndarray:
    """Skewed non-negative values with a NaN border (outside radar coverage)."""
    values = np.where(rng.random(shape) < 0.6, 0.0, rng.gamma(0.8, 2.0, shape)).astype("float32")
    if nan_border:
        values[..., :nan_border, :, :] = np.nan
    return values


def write_windows(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], chunk: int = 4,
                  time_step: str = "PT5M", archive: str = "archive.zarr", start: str = "2020-01-01") -> str:
    """windows.zarr with the given (inputs, targets) per split and train-split stats, through the schema."""
    step = parse_time_step(time_step)
    offset, index = 0, {}
    for split in SPLITS:
        n = len(splits[split][0]) if split in splits else 0
        index[split] = SplitIndex(init_time=np.datetime64(start, "s") + (np.arange(n) + offset) * step,
                                  y0=np.zeros(n, "int32"), x0=np.zeros(n, "int32"))
        offset += n + 100
    inputs, targets = splits["train"]
    layout = WindowsLayout(t_in=inputs.shape[1], t_out=targets.shape[1], patch_shape=inputs.shape[2:4],
                           channels=("precip",), target="precip", samples_per_chunk=chunk, splits=index,
                           attrs={"window_spec": {"t_in": inputs.shape[1], "t_out": targets.shape[1]},
                                  "archive": archive, "time_step": time_step,
                                  "counts": {"planned": 0, "emitted": 0}})
    root = create_windows_store(str(path), layout)
    for split, (split_inputs, split_targets) in splits.items():
        for first in range(0, len(split_inputs), chunk):
            write_sample_chunk(root, split, first, split_inputs[first:first + chunk],
                               split_targets[first:first + chunk])
    finite = inputs[..., 0][np.isfinite(inputs[..., 0])].astype("float64")
    stats = {"count": int(finite.size), "mean": float(finite.mean()), "std": float(finite.std()),
             "min": float(finite.min()), "max": float(finite.max()),
             "log1p_mean": float(np.log1p(finite).mean()), "log1p_std": float(np.log1p(finite).std())}
    write_normalization(str(path), {"precip": stats})
    return str(path)


def make_tiny_windows(folder: Path) -> str:
    """train (10 samples), val (4) and test (3) windows of 4 -> 3 frames on 8x12, chunks of 4."""
    rng = np.random.default_rng(0)
    archive = write_archive(folder / "archive.zarr", 64, (8, 12))
    splits = {name: (rain_like(rng, (n, 4, 8, 12, 1)), rain_like(rng, (n, 3, 8, 12, 1)))
              for name, n in (("train", 10), ("val", 4), ("test", 3))}
    return write_windows(folder / "windows.zarr", splits, archive=archive)


@pytest.fixture
def tiny_windows(tmp_path: Path) -> str:
    return make_tiny_windows(tmp_path)
