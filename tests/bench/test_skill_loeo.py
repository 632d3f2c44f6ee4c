"""The accelerator's bundle: quantised frames and samples cut from them (bench.skill_loeo)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from bench.skill_loeo import augment, cut_samples, dequantise, quantise


def test_quantised_frames_keep_rain_to_a_hundredth_and_gaps_as_nan():
    frames = np.array([[[0.0, 0.004, 0.126], [np.nan, 655.0, 1e4]]], "float32")
    back = dequantise(quantise(frames))
    assert np.isnan(back[0, 1, 0])
    assert np.isfinite(back[0, 0]).all()
    np.testing.assert_allclose(back[0, 0], [0.0, 0.0, 0.13], atol=1e-6)
    assert back[0, 1, 1] == np.float32(655.0)
    assert back[0, 1, 2] == np.float32(655.34)  # clipped, not wrapped


def test_samples_are_cut_where_the_index_says():
    frames = np.arange(12 * 8 * 8, dtype="float32").reshape(12, 8, 8)
    inputs, targets = cut_samples(frames, np.array([[3, 0, 4], [5, 4, 0]]), t_in=4, t_out=2, patch=4)
    assert inputs.shape == (2, 4, 4, 4, 1)
    assert targets.shape == (2, 2, 4, 4, 1)
    np.testing.assert_array_equal(inputs[0, :, :, :, 0], frames[0:4, 0:4, 4:8])
    np.testing.assert_array_equal(targets[1, :, :, :, 0], frames[6:8, 4:8, 0:4])


def test_augmentation_moves_inputs_targets_and_weights_alike():
    rng = np.random.default_rng(0)
    x = rng.random((16, 3, 8, 8, 1)).astype("float32")
    y, w = x[:, -1:].copy(), x[:, -1:, ..., 0].copy()
    ax, ay, aw = augment(np.random.default_rng(1), x, y, w)
    np.testing.assert_array_equal(ax[:, -1:], ay)
    np.testing.assert_array_equal(ay[..., 0], aw)
    assert sum(not np.array_equal(a, b) for a, b in zip(ax, x, strict=True)) > 0


def test_what_the_accelerator_imports_needs_no_store_library():
    """The device machine has keras and numpy but no zarr, xarray, Beam or pysteps."""
    code = ("import sys, bench.skill_loeo, nowcast.model.calibration; "
            "print(sorted(m for m in ('zarr', 'xarray', 'apache_beam', 'pysteps', 'fsspec') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
