"""Tiny synthetic archives and freshly initialised models saved through the registry, for scoring tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.timeaxis import format_time_step

MODEL = "tiny"


def make_archive(url: str, frames: int = 40, size: tuple[int, int] = (32, 32), time_chunk: int = 8,
                 seed: int = 0, missing: tuple[int, ...] = (), first: int = 0,
                 start: str = "2024-01-01T00:00") -> str:
    """A synthetic archive (ingested in this process); ``first`` ingests only frames ``first..``."""
    source = get_source("synthetic", shape=size, n_frames=frames, seed=seed, missing=missing, start=start)
    items = source.items()[first:]
    ingest_items(IngestSpec(archive=url, source=source, time_chunk=time_chunk), items, runner=None)
    return url


def append_frames(url: str, upto: int, frames: int = 40, size: tuple[int, int] = (32, 32),
                  time_chunk: int = 8, seed: int = 0) -> None:
    """Ingests frames ``[0, upto)`` of the same synthetic sequence (already valid ones are skipped)."""
    source = get_source("synthetic", shape=size, n_frames=frames, seed=seed)
    ingest_items(IngestSpec(archive=url, source=source, time_chunk=time_chunk), source.items()[:upto],
                 runner=None)


def synthetic_stats(frames: int = 40, size: tuple[int, int] = (32, 32), seed: int = 0) -> dict[str, float]:
    """Normalisation statistics (as windows.zarr stores them) of a whole synthetic sequence."""
    source = get_source("synthetic", shape=size, n_frames=frames, seed=seed)
    values = np.stack([source.read(item)["precip"] for item in source.items()])
    finite = values[np.isfinite(values)].astype("float64")
    return {"count": int(finite.size), "mean": float(finite.mean()), "std": float(finite.std()),
            "min": float(finite.min()), "max": float(finite.max()),
            "log1p_mean": float(np.log1p(finite).mean()), "log1p_std": float(np.log1p(finite).std())}


def save_tiny_model(models: Path, archive: str, stats: dict[str, float], patch: tuple[int, int] = (16, 16),
                    t_in: int = 3, t_out: int = 2, architecture: str = "cnn_lstm", seed: int = 1,
                    version: str = "v1", name: str = MODEL, recorded: dict | None = None) -> Path:
    """A freshly initialised model (untrained, residual: persistence plus noise) saved via the registry;
    ``recorded``: more metadata (what training records, as its windows)."""
    import keras

    from nowcast.model.architectures import ArchitectureConfig, build_model
    from nowcast.model.registry import save_model
    from nowcast.pipelines.stores.archive import read_info

    info = read_info(archive)
    keras.utils.set_random_seed(seed)
    cfg = ArchitectureConfig(t_in=t_in, t_out=t_out, height=patch[0], width=patch[1], filters=(4,),
                             lstm_units=8, decoder_filters=2)
    net = build_model(architecture, cfg)
    step = format_time_step(info.time_step)
    metadata = {
        "architecture": architecture, "architecture_config": cfg.to_dict(),
        "normalization": {"channels": ["precip"], "target": "precip", "stats": {"precip": stats}},
        "channels": ["precip"], "target": "precip", "t_in": t_in, "t_out": t_out,
        "input_shape": list(patch), "time_step": step,
        "archive": {"time_step": step, "variables": {"precip": "mm h-1"},
                    "grid_shape": list(info.grid.shape)},
        **(recorded or {}),
    }
    return save_model(net, models, name, metadata, version=version)
