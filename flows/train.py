"""Prefect flow: windows -> fit -> verify -> register, promoted only when it beats LK extrapolation.

The model is fitted and saved as a new, unpromoted registry version; it is
then verified on the validation split, as the scoring job runs it, beside
persistence and pysteps' Lucas-Kanade extrapolation, and
:func:`nowcast.model.registry.promote_version` moves ``latest`` to it only
when it beats the extrapolation on both the mean CSI at 1 mm/h and the mean
MAE over the lead times (persistence is a bar every extrapolation nowcast
clears). A version that loses is kept for inspection and ``latest`` stays
where it was; the run's report says by how much it won or lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task

from nowcast.errors import InputError
from nowcast.files import write_atomically
from nowcast.flows.artifacts import artifact_key, publish_png, publish_scores, publish_store
from nowcast.flows.params import TrainParams, WindowsParams
from nowcast.flows.progress import progress, reported
from nowcast.flows.workdir import local_workdir, published
from nowcast.model import registry
from nowcast.pipelines.jobs import windows as windows_job
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
from nowcast.pipelines.stores.groups import check_writable
from nowcast.pipelines.stores.timeaxis import step_minutes
from nowcast.pipelines.stores.windows import SPLITS, WindowsStore

if TYPE_CHECKING:  # Keras and pysteps are imported by the tasks that use them: `nowcast serve` imports
    from nowcast.model.verify import Verification  # this module to register the flow, in 7 s less
    from nowcast.pipelines.plans.windows import WindowPlan

BASELINE = "extrapolation"  # what a new version must beat to be promoted

log = logging.getLogger(__name__)


class TrainFlowError(InputError):
    """Training data that cannot give a verified model (e.g. an empty validation split)."""


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """What a train run produced: the version, whether it was promoted, and why."""

    version: str
    path: str
    promoted: bool
    val_mae: float
    extrapolation_mae: float
    margins: dict[str, float]
    table: str
    counts: dict[str, object]
    pictures: dict[str, str]
    verdict: str = ""


def _epoch_log():
    """A Keras callback that logs every epoch's losses through Prefect's logger (shown in the UI) and
    counts the epochs."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        epochs = 0

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.epochs = epoch + 1
            values = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
            get_run_logger().info("epoch %d: %s", epoch + 1, values)

    return EpochLog()


def window_spec(params: WindowsParams) -> WindowSpec:
    """The windowing the parameters ask for."""
    patch = (params.patch_size, params.patch_size) if params.patch_size else None
    return WindowSpec(channels=(params.variable,), target=params.variable, t_in=params.t_in,
                      t_out=params.t_out, stride=params.stride, patch_size=patch,
                      split=SplitSpec(block=params.split_block, fractions=_three(params.split_fractions),
                                      method=params.split_method))


def _three(fractions: list[float]) -> tuple[float, float, float]:
    train, val, test = fractions
    return train, val, test


def planned(params: WindowsParams) -> WindowPlan | None:
    """The windows job's plan (it reads metadata only); None when the archive cannot be planned: the job
    itself then says what is wrong."""
    from nowcast.pipelines.plans.windows import plan_from_archive

    try:
        return plan_from_archive(params.archive, window_spec(params))
    except Exception:
        return None


def cut(params: WindowsParams, bar: bool | None = None,
        plan: WindowPlan | None = None) -> windows_job.WindowResult:
    """Runs the windows job the parameters describe, rewriting windows.zarr (``nowcast windows``), with a
    bar of the sample chunks written (``bar``: as :func:`~nowcast.flows.progress.progress`'s ``enabled``;
    its total from ``plan``, planned here if not given; none without a plan) and, in a flow run, its
    artifact."""
    from nowcast.pipelines.stores.windows import chunks_written

    job = windows_job.WindowJob(archive=params.archive, output=params.windows, spec=window_spec(params),
                                overwrite=True)
    plan = plan or planned(params)
    with progress("cut windows (sample chunks)", plan.layout().num_chunks() if plan else 0,
                  functools.partial(chunks_written, params.windows), enabled=bar,
                  artifact=artifact_key("windows-progress")):
        result = windows_job.run(job, params.runner.options())
    samples = dict(result.counts.get("samples", {}))
    empty = [split for split, share in zip(SPLITS, params.split_fractions, strict=True)
             if share > 0 and not samples.get(split)]
    if empty:  # a share asked for and nothing in it: evaluate would find the split empty later
        splits = " and ".join(empty) + (" splits" if len(empty) > 1 else " split")
        log.warning("the %s of %s: no samples although split_fractions gives a share (%s); ingest more "
                    "frames or shorten split_block (for an archive of events with gaps between them, "
                    "--split-method hash: contiguous shares cut the whole span, gaps included)", splits,
                    params.windows, samples)
    return result


