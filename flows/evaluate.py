"""Prefect flow: verification tables and forecast-beside-truth pictures for a registered model.

Two views, both scored with model.verification (pysteps scores):

- the model on a windows.zarr split (``test`` by default) beside the pysteps
  baselines (persistence, Lucas-Kanade extrapolation, S-PROG);
- when ``forecasts`` is given, the forecasts stored in forecasts.zarr against
  the archive's later frames, beside persistence of the init frame: what
  users actually received.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task

from flows.artifacts import publish_png, publish_scores, publish_store
from flows.params import EvaluateParams
from flows.verify import Verification, save_pictures, table, verify_split
from model import verification
from model.data import Normalizer
from model.registry import load_model
from pipelines.archive import VALID
from pipelines.forecast_store import open_forecasts, read_store_info, written_flags


@task(name="score-windows")
def score_windows(params: EvaluateParams) -> Verification:
    """The model and the baselines on one windows.zarr split."""
    loaded = load_model(params.models, params.model_name, params.model_version, archive=None)
    normalizer = Normalizer.from_dict(loaded.metadata["normalization"])  # type: ignore[arg-type]
    name = f"{params.model_name}/{loaded.metadata['version']}"
    return verify_split(params.windows, params.split, loaded.model, normalizer, name,
                        baselines=tuple(params.baselines), max_samples=params.max_samples)


@task(name="score-stored-forecasts")
def score_store(params: EvaluateParams) -> Verification | None:
    """Written forecasts of forecasts.zarr against the archive (None when none can be verified yet)."""
    import xarray as xr

    info = read_store_info(params.forecasts)
    target, t_out = info.identity.target, info.identity.t_out
    archive = xr.open_zarr(params.archive, consolidated=False)
    valid = archive[VALID].values.astype(bool)
    written = np.flatnonzero(written_flags(params.forecasts))
    usable = [int(i) for i in written if i + t_out < len(valid) and valid[i:i + t_out + 1].all()]
    usable = usable[-params.max_samples:]
    if not usable:
        return None
    forecasts = open_forecasts(params.forecasts)[target]
    truth_all = archive[target]
    name = f"{info.identity.model_name}/{info.identity.model_version} (stored)"
    states = {name: verification.skill_init(t_out), "persistence": verification.skill_init(t_out)}
    example, wettest = None, -1.0
    for i in usable:
        truth = truth_all[i + 1:i + 1 + t_out].values
        fct = {name: forecasts[i].values,
               "persistence": verification.persistence(truth_all[i:i + 1].values, t_out)}
        for source, values in fct.items():
            verification.skill_accum(states[source], values, truth)
        wet = float(np.nanmean(truth >= 1.0))
        if wet > wettest:
            wettest, example = wet, (truth, fct)
    minutes = info.time_step / np.timedelta64(1, "m")
    scores = {source: verification.skill_compute(state, minutes) for source, state in states.items()}
    return Verification(scores=scores, samples=len(usable), example=example)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: EvaluateParams) -> dict[str, object]:
    """Scores the model on a split (and stored forecasts, if given); tables and PNGs as artifacts."""
    logger = get_run_logger()
    workdir = Path(params.workdir)
    result = score_windows(params)
    markdown = table(result)
    print(markdown)
    publish_scores(f"evaluate-{params.split}", result.scores, markdown,
                   f"{params.split} split: {params.model_name}/{params.model_version} and baselines "
                   f"({result.samples} samples)")
    minutes = _minutes(params.windows)
    pictures = {f"{params.split}_{k}": str(v)
                for k, v in save_pictures(result, workdir, params.split, minutes).items()}
    out: dict[str, object] = {"table": markdown, "samples": result.samples, "scores": result.scores}
    if params.forecasts and params.archive:
        stored = score_store(params)
        if stored is None:
            logger.info("no written forecast of %s has its truth in the archive yet", params.forecasts)
        else:
            stored_md = table(stored)
            print(stored_md)
            publish_scores("evaluate-stored", stored.scores, stored_md,
                           f"stored forecasts against the archive ({stored.samples} init times)")
            pictures.update({f"stored_{k}": str(v)
                             for k, v in save_pictures(stored, workdir, "stored", minutes).items()})
            out["stored_table"] = stored_md
        publish_store("evaluate-forecasts", params.forecasts, "forecasts.zarr")
    for key, path in pictures.items():
        publish_png(f"evaluate-{key}", path, key.replace("_", " "))
    print("pictures: " + ", ".join(pictures.values()))
    out["pictures"] = pictures
    return out


def _minutes(windows: str) -> float:
    from model.data import WindowsStore

    return pd.Timedelta(str(WindowsStore(windows, "test").attrs.get("time_step"))).total_seconds() / 60
