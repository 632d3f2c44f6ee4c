"""Prefect flow: verification tables and forecast-beside-truth pictures for a registered model.

Two views, both scored with nowcast.model.verification (pysteps scores):

- the model on a windows.zarr split (``test`` by default) beside the pysteps
  baselines (persistence, Lucas-Kanade extrapolation, S-PROG);
- when ``forecasts`` is given, the forecasts stored in forecasts.zarr against
  the archive's later frames, beside persistence of the init frame: what
  users actually received.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task

from nowcast.errors import InputError
from nowcast.flows.artifacts import artifact_key, publish_png, publish_scores, publish_store
from nowcast.flows.params import EvaluateParams
from nowcast.flows.progress import reported
from nowcast.flows.workdir import local_workdir, published
from nowcast.pipelines.stores.timeaxis import step_minutes
from nowcast.pipelines.stores.windows import WindowsStore

if TYPE_CHECKING:  # the verification imports pysteps (3.6 s): inside the tasks, not when `serve` starts
    from nowcast.model.verify import Verification


@dataclasses.dataclass(frozen=True)
class EvaluateRun:
    """The verification tables (markdown), scores and the pictures' paths of an evaluate run."""

    table: str
    samples: int
    scores: dict[str, dict[str, dict[str, float]]]
    pictures: dict[str, str]
    stored_table: str | None = None


@task(name="verify-windows")
def verify_windows(params: EvaluateParams) -> Verification:
    """The model and the baselines on one windows.zarr split."""
    from nowcast.model.verify import split_forecaster, verify_split
    from nowcast.pipelines.plans.windows import seen_in_training

    forecaster = split_forecaster(params.models, params.model_name, params.model_version, params.windows)
    name = f"{params.model_name}/{forecaster.version}"
    store = WindowsStore(params.windows, params.split)
    available = store.num_samples
    if not available:  # once a table of "-" and exit status 0
        raise InputError(f"the {params.split} split of {params.windows} has no samples: cut the windows "
                         "from a longer archive, or with a shorter split_block or a larger share for "
                         f"{params.split} in split_fractions")
    if seen := seen_in_training(store, forecaster.metadata):  # scored as unseen, exit 0
        get_run_logger().warning(
            "%d of the %d %s samples of %s hold frames of %s's training split: their scores flatter it. "
            "Evaluate it on the test split of the windows it was trained with, on windows cut with its "
            "split settings, or on frames after %s", seen, available, params.split, params.windows, name,
            max(span["end"] for span in forecaster.metadata["training_range"]))
    total = min(available, params.max_samples) if params.max_samples else available
    with reported("evaluate samples", total, artifact=artifact_key("evaluate-progress")) as on_samples:
        return verify_split(params.windows, params.split, forecaster, name, baselines=tuple(params.baselines),
                            max_samples=params.max_samples, on_samples=on_samples)


@task(name="verify-stored-forecasts")
def verify_store(params: EvaluateParams) -> Verification | None:
    """Written forecasts of forecasts.zarr against the archive (None when none can be verified yet)."""
    from nowcast.model.verify import verify_forecasts

    return verify_forecasts(str(params.forecasts), str(params.archive), params.max_samples)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: EvaluateParams) -> EvaluateRun:
    """Verifies the model on a split (and stored forecasts, if given); tables and PNGs as artifacts."""
    with local_workdir(params.workdir) as workdir:
        return _evaluate(params, workdir)


def _evaluate(params: EvaluateParams, workdir: Path) -> EvaluateRun:
    from nowcast.model.verify import save_pictures, table

    logger = get_run_logger()
    result = verify_windows(params)
    if result.dry():
        logger.warning("no pixel of the %d %s samples verified, observed or forecast, reaches 0.5 mm/h: "
                       "every CSI reads '-' (no rain to detect); evaluate on windows cut from a period with "
                       "rain", result.samples, params.split)
    markdown = table(result)
    print(markdown)
    publish_scores(f"evaluate-{params.split}", result.scores, markdown,
                   f"{params.split} split: {params.model_name}/{params.model_version} and baselines "
                   f"({result.samples} samples)")
    minutes = step_minutes(WindowsStore(params.windows, params.split).time_step)
    pictures = {f"{params.split}_{k}": str(v)
                for k, v in save_pictures(result, workdir, params.split, minutes).items()}
    stored_md = None
    if params.forecasts and params.archive:
        stored = verify_store(params)
        if stored is None:
            logger.warning("no stored forecast verified: no written forecast of %s has all its truth in the "
                           "archive (score earlier init times, or ingest later frames or the frames missing "
                           "among their leads)", params.forecasts)
        else:
            stored_md = table(stored)
            print(stored_md)
            publish_scores("evaluate-stored", stored.scores, stored_md,
                           f"stored forecasts against the archive ({stored.samples} init times)")
            pictures.update({f"stored_{k}": str(v)
                             for k, v in save_pictures(stored, workdir, "stored", minutes).items()})
        publish_store("evaluate-forecasts", params.forecasts, "forecasts.zarr")
    for key, path in pictures.items():
        publish_png(f"evaluate-{key}", path, key.replace("_", " "))
    print("pictures: " + ", ".join(pictures.values()))
    pictures = {key: published(Path(path), workdir, params.workdir) for key, path in pictures.items()}
    return EvaluateRun(table=markdown, samples=result.samples, scores=result.scores, pictures=pictures,
                       stored_table=stored_md)
