"""Both architectures: shapes and dtypes at several sizes, clear errors, learning."""

from __future__ import annotations

import random
import threading
import time

import keras
import numpy as np
import pytest

from nowcast.model.architectures import (
    ArchitectureConfig,
    ArchitectureError,
    build_model,
    for_grid,
    get_architecture,
)
from nowcast.model.layers import LeadSmooth, RepeatLeads, box_mean

NAMES = ["cnn_lstm", "convlstm"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("t_in", "t_out", "height", "width", "channels", "filters"),
    [(3, 2, 8, 8, 1, (4,)), (4, 3, 16, 24, 2, (4, 8)), (2, 5, 32, 16, 1, (4, 4, 8))],
)
def test_output_shape_and_dtype(name, t_in, t_out, height, width, channels, filters):
    cfg = ArchitectureConfig(t_in=t_in, t_out=t_out, height=height, width=width, channels=channels,
                             filters=filters, lstm_units=8, decoder_filters=4)
    model = build_model(name, cfg)
    batch = np.random.default_rng(0).normal(size=(2, t_in, height, width, channels)).astype("float32")
    out = keras.ops.convert_to_numpy(model(batch))
    assert out.shape == (2, t_out, height, width, 1)
    assert out.dtype == np.float32
    assert tuple(model.output_shape) == (None, t_out, height, width, 1)
    grid = (height * 3, width * 2)  # fully convolutional: the same weights on another grid
    rebuilt = for_grid(model, name, cfg, grid)
    assert tuple(rebuilt.output_shape) == (None, t_out, *grid, 1)
    for mine, theirs in zip(model.get_weights(), rebuilt.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_is_named_in_summary(name):
    model = build_model(name, ArchitectureConfig(t_in=2, t_out=2, height=8, width=8, filters=(4, 4),
                                                 lstm_units=4, lstm_layers=2))
    lines: list[str] = []
    model.summary(line_length=200, print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    for layer in model.layers:
        assert layer.name in text
    recurrent = [layer for layer in model.layers if "lstm" in layer.name]
    assert len(recurrent) == (2 if name == "cnn_lstm" else 4)


@pytest.mark.parametrize(("name", "advection"), [("convlstm", False), ("cnn_lstm", True), ("convlstm", True)])
def test_untrained_residual_model_is_persistence_plus_its_change(name, advection):
    """With the change head zeroed: persistence (an untrained motion head moves nothing)."""
    cfg = ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,), lstm_units=4,
                             decoder_filters=2, advection=advection)
    model = build_model(name, cfg)
    change = model.get_layer("to_target")
    change.set_weights([np.zeros_like(w) for w in change.get_weights()])
    batch = np.random.default_rng(1).normal(size=(1, 3, 8, 8, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(model(batch))
    np.testing.assert_allclose(out, np.repeat(batch[:, -1:], 2, axis=1), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_without_learned_motion_the_matched_motion_alone_moves_the_base(name):
    cfg = ArchitectureConfig(t_in=3, t_out=2, height=16, width=16, filters=(4,), lstm_units=4,
                             advection=True, matched_motion=True, learned_motion=False)
    model = build_model(name, cfg)
    names = {layer.name for layer in model.layers}
    assert "matched_motion" in names
    assert not {"motion", "motion_total"} & names


def test_repeat_leads_adds_the_lead_as_a_channel():
    state = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype("float32")
    out = keras.ops.convert_to_numpy(RepeatLeads(3)(state))
    assert out.shape == (2, 3, 3, 5, 5)
    for k in range(3):
        np.testing.assert_array_equal(out[:, k, ..., :4], state)
        np.testing.assert_allclose(out[:, k, ..., 4], (k + 1) / 3)


def test_lead_smooth_mixes_box_means_per_lead_and_passes_through_in_training():
    frames = np.random.default_rng(0).random((2, 3, 12, 10, 1)).astype("float32")
    layer = LeadSmooth(3, sizes=(1, 3, 5))
    np.testing.assert_array_equal(np.asarray(layer(frames)), frames)  # built as "no smoothing"
    layer.mix.assign(np.array([[1, 0, 0], [0, 1, 0], [0, 0.5, 0.5]], "float32"))
    out = np.asarray(layer(frames))
    np.testing.assert_allclose(out[:, 0], frames[:, 0])
    np.testing.assert_allclose(out[:, 1], keras.ops.convert_to_numpy(box_mean(frames[:, 1], 3)), atol=1e-6)
    both = [keras.ops.convert_to_numpy(box_mean(frames[:, 2], size)) for size in (3, 5)]
    np.testing.assert_allclose(out[:, 2], 0.5 * (both[0] + both[1]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(layer(frames, training=True)), frames)


def test_indivisible_grid_is_refused_with_the_fix():
    with pytest.raises(ArchitectureError, match="not divisible by 2\\*\\*depth = 4"):
        ArchitectureConfig(t_in=2, t_out=2, height=30, width=32, filters=(4, 8))


def test_bad_names_and_options_are_refused():
    with pytest.raises(ArchitectureError, match="choose one of"):
        get_architecture("unet")
    with pytest.raises(ArchitectureError, match="unknown architecture options"):
        ArchitectureConfig.from_dict({"t_in": 2, "t_out": 2, "height": 8, "width": 8, "filterz": [4]})
    with pytest.raises(ArchitectureError, match="target_channel"):
        ArchitectureConfig(t_in=2, t_out=2, height=8, width=8, channels=1, target_channel=1)
    with pytest.raises(ArchitectureError, match="advection=True needs residual=True"):
        ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, residual=False, advection=True)
    with pytest.raises(ArchitectureError, match="matched_motion=True needs advection=True"):
        ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, matched_motion=True)
    with pytest.raises(ArchitectureError, match="lagrangian_ar=True needs advection=True and t_in >= 3"):
        ArchitectureConfig(t_in=2, t_out=2, height=8, width=8, advection=True, lagrangian_ar=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_learns_a_local_dynamics(name):
    """The fully convolutional models learn what a forecast is made of: a smoothed, growing last frame.

    (They no longer memorise spatially random targets, as the Dense decoders did: the same weights
    serve every pixel.)
    """
    keras.utils.set_random_seed(0)
    cfg = ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(8,), lstm_units=16, residual=False)
    model = build_model(name, cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 8, 8, 1)).astype("float32")
    smoothed = (x[:, -1] + np.roll(x[:, -1], 1, axis=1) + np.roll(x[:, -1], 1, axis=2)) / 3
    y = np.stack([smoothed * 1.5, smoothed * 2.0], axis=1).astype("float32")
    first = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=8, epochs=150, verbose=0)
    assert min(history.history["loss"]) <= first / 10, (first, history.history["loss"][-5:])


