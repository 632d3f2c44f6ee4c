"""The change's weight and smoothing per lead, chosen on validation batches (nowcast.model.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from nowcast.model import calibration
from nowcast.model.architectures import ArchitectureConfig, build_model
from nowcast.model.layers import box_mean
from nowcast.model.normalization import Normalizer

STATS = {"precip": {"mean": 0.5, "std": 1.0, "log1p_mean": 0.3, "log1p_std": 0.5}}


def _persistence_plus_one(t_out: int):
    """A residual model whose change is +1 (normalised) everywhere: its head's bias set by hand."""
    cfg = ArchitectureConfig(t_in=3, t_out=t_out, height=8, width=8, channels=2, filters=(4,), lstm_units=4,
                             decoder_filters=2)
    net = build_model("cnn_lstm", cfg)
    head = net.get_layer("to_target")
    kernel, _ = head.get_weights()
    head.set_weights([kernel, np.ones(1, "float32")])
    return net


def _batch(rng, t_out: int, helpful_from: int):
    """Inputs; targets equal to persistence before lead ``helpful_from``, persistence + 1 from it on."""
    inputs = rng.normal(size=(4, 3, 8, 8, 2)).astype("float32")
    inputs[..., 1] = 1.0  # covered everywhere
    last = inputs[:, -1, :, :, :1]
    targets = np.repeat(last[:, None], t_out, axis=1)
    targets[:, helpful_from:] += 1.0
    return inputs, targets, np.ones(targets.shape[:-1], "float32")


def test_each_lead_takes_the_factor_that_fits_the_validation_data():
    rng = np.random.default_rng(0)
    net = _persistence_plus_one(t_out=3)
    normalizer = Normalizer(("precip",), "precip", STATS, coverage=True)
    batches = [_batch(rng, 3, helpful_from=1) for _ in range(2)]
    result = calibration.calibrate(net, batches, normalizer, matching=False)
    assert result is not None
    assert result["scales"] == [0.0, 1.0, 1.0]  # the change only hurts at the first lead
    assert result["smoothing"] == [1, 1, 1]  # the targets are pixel noise: smoothing only loses it
    assert result["validation_mae"]["0.0"]["1"][0] == pytest.approx(0.0, abs=1e-5)
    assert result["validation_mae"]["1.0"]["1"][0] > 0.1
    np.testing.assert_array_equal(net.get_layer("change_scale").get_weights()[0], [0.0, 1.0, 1.0])
    inputs, targets, _ = batches[0]
    np.testing.assert_allclose(np.asarray(net(inputs)), targets, atol=1e-5)  # the model now fits every lead


def test_each_lead_takes_the_box_size_that_fits_the_validation_data():
    """Targets that are the model's own forecast at lead 1 and its 5-pixel box mean at lead 2."""
    rng = np.random.default_rng(2)
    net = _persistence_plus_one(t_out=2)
    normalizer = Normalizer(("precip",), "precip", STATS, coverage=True)
    inputs, _, weights = _batch(rng, 2, helpful_from=0)
    forecast = np.asarray(net(inputs))
    targets = forecast.copy()
    targets[:, 1] = ops.convert_to_numpy(box_mean(forecast[:, 1], 5))
    result = calibration.calibrate(net, [(inputs, targets, weights)], normalizer, matching=False)
    assert result is not None
    assert (result["scales"], result["smoothing"]) == ([1.0, 1.0], [1, 5])
    np.testing.assert_array_equal(net.get_layer("lead_smoothing").get_weights()[0][1], [0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(np.asarray(net(inputs)), targets, atol=1e-5)


def test_probability_matching_is_applied_before_the_errors_are_counted():
    """Matched to its base, a constant change vanishes: every factor scores alike, the model stays."""
    rng = np.random.default_rng(1)
    net = _persistence_plus_one(t_out=2)
    normalizer = Normalizer(("precip",), "precip", STATS, coverage=True)
    result = calibration.calibrate(net, [_batch(rng, 2, helpful_from=2)], normalizer, matching=True)
    assert result is not None
    assert result["scales"] == [1.0, 1.0]
    assert result["smoothing"] == [1, 1]
    unsmoothed = np.array([by_size["1"] for by_size in result["validation_mae"].values()])
    np.testing.assert_allclose(unsmoothed, 0.0, atol=1e-5)  # without matching, factor 1 would miss by +1


def test_the_factor_scales_the_change_from_the_lagrangian_base_not_from_the_advected_frame():
    """A model correcting S-PROG's scale-wise forecast: factor 0 is that forecast, whatever is matched to."""
    rng = np.random.default_rng(2)
    cfg = ArchitectureConfig(t_in=3, t_out=2, height=16, width=16, channels=2, filters=(4,), lstm_units=4,
                             decoder_filters=2, advection=True, matched_motion=True, lagrangian_ar=True)
    net = build_model("cnn_lstm", cfg)
    head = net.get_layer("to_target")
    head.set_weights([head.get_weights()[0], np.ones(1, "float32")])  # a change of +1 everywhere
    inputs = rng.normal(size=(4, 3, 16, 16, 2)).astype("float32")
    inputs[..., 1] = 1.0
    import keras

    parts = keras.Model(net.inputs, [net.get_layer(name).output for name in ("lagrangian_ar", "advection")])
    base, advected = (np.asarray(p) for p in parts(inputs))
    assert np.abs(base - advected).mean() > 0.1  # the two differ, so the test can tell them apart
    normalizer = Normalizer(("precip",), "precip", STATS, coverage=True)
    result = calibration.calibrate(net, [(inputs, base, np.ones(base.shape[:-1], "float32"))], normalizer,
                                   matching=False)
    assert result is not None
    assert result["scales"] == [0.0, 0.0]
    np.testing.assert_allclose(result["validation_mae"]["0.0"]["1"], 0.0, atol=1e-5)
    # that base fades each scale itself: no box smoothing is offered on top of it
    assert result["smoothing"] == [1, 1]
    assert set(result["validation_mae"]["0.0"]) == {"1"}


def test_models_without_a_change_or_without_batches_are_left_alone():
    normalizer = Normalizer(("precip",), "precip", STATS, coverage=True)
    plain = build_model("cnn_lstm", ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, channels=2,
                                                        filters=(4,), lstm_units=4, residual=False))
    assert calibration.calibrate(plain, [], normalizer, matching=False) is None
    net = _persistence_plus_one(t_out=2)
    assert calibration.calibrate(net, [], normalizer, matching=False) is None
    np.testing.assert_array_equal(net.get_layer("change_scale").get_weights()[0], [1.0, 1.0])
