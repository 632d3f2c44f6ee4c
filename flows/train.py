"""Prefect flow: windows -> fit -> verify -> register, promoting ``latest`` only when it beats persistence.

The model is fitted into a candidates folder beside the registry
(``<models>/.candidates``), scored on the validation split against
persistence, then moved into ``<models>/<name>/<version>`` with one rename
(a reader never sees it half-moved). ``latest`` moves to it only when its mean
MAE over the lead times is lower than persistence's; otherwise the version is
kept for inspection and ``latest`` stays where it was, so a scheduled forecast
never picks up a model that lost to the trivial baseline.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
from prefect import flow, get_run_logger, task

from flows.artifacts import publish_png, publish_scores, publish_store
from flows.params import TrainParams
from flows.verify import Verification, save_pictures, table, verify_split
from model import registry
from model.data import Normalizer, WindowsStore
from model.train import TrainConfig, train
from pipelines import windows as windows_job
from pipelines.window_spec import SplitSpec, WindowSpec

CANDIDATES = ".candidates"


class TrainFlowError(ValueError):
    """Training data that cannot give a verified model (e.g. an empty validation split)."""


class _EpochLog(keras.callbacks.Callback):
    """Logs every epoch's losses through Prefect's logger (shown in the UI)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
        get_run_logger().info("epoch %d: %s", epoch + 1, values)


def window_spec(params: TrainParams) -> WindowSpec:
    """The windowing a train run asks for."""
    patch = (params.patch_size, params.patch_size) if params.patch_size else None
    return WindowSpec(channels=(params.variable,), target=params.variable, t_in=params.t_in,
                      t_out=params.t_out, stride=params.stride, patch_size=patch,
                      split=SplitSpec(block=params.split_block, fractions=tuple(params.split_fractions),
                                      method=params.split_method))


@task(name="cut-windows")
def cut_windows(params: TrainParams) -> dict[str, object]:
    """Runs the windows job (rewriting windows.zarr) and checks both train and val hold samples."""
    job = windows_job.WindowJob(archive=params.archive, output=params.windows, spec=window_spec(params),
                                overwrite=True)
    result = windows_job.run(job, params.runner.options())
    samples = dict(result.counts.get("samples", {}))  # type: ignore[arg-type]
    get_run_logger().info("windows: %s", samples)
    for split in ("train", "val"):
        if not samples.get(split):
            raise TrainFlowError(f"the {split} split of {params.windows} is empty ({samples}); ingest more "
                                 "frames, shorten split_block or change split_fractions")
    return result.counts


@task(name="fit")
def fit(params: TrainParams) -> Path:
    """Fits the model into the candidates folder; returns the candidate version directory."""
    config = TrainConfig(windows=params.windows, models=os.path.join(params.models, CANDIDATES),
                         architecture=params.architecture, workdir=params.workdir,
                         options={"filters": list(params.filters), "lstm_units": params.lstm_units},
                         epochs=params.epochs, steps_per_epoch=params.steps_per_epoch,
                         batch_size=params.batch_size, learning_rate=params.learning_rate, seed=params.seed,
                         verbose=0)
    result = train(config, extra_callbacks=[_EpochLog()])
    get_run_logger().info("fitted %s in %.1f s", result.path, result.metrics["train_seconds"])
    return result.path


@task(name="verify")
def verify(params: TrainParams, candidate: Path) -> Verification:
    """Scores the candidate and persistence on the validation split."""
    loaded = registry.load_model(candidate.parent.parent, candidate.parent.name, candidate.name, archive=None)
    normalizer = Normalizer.from_dict(loaded.metadata["normalization"])  # type: ignore[arg-type]
    return verify_split(params.windows, "val", loaded.model, normalizer, params.architecture,
                        baselines=("persistence",))


@task(name="register")
def register(params: TrainParams, candidate: Path, promote: bool) -> Path:
    """Moves the candidate into the registry and, if ``promote``, points ``latest`` at it."""
    final = Path(params.models) / candidate.parent.name / candidate.name
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise TrainFlowError(f"{final} already exists; versions are immutable")
    os.rename(candidate, final)
    if promote:
        registry.promote_version(params.models, final.parent.name, final.name)
    pointer = candidate.parent / registry.LATEST  # train() promoted it inside the candidates folder
    if pointer.is_file() and pointer.read_text().strip() == candidate.name:
        pointer.unlink()
    for folder in (candidate.parent, candidate.parent.parent):  # empty leftovers only: others may train too
        try:
            folder.rmdir()
        except OSError:
            break
    return final


@flow(name="train", log_prints=True)
def train_flow(params: TrainParams) -> dict[str, object]:
    """Cuts windows, fits, verifies on the validation split and registers the model."""
    logger = get_run_logger()
    counts = cut_windows(params)
    candidate = fit(params)
    result = verify(params, candidate)
    promote = result.beats(params.architecture, "persistence")
    version_dir = register(params, candidate, promote)
    ours, base = result.mean(params.architecture), result.mean("persistence")
    verdict = (f"promoted {version_dir.name} to latest" if promote else
               f"kept {version_dir.name} unpromoted: it does not beat persistence")
    logger.info("validation MAE %.4f vs persistence %.4f: %s", ours, base, verdict)
    markdown = table(result)
    publish_scores("train-validation", result.scores, markdown + f"\n{verdict}.\n",
                   f"validation scores of {params.architecture}/{version_dir.name}")
    store = WindowsStore(params.windows, "val")
    pictures = save_pictures(result, Path(params.workdir) / "pictures", version_dir.name,
                             _minutes(str(store.attrs.get("time_step"))))
    for kind, path in pictures.items():
        publish_png(f"train-{kind}", path, f"{params.architecture}/{version_dir.name} validation {kind}")
    publish_store("train-model", str(version_dir), "model version directory")
    print(markdown)
    return {"version": version_dir.name, "path": str(version_dir), "promoted": promote,
            "val_mae": ours, "persistence_mae": base, "table": markdown, "counts": counts,
            "pictures": {k: str(v) for k, v in pictures.items()}}


def _minutes(time_step: str) -> float:
    import pandas as pd

    return pd.Timedelta(time_step).total_seconds() / 60
