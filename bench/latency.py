"""Latency: a new frame landing in the archive -> its forecast in forecasts.zarr, via the forecast deployment.

Setup: a synthetic 256 x 256 archive (``--quick``: 64 x 64), a small
CNN-LSTM (64 x 64 patches, tiled over the grid by the scoring job; untrained
weights: latency does not depend on them) saved through the registry, every
existing init time already forecast, a real ``prefect server start`` (SQLite)
and the deployments served by ``nowcast serve`` in another process, as
``make server`` runs them.

Each repeat: ingest one new frame (``nowcast.pipelines.jobs.ingest``, in this process);
the clock starts when its ``valid`` flag is set. Then the ``forecast/local``
deployment gets a flow run, as its schedule would create one; the served
runner (polling every second) picks it up and runs the forecast flow in a
fresh process (Prefect's runner always starts one per run), which plans the
newest init times and scores the new one. The clock stops when that init
time's ``written`` flag is set in forecasts.zarr. ``median_s`` is the median
over the repeats (5; ``--quick``: 1).

Not included: the wait for the next cron tick (up to the schedule's period,
5 minutes by default; an event trigger on ingest would remove it). Reported
beside it, in the same run: ``warm_flow_median_s``, the forecast flow called
in an already warm process (no process start, no polling), and
``scoring_only_median_s``, ``nowcast.pipelines.jobs.scoring.run`` alone.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import parser, peak_rss, rain_stats, write_results
from nowcast.flows.serve import stop_process
from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import read_info
from nowcast.pipelines.stores.forecasts import written_flags
from nowcast.pipelines.stores.timeaxis import format_time_step
from nowcast.processes import free_port

T_IN, T_OUT, PATCH, INITIAL = 4, 6, 64, 12
REPO = Path(__file__).resolve().parents[1]


def save_model(models: Path, archive: str, frames: np.ndarray) -> None:
    """A small untrained cnn_lstm with normalisation from the archive's frames, promoted to latest."""
    import keras

    from nowcast.model.architectures import ArchitectureConfig, build_model
    from nowcast.model.registry import save_model as registry_save

    info = read_info(archive)
    stats = rain_stats(frames)
    keras.utils.set_random_seed(0)
    cfg = ArchitectureConfig(t_in=T_IN, t_out=T_OUT, height=PATCH, width=PATCH, filters=(8, 16),
                             lstm_units=32)
    step = format_time_step(info.time_step)
    metadata = {"architecture": "cnn_lstm", "architecture_config": cfg.to_dict(),
                "normalization": {"channels": ["precip"], "target": "precip", "stats": {"precip": stats}},
                "channels": ["precip"], "target": "precip", "t_in": T_IN, "t_out": T_OUT,
                "input_shape": [PATCH, PATCH], "time_step": step,
                "archive": {"time_step": step, "variables": {"precip": "mm h-1"},
                            "grid_shape": list(info.grid.shape)}}
    registry_save(build_model("cnn_lstm", cfg), models, "cnn_lstm", metadata, version="bench")


def land(archive: str, source, index: int) -> float:
    """Ingests frame ``index``; returns the time its ``valid`` flag was set."""
    ingest_items(IngestSpec(archive=archive, source=source, time_chunk=24), [source.items()[index]], None)
    return time.perf_counter()


def wait_written(forecasts: str, index: int, timeout_s: float = 300.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        flags = written_flags(forecasts)
        if index < len(flags) and flags[index]:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"init time {index} was not forecast within {timeout_s:.0f} s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    size, repeats = (64, 1) if args.quick else (256, 5)
    work = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    os.environ["NOWCAST_STORAGE_ROOTS"] = str(work)
    total = INITIAL + 3 * repeats
    source = get_source("synthetic", shape=(size, size), n_frames=total, seed=0, density=6.0)
    archive, forecasts = str(work / "archive.zarr"), str(work / "forecasts.zarr")
    ingest_items(IngestSpec(archive=archive, source=source, time_chunk=24), source.items()[:INITIAL], None)
    frames = np.stack([source.read(item)["precip"] for item in source.items()[:INITIAL]])
    save_model(work / "models", archive, frames)

    from nowcast.pipelines.jobs import scoring

    spec = scoring.ScoringSpec(archive=archive, forecasts=forecasts, models=str(work / "models"),
                               model="cnn_lstm")
    scoring.run(spec)  # every existing init time forecast; the store exists
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, cwd=work, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    worker = None
    try:
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from nowcast.flows.forecast import forecast_flow
        from nowcast.flows.params import ForecastParams
        from nowcast.flows.serve import wait_for_api

        wait_for_api(api_url, timeout_s=180)
        worker = subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", "serve", "--workdir", str(work),
                                   "--cron", "0 0 1 1 *", "--model", "cnn_lstm"],
                                  env={**env, "PREFECT_API_URL": api_url,
                                       "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        scheduled, warm, scoring_only = [], [], []
        next_frame = INITIAL
        load_at_start = [round(v, 2) for v in os.getloadavg()]  # other work on the machine skews timings
        with temporary_settings({PREFECT_API_URL: api_url}), peak_rss() as rss:
            deadline = time.monotonic() + 180
            while True:  # the served runner has registered the deployments
                try:
                    from prefect.client.orchestration import get_client

                    with get_client(sync_client=True) as client:
                        client.read_deployment_by_name("forecast/local")
                    break
                except Exception:  # not there yet
                    if time.monotonic() > deadline or worker.poll() is not None:
                        raise RuntimeError("nowcast serve did not register the deployments") from None
                    time.sleep(1)
            for _ in range(repeats):
                landed = land(archive, source, next_frame)
                run_deployment("forecast/local", timeout=0)
                scheduled.append(wait_written(forecasts, next_frame) - landed)
                next_frame += 1

                landed = land(archive, source, next_frame)
                forecast_flow(ForecastParams(archive=archive, forecasts=forecasts,
                                             models=str(work / "models"), model_name="cnn_lstm"))
                warm.append(wait_written(forecasts, next_frame) - landed)
                next_frame += 1

                landed = land(archive, source, next_frame)
                newest = str(np.datetime64(read_info(archive).end, "s"))
                scoring.run(dataclasses.replace(spec, init_times=(newest,)))
                scoring_only.append(wait_written(forecasts, next_frame) - landed)
                next_frame += 1
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "median_s": statistics.median(scheduled),
        "scheduled_s": scheduled,
        "warm_flow_median_s": statistics.median(warm),
        "scoring_only_median_s": statistics.median(scoring_only),
        "grid": [size, size], "repeats": repeats, "t_in": T_IN, "t_out": T_OUT, "patch": PATCH,
        "goal_s": 10.0, "peak_rss_mb": rss["peak"] / 1e6, "load_average_at_start": load_at_start,
    }
    path = write_results("latency", figures, args.out, args.quick,
                         notes="frame landed -> forecast written via the served forecast deployment "
                               "(runner polls every 1 s, one process per flow run); excludes the wait for "
                               "the next cron tick")
    print(f"median {figures['median_s']:.2f} s (warm flow {figures['warm_flow_median_s']:.2f} s, scoring "
          f"alone {figures['scoring_only_median_s']:.2f} s) on a {size}x{size} grid -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
