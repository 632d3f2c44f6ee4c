"""Forecast verification against observations and the classical nowcast baselines.

Scores, per lead time, with pySTEPS's own verification code: MAE
(``det_cont_fct``), CSI/POD/FAR at 0.5, 1 and 5 mm/h (``det_cat_fct``) and
FSS at 1 mm/h over a few neighbourhood sizes (``fss``). They accumulate in
pySTEPS style (:func:`skill_init`, :func:`skill_accum`, :func:`skill_compute`)
so a test split is scored one window at a time, never held in memory.

Only pixels inside radar coverage count: a pixel is scored where the
observation is finite (and, if given, the static coverage mask is true).
There, a NaN forecast (e.g. advected in from outside the domain) counts as
dry; outside, forecast and observation are both set to NaN, which the
categorical and continuous scores skip and FSS treats as below threshold.

Baselines, on physical rain rates ``(t_in, y, x)`` with NaN outside coverage:
:func:`persistence`, :func:`extrapolation` (pySTEPS Lucas-Kanade motion plus
semi-Lagrangian advection of the last frame), :func:`sprog` (pySTEPS
S-PROG on dBR), :func:`matched_motion` (the models' own block-matched
advection, without what they learn) and :func:`lagrangian_ar` (the base of
models built with ``lagrangian_ar``: S-PROG's scale-wise AR(2) along that
motion, probability-matched as their forecasts are). The report helpers write a markdown table and PNG plots.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nowcast.errors import InputError
from nowcast.model.tiling import WholeGrid
from nowcast.quiet_import import pysteps_quietly
from nowcast.text import utc_stamp

with pysteps_quietly():
    from pysteps import motion, nowcasts
    from pysteps.utils import transformation
    from pysteps.verification import detcatscores, detcontscores, spatialscores

THRESHOLDS = (0.1, 0.5, 1.0, 5.0)
FSS_THRESHOLD = 1.0
FSS_SCALES = (1, 5, 15)
# frequency bias (forecast over observed count) at 0.1 and 1 mm/h: above 1 paints rain that is not there
METRICS = ("mae", "csi_0.5", "csi_1", "csi_5", "fss_1", "bias_0.1", "bias_1")
CATEGORICAL = ("CSI", "POD", "FAR", "BIAS")
# under a table of METRICS, for a reader who does not know the keys
TABLE_KEY = ("mae: mean absolute error (mm/h), lower is better; csi_T: critical success index at T mm/h, "
             "higher is better; fss_1: fractions skill score at 1 mm/h over "
             f"{FSS_SCALES[1]}x{FSS_SCALES[1]} px, higher is better; bias_T: frequency bias at T mm/h, "
             "1 is best")


def _thr_key(thr: float) -> str:
    return f"{thr:g}"


def skill_init(t_out: int, thresholds: Sequence[float] = THRESHOLDS, fss_scales: Sequence[int] = FSS_SCALES,
               fss_threshold: float = FSS_THRESHOLD) -> dict[str, Any]:
    """An empty accumulator for ``t_out`` lead times."""
    return {
        "t_out": t_out,
        "cont": [detcontscores.det_cont_fct_init() for _ in range(t_out)],
        "cat": [{_thr_key(t): detcatscores.det_cat_fct_init(t) for t in thresholds} for _ in range(t_out)],
        "fss": [{s: spatialscores.fss_init(fss_threshold, s) for s in fss_scales} for _ in range(t_out)],
        "fss_threshold": fss_threshold,
        "count": np.zeros(t_out, dtype="int64"),
    }


def mask_to_coverage(forecast: np.ndarray, observed: np.ndarray,
                     coverage: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NaN outside coverage in both fields; NaN forecasts inside coverage become 0 (dry)."""
    inside = np.isfinite(observed)
    if coverage is not None:
        inside &= np.broadcast_to(coverage, observed.shape)
    fct = np.where(inside, np.nan_to_num(forecast, nan=0.0), np.nan)
    obs = np.where(inside, observed, np.nan)
    return fct.astype("float64"), obs.astype("float64")


