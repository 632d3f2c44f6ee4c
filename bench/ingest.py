"""Ingest throughput: the Beam ingest job against a plain xarray ``to_zarr``.

Ingests N synthetic frames (generated inside the job, as users without data
run it) with 1 and 2 local workers, then writes the same frames, held in
memory, with ``xarray.Dataset.to_zarr`` using the same chunks and codec: the
reference. The reference excludes generation, so the rate of the generator
alone is reported too.

    python -m bench.ingest            # 2000 frames of 512 x 512
    python -m bench.ingest --quick    # 96 frames of 128 x 128
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import ZstdCodec

from bench.common import parser, peak_rss, show, write_results
from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import ZSTD_LEVEL

TIME_CHUNK = 24


def ingest_rate(source, root: Path, runner: RunnerOptions) -> tuple[float, int]:
    url = str(root / f"archive-{runner.kind}-{runner.workers}.zarr")
    with peak_rss() as memory:
        start = time.perf_counter()
        run(IngestSpec(archive=url, source=source, time_chunk=TIME_CHUNK), runner)
        seconds = time.perf_counter() - start
    shutil.rmtree(url)
    return seconds, memory["peak"]


def reference_rate(frames: np.ndarray, root: Path) -> float:
    ds = xr.Dataset({"precip": (("time", "y", "x"), frames)},
                    coords={"time": (np.arange(len(frames)) * 5).astype("datetime64[m]")})
    encoding = {"precip": {"chunks": (TIME_CHUNK, *frames.shape[1:]),
                           "compressors": [ZstdCodec(level=ZSTD_LEVEL)]}}
    url = str(root / "reference.zarr")
    start = time.perf_counter()
    ds.to_zarr(url, mode="w", encoding=encoding, consolidated=False, zarr_format=3)
    seconds = time.perf_counter() - start
    shutil.rmtree(url)
    return seconds


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    n_frames, size = (96, 128) if args.quick else (2000, 512)
    source = get_source("synthetic", shape=(size, size), n_frames=n_frames, seed=0)
    frame_mb = size * size * 4 / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        one_s, one_rss = ingest_rate(source, root, RunnerOptions(kind="inmemory"))
        two_s, two_rss = ingest_rate(source, root, RunnerOptions(kind="multiprocess", workers=2))
        start = time.perf_counter()
        frames = np.stack([source.read(item)["precip"] for item in source.items()])
        generate_s = time.perf_counter() - start
        reference_s = reference_rate(frames, root)
    figures = {
        "frames": n_frames, "grid": [size, size], "time_chunk": TIME_CHUNK,
        "frames_per_s_1_worker": n_frames / one_s,
        "frames_per_s_2_workers": n_frames / two_s,
        "reference_to_zarr_frames_per_s": n_frames / reference_s,
        "mb_per_s_1_worker": n_frames * frame_mb / one_s,
        "mb_per_s_2_workers": n_frames * frame_mb / two_s,
        "reference_to_zarr_mb_per_s": n_frames * frame_mb / reference_s,
        "generator_only_frames_per_s_1_core": n_frames / generate_s,
        "peak_rss_mb_1_worker": one_rss / 2**20,
        "peak_rss_mb_2_workers": two_rss / 2**20,
    }
    notes = ("Ingest rates include generating the synthetic frames inside the job; the to_zarr "
             "reference writes frames already in memory (same chunks, zstd level 3). MB are "
             "uncompressed float32 frame bytes.")
    path = write_results("ingest", figures, args.out, args.quick, notes)
    show(figures, path)


if __name__ == "__main__":
    main()
