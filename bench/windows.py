"""Windows job against the one-process limit and xbatcher, on one synthetic archive.

Issue 3's definition: an archive of 4096 frames of 256x256 float32 (1 GiB),
windows of t_in 12 + t_out 6 frames every 6 frames (680 windows, 3.2 GB).
(a) the Beam job with 2 local workers (FnApiRunner multi_processing);
(b) the limit: one process, zarr reads and numpy cuts, the same plan, codec
and writer, no Beam (:func:`nowcast.pipelines.jobs.windows.run_in_process`);
(c) xbatcher 0.4's BatchGenerator cutting the same windows from the archive
opened with xarray, written with the same writer.
Reported: windows/s, MB/s of window data (uncompressed) written, source bytes
read / archive bytes, peak RSS of the process tree, and (a)'s peak RSS on an
archive of twice the length. Stores live in a temporary folder under /tmp and
are deleted afterwards. Both archives are generated in a child process, so
the peak RSS figures hold the job's memory and not the generator's leftovers.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import parser, peak_rss, write_results
from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.jobs.window_tasks import SourceFrames, cut_samples
from nowcast.pipelines.jobs.windows import WindowJob, run, run_in_process
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
from nowcast.pipelines.plans.windows import plan_from_archive
from nowcast.pipelines.stores.archive import PRECIP, create_archive, open_archive, write_block
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.windows import create_windows_store, write_sample_chunk

TIME_CHUNK = 24
SPEC = WindowSpec(channels=("precip",), target="precip", t_in=12, t_out=6, stride=6,
                  split=SplitSpec(fractions=(1.0, 0.0, 0.0)))


def synthetic_archive(path: Path, frames: int, size: int, seed: int = 0) -> str:
    """Rain-like smooth random fields (about a third of pixels wet), written chunk by chunk."""
    from scipy.ndimage import zoom

    grid = Grid.from_coords(np.arange(size)[::-1] * 1000.0, np.arange(size) * 1000.0,
                            "+proj=stere +lat_0=90 +lon_0=10 +lat_ts=60")
    info = create_archive(str(path), grid, [PRECIP], "2024-01-01T00:00", "PT5M", frames,
                          time_chunk=TIME_CHUNK)
    rng = np.random.default_rng(seed)
    coarse = max(size // 16, 2)
    for first in range(0, frames, TIME_CHUNK):
        count = min(TIME_CHUNK, frames - first)
        noise = rng.standard_normal((count, coarse, coarse)).astype("float32")
        smooth = zoom(noise, (1, size / coarse, size / coarse), order=1)[:, :size, :size]
        rain = np.maximum(smooth - 0.4, 0.0) * 8.0
        write_block(info.url, first, {"precip": rain}, np.ones(count, bool))
    return info.url


def archive_in_child(path: Path, frames: int, size: int, seed: int = 0) -> str:
    """:func:`synthetic_archive` in a spawned child process.

    Generating the archive leaves a few tens of MB of freed heap in the
    process that did it; made here, that memory would count in every peak RSS
    measured afterwards (it made the job look 50 MB heavier at double length).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(synthetic_archive, path, frames, size, seed).result()


def measure(label: str, fn) -> dict[str, float]:
    with peak_rss() as rss:
        began = time.perf_counter()
        tallies = fn()
        seconds = time.perf_counter() - began
    figures = {"seconds": seconds, "windows_s": tallies["windows"] / seconds,
               "mb_s": tallies["bytes_written"] / 1e6 / seconds, "peak_rss_mb": rss["peak"] / 2**20,
               **{k: v for k, v in tallies.items() if k in ("windows", "bytes_read", "bytes_written")}}
    logging.getLogger("bench.windows").warning("%s: %s", label, {k: round(v, 2) for k, v in figures.items()})
    return figures


def job_run(archive: str, output: str, workers: int, threads: bool = False) -> dict[str, int]:
    """The Beam job on the FnApiRunner: ``workers`` processes, or threads of one process."""
    options = RunnerOptions(kind="multiprocess", workers=workers)
    if threads:
        options = RunnerOptions(kind="inmemory", extra_args=(
            "--direct_running_mode=multi_threading", f"--direct_num_workers={workers}"))
    result = run(WindowJob(archive, output, SPEC, overwrite=True), options)
    return {"windows": result.metrics["windows_emitted"], "bytes_read": result.metrics["bytes_read"],
            "bytes_written": result.metrics["bytes_written"]}


