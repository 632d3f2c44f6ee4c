"""The main job on embedded defaults: the whole chain, everything local, nothing to configure.

synthetic precipitation -> ingest (archive.zarr) -> windows (windows.zarr) ->
train a small ConvLSTM (verified against LK extrapolation on the validation
split, registered, promoted only if better) -> backfill the last few hours
(forecasts.zarr) -> evaluate (the test split beside the pysteps baselines,
and the stored forecasts against the archive). It prints the verification
tables and where the stores and the pictures are.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task

from nowcast.files import make_folder
from nowcast.flows.evaluate import evaluate_flow
from nowcast.flows.forecast import backfill_flow
from nowcast.flows.ingest import ingest_flow
from nowcast.flows.params import (
    MAX_SYNTHETIC_FRAMES,
    ROOTS_ENV,
    BackfillParams,
    DemoParams,
    EvaluateParams,
    IngestParams,
    ParameterError,
    TrainParams,
    with_root,
)
from nowcast.flows.train import train_flow, window_spec
from nowcast.flows.views import archive_summary, plot_frames
from nowcast.pipelines.plans.windows import FrameMeta, frame_splits, window_starts
from nowcast.pipelines.stores.archive import read_info
from nowcast.pipelines.stores.timeaxis import to_datetime64
from nowcast.pipelines.stores.windows import SPLITS


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """Where the demo's stores and pictures are, and what its model did."""

    stores: dict[str, str]
    pictures: dict[str, str]
    version: str
    promoted: bool
    table: str
    backfilled: int

# live rain cells per 100 x 100 px: about 15% of a 128 px grid and 40% of a 32 px one at 1 mm/h or more (a
# density scaled up for small grids made a 32 px demo wet everywhere, and every score in its tables 1.000)
DENSITY = 6.0
ARCHITECTURE = "convlstm"  # learns the motion from a day of synthetic data; cnn_lstm does not


@task(name="summarise-archive")
def summarise(archive: str, png: str) -> str:
    text = archive_summary(archive)
    plot_frames(archive, png)
    return text


def backfill_range(archive: str, hours: float) -> tuple[str, str]:
    """The last ``hours`` of the archive as an ISO (start, end) range of init times."""
    info = read_info(archive)
    end = info.start + (info.length - 1) * info.time_step
    start = max(info.start, end - np.timedelta64(int(hours * 3600), "s") + info.time_step)
    return str(start.astype("datetime64[s]")), str(end.astype("datetime64[s]"))


