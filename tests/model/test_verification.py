"""Verification: streaming scores equal one-shot pySTEPS scores; baselines behave."""

from __future__ import annotations

import numpy as np
import pytest
from pysteps.verification import detcatscores

from nowcast.model import verification as v


def _moving_blobs(steps: int, shape=(64, 64), speed=(1.5, 2.0), seed=0) -> np.ndarray:
    """Gaussian rain cells translating at ``speed`` pixels per step (mm/h)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = rng.uniform(10, 40, (4, 2))
    frames = []
    for t in range(steps):
        field = np.zeros(shape)
        for cy, cx in centres:
            field += 12 * np.exp(-(((yy - cy - speed[0] * t) ** 2) + (xx - cx - speed[1] * t) ** 2) / 40.0)
        frames.append(field)
    return np.asarray(frames, dtype="float32")


def test_perfect_forecast_scores_perfectly():
    obs = _moving_blobs(3)
    state = v.skill_init(3)
    v.skill_accum(state, obs, obs)
    scores = v.skill_compute(state, 5)
    assert list(scores) == ["5", "10", "15"]
    for lead in scores.values():
        assert lead["mae"] == 0
        assert lead["csi_1"] == 1
        assert lead["fss_1"] == pytest.approx(1)


def test_streaming_equals_one_shot_and_skips_uncovered_pixels():
    rng = np.random.default_rng(1)
    obs = rng.gamma(0.5, 2.0, (2, 1, 16, 16)).astype("float32")
    fct = rng.gamma(0.5, 2.0, (2, 1, 16, 16)).astype("float32")
    coverage = np.ones((16, 16), bool)
    coverage[:, :4] = False
    obs[:, :, :, :4] = np.nan
    fct[:, :, :, :4] = 50.0  # rain outside coverage must not count as false alarms
    fct[0, 0, 5, 5] = np.nan  # a NaN forecast inside coverage counts as dry
    state = v.skill_init(1)
    for i in range(2):
        v.skill_accum(state, fct[i], obs[i], coverage)
    streamed = v.skill_compute(state, 10)["10"]
    inside = np.nan_to_num(fct[:, 0, :, 4:], nan=0.0), obs[:, 0, :, 4:]
    one_shot = detcatscores.det_cat_fct(inside[0], inside[1], 1.0, ["CSI", "POD", "FAR"])
    assert streamed["csi_1"] == pytest.approx(one_shot["CSI"])
    assert streamed["far_1"] == pytest.approx(one_shot["FAR"])
    assert streamed["mae"] == pytest.approx(np.mean(np.abs(inside[0] - inside[1])), rel=1e-6)
    assert streamed["n"] == 2


@pytest.mark.fault("models", "LK extrapolation or S-PROG advecting rain in from outside the grid, on the "
                   "evaluate and train maps", "that area is no forecast (NaN: drawn grey, scored as dry as "
                   "before); it had been zero, drawn white as a forecast of dry beside observed rain")
def test_baselines_on_a_moving_field():
    frames = _moving_blobs(10)
    inputs, truth = frames[:4], frames[4:]
    scores = {}
    for name in v.BASELINES:
        forecast = v.get_baseline(name)(inputs, 6)
        assert forecast.shape == truth.shape
        assert forecast.dtype == np.float32
        assert (forecast[np.isfinite(forecast)] >= 0).all()
        unknown = ~np.isfinite(forecast)  # no forecast: only where rain enters from outside the grid
        assert not unknown[:, 15:-15, 15:-15].any(), name
        assert unknown.any() == (name in ("extrapolation", "sprog")), name
        state = v.skill_init(6)
        v.skill_accum(state, forecast, truth)
        scores[name] = v.skill_compute(state, 5)
    # Advection follows the motion that persistence ignores.
    assert scores["extrapolation"]["30"]["csi_1"] > scores["persistence"]["30"]["csi_1"] + 0.1
    assert scores["sprog"]["15"]["csi_1"] > scores["persistence"]["15"]["csi_1"]
    assert scores["matched_motion"]["30"]["csi_1"] > scores["persistence"]["30"]["csi_1"] + 0.1
    with pytest.raises(ValueError, match="unknown baseline"):
        v.get_baseline("optical")


@pytest.mark.fault("command line", "evaluate with a baseline that needs more input frames than the "
                   "windows hold (sprog for a model of t_in 2)",
                   "refused before any work, naming the frames it needs and the fix (it was a pysteps "
                   "ValueError traceback)")
def test_a_baseline_needs_its_input_frames():
    frames = _moving_blobs(10)
    for name, needed in v.FRAMES_NEEDED.items():
        forecast = v.get_baseline(name, needed)(frames[4 - needed:4], 3)  # runs on as few as it says
        assert forecast.shape == (3, *frames.shape[1:])
        assert np.isfinite(forecast[:, 15:-15, 15:-15]).all()  # NaN: rain entering the grid
        if needed > 1:
            with pytest.raises(ValueError, match=rf"baseline {name} needs {needed} input frames, the windows "
                                                 rf"hold {needed - 1}: leave {name} out of the baselines"):
                v.get_baseline(name, needed - 1)


def test_report_table_and_plots(tmp_path):
    obs = _moving_blobs(4)
    scores = {}
    for name, fct in {"persistence": v.persistence(obs[:1], 3), "perfect": obs[1:]}.items():
        state = v.skill_init(3)
        v.skill_accum(state, fct, obs[1:])
        scores[name] = v.skill_compute(state, 5)
    table = v.markdown_table(scores)
    assert "| perfect | 15 | 0.000 | 1.000 | 1.000 |" in table
    assert v.plot_scores(scores, tmp_path / "scores.png").stat().st_size > 1000
    maps = v.plot_maps(obs[1:], {"persistence": v.persistence(obs[:1], 3)}, [0, 2], tmp_path / "maps.png")
    assert maps.stat().st_size > 1000


def test_score_panels_say_what_they_show_and_draw_leads_in_order(tmp_path, monkeypatch):
    assert v.metric_title("csi_1") == "CSI at 1 mm/h, higher is better"
    assert v.metric_title("bias_0.1") == "frequency bias at 0.1 mm/h, 1 is best"
    assert v.metric_title("fss_1_s5") == "FSS at 1 mm/h over 5x5 px, higher is better"
    assert v.metric_title("mae") == "MAE (mm/h), lower is better"
    import matplotlib.pyplot as plt

    drawn = []
    real_plot = plt.Axes.plot

    def plot(self, x, *args, **kwargs):  # the real drawing, noting the x values it was given
        drawn.append(list(x))
        return real_plot(self, x, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "plot", plot)
    read_back = {"m": {lead: {"mae": 0.1 * int(lead)} for lead in ("10", "15", "30", "5")}}  # as from JSON
    v.plot_scores(read_back, tmp_path / "s.png", metrics=("mae",))
    assert drawn == [[5.0, 10.0, 15.0, 30.0]]


def test_frequency_bias_shows_drizzle_and_is_one_for_a_perfect_forecast():
    obs = _moving_blobs(2)
    perfect, drizzle = v.skill_init(2), v.skill_init(2)
    v.skill_accum(perfect, obs, obs)
    v.skill_accum(drizzle, obs + 0.2, obs)  # a thin veil of rain everywhere
    for lead in v.skill_compute(perfect, 5).values():
        assert lead["bias_0.1"] == pytest.approx(1)
        assert lead["bias_1"] == pytest.approx(1)
    wet = float(np.mean(obs[0] >= 0.1))
    for lead in v.skill_compute(drizzle, 5).values():
        assert lead["bias_0.1"] == pytest.approx(1 / wet, rel=0.05)  # every pixel forecast wet
        assert lead["bias_0.1"] > 1.25


@pytest.mark.fault("flows", "the maps of `evaluate` and `train` for an archive whose y ascends (a CF "
                   "NetCDF grid), or whose x descends",
                   "drawn north up and west left, as `nowcast show` draws the same archive (they were upside "
                   "down, or mirrored)")
def test_verification_maps_are_drawn_north_up(tmp_path, monkeypatch):
    from nowcast.model import verify
    from nowcast.pipelines.stores.groups import array, open_group
    from tests.pipelines.jobs.scoring_helpers import make_archive

    url = make_archive(str(tmp_path / "archive.zarr"), frames=12, size=(8, 10))
    assert verify.archive_orientation(url) == (False, False)  # the synthetic grid is north up
    y = array(open_group(url, "r+"), "y")
    y[:] = y[:][::-1]
    assert verify.archive_orientation(url) == (True, False)
    x = array(open_group(url, "r+"), "x")
    x[:] = x[:][::-1]
    assert verify.archive_orientation(url) == (True, True)
    assert verify.archive_orientation(None) == (False, False)

    drawn = {}
    monkeypatch.setattr(verify.verification, "plot_maps",
                        lambda observed, forecasts, *_, **__: drawn.update(observed=observed, **forecasts))
    frames = np.arange(2 * 8 * 10, dtype="float32").reshape(2, 8, 10)
    for south_first in (False, True):
        for east_first in (False, True):
            result = verify.Verification(scores={"m": {}}, samples=1, example=(frames, {"m": frames + 1}),
                                         south_first=south_first, east_first=east_first)
            monkeypatch.setattr(verify.verification, "plot_scores", lambda *args: None)
            verify.save_pictures(result, tmp_path / "pictures", "test")
            rows = frames[:, ::-1] if south_first else frames
            shown = rows[:, :, ::-1] if east_first else rows
            np.testing.assert_array_equal(drawn["observed"], shown)
            np.testing.assert_array_equal(drawn["m"], shown + 1)


def _colours(frame: np.ndarray) -> set[tuple[int, ...]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    v.draw_rain(ax, frame, colorbar=False)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].reshape(-1, 3)
    plt.close(fig)
    return set(map(tuple, np.unique(pixels, axis=0).tolist()))


@pytest.mark.fault("command line", "rain of 0.08-0.1 mm/h in `show`, `summary --png` or the evaluate maps",
                   "drawn dry (white), and the legend's lowest class starts at 0.1 (pysteps' lowest colour "
                   "level starts at 0.08 mm/h: it was drawn as rain, then dry under a legend of 0.08)")
def test_rain_below_a_tenth_of_a_millimetre_is_drawn_dry():
    background = _colours(np.zeros((8, 8)))
    lowest_rain = _colours(np.full((8, 8), 0.12)) - background  # pysteps' 0.08-0.16 mm/h colour
    assert lowest_rain
    assert not (_colours(np.full((8, 8), 0.09)) - background)
    outside = np.full((8, 8), 0.09)
    outside[:4] = np.nan
    assert _colours(outside) - background  # outside coverage stays grey, not dry
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    v.draw_rain(ax, np.full((8, 8), 0.5), colorbar=True)
    labels = [tick.get_text() for tick in ax.images[0].colorbar.ax.get_yticklabels()]
    plt.close(fig)
    assert labels[:3] == ["0.1", "0.16", "0.25"]  # the legend's lowest class starts where rain is drawn