def limit_run(archive: str, output: str) -> dict[str, int]:
    return run_in_process(WindowJob(archive, output, SPEC, overwrite=True)).metrics


def limit_without_stats_run(archive: str, output: str) -> dict[str, int]:
    """(b) without the normalisation statistics: only read, cut and write (what xbatcher does)."""
    plan = plan_from_archive(archive, SPEC)
    root = create_windows_store(output, plan.layout(), overwrite=True)
    info, read, written, windows = plan.info, 0, 0, 0
    for task in plan.tasks:
        source = SourceFrames(archive, task, SPEC.variables, info.time_chunk, info.length)
        read += source.bytes_read
        for chunk in task.outputs:
            written += write_sample_chunk(root, chunk.split, chunk.first, *cut_samples(source, chunk, plan))
            windows += len(chunk.starts)
    return {"windows": windows, "bytes_read": read, "bytes_written": written}


def xbatcher_run(archive: str, output: str) -> dict[str, int]:
    """xbatcher's BatchGenerator over the lazily opened archive, the job's writer for the output."""
    import xbatcher

    plan = plan_from_archive(archive, SPEC)
    root = create_windows_store(output, plan.layout(), overwrite=True)
    ds = open_archive(archive)[["precip"]]
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    batches = xbatcher.BatchGenerator(ds, input_dims={"time": SPEC.length, "y": ny, "x": nx},
                                      input_overlap={"time": SPEC.length - SPEC.stride})
    chunks = [c for task in plan.tasks for c in task.outputs]
    written = windows = 0
    batch_iter = iter(batches)
    for chunk in chunks:
        batch = [next(batch_iter) for _ in chunk.starts]
        first_times = np.array([b["time"].values[0] for b in batch]).astype("datetime64[s]")
        if not np.array_equal(first_times, plan.info.start + chunk.starts * plan.info.time_step):
            raise RuntimeError("xbatcher's windows do not match the plan's; the comparison would be void")
        block = np.stack([b["precip"].values for b in batch])
        inputs, targets = block[:, :SPEC.t_in, ..., None], block[:, SPEC.t_in:, ..., None]
        written += write_sample_chunk(root, chunk.split, chunk.first, inputs, targets)
        windows += len(chunk.starts)
    # xarray's lazy indexing decompresses every archive chunk a window touches, once per window
    touched = [c for chunk in chunks for s in chunk.starts
               for c in range(int(s) // TIME_CHUNK, (int(s) + SPEC.length - 1) // TIME_CHUNK + 1)]
    return {"windows": windows, "bytes_read": plan.source_bytes(tuple(touched)), "bytes_written": written}


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    frames, size = (384, 64) if args.quick else (4096, 256)
    workdir = Path(tempfile.mkdtemp(prefix="bench-windows-", dir="/tmp"))
    try:
        archive = archive_in_child(workdir / "archive.zarr", frames, size)
        double = archive_in_child(workdir / "double.zarr", 2 * frames, size, seed=1)
        archive_bytes = plan_from_archive(archive, SPEC).source_bytes()
        # each length pair back to back, before the in-process runs grow this process's heap
        runs = {
            "job": lambda out: job_run(archive, out, 2),
            "job_double": lambda out: job_run(double, out, 2),
            "job_threads": lambda out: job_run(archive, out, 2, threads=True),
            "job_threads_double": lambda out: job_run(double, out, 2, threads=True),
            "job_1_worker": lambda out: job_run(archive, out, 1),
            "limit": lambda out: limit_run(archive, out),
            "limit_without_stats": lambda out: limit_without_stats_run(archive, out),
            "xbatcher": lambda out: xbatcher_run(archive, out),
        }
        results = {}
        for label, fn in runs.items():
            output = workdir / f"{label}.zarr"
            results[label] = measure(label, lambda fn=fn, output=output: fn(str(output)))
            shutil.rmtree(output, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    job, limit, xb = results["job"], results["limit"], results["xbatcher"]
    figures = {
        "frames": frames, "grid": [size, size], "windows": job["windows"],
        "archive_mb": archive_bytes / 1e6, "window_data_mb": job["bytes_written"] / 1e6,
        "windows_job_mb_s": job["mb_s"], "windows_job_windows_s": job["windows_s"],
        "limit_mb_s": limit["mb_s"], "limit_windows_s": limit["windows_s"],
        "limit_without_stats_mb_s": results["limit_without_stats"]["mb_s"],
        "job_over_limit_without_stats": job["mb_s"] / results["limit_without_stats"]["mb_s"],
        "xbatcher_mb_s": xb["mb_s"], "xbatcher_windows_s": xb["windows_s"],
        "windows_job_threads_mb_s": results["job_threads"]["mb_s"],
        "windows_job_threads_windows_s": results["job_threads"]["windows_s"],
        "job_threads_over_limit": results["job_threads"]["mb_s"] / limit["mb_s"],
        "job_threads_over_xbatcher": results["job_threads"]["mb_s"] / xb["mb_s"],
        "peak_rss_mb_threads": results["job_threads"]["peak_rss_mb"],
        "peak_rss_mb_threads_double_length": results["job_threads_double"]["peak_rss_mb"],
        "windows_job_1_worker_mb_s": results["job_1_worker"]["mb_s"],
        "job_2_over_1_worker": job["mb_s"] / results["job_1_worker"]["mb_s"],
        "job_over_limit": job["mb_s"] / limit["mb_s"], "job_over_xbatcher": job["mb_s"] / xb["mb_s"],
        "job_seconds": job["seconds"], "job_double_length_seconds": results["job_double"]["seconds"],
        "limit_seconds": limit["seconds"], "xbatcher_seconds": xb["seconds"],
        "read_amplification": job["bytes_read"] / archive_bytes,
        "xbatcher_read_amplification": xb["bytes_read"] / archive_bytes,
        "peak_rss_mb": job["peak_rss_mb"], "peak_rss_mb_double_length": results["job_double"]["peak_rss_mb"],
        "peak_rss_growth_at_double_length": results["job_double"]["peak_rss_mb"] / job["peak_rss_mb"],
        "windows_job_windows_s_double_length": results["job_double"]["windows_s"],
        # the second length's extra windows over its extra seconds: throughput without fixed start-up
        "windows_job_marginal_mb_s": (results["job_double"]["bytes_written"] - job["bytes_written"]) / 1e6
        / max(results["job_double"]["seconds"] - job["seconds"], 1e-9),
        "limit_peak_rss_mb": limit["peak_rss_mb"], "xbatcher_peak_rss_mb": xb["peak_rss_mb"],
    }
    figures["goals_met"] = {
        "job_at_least_1.5x_limit": figures["job_over_limit"] >= 1.5,
        "job_at_least_2.5x_xbatcher": figures["job_over_xbatcher"] >= 2.5,
        "read_amplification_at_most_1.1": figures["read_amplification"] <= 1.1,
        "peak_rss_under_2gb": max(figures["peak_rss_mb"], figures["peak_rss_mb_double_length"]) < 2048,
        # "flat" read as: at most 10% more at twice the archive length
        "peak_rss_flat_within_10pct": figures["peak_rss_growth_at_double_length"] <= 1.1,
    }
    notes = ("(a) FnApiRunner multi_processing, 2 worker processes (job_threads: FnApiRunner "
             "multi_threading, 2 worker threads in one process; 1 worker: one worker process, "
             "FnApiRunner multi_processing); "
             "(b) run_in_process: one process, same plan and work (incl. train statistics), "
             "zarr zstd-3 writer; limit_without_stats: (b) minus the statistics; "
             "(c) xbatcher 0.4 BatchGenerator over xarray.open_zarr, same writer, no statistics. "
             "MB/s counts uncompressed window data written. Synthetic rain-like smooth fields.")
    path = write_results("windows", figures, args.out, args.quick, notes=notes)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