@pytest.mark.parametrize("module", ["architectures", "layers", "losses"])
def test_model_code_uses_keras_apis_only(module):
    import ast
    import importlib
    from pathlib import Path

    tree = ast.parse(Path(importlib.import_module(f"nowcast.model.{module}").__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"tensorflow", "jax", "torch"}, imported


def _advect(frame: np.ndarray, motion: np.ndarray, t_out: int) -> np.ndarray:
    """pysteps' semi-Lagrangian extrapolation, backward Euler steps along the trajectory (``n_iter=0``),
    bilinear, the nearest edge pixel outside the grid; pysteps' velocity is ``(dx, dy)``."""
    from pysteps.extrapolation.semilagrangian import extrapolate

    velocity = np.stack([motion[..., 1], motion[..., 0]]).astype("float64")
    return extrapolate(frame.astype("float64"), velocity, t_out, n_iter=0, interp_order=1,
                       map_coordinates_mode="nearest")


def test_advect_layer_matches_pysteps_semi_lagrangian_extrapolation():
    from nowcast.model.architectures import Advect

    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(2, 3, 12, 10, 2)).astype("float32")
    motion = rng.uniform(-1.5, 1.5, size=(2, 12, 10, 2)).astype("float32")
    got = keras.ops.convert_to_numpy(Advect(t_out=3, channel=1)(inputs, motion))
    assert got.shape == (2, 3, 12, 10, 1)
    for b in range(2):
        np.testing.assert_allclose(got[b, ..., 0], _advect(inputs[b, -1, ..., 1], motion[b], 3), atol=1e-5)
    # a whole-pixel motion is an exact shift: one pixel down and two right per step
    shift = np.zeros((1, 12, 10, 2), "float32")
    shift[..., 0], shift[..., 1] = 1.0, 2.0
    moved = keras.ops.convert_to_numpy(Advect(t_out=2)(inputs[:1], shift))[0, ..., 0]
    np.testing.assert_array_equal(moved[0, 1:, 2:], inputs[0, -1, :-1, :-2, 0])
    np.testing.assert_array_equal(moved[1, 2:, 4:], inputs[0, -1, :-2, :-4, 0])