@task(name="cut-windows")
def cut_windows(params: TrainParams) -> dict[str, object]:
    """Runs the windows job (rewriting windows.zarr) and checks both train and val hold samples."""
    plan = planned(params)
    if plan is not None:  # an empty split is refused before the store is replaced
        _train_and_val_hold_samples(params, dict(plan.counts.get("samples", {})))  # type: ignore[call-overload]
    replaced = replaced_windows(params)
    if replaced:
        get_run_logger().warning(replaced)
    result = cut(params, plan=plan)
    samples = dict(result.counts.get("samples", {}))
    get_run_logger().info("windows: %s", samples)
    _train_and_val_hold_samples(params, samples)
    return result.counts


def _train_and_val_hold_samples(params: TrainParams, samples: dict) -> None:
    for split in ("train", "val"):
        if not samples.get(split):
            raise TrainFlowError(f"the {split} split of {params.windows} is empty ({samples}); ingest more "
                                 "frames, shorten split_block or change split_fractions (or, for an archive "
                                 "of events with gaps between them, --split-method hash)")


def replaced_windows(params: TrainParams) -> str | None:
    """What training's new windows replace, when the store holds windows cut otherwise (`nowcast windows
    --t-out 6` then `nowcast train` replaced the six leads with the form's three without a word); None
    when nothing is there, it was cut alike, or it cannot be read (the job replaces it whole)."""
    from nowcast.pipelines.stores.groups import exists, open_group

    if not exists(params.windows):
        return None
    try:
        before = dict(open_group(params.windows).attrs["window_spec"])  # type: ignore[arg-type]
    except Exception:  # damaged or not a windows store: the job's own checks name it
        return None
    now = json.loads(window_spec(params).to_json())
    changed = [f"{key} {before.get(key)} -> {new}" for key, new in now.items() if before.get(key) != new]
    if not changed:
        return None
    return (f"training cuts its windows anew into {params.windows}, which holds windows cut with other "
            f"settings ({', '.join(changed)}): give train the same window options (--t-in, --t-out, "
            "--patch-size, ...) to keep them, or another --windows")


@task(name="fit")
def fit(params: TrainParams, workdir: Path) -> str:
    """Fits the model and saves it as a new registry version, not promoted; returns its directory."""
    saved = _saved_by_this_run(params, workdir)
    if saved is not None:
        get_run_logger().info("%s was saved by this run before it was interrupted: verifying it", saved)
        return saved
    from nowcast.model.architectures import BASES
    from nowcast.model.train import TrainConfig, train

    run_id = uuid.uuid4().hex
    run: dict[str, object] = {"params": params.model_dump(mode="json"), "run": run_id}
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomically(workdir / SAVED, json.dumps(run))  # before the save: a kill right after it finds the
    config = TrainConfig(windows=params.windows, models=params.models, architecture=params.architecture,
                         workdir=str(workdir),
                         options={"filters": list(params.filters), "lstm_units": params.lstm_units,
                                  **BASES[params.chosen_base]},
                         epochs=params.epochs, steps_per_epoch=params.steps_per_epoch,
                         batch_size=params.batch_size, learning_rate=params.learning_rate, loss=params.loss,
                         augment=params.augment, seed=params.seed,
                         verbose=0, promote=False, run=run_id)  # version by the run it records
    log = _epoch_log()
    # a bar when the command line runs the flow and asked for bars, and the UI's artifact; early stopping
    # can end both short of the total
    with progress("train epochs", params.epochs, lambda: log.epochs, artifact=artifact_key("train-progress")):
        result = train(config, extra_callbacks=[log])
    write_atomically(workdir / SAVED, json.dumps({**run, "path": result.path}))
    get_run_logger().info("fitted %s in %.1f s", result.path, result.metrics["train_seconds"])
    return result.path


SAVED = "saved-version.json"  # in the workdir from the training's start until the run's verdict


