"""The main job on embedded defaults: everything local, nothing to configure.

Today it synthesises precipitation, ingests it into a Zarr archive with the
local Beam runner, prints a summary of the archive and saves a PNG of a few
frames. Later stages (windows, training, backfill, evaluation) join as they
land.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.ingest import ingest_task
from pipelines.ingest import IngestSpec
from pipelines.runners import RunnerOptions
from pipelines.sources import get_source
from pipelines.summary import archive_summary, plot_frames


@task(name="summarise-archive")
def summarise(archive: str, png: str) -> str:
    text = archive_summary(archive)
    plot_frames(archive, png)
    return text


@flow(name="demo", log_prints=True)
def demo_flow(workdir: str = "runs/demo", frames: int = 288, size: int = 128) -> dict[str, str]:
    """Synthetic data -> ingest -> summary and pictures, all under ``workdir``."""
    logger = get_run_logger()
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    archive = str(root / "archive.zarr")
    source = get_source("synthetic", shape=(size, size), n_frames=frames, seed=0)
    spec = IngestSpec(archive=archive, source=source, time_chunk=24)
    logger.info("ingesting %d synthetic %dx%d frames into %s", frames, size, size, archive)
    ingest_task(spec, RunnerOptions(kind="multiprocess", workers=2))
    png = str(root / "frames.png")
    text = summarise(archive, png)
    print(text)
    print(f"frames saved to {png}")
    return {"archive": archive, "frames_png": png}