def skill_accum(state: Mapping[str, Any], forecast: np.ndarray, observed: np.ndarray,
                coverage: np.ndarray | None = None) -> None:
    """Adds one ``(t_out, y, x)`` forecast and its observations (physical units)."""
    t_out = int(state["t_out"])
    if forecast.shape != observed.shape or forecast.shape[0] != t_out:
        raise ValueError(f"forecast {forecast.shape} and observations {observed.shape} must both be "
                         f"({t_out}, y, x)")
    for k in range(t_out):
        fct, obs = mask_to_coverage(forecast[k], observed[k], coverage)
        if not np.isfinite(obs).any():
            continue
        detcontscores.det_cont_fct_accum(state["cont"][k], fct, obs)
        for cat in state["cat"][k].values():
            detcatscores.det_cat_fct_accum(cat, fct, obs)
        for fss in state["fss"][k].values():
            spatialscores.fss_accum(fss, fct, obs)
        state["count"][k] += 1


def skill_compute(state: Mapping[str, Any], time_step_minutes: float) -> dict[str, dict[str, float]]:
    """Scores per lead time in minutes: ``{"30": {"mae": ..., "csi_1": ..., ...}}``.

    FSS is reported per scale as ``fss_1_s<scale>``, and ``fss_1`` is the
    value at the smallest scale above 1 pixel (the first scale if all are 1).
    """
    out: dict[str, dict[str, float]] = {}
    for k in range(int(state["t_out"])):
        scores: dict[str, float] = {"n": float(state["count"][k])}
        if state["count"][k]:
            scores["mae"] = float(detcontscores.det_cont_fct_compute(state["cont"][k], "MAE")["MAE"])
            for thr, cat in state["cat"][k].items():
                values = detcatscores.det_cat_fct_compute(cat, list(CATEGORICAL))
                for name in CATEGORICAL:
                    scores[f"{name.lower()}_{thr}"] = float(values[name])
            scales = sorted(state["fss"][k])
            for scale in scales:
                scores[f"fss_{_thr_key(state['fss_threshold'])}_s{scale}"] = float(
                    spatialscores.fss_compute(state["fss"][k][scale]))
            main = next((s for s in scales if s > 1), scales[0])
            scores[f"fss_{_thr_key(state['fss_threshold'])}"] = scores[
                f"fss_{_thr_key(state['fss_threshold'])}_s{main}"]
        out[f"{(k + 1) * time_step_minutes:g}"] = scores
    return out


def persistence(inputs: np.ndarray, t_out: int) -> np.ndarray:
    """The last observed frame, repeated for every lead time."""
    return np.repeat(_as_forecast(inputs)[-1:], t_out, axis=0)


def _as_forecast(inputs: np.ndarray) -> np.ndarray:
    """``(t, y, x)`` frames as the forecaster takes them: a pixel missing from a frame but seen in an
    earlier one has its latest observed value (:func:`~nowcast.model.forecaster.latest_observed`).

    Every baseline starts from these frames, so the baselines and the models
    differ in their method only: the models' own base scored on the raw frames
    was .0001-.0004 of CSI below the models with no learned change (stop 40),
    from 2-76 pixels an init time missing from the last frame of the test event.
    """
    from nowcast.model.forecaster import latest_observed

    return latest_observed(np.asarray(inputs, dtype="float32")[None, ..., None])[0, ..., 0]


def _filled(inputs: np.ndarray, value: float) -> np.ndarray:
    """:func:`_as_forecast`'s frames with ``value`` where a pixel was never observed."""
    frames = _as_forecast(inputs).astype("float64")
    frames[~np.isfinite(frames)] = value
    return frames


def extrapolation(inputs: np.ndarray, t_out: int) -> np.ndarray:
    """pySTEPS Lucas-Kanade motion + semi-Lagrangian extrapolation of the last frame (mm/h); NaN where the
    motion brings in pixels from outside the grid (no forecast there: scored as dry, as
    :func:`mask_to_coverage` scores every NaN forecast, and drawn as no data, not as dry)."""
    frames = _filled(inputs, 0.0)
    velocity = motion.get_method("LK")(frames[-3:], verbose=False)
    forecast = nowcasts.get_method("extrapolation")(frames[-1], velocity, t_out)
    return np.asarray(forecast, dtype="float32")


