"""Verifies a model on a windows.zarr split against the pysteps baselines.

The train flow uses it on the validation split to decide promotion; the
evaluate flow on the test split for its tables and pictures. The scores come
from nowcast.model.verification's streaming accumulators, fed one sample chunk at a
time, so a split is never held in memory. (This is model verification on
stored windows, not the scoring job: nothing is written to forecasts.zarr.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from nowcast.model import verification
from nowcast.model.forecaster import Forecaster, ForecastError, load_forecaster
from nowcast.pipelines.stores.archive import open_archive, read_info, valid_flags
from nowcast.pipelines.stores.forecasts import (
    MODEL_VERSION,
    check_made_from,
    open_forecasts,
    read_store_info,
    written_flags,
)
from nowcast.pipelines.stores.grid import drawn_north_up, east_first, south_first
from nowcast.pipelines.stores.timeaxis import step_minutes
from nowcast.pipelines.stores.windows import WindowsStore, describe_archive

PRIMARY = "mae"


@dataclasses.dataclass(frozen=True)
class Verification:
    """Scores per source and lead, plus the wettest sample for a picture.

    Attributes:
        scores: ``scores[source][lead_minutes][metric]``.
        samples: samples scored.
        example: ``(observed, {source: forecast})`` of the wettest sample, ``(t_out, y, x)`` each.
        example_init: that sample's init time (the time of its last input frame), for the maps' titles.
        south_first: the archive's y ascends, so row 0 is the south (a CF NetCDF grid): the maps
            flip it to draw north up, as ``nowcast show`` does (they were drawn upside down).
        east_first: the archive's x descends, so column 0 is the east: the maps flip it to draw west on
            the left (they were mirrored).
    """

    scores: dict[str, dict[str, dict[str, float]]]
    samples: int
    example: tuple[np.ndarray, dict[str, np.ndarray]] | None
    south_first: bool = False  # the grid's first row is its southernmost (y ascends): pictures flip it
    east_first: bool = False  # the grid's first column is its easternmost (x descends): pictures flip it
    example_init: np.datetime64 | None = None

    def mean(self, source: str, metric: str = PRIMARY) -> float:
        """Mean of ``metric`` over the lead times (NaN when none was scored)."""
        values = [v[metric] for v in self.scores[source].values() if metric in v]
        return float(np.mean(values)) if values else float("nan")

    def dry(self) -> bool:
        """Whether no verified pixel was observed wet enough to score a CSI (every CSI read NaN, a table of
        '-' with no word why)."""
        return not any(math.isfinite(value) for leads in self.scores.values() for metrics in leads.values()
                       for metric, value in metrics.items() if metric.startswith("csi_"))

    def margins(self, source: str, baseline: str) -> dict[str, float]:
        """How much better ``source`` is than ``baseline`` on the promotion scores, averaged over leads.

        ``csi_1``: mean CSI at 1 mm/h, ``source`` minus ``baseline`` (higher is
        better); ``mae``: ``baseline`` minus ``source`` (so positive is better
        for both). NaN where either was not scored.
        """
        return {"csi_1": self.mean(source, "csi_1") - self.mean(baseline, "csi_1"),
                "mae": self.mean(baseline, "mae") - self.mean(source, "mae")}

    def beats(self, source: str, baseline: str) -> bool:
        """True when ``source`` has a higher mean CSI at 1 mm/h and a lower mean MAE than ``baseline``."""
        return all(np.isfinite(m) and m > 0 for m in self.margins(source, baseline).values())


def split_forecaster(models: str, name: str, version: str, windows: str) -> Forecaster:
    """The model as the scoring job runs it (post-processing included), on the samples' grid."""
    store = WindowsStore(windows, "train")
    (_, height, width, _), _ = store.sample_shapes
    description = describe_archive(windows)
    grid = dataclasses.replace(description, grid_shape=(height, width)).to_dict()
    return load_forecaster(models, name, version, grid)


def check_windows_fit(store: WindowsStore, forecaster: Forecaster, name: str) -> None:
    """Refuses windows cut with other input or lead counts, or channels, than the model takes, naming both
    and the fix (the forecaster's own check names only the shapes)."""
    (t_in, *_), (t_out, *_) = store.sample_shapes
    ours = (forecaster.t_in, forecaster.t_out, tuple(forecaster.channels))
    theirs = (t_in, t_out, tuple(store.channels))
    if ours != theirs:
        raise ForecastError(
            f"model {name} takes {ours[0]} input frames of {list(ours[2])} and forecasts {ours[1]} leads; "
            f"{store.url} was cut with t_in {theirs[0]}, t_out {theirs[1]} of {list(theirs[2])}: cut windows "
            f"for it (nowcast windows --t-in {ours[0]} --t-out {ours[1]}) or pick a model made for these")


