"""Scaling: a scheduled run's planning cost against the store's age, and the jobs on a warm Dask cluster.

(a) Planning a scheduled forecast against stores on an S3 object store (moto's
server, a real S3 HTTP API on 127.0.0.1, through s3fs): what the forecast flow
does before it scores anything (the archive's layout, then
``scoring.plan`` for the newest ``LOOKBACK`` init times: the model resolved
in the S3 registry, the forecast store checked and its flags read), against
an archive and forecast store holding a day (288) and a year (105,120) of
5-minute init times. The year's stores are metadata plus the last day's
chunks, as the issue allows: chunks of older init times are never read by
the planner, written or not. ``objects_read_*`` counts the S3 GET requests
of one plan (``head``/``list`` requests are reported beside it);
``objects_whole_flags_1_year`` is what the planner read before it read only
its own range: every chunk of the ``written`` flags (one per init time).
Each plan is timed ``REPEATS`` times, the best kept.

(b) bench.windows' job (the same synthetic archive: 4096 frames of 256 x 256,
windows of 12 + 6 frames every 6) on an already running cluster of 2
``dask worker`` processes (one thread each, started before the timing, as
in production where the cluster outlives a job), beside the one-process
limit (:func:`nowcast.pipelines.jobs.windows.run_in_process`) in the same
run. Stores on local disk, so both read and write the same way.

(c) bench.score's batch scoring (a fresh 64 px ``cnn_lstm``, 12 leads, on
a 128 x 128 synthetic archive; ``SCORE_FRAMES`` frames) on the same warm
cluster, beside ``model.predict`` alone on the same windows' tiles. Each
cluster job runs once to warm the workers (TensorFlow imported, the model
cached), then is timed.

``--quick`` (CI): a week instead of a year with three hours ingested, 384 frames of 64 x 64 for the
windows, 16 frames for scoring, one repetition.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import parser, write_results
from bench.score import PREDICT_BATCH, T_IN, make_archive, predict_only_seconds
from bench.score import save_model as save_score_model
from bench.windows import SPEC, archive_in_child, limit_run
from nowcast.flows import stack
from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.jobs.windows import WindowJob
from nowcast.pipelines.jobs.windows import run as run_windows

LOOKBACK = 12  # the forecast flow's default: the newest hour of init times
DAY, YEAR, WEEK = 288, 288 * 365, 288 * 7
REPEATS = 3
SCORE_FRAMES, SCORE_SIZE, SCORE_T_OUT, SCORE_PATCH = 400, 128, 12, 64
log = logging.getLogger("bench.scale")


@contextlib.contextmanager
def counted_requests() -> Iterator[Counter]:
    """Counts the S3 API calls s3fs makes in this process, by operation (``GetObject``, ...)."""
    import s3fs

    calls: Counter = Counter()
    original = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls[getattr(method, "__name__", str(method))] += 1
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        s3fs.S3FileSystem._call_s3 = original  # type: ignore[method-assign]


def aged_stores(root: str, frames: int, models: str, written: int = DAY) -> tuple[str, str]:
    """An archive of ``frames`` 5-minute steps on S3 whose last ``written`` steps (a day) are ingested, and
    its forecast store with those but the newest hour scored (what a scheduled run finds)."""
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.jobs.scoring import run
    from nowcast.pipelines.plans.scoring import ScoringSpec
    from nowcast.pipelines.sources import get_source

    archive, forecasts = f"{root}/archive.zarr", f"{root}/forecasts.zarr"
    last_day = min(frames, written)
    source = get_source("synthetic", shape=(32, 32), n_frames=frames, seed=0)
    items = source.items()
    # the axis reaches back `frames` steps; only the newest day has data
    ingest_items(IngestSpec(archive=archive, source=source, time_chunk=24, start=str(items[0].time)),
                 items[-last_day:], None)
    newest = items[-1].time
    first_scored = items[-last_day + T_IN].time
    run(ScoringSpec(archive=archive, forecasts=forecasts, models=models, model="bench_tiny",
                    start=str(first_scored), end=str(newest - np.timedelta64(LOOKBACK * 5, "m"))))
    return archive, forecasts


def tiny_model(models: str) -> None:
    """A small fully convolutional cnn_lstm for the 32 x 32 planning stores (its weights do not matter)."""
    import keras

    from nowcast.model.architectures import ArchitectureConfig, build_model
    from nowcast.model.registry import save_model

    keras.utils.set_random_seed(0)
    cfg = ArchitectureConfig(t_in=T_IN, t_out=6, height=32, width=32, filters=(4,), lstm_units=4,
                             decoder_filters=2)
    stats = {"count": 1, "mean": 0.5, "std": 1.0, "min": 0.0, "max": 10.0, "log1p_mean": 0.3,
             "log1p_std": 0.5}
    metadata = {"architecture": "cnn_lstm", "architecture_config": cfg.to_dict(), "fully_convolutional": True,
                "normalization": {"channels": ["precip"], "target": "precip", "stats": {"precip": stats}},
                "channels": ["precip"], "target": "precip", "t_in": T_IN, "t_out": 6, "input_shape": [32, 32],
                "time_step": "PT5M",
                "archive": {"time_step": "PT5M", "variables": {"precip": "mm h-1"}, "grid_shape": [32, 32]}}
    save_model(build_model("cnn_lstm", cfg), models, "bench_tiny", metadata, version="v1")


def plan_once(archive: str, forecasts: str, models: str) -> tuple[float, Counter, int]:
    """What the forecast flow does before scoring: seconds, S3 calls by operation, init times to score."""
    from nowcast.flows.forecast import newest_range
    from nowcast.pipelines.jobs.scoring import plan
    from nowcast.pipelines.plans.scoring import ScoringSpec

    with counted_requests() as calls:
        began = time.perf_counter()
        start, end = newest_range(archive, LOOKBACK)
        _model, tasks, _counts = plan(ScoringSpec(archive=archive, forecasts=forecasts, models=models,
                                                  model="bench_tiny", start=start, end=end))
        seconds = time.perf_counter() - began
    return seconds, calls, sum(len(t.indices) for t in tasks)


def planning(work: Path, quick: bool) -> dict[str, object]:
    """(a): the S3 server, the two aged pairs of stores, and their plans."""
    env = {**os.environ, **stack.DUMMY_CREDENTIALS}
    endpoint, server = stack.start_s3(work, env)
    try:
        with stack.s3_client({**stack.DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}):
            models = f"s3://{stack.BUCKET}/models"
            tiny_model(models)
            long = WEEK if quick else YEAR
            figures: dict[str, object] = {"long_store_init_times": long}
            for label, frames in (("1_day", DAY), ("1_year", long)):
                archive, forecasts = aged_stores(f"s3://{stack.BUCKET}/{label}", frames, models,
                                                 written=3 * LOOKBACK if quick else DAY)
                runs = [plan_once(archive, forecasts, models) for _ in range(1 if quick else REPEATS)]
                seconds, calls, todo = min(runs, key=lambda r: r[0])
                figures[f"plan_s_{label}"] = seconds
                figures[f"objects_read_{label}"] = calls.get("get_object", 0)
                figures[f"other_requests_{label}"] = {k: v for k, v in calls.items() if k != "get_object"}
                figures[f"init_times_planned_{label}"] = todo
                log.warning("plan %s: %.3f s, %s", label, seconds, dict(calls))
    finally:
        server.terminate()
        server.wait(10)
    figures["objects_whole_flags_1_year"] = YEAR  # one written-flag chunk per init time
    figures["plan_1_year_over_1_day"] = figures["plan_s_1_year"] / figures["plan_s_1_day"]  # type: ignore
    return figures


def cluster_jobs(work: Path, quick: bool) -> dict[str, object]:
    """(b) and (c) on one warm 2-worker cluster of separate processes."""
    from nowcast.pipelines.jobs.scoring import plan, run
    from nowcast.pipelines.plans.scoring import ScoringSpec
    from nowcast.pipelines.stores.archive import read_info

    address, processes = stack.start_dask(work, 2, dict(os.environ))
    try:
        stack.wait_for_workers(address, 2)
        cluster = RunnerOptions("dask", dask_address=address)
        frames, size = (384, 64) if quick else (4096, 256)
        archive = archive_in_child(work / "windows-archive.zarr", frames, size)
        figures: dict[str, object] = {"windows_frames": frames, "windows_grid": size}

        def windows_on_cluster(output: str) -> None:
            run_windows(WindowJob(archive, output, SPEC, overwrite=True), cluster)

        def windows_limit(output: str) -> None:
            nonlocal written  # the same windows either way; the DaskRunner reports no byte counters
            written = int(limit_run(archive, output)["bytes_written"])

        timings: dict[str, list[float]] = {"cluster": [], "limit": []}
        written = 0
        windows_on_cluster(str(work / "warm.zarr"))  # the workers import and connect once, as in service
        shutil.rmtree(work / "warm.zarr", ignore_errors=True)
        for repeat in range(1 if quick else 2):
            for label, fn in (("cluster", windows_on_cluster), ("limit", windows_limit)):
                output = work / f"windows-{label}-{repeat}.zarr"
                began = time.perf_counter()
                fn(str(output))
                timings[label].append(time.perf_counter() - began)
                shutil.rmtree(output, ignore_errors=True)
        figures["windows_dask_cluster_mb_s"] = written / 1e6 / min(timings["cluster"])
        figures["windows_limit_mb_s"] = written / 1e6 / min(timings["limit"])
        figures["windows_cluster_over_limit"] = (figures["windows_dask_cluster_mb_s"]  # type: ignore[operator]
                                                 / figures["windows_limit_mb_s"])
        log.warning("windows: %s", {k: v for k, v in figures.items() if k.startswith("windows")})

        n_frames, grid, t_out, patch = ((16, 64, 6, 32) if quick else
                                        (SCORE_FRAMES, SCORE_SIZE, SCORE_T_OUT, SCORE_PATCH))
        score_archive = str(work / "score-archive.zarr")
        values = make_archive(score_archive, n_frames, grid, 8 if quick else 24)
        models = work / "score-models"
        save_score_model(models, values, grid, patch, t_out, "v1")

        def spec(name: str) -> ScoringSpec:
            return ScoringSpec(archive=score_archive, forecasts=str(work / f"{name}.zarr"),
                               models=str(models), model="bench_cnn_lstm", threads_per_worker=1)

        run(spec("score-warm"), cluster)
        seconds = []
        for repeat in range(1 if quick else 2):
            began = time.perf_counter()
            result = run(spec(f"score-{repeat}"), cluster)
            seconds.append(time.perf_counter() - began)
        model_ref, tasks, _ = plan(spec("score-plan"))
        indices = [i for task in tasks for i in task.indices]
        predict = min(predict_in_child(str(models), model_ref.archive_description, model_ref.valid_range,
                                       score_archive, indices) for _ in range(1 if quick else 2))
        figures.update({
            "score_init_times": result.scored,
            "score_dask_cluster_per_s": result.scored / min(seconds),
            "predict_only_per_s": len(indices) / predict,
            "score_grid": grid, "score_patch": patch, "score_leads": t_out,
        })
        figures["score_cluster_over_predict_only"] = (figures["score_dask_cluster_per_s"]  # type: ignore
                                                      / figures["predict_only_per_s"])
        log.warning("score: %s", {k: v for k, v in figures.items() if k.startswith(("score", "predict"))})
        figures["score_grid_cells"] = int(np.prod(read_info(score_archive).grid.shape))
        return figures
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
        for process in processes:
            with contextlib.suppress(Exception):
                process.wait(20)


def _predict_only(models: str, description: dict, valid_range: tuple, archive: str,
                  indices: list[int]) -> float:
    from nowcast.model.forecaster import load_forecaster
    from nowcast.pipelines.stores.archive import open_archive

    forecaster = load_forecaster(models, "bench_cnn_lstm", "v1", description,
                                 predict_batch_size=PREDICT_BATCH, valid_range=valid_range)
    values = open_archive(archive)["precip"].values
    return predict_only_seconds(forecaster, values, indices, PREDICT_BATCH)


def predict_in_child(models: str, description: dict, valid_range: tuple, archive: str,
                     indices: list[int]) -> float:
    """``model.predict`` alone, timed in a fresh spawned process.

    In the launcher, after the cluster jobs, TensorFlow's predict stalled (0% CPU, twice); a fresh
    process also leaves out whatever the jobs' drivers left behind.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_predict_only, models, description, valid_range, archive, indices).result()