def sprog(inputs: np.ndarray, t_out: int, threshold: float = 0.1, zerovalue: float = -15.0,
          n_cascade_levels: int = 6) -> np.ndarray:
    """pySTEPS S-PROG on dBR (rain below ``threshold`` mm/h set to ``zerovalue`` dBR); mm/h out, NaN where
    the motion brings in pixels from outside the grid (as :func:`extrapolation`)."""
    frames = _filled(inputs, 0.0)
    if not (frames >= threshold).any():
        return np.zeros((t_out, *frames.shape[1:]), dtype="float32")
    metadata = {"unit": "mm/h", "transform": None, "threshold": threshold, "zerovalue": 0.0}
    dbr, meta = transformation.dB_transform(frames, metadata, threshold=threshold, zerovalue=zerovalue)
    dbr[~np.isfinite(dbr)] = zerovalue
    velocity = motion.get_method("LK")(dbr[-3:], verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):  # S-PROG prints its settings and progress
        forecast = nowcasts.get_method("sprog")(dbr[-3:], velocity, t_out, n_cascade_levels=n_cascade_levels,
                                                precip_thr=meta["threshold"], measure_time=False)
    rain, _ = transformation.dB_transform(forecast, meta, inverse=True, threshold=meta["threshold"],
                                          zerovalue=0.0)
    return np.asarray(rain, dtype="float32")


def matched_motion(inputs: np.ndarray, t_out: int) -> np.ndarray:
    """The motion base of the ``matched_motion`` models alone, on the whole grid (mm/h).

    :class:`nowcast.model.architectures.MatchMotion` estimates the motion and
    :class:`nowcast.model.architectures.Advect` moves the last frame along it, in
    ``log1p`` space as the models do, without their learned correction: what
    the trained network adds shows against this.
    """
    from nowcast.model.layers import Advect

    frames, motion = _log_frames_and_motion(inputs)
    return _rain(Advect(t_out)(frames, motion))


def lagrangian_ar(inputs: np.ndarray, t_out: int, multiple: int = 1) -> np.ndarray:
    """The base of the ``lagrangian_ar`` models alone, on the whole grid (mm/h).

    :class:`nowcast.model.layers.LagrangianAR` along the
    :class:`~nowcast.model.layers.MatchMotion` motion, in ``log1p`` space,
    then given the advected last frame's rain distribution inside coverage,
    as the models' probability matching does: the model with no learned
    change at all. With ``multiple`` the grid is first padded with dry pixels
    at the bottom and right to a multiple of it, as the forecaster pads it
    for a model (``2 ** len(filters)``, :class:`~nowcast.model.tiling.WholeGrid`),
    and cut back after: the padding moves the motion and the AR(2)
    coefficients a little, so only the padded base is that model's to the
    last digits.
    """
    from keras import ops

    from nowcast.model.forecaster import match_distribution
    from nowcast.model.layers import Advect, LagrangianAR

    ny, nx = np.shape(inputs)[-2:]
    cover = WholeGrid((int(ny), int(nx)), multiple, (0.0,))
    frames, motion = _log_frames_and_motion(inputs, cover)
    forecast = cover.blend(ops.convert_to_numpy(LagrangianAR(t_out)(frames, motion))[..., 0])[0]
    advected = cover.blend(ops.convert_to_numpy(Advect(t_out)(frames, motion))[..., 0])[0]
    covered = np.isfinite(_as_forecast(inputs)[-1])
    for lead, reference in zip(forecast, advected, strict=True):
        match_distribution(lead, reference, covered)
    return _rain(forecast[None, ..., None])


def _log_frames_and_motion(inputs: np.ndarray, cover: WholeGrid | None = None) -> tuple[np.ndarray, Any]:
    """``log1p`` frames ``(1, t_in, y, x, 1)`` (NaN as dry) and their block-matched motion.

    With ``cover`` the frames are padded with dry pixels as the forecaster pads a model's grid.
    """
    from nowcast.model.layers import MatchMotion

    frames = np.log1p(_filled(inputs, 0.0)).astype("float32")[None, ..., None]
    if cover is not None:
        frames = cover.split(frames)
    return frames, MatchMotion()(frames)


