"""Tiny windows.zarr and archive.zarr stores written to the schema in docs/schemas.md.

The windows job (pipelines/windows.py) is tested on its own; these fixtures
write the same layout directly with zarr/xarray so the model tests depend
only on the documented contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr


def write_archive(path: Path, length: int, shape: tuple[int, int], time_step: str = "PT5M",
                  units: str = "mm h-1") -> str:
    """An archive.zarr with one ``precip`` field (values unused by the model tests)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = root.create_array("precip", shape=(length, *shape), chunks=(4, *shape), dtype="float32",
                            fill_value=np.nan)
    arr.attrs.update({"units": units, "long_name": "precipitation rate", "valid_min": 0.0})
    root.attrs.update({"time_step": time_step, "Conventions": "CF-1.8"})
    return str(path)


def rain_like(rng: np.random.Generator, shape: tuple[int, ...], nan_border: int = 2) -> np.ndarray:
    """Skewed non-negative values with a NaN border (outside radar coverage)."""
    values = np.where(rng.random(shape) < 0.6, 0.0, rng.gamma(0.8, 2.0, shape)).astype("float32")
    if nan_border:
        values[..., :nan_border, :, :] = np.nan
    return values


def write_windows(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], chunk: int = 4,
                  time_step: str = "PT5M", archive: str = "archive.zarr", start: str = "2020-01-01") -> str:
    """windows.zarr with the given (inputs, targets) per split and train-split stats."""
    step = np.timedelta64(int(time_step[2:-1]), "m")
    offset = 0
    for split, (inputs, targets) in splits.items():
        n = inputs.shape[0]
        times = np.datetime64(start, "s") + (np.arange(n) + offset) * step
        offset += n + 100
        ds = xr.Dataset(
            {"inputs": (("sample", "t_in", "y", "x", "channel"), inputs),
             "targets": (("sample", "t_out", "y", "x", "target_channel"), targets),
             "init_time": (("sample",), times),
             "y0": (("sample",), np.zeros(n, "int32")), "x0": (("sample",), np.zeros(n, "int32"))})
        encoding = {"inputs": {"chunks": (chunk, *inputs.shape[1:])},
                    "targets": {"chunks": (chunk, *targets.shape[1:])}}
        ds.to_zarr(str(path), group=split, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    train = splits["train"][0][..., 0]
    finite = train[np.isfinite(train)].astype("float64")
    stats = {"count": int(finite.size), "mean": float(finite.mean()), "std": float(finite.std()),
             "min": float(finite.min()), "max": float(finite.max()),
             "log1p_mean": float(np.log1p(finite).mean()), "log1p_std": float(np.log1p(finite).std())}
    root = zarr.open_group(str(path), mode="a")
    root.attrs.update({"window_spec": json.dumps({"t_in": splits["train"][0].shape[1],
                                                  "t_out": splits["train"][1].shape[1]}),
                       "archive": archive, "time_step": time_step, "channels": ["precip"],
                       "target": "precip", "normalization": {"precip": stats},
                       "counts": {"planned": 0, "emitted": 0}})
    return str(path)


@pytest.fixture
def tiny_windows(tmp_path: Path) -> str:
    """train (10 samples), val (4) and test (3) windows of 4 -> 3 frames on 8x12, chunks of 4."""
    rng = np.random.default_rng(0)
    archive = write_archive(tmp_path / "archive.zarr", 64, (8, 12))
    splits = {name: (rain_like(rng, (n, 4, 8, 12, 1)), rain_like(rng, (n, 3, 8, 12, 1)))
              for name, n in (("train", 10), ("val", 4), ("test", 3))}
    return write_windows(tmp_path / "windows.zarr", splits, archive=archive)