def main(argv: list[str] | None = None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> prints every thread's stack
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir="/tmp"))
    try:
        began = time.perf_counter()
        (work / "s3").mkdir()
        (work / "cluster").mkdir()
        figures = planning(work / "s3", args.quick)
        planned = time.perf_counter()
        figures.update(cluster_jobs(work / "cluster", args.quick))
        figures["planning_seconds"] = planned - began  # set-up included: phases of the run, for CI's budget
        figures["cluster_seconds"] = time.perf_counter() - planned
        figures["total_seconds"] = time.perf_counter() - began
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["checks"] = {
        "plan_1_year_at_most_1.2x_1_day": figures["plan_1_year_over_1_day"] <= 1.2,  # type: ignore[operator]
        "windows_cluster_at_least_1.5x_limit": figures["windows_cluster_over_limit"] >= 1.5,  # type: ignore
        "score_cluster_at_least_0.9x_predict_only":
            figures["score_cluster_over_predict_only"] >= 0.9,  # type: ignore[operator]
    }
    notes = ("(a) planning against S3 (moto) stores of a day and a year of 5-minute init times; "
             "objects_read counts S3 GETs of one plan. (b) bench.windows' job on a warm cluster of 2 dask "
             "worker processes against the one-process limit, same run. (c) bench.score's batch job on the "
             "same cluster against model.predict on the same windows. The machine's cores are shared by the "
             "workers and this process; see docs/scaling.md.")
    path = write_results("scale", figures, args.out, args.quick, notes)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