@pytest.mark.slow
def test_advection_model_learns_a_steady_translation():
    """Blobs moving one pixel per step: the advection model must beat persistence by far."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    size, t_in, t_out = 16, 3, 2
    from scipy.ndimage import gaussian_filter

    fields = gaussian_filter(rng.normal(size=(64, size + 8, size + 8)), (0, 1.5, 1.5)).astype("float32")
    fields /= fields.std()
    # frame t of a sample: the field shifted t pixels to the right
    seq = np.stack([fields[:, 4:4 + size, 4 - t:4 - t + size] for t in range(t_in + t_out)],
                   axis=1)[..., None]
    x, y = seq[:, :t_in], seq[:, t_in:]
    cfg = ArchitectureConfig(t_in=t_in, t_out=t_out, height=size, width=size, filters=(8, 8),
                             lstm_units=8, advection=True)
    model = build_model("convlstm", cfg)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    persistence = float(np.mean((y - x[:, -1:]) ** 2))
    model.fit(x, y, batch_size=16, epochs=60, verbose=0)
    assert model.evaluate(x, y, verbose=0) < persistence / 5


def _moving_field(shift: tuple[int, int], steps: int, size: int = 64, seed: int = 4) -> np.ndarray:
    """``(steps, size, size)`` smooth rain-like frames moving ``shift`` pixels per step."""
    from scipy.ndimage import gaussian_filter

    pad = steps * 8
    field = gaussian_filter(np.random.default_rng(seed).normal(size=(size + 2 * pad,) * 2), 3)
    field = np.maximum(field / field.std() - 0.3, 0).astype("float32")
    dy, dx = shift
    return np.stack([field[pad - t * dy:pad - t * dy + size, pad - t * dx:pad - t * dx + size]
                     for t in range(steps)])


@pytest.mark.parametrize(("shift", "tolerance"), [((0, 0), 0.05), ((2, -4), 0.05), ((-6, 2), 0.05),
                                                  ((3, -5), 0.3), ((1, 5), 0.3)])
def test_match_motion_finds_a_steady_translation(shift, tolerance):
    from nowcast.model.architectures import MatchMotion

    frames = _moving_field(shift, steps=4)[None, ..., None]
    motion = keras.ops.convert_to_numpy(MatchMotion()(frames))[0]
    assert motion.shape == (64, 64, 2)
    # away from the edges, where the moved frame has no data yet, every pixel has the true motion
    np.testing.assert_allclose(motion[16:-16, 16:-16], np.broadcast_to(shift, (32, 32, 2)), atol=tolerance)


def test_match_motion_leaves_a_dry_or_steady_field_still():
    from nowcast.model.architectures import MatchMotion

    steady = np.repeat(_moving_field((0, 0), 1, 32)[None, :, :, :, None], 4, axis=1)
    for frames in (np.zeros((1, 4, 32, 32, 1), "float32"), steady):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(MatchMotion()(frames)), 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_untrained_matched_motion_model_is_an_extrapolation_nowcast(name):
    """With the change head zeroed, the model advects the last frame along the matched motion."""
    from nowcast.model.architectures import Advect, MatchMotion

    cfg = ArchitectureConfig(t_in=4, t_out=3, height=64, width=64, filters=(4,), lstm_units=4,
                             decoder_filters=2, advection=True, matched_motion=True)
    model = build_model(name, cfg)
    change = model.get_layer("to_target")
    change.set_weights([np.zeros_like(w) for w in change.get_weights()])
    frames = _moving_field((2, -4), steps=7)
    out = keras.ops.convert_to_numpy(model(frames[None, :4, :, :, None]))[0, ..., 0]
    expected = Advect(3)(frames[None, :4, :, :, None], MatchMotion()(frames[None, :4, :, :, None]))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(expected)[0, ..., 0], atol=1e-6)
    # and that is close to the truth (sub-pixel motion interpolates), away from the upwind edges,
    # where persistence is far off
    inner = (slice(None), slice(24, -24), slice(24, -24))
    assert np.abs(out[inner] - frames[4:][inner]).max() < 0.05
    assert np.abs(frames[3:4][:, 24:-24, 24:-24] - frames[4:][inner]).max() > 0.5


def _levels_variance(frames: np.ndarray, level: int) -> np.ndarray:
    """Variance over each ``(y, x)`` frame of one :func:`scale_levels` level."""
    from nowcast.model.layers import scale_levels

    return keras.ops.convert_to_numpy(scale_levels(frames))[..., level].var(axis=(1, 2))


def test_scale_levels_sum_to_the_frame():
    from nowcast.model.layers import scale_levels

    frame = np.random.default_rng(5).gamma(1.0, 2.0, (2, 40, 36)).astype("float32")
    levels = keras.ops.convert_to_numpy(scale_levels(frame))
    assert levels.shape == (2, 40, 36, 6)
    np.testing.assert_allclose(levels.sum(axis=-1), frame, atol=1e-4)


def test_lagrangian_ar_carries_a_steady_translation_like_advection():
    """Frames that only move: every scale stays correlated, so the forecast is the advected frame."""
    from nowcast.model.layers import Advect, LagrangianAR

    frames = _moving_field((2, -3), steps=7)[None, :4, :, :, None]
    motion = np.broadcast_to(np.float32([2.0, -3.0]), (1, 64, 64, 2))
    forecast = keras.ops.convert_to_numpy(LagrangianAR(3)(frames, motion))[0, ..., 0]
    advected = keras.ops.convert_to_numpy(Advect(3)(frames, motion))[0, ..., 0]
    inner = (slice(None), slice(24, -24), slice(24, -24))  # away from the edges the moved frames lack
    assert np.abs(forecast[inner] - advected[inner]).max() < 0.05 * advected[inner].max()


def test_lagrangian_ar_fades_the_scales_that_decorrelate_and_keeps_the_rest():
    """A steady large-scale field under fine noise drawn anew each frame: the noise fades, the field stays."""
    from scipy.ndimage import gaussian_filter

    from nowcast.model.layers import LagrangianAR

    rng = np.random.default_rng(6)
    large = gaussian_filter(rng.normal(size=(96, 96)), 12).astype("float32")
    large /= large.std()
    frames = np.stack([large + 0.5 * rng.normal(size=large.shape).astype("float32") for _ in range(4)])
    forecast = keras.ops.convert_to_numpy(
        LagrangianAR(3)(frames[None, ..., None], np.zeros((1, 96, 96, 2), "float32")))[0, ..., 0]
    fine_before, fine_after = _levels_variance(frames[-1:], 0)[0], _levels_variance(forecast, 0)
    assert (fine_after < 0.05 * fine_before).all()  # uncorrelated pixel noise is gone at every lead
    for lead in forecast:
        assert np.corrcoef(lead.ravel(), large.ravel())[0, 1] > 0.97
    noisy = np.corrcoef(frames[-1].ravel(), large.ravel())[0, 1]
    assert noisy < 0.95  # the last frame itself is further from the field than the forecast


def test_scale_correlations_keep_their_digits_on_a_large_grid():
    """The slow levels' lag correlations, near 1, set their AR(2) decay: float32 sums over a whole grid must
    not blur them, nor an affine change of units move them (a 700 px RMI frame's coarsest level scored .9979
    in float64 and .9964 or .9988 in float32, by its units)."""
    from scipy.ndimage import gaussian_filter

    from nowcast.model.layers import _correlation, scale_levels

    rng = np.random.default_rng(8)
    now = gaussian_filter(rng.normal(size=(640, 640)), 24)
    before = now + 0.1 * gaussian_filter(rng.normal(size=now.shape), 24)  # correlates about .995
    inside = np.ones((1, 640, 640), "float32")
    inside[:, :, :200] = 0  # outside coverage: left out of every sum
    for unit, offset in ((1.0, 0.0), (1.1, 0.6), (0.2, -3.0)):
        levels = [keras.ops.convert_to_numpy(scale_levels(((f - offset) / unit).astype("float32")[None]))
                  for f in (now, before)]
        got = keras.ops.convert_to_numpy(_correlation(*levels, inside))[0]
        a, b = (level[0, :, 200:].reshape(-1, level.shape[-1]).astype("float64") for level in levels)
        expected = [np.corrcoef(a[:, k], b[:, k])[0, 1] for k in range(a.shape[1])]
        assert expected[-1] > 0.99
        np.testing.assert_allclose(got, expected, atol=2e-5)


def test_the_base_does_not_depend_on_the_frames_units():
    """Frames normalised by a unit and an offset give the log1p frames' motion and AR forecast, when the
    block match's penalty follows the unit (motion_penalty), as a model's normaliser sets it."""
    from scipy.ndimage import gaussian_filter

    from nowcast.model.architectures import motion_penalty
    from nowcast.model.layers import LagrangianAR, MatchMotion

    rng = np.random.default_rng(7)
    size, pad = 160, 40
    field = gaussian_filter(rng.normal(size=(size + 2 * pad,) * 2), 6)
    field = np.log1p(np.maximum(field / field.std() - 0.5, 0) * 4)
    field += 0.02 * gaussian_filter(rng.normal(size=field.shape), 1)  # weak texture: near-ties in the match
    frames = np.stack([field[pad - 3 * t:pad - 3 * t + size, pad + 2 * t:pad + 2 * t + size]
                       for t in range(4)]).astype("float32")[None, ..., None]
    unit, offset = 1.1, 0.6
    normalised = ((frames - offset) / unit).astype("float32")
    motion = keras.ops.convert_to_numpy(MatchMotion()(frames))
    unscaled = keras.ops.convert_to_numpy(MatchMotion()(normalised))
    assert np.abs(unscaled - motion).max() > 0.1  # the default penalty, in other units, moves the motion
    scaled = keras.ops.convert_to_numpy(MatchMotion(penalty=motion_penalty(unit))(normalised))
    np.testing.assert_allclose(scaled, motion, atol=1e-4)
    forecast = keras.ops.convert_to_numpy(LagrangianAR(3)(frames, motion))
    in_units = keras.ops.convert_to_numpy(LagrangianAR(3)(normalised, scaled))
    np.testing.assert_allclose(in_units * unit + offset, forecast, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_untrained_lagrangian_ar_model_is_its_base(name):
    """With the change head zeroed, the model is S-PROG's scale-wise forecast along the matched motion."""
    from nowcast.model.layers import LagrangianAR, MatchMotion

    cfg = ArchitectureConfig(t_in=4, t_out=3, height=64, width=64, filters=(4,), lstm_units=4,
                             decoder_filters=2, advection=True, matched_motion=True, lagrangian_ar=True)
    model = build_model(name, cfg)
    change = model.get_layer("to_target")
    change.set_weights([np.zeros_like(w) for w in change.get_weights()])
    frames = _moving_field((2, -4), steps=4)[None, ..., None]
    out = keras.ops.convert_to_numpy(model(frames))[0, ..., 0]
    expected = LagrangianAR(3)(frames, MatchMotion()(frames))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(expected)[0, ..., 0], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_initial_weights_come_from_the_seed_alone(name):
    """Another thread drawing from Python's global random while the model is built changes nothing (a
    Prefect service's jitter did: a training run's seed then started from other weights)."""
    cfg = ArchitectureConfig(t_in=2, t_out=2, height=8, width=8, filters=(4,), lstm_units=4, residual=False)
    first = build_model(name, cfg, seed=3).get_weights()
    done = threading.Event()

    def draw() -> None:
        while not done.is_set():
            random.random()
            time.sleep(0.0002)

    drawer = threading.Thread(target=draw, daemon=True)
    drawer.start()
    try:
        random.seed(99)
        again = build_model(name, cfg, seed=3).get_weights()
    finally:
        done.set()
        drawer.join()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = build_model(name, cfg, seed=4).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