@flow(name="demo")
def demo_flow(workdir: str = "runs/demo", frames: int = 288, size: int = 128, epochs: int = 4,
              backfill_hours: float = 3.0, workers: int = 2) -> DemoRun:
    """Synthetic data -> ingest -> windows -> train -> backfill -> evaluate, all under ``workdir``.

    ``workers`` Beam worker processes run ingest and windows (1: in this process).
    """
    DemoParams(workdir=workdir, frames=frames, size=size, epochs=epochs, backfill_hours=backfill_hours,
               workers=workers)  # every bound checked before the first step, not when its step comes
    logger = get_run_logger()
    runner = {"kind": "multiprocess", "workers": workers} if workers > 1 else {"kind": "inmemory"}
    # the defaults' windows and splits, before the work folder is made (a refusal left it, empty)
    check_frames_give_splits(frames, TrainParams.model_construct())
    root = Path(workdir).resolve()
    make_folder(root, "--workdir")
    os.environ[ROOTS_ENV] = with_root(os.environ.get(ROOTS_ENV), str(root))
    archive = str(root / "archive.zarr")
    logger.info("ingesting %d synthetic %dx%d frames into %s", frames, size, size, archive)
    ingest_flow(IngestParams(archive=archive, input_dir=None, synthetic_frames=frames, synthetic_size=size,
                             synthetic_density=DENSITY, time_chunk=24,
                             runner=runner))
    frames_png = str(root / "frames.png")
    print(summarise(archive, frames_png))

    trained = train_flow(TrainParams(archive=archive, windows=str(root / "windows.zarr"),
                                     models=str(root / "models"), workdir=str(root / "train"),
                                     architecture=ARCHITECTURE, epochs=epochs, runner=runner))
    model = {"models": str(root / "models"), "model_name": ARCHITECTURE, "model_version": trained.version}
    start, end = backfill_range(archive, backfill_hours)
    forecasts = str(root / "forecasts.zarr")
    backfilled = backfill_flow(BackfillParams(archive=archive, forecasts=forecasts, start=start, end=end,
                                              chunk_size=12, concurrency=1, **model))
    evaluated = evaluate_flow(EvaluateParams(windows=str(root / "windows.zarr"),
                                             workdir=str(root / "evaluate"), archive=archive,
                                             forecasts=forecasts, **model))

    verdict = "promoted to latest" if trained.promoted else "not promoted (it did not beat LK extrapolation)"
    print(f"\nmodel {ARCHITECTURE}/{trained.version}: validation MAE {trained.val_mae:.3f} mm/h "
          f"against LK extrapolation {trained.extrapolation_mae:.3f}, mean CSI at 1 mm/h "
          f"{trained.margins['csi_1']:+.3f}: {verdict}")
    print("\nverification on the test split (model beside the pysteps baselines):\n" + evaluated.table)
    if evaluated.stored_table:
        print("stored forecasts against the archive:\n" + evaluated.stored_table)
    pictures = {"frames": frames_png, **trained.pictures, **evaluated.pictures}
    stores = {"archive": archive, "windows": str(root / "windows.zarr"), "models": str(root / "models"),
              "forecasts": forecasts}
    print(f"backfilled {backfilled.scored} init times {start} .. {end}")
    print(f"stores in {root}: " + ", ".join(_under(path, root) for path in stores.values()))
    print(f"pictures in {root}:\n" + "\n".join(f"  {name:16s} {_under(path, root)}"
                                               for name, path in pictures.items()))
    return DemoRun(stores=stores, pictures=pictures, version=trained.version, promoted=trained.promoted,
                   table=evaluated.table, backfilled=backfilled.scored)


def check_frames_give_splits(frames: int, training: TrainParams) -> None:
    """Refuses a frame count whose windows leave a split empty, before the ingest (it failed in training).

    The demo's frames start at the synthetic generator's default time, 5 minutes apart; the splits are cut
    by the training run's blocks, so the smallest count that fills all three is not a bound: 36 frames
    leave no validation window and 52 no test window, where 43 fill all three. The message names the
    next count that works and the one from which every count does.
    """
    empty = _empty_splits(frames, training)
    if not empty:
        return
    counts = range(frames + 1, min(frames + 2_000, MAX_SYNTHETIC_FRAMES) + 1)
    failing = [n for n in counts if _empty_splits(n, training)]
    works = next((n for n in counts if n not in failing), None)
    fix = "shorten the split blocks" if works is None else f"use --frames {works}" + (
        f" or {failing[-1] + 1} or more (a count in between can leave a split empty again)"
        if failing and failing[-1] > works else " or more")
    raise ParameterError(f"--frames {frames} gives no {' or '.join(empty)} windows (each split takes "
                         f"{training.split_block} blocks of 5-minute frames, a window {training.t_in} + "
                         f"{training.t_out} frames inside one split): {fix}")


def _empty_splits(frames: int, training: TrainParams) -> list[str]:
    spec = window_spec(training)
    times = (to_datetime64(IngestParams.model_fields["synthetic_start"].default)
             + np.arange(frames) * np.timedelta64(5, "m")).astype("datetime64[s]")
    frame_split = frame_splits(times, spec.split)
    starts, reason, _ = window_starts(FrameMeta(times=times, valid=np.ones(frames, bool), wet_fraction=None),
                                      spec, frame_split)
    kept = frame_split[starts[reason == ""]]
    return [name for index, name in enumerate(SPLITS) if not (kept == index).any()]


def _under(path: str, root: Path) -> str:
    """``path`` relative to the demo's folder when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path