def _rain(forecast: Any) -> np.ndarray:
    """A ``(1, t_out, y, x, 1)`` ``log1p`` forecast back to mm/h ``(t_out, y, x)``."""
    from keras import ops

    return np.maximum(np.expm1(ops.convert_to_numpy(forecast)[0, ..., 0]), 0.0).astype("float32")




BASELINES = {"persistence": persistence, "extrapolation": extrapolation, "sprog": sprog,
             "matched_motion": matched_motion, "lagrangian_ar": lagrangian_ar}


# input frames a baseline needs: S-PROG's AR(2) and the lagrangian_ar base step each scale on from the last
# three; a motion needs two (a model of t_in 2 had S-PROG fail in pysteps with a traceback)
FRAMES_NEEDED = {"persistence": 1, "extrapolation": 2, "sprog": 3, "matched_motion": 2, "lagrangian_ar": 3}


def get_baseline(name: str, t_in: int | None = None):
    """A baseline nowcast ``f(inputs (t_in, y, x), t_out) -> (t_out, y, x)`` by name; refuses one that
    needs more input frames than ``t_in``."""
    try:
        method = BASELINES[name]
    except KeyError:
        raise InputError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}") from None
    if t_in is not None and t_in < FRAMES_NEEDED[name]:
        raise InputError(f"baseline {name} needs {FRAMES_NEEDED[name]} input frames, the windows hold "
                         f"{t_in}: leave {name} out of the baselines, or cut windows (and train a model) "
                         f"with --t-in {FRAMES_NEEDED[name]} or more")
    return method