def _saved_by_this_run(params: TrainParams, workdir: Path) -> str | None:
    """The version an interrupted run of the same parameters saved and did not get to verify and promote
    (a rerun trained it again and left the first one behind, unpromoted); None when there is none."""
    try:
        record = json.loads((workdir / SAVED).read_text())
        same = record["params"] == params.model_dump(mode="json")
        path = record.get("path") or _version_of_run(params, str(record["run"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not same or path is None:
        return None
    try:  # checksums too: a version damaged since (a truncated model.keras) stopped every rerun
        saved = registry.verify_version(params.models, params.architecture, registry.version_name(path),
                                        archive=None)
    except registry.RegistryError as error:  # removed or damaged since: train it again
        get_run_logger().warning("the version an interrupted run saved cannot be used (%s): training anew",
                                 error)
        return None
    from nowcast.model.train import training_data_hash

    if saved.metadata.get("training_data_hash") != training_data_hash(params.windows):
        get_run_logger().warning(  # the archive grew, or the windows were recut: it was promoted untrained
            "the version an interrupted run saved, %s, was trained on other windows than %s holds now (the "
            "archive grew, or they were cut again): training anew", registry.version_name(path),
            params.windows)
        return None
    return saved.path


def _version_of_run(params: TrainParams, run: str) -> str | None:
    """The newest version that the training run ``run`` saved (killed before it could record it), or None."""
    for version in reversed(registry.list_versions(params.models, params.architecture)):
        folder = registry.resolve_version(params.models, params.architecture, version)
        with contextlib.suppress(registry.RegistryError):  # a damaged one is not this run's to verify
            if registry.read_metadata(folder).get("train_run") == run:
                return folder
    return None


def verdict_text(version: str, promoted: bool, better: bool, policy: str, by: str) -> str:
    """What the run did with the new version, and why.

    >>> verdict_text("v2", True, False, "always", "by x")
    'promoted v2 to latest as asked (promote=always); it does not beat LK extrapolation on both (by x)'
    """
    beats = f"it {'beats' if better else 'does not beat'} LK extrapolation on both ({by})"
    if policy != "if_better":
        did = f"promoted {version} to latest" if promoted else f"kept {version} unpromoted"
        return f"{did} as asked (promote={policy}); {beats}"
    return f"promoted {version} to latest ({by})" if promoted else f"kept {version} unpromoted: {beats}"


@task(name="verify")
def verify(params: TrainParams, version: str) -> Verification:
    """Verifies the new version, persistence and LK extrapolation on the validation split."""
    from nowcast.model.verify import split_forecaster, verify_split

    forecaster = split_forecaster(params.models, params.architecture, registry.version_name(version),
                                  params.windows)
    total = WindowsStore(params.windows, "val").num_samples
    with reported("verify samples (validation split)", total,
                  artifact=artifact_key("train-verify-progress")) as on_samples:
        return verify_split(params.windows, "val", forecaster, params.architecture,
                            baselines=("persistence", BASELINE), on_samples=on_samples)


@flow(name="train", log_prints=True)
def train_flow(params: TrainParams) -> TrainRun:
    """Cuts windows, fits, verifies on the validation split and promotes the version if it is better."""
    with local_workdir(params.workdir) as workdir:
        return _train(params, workdir)


def _train(params: TrainParams, workdir: Path) -> TrainRun:
    from nowcast.model.verify import save_pictures, table

    logger = get_run_logger()
    # not after the training, where it failed; the name's folder, which can be another's than the registry's
    check_writable(f"{params.models.rstrip('/')}/{params.architecture}", "the model registry's folder")
    counts = cut_windows(params)
    version_dir = fit(params, workdir)
    version = registry.version_name(version_dir)
    result = verify(params, version_dir)
    better = result.beats(params.architecture, BASELINE)
    promote = params.promote == "always" or (params.promote == "if_better" and better)
    if promote:
        if change := registry.archive_change(params.models, params.architecture, version):
            logger.warning(change)  # the scheduled forecasts of the other archive failed after it, unsaid
        registry.promote_version(params.models, params.architecture, version)
    margins = result.margins(params.architecture, BASELINE)
    ours, base = result.mean(params.architecture, "mae"), result.mean(BASELINE, "mae")
    by = (f"mean CSI at 1 mm/h {margins['csi_1']:+.3f}, mean MAE {-margins['mae']:+.3f} mm/h against LK "
          "extrapolation on the validation split")
    if not math.isfinite(margins["csi_1"]):
        by += ("; no validation pixel reaches 1 mm/h, so CSI cannot tell them apart: cut windows from a "
               "wetter archive, or promote with `nowcast models promote`")
    verdict = verdict_text(version, promote, better, params.promote, by)
    logger.info(verdict)
    markdown = table(result)
    publish_scores("train-validation", result.scores, markdown + f"\n{verdict}.\n",
                   f"validation scores of {params.architecture}/{version}")
    minutes = step_minutes(WindowsStore(params.windows, "val").time_step)
    pictures = save_pictures(result, workdir / "pictures", version, minutes)
    for kind, path in pictures.items():
        publish_png(f"train-{kind}", path, f"{params.architecture}/{version} validation {kind}")
    publish_store("train-model", str(version_dir), "model version directory")
    print(markdown)
    (workdir / SAVED).unlink(missing_ok=True)  # the verdict is given: a rerun trains anew
    return TrainRun(version=version, path=str(version_dir), promoted=promote, val_mae=ours,
                    extrapolation_mae=base, margins=margins, table=markdown, counts=counts,
                    pictures={k: published(Path(v), workdir, params.workdir) for k, v in pictures.items()},
                    verdict=verdict)