def verify_split(windows: str, split: str, forecaster: Forecaster, name: str,
                 baselines: Sequence[str] = ("persistence",), max_samples: int | None = None,
                 time_step_minutes: float | None = None,
                 on_samples: Callable[[int], None] | None = None) -> Verification:
    """Verifies ``forecaster`` (called ``name``) and ``baselines`` on one split of windows.zarr.

    ``max_samples`` spreads that many samples evenly over the split (the first ones in store order were
    one init time, and often the top rows of the grid: outside radar coverage). ``on_samples`` is told
    the samples verified so far after each chunk (a progress count).
    """
    store = WindowsStore(windows, split)
    check_windows_fit(store, forecaster, name)
    t_out = store.sample_shapes[1][0]
    if time_step_minutes is None:
        time_step_minutes = step_minutes(store.time_step)
    target = store.channels.index(store.target) if store.target in store.channels else 0
    t_in = store.sample_shapes[0][0]
    methods = {baseline: verification.get_baseline(baseline, t_in) for baseline in baselines}
    states = {source: verification.skill_init(t_out) for source in (name, *baselines)}
    seen, example, example_init, wettest = 0, None, None, -1.0
    picked = spread(store.num_samples, max_samples)
    init_times = store.init_times()
    for index in range(store.num_chunks):
        first = index * store.chunk
        wanted = picked[(picked >= first) & (picked < first + store.chunk)] - first
        if not len(wanted):
            continue
        inputs, targets = store.read_chunk(index)
        inputs, targets = inputs[wanted], targets[wanted]
        forecasts = {name: forecaster.forecast(inputs)}
        for baseline, method in methods.items():
            forecasts[baseline] = np.stack([method(sample[..., target], t_out) for sample in inputs])
        for i in range(len(inputs)):
            truth = targets[i, ..., 0]
            for source, fct in forecasts.items():
                verification.skill_accum(states[source], fct[i], truth)
            wet = float(np.nanmean(truth >= 1.0)) if np.isfinite(truth).any() else 0.0
            if wet > wettest:
                wettest, example_init = wet, init_times[first + wanted[i]]
                example = (truth, {source: fct[i] for source, fct in forecasts.items()})
        seen += len(inputs)
        if on_samples is not None:
            on_samples(seen)
    scores = {source: verification.skill_compute(state, time_step_minutes)
              for source, state in states.items()}
    south, east = archive_orientation(store.attrs.get("archive"))
    return Verification(scores=scores, samples=seen, example=example, south_first=south, east_first=east,
                        example_init=example_init)


def spread(count: int, most: int | None) -> np.ndarray:
    """Indices of ``most`` of ``count`` samples spread evenly from the first to the last (every one when
    ``most`` is None or not smaller).

    >>> spread(10, 4).tolist(), spread(3, None).tolist()
    ([0, 3, 6, 9], [0, 1, 2])
    """
    if most is None or most >= count:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, most)).astype("int64"))


def verify_forecasts(forecasts: str, archive: str, max_samples: int) -> Verification | None:
    """The newest ``max_samples`` written forecasts of forecasts.zarr against the archive's later frames.

    Scored per model version (the version that wrote each init time), beside persistence of each
    init frame: what users actually received.
    None when no written forecast has all its truth in the archive yet.
    """
    info = read_store_info(forecasts)
    archive_info = read_info(archive)
    check_made_from(info, archive_info, archive)
    target, t_out = info.identity.target, info.identity.t_out
    valid = valid_flags(archive)
    written = np.flatnonzero(written_flags(forecasts))
    usable = [int(i) for i in written if i + t_out < len(valid) and valid[i:i + t_out + 1].all()]
    usable = usable[-max_samples:]
    if not usable:
        return None
    store = open_forecasts(forecasts)
    stored, versions = store[target], store[MODEL_VERSION].values
    truth_all = open_archive(archive)[target]
    # one row per model version: a promotion during the period shows as two rows
    names = {i: f"{info.identity.model_name}/{versions[i]} (stored)" for i in usable}
    states = {name: verification.skill_init(t_out) for name in sorted(set(names.values()))}
    states["persistence"] = verification.skill_init(t_out)
    example, example_init, wettest = None, None, -1.0
    for i in usable:
        truth = truth_all[i + 1:i + 1 + t_out].values
        fct = {names[i]: stored[i].values,
               "persistence": verification.persistence(truth_all[i:i + 1].values, t_out)}
        for source, values in fct.items():
            verification.skill_accum(states[source], values, truth)
        wet = float(np.nanmean(truth >= 1.0))
        if wet > wettest:
            wettest, example, example_init = wet, (truth, fct), store["init_time"].values[i]
    minutes = step_minutes(info.time_step)
    scores = {source: verification.skill_compute(state, minutes) for source, state in states.items()}
    grid = archive_info.grid
    return Verification(scores=scores, samples=len(usable), example=example, south_first=south_first(grid.y),
                        east_first=east_first(grid.x), example_init=example_init)


def archive_orientation(archive: object) -> tuple[bool, bool]:
    """:func:`~nowcast.pipelines.stores.grid.south_first` and
    :func:`~nowcast.pipelines.stores.grid.east_first` of the grid of ``archive`` (a URL; None or one that
    cannot be read: neither)."""
    if not archive:
        return False, False
    try:
        grid = read_info(str(archive)).grid
    except Exception:  # the pictures keep the stored order; the scores do not depend on it
        return False, False
    return south_first(grid.y), east_first(grid.x)


def save_pictures(result: Verification, folder: str | Path, stem: str,
                  time_step_minutes: float = 5.0) -> dict[str, Path]:
    """Writes the score curves and the forecast-beside-truth maps as PNGs; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"scores": verification.plot_scores(result.scores, folder / f"{stem}_scores.png")}
    if result.example is not None:
        observed, forecasts = result.example
        def drawn(frames: np.ndarray) -> np.ndarray:  # north up, west left, as `nowcast show` draws them
            return drawn_north_up(frames, result.south_first, result.east_first)

        observed, forecasts = drawn(observed), {k: drawn(v) for k, v in forecasts.items()}
        leads = sorted({0, observed.shape[0] // 2, observed.shape[0] - 1})
        paths["maps"] = verification.plot_maps(observed, forecasts, leads, folder / f"{stem}_maps.png",
                                               time_step_minutes, init=result.example_init)
    return paths


def table(result: Verification | Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The markdown verification table."""
    scores = result.scores if isinstance(result, Verification) else result
    return verification.markdown_table(scores)