def markdown_table(scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                   metrics: Sequence[str] = METRICS) -> str:
    """``scores[model][lead][metric]`` as one markdown table (a row per model and lead)."""
    lines = ["| model | lead (min) | " + " | ".join(metrics) + " |",
             "| --- | --- | " + " | ".join("---" for _ in metrics) + " |"]
    for name, per_lead in scores.items():
        for lead, values in per_lead.items():
            cells = [f"{values[m]:.3f}" if m in values and np.isfinite(values[m]) else "-" for m in metrics]
            lines.append(f"| {name} | {lead} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metric_title(metric: str) -> str:
    """A panel's title for a score's key (``csi_1``: CSI at 1 mm/h), saying which way is better."""
    name, _, threshold = metric.partition("_")
    threshold, _, scale = threshold.partition("_s")  # fss_1_s5: over 5x5 pixels
    at = (f" at {threshold} mm/h" if threshold else "") + (f" over {scale}x{scale} px" if scale else "")
    return {"mae": "MAE (mm/h), lower is better",
            "csi": f"CSI{at}, higher is better",
            "pod": f"POD{at}, higher is better",
            "far": f"FAR{at}, lower is better",
            "fss": f"FSS{at}, higher is better",
            "bias": f"frequency bias{at}, 1 is best"}.get(name, metric)


def plot_scores(scores: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path,
                metrics: Sequence[str] = METRICS, columns: int = 4) -> Path:
    """One panel per metric, ``columns`` to a row: score against lead time, a line per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(metrics) // columns)
    columns = min(columns, len(metrics))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows + 0.6), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):  # the last row may have empty panels
        for name, per_lead in scores.items():
            leads = sorted(per_lead, key=float)  # keys read back from JSON come as sorted strings
            ax.plot([float(lead) for lead in leads], [per_lead[lead].get(metric, np.nan) for lead in leads],
                    marker="o", label=name)
        if metric.startswith("bias_"):
            ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
        ax.set_title(metric_title(metric), fontsize=10)
        ax.set_xlabel("lead time (min)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


DRY_BELOW = 0.1  # mm/h: drawn as dry (pysteps' lowest colour level starts at 0.08, painting 0.08-0.1 as rain)


def draw_rain(ax, frame: np.ndarray, colorbar: bool) -> None:
    """``frame`` (mm/h) on ``ax`` as a forecaster reads rain: pysteps' logarithmic intensity scale, dry
    (below :data:`DRY_BELOW`) white, outside coverage (NaN) grey."""
    with pysteps_quietly():
        from pysteps.visualization import plot_precip_field

    ax.set_facecolor("white")  # dry is transparent in pysteps' scale
    shown = np.where(np.isfinite(frame) & (frame < DRY_BELOW), 0.0, frame)
    plot_precip_field(shown, ax=ax, colorbar=colorbar, axis="off")
    bar = ax.images[0].colorbar if colorbar and ax.images else None
    if bar is not None:  # its lowest class starts at 0.08, where rain below DRY_BELOW is drawn dry
        labels = [tick.get_text() for tick in bar.ax.get_yticklabels()]
        if labels and float(bar.get_ticks()[0]) < DRY_BELOW:
            bar.set_ticks(bar.get_ticks(), labels=[f"{DRY_BELOW:g}", *labels[1:]])


# a map panel's size (inches) and the maps' resolution: at 2.5 in the colour bar's lowest labels (0.1 to
# 0.63) ran into each other
MAP_PANEL_IN, MAP_DPI = 2.9, 80


def block_reduced(frame: np.ndarray, panel: tuple[float, float], rain: bool = True) -> np.ndarray:
    """``frame`` as a panel of ``panel`` (height, width) pixels can show it: a grid much larger is reduced
    by blocks first, rain to each block's maximum (a 1226 x 760 grid drawn 232 px tall lost its heavy
    cores to nearest-pixel sampling: 114 pixels of 16 mm/h or more showed as one), other fields to the
    mean; a block outside coverage is NaN, as its pixels are."""
    factor = int(np.ceil(max(frame.shape[0] / panel[0], frame.shape[1] / panel[1])))
    if factor < 2:
        return frame
    ny, nx = -(-frame.shape[0] // factor) * factor, -(-frame.shape[1] // factor) * factor
    padded = np.full((ny, nx), np.nan, dtype="float64")
    padded[: frame.shape[0], : frame.shape[1]] = frame
    blocks = padded.reshape(ny // factor, factor, nx // factor, factor)
    with warnings.catch_warnings():  # an all-NaN block
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.nanmax if rain else np.nanmean)(blocks, axis=(1, 3))


def plot_maps(observed: np.ndarray, forecasts: Mapping[str, np.ndarray], leads: Sequence[int],
              path: str | Path, time_step_minutes: float = 5.0, init: np.datetime64 | None = None) -> Path:
    """Forecast maps beside the truth: a row per source, a column per chosen lead index (PNG); with
    ``init`` (the forecasts' init time, UTC) each observation is titled with its valid time.

    Drawn as a forecaster sees rain: pysteps' intensity colour scale (steps
    on a logarithmic ladder from 0.1 mm/h), dry (< 0.1 mm/h) left white so
    drizzle shows, and the area outside radar coverage in grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outside = ~np.isfinite(observed)  # show forecasts only where they are scored
    rows = {"observed": observed, **{k: np.where(outside, np.nan, v) for k, v in forecasts.items()}}
    fig, axes = plt.subplots(len(rows), len(leads), figsize=(MAP_PANEL_IN * len(leads) + 0.8,
                                                             MAP_PANEL_IN * len(rows)),
                             squeeze=False, layout="constrained")
    panel = (MAP_PANEL_IN * MAP_DPI, MAP_PANEL_IN * MAP_DPI)
    start = None if init is None else np.datetime64(str(init), "s")
    if start is not None:
        fig.suptitle(f"forecasts from {utc_stamp(start)}", fontsize=9)
    for r, (name, frames) in enumerate(rows.items()):
        for c, k in enumerate(leads):
            ax = axes[r][c]
            draw_rain(ax, block_reduced(frames[k], panel), colorbar=c == len(leads) - 1)
            minutes = (k + 1) * time_step_minutes
            valid = ("" if start is None or r else
                     f" {utc_stamp(start + np.timedelta64(int(minutes * 60), 's'))[11:]}")
            ax.set_title(f"{name}{valid}\n+{minutes:g} min", fontsize=8)  # a long name ran on
    fig.savefig(path, dpi=MAP_DPI)
    plt.close(fig)
    return Path(path)
