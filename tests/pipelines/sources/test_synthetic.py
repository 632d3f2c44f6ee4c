"""The synthetic generator: determinism, realism and a motion field that the rain follows."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from nowcast.pipelines.sources import Source, SourceError, SyntheticSource, get_source
from nowcast.pipelines.sources.synthetic import _block_cells, _texture


def frames(source: SyntheticSource, indices) -> np.ndarray:
    return np.stack([source.read(source.items()[i])["precip"] for i in indices])


def test_same_seed_same_frames_in_any_order_or_partition():
    source = SyntheticSource(shape=(96, 128), n_frames=40, seed=11)
    sequential = frames(source, range(40))
    _block_cells.cache_clear()
    _texture.cache_clear()
    # A worker that owns only a late chunk, computed backwards, on an unpickled copy.
    clone = pickle.loads(pickle.dumps(source))
    late = frames(clone, range(39, 29, -1))[::-1]
    np.testing.assert_array_equal(late, sequential[30:40])
    _block_cells.cache_clear()
    assert np.array_equal(SyntheticSource(shape=(96, 128), n_frames=40, seed=11).frame(17), sequential[17])
    other_seed = SyntheticSource(shape=(96, 128), n_frames=40, seed=12).frame(17)
    assert not np.array_equal(other_seed, sequential[17])


def test_frames_do_not_depend_on_the_worker_thread_settings():
    """A worker process with other BLAS/OpenMP thread counts computes the same bytes."""
    code = ("import sys, numpy as np; from nowcast.pipelines.sources import SyntheticSource; "
            "sys.stdout.buffer.write(SyntheticSource(shape=(512, 512), n_frames=30, seed=9)"
            ".frame(23).tobytes())")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    worker = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True,
                            timeout=120).stdout
    here = SyntheticSource(shape=(512, 512), n_frames=30, seed=9).frame(23)
    assert np.frombuffer(worker, dtype=np.float32).reshape(here.shape).tobytes() == here.tobytes()
    assert (here >= 1).any()


def test_frames_look_like_radar_rain_rates():
    source = SyntheticSource(shape=(256, 256), n_frames=400, seed=3)
    block = frames(source, range(0, 400, 8))
    assert block.dtype == np.float32
    assert block.shape == (50, 256, 256)
    assert np.isfinite(block).all()
    assert block.min() >= 0
    wet = (block >= 1.0).mean()
    assert 0.03 <= wet <= 0.15, wet
    assert (block == 0).mean() > 0.6  # mostly dry
    assert 20 <= block.max() <= 300  # convective peaks of tens of mm/h
    per_frame = (block >= 1.0).mean(axis=(1, 2))
    assert (per_frame > 0).all()  # rain all along, no spin-up gap at the start


def _advect_back(frame: np.ndarray, motion: np.ndarray, steps: int) -> np.ndarray:
    """Semi-Lagrangian extrapolation: value at p comes from p - steps * V(p)."""
    rows, cols = np.mgrid[0:frame.shape[0], 0:frame.shape[1]].astype("float64")
    coords = [rows - steps * motion[1], cols - steps * motion[0]]
    return ndimage.map_coordinates(frame, coords, order=1, mode="constant", cval=np.nan)


@pytest.mark.parametrize("rotation", [0.0, 0.004])
def test_rain_moves_with_the_motion_field(rotation):
    source = SyntheticSource(shape=(192, 256), n_frames=60, seed=5, motion=(3.0, -1.5),
                             rotation=rotation)
    motion = source.motion_field()
    assert motion.shape == (2, 192, 256)
    assert motion.dtype == np.float32
    np.testing.assert_allclose(motion[:, 96, 128], [3.0, -1.5], atol=0.02)
    if rotation:
        assert np.ptp(motion[0]) > 0.5
        assert np.ptp(motion[1]) > 0.5
    steps = 3
    shifted, still = [], []
    for start in (5, 20, 35, 50):
        earlier, later = frames(source, [start, start + steps])
        assert (later >= 1.0).mean() > 0.01  # enough rain for the correlation to mean something
        moved = _advect_back(earlier, motion, steps)
        inside = np.isfinite(moved)
        shifted.append(np.corrcoef(moved[inside], later[inside])[0, 1])
        still.append(np.corrcoef(earlier[inside], later[inside])[0, 1])
    # Cells also grow and decay over the 3 steps, so the match is close but not exact.
    assert np.mean(shifted) > 0.85, shifted
    assert np.mean(shifted) > np.mean(still) + 0.2, (shifted, still)


def test_best_matching_shift_is_the_motion():
    """Independent of the motion field's own code: the shift that best aligns two frames."""
    source = SyntheticSource(shape=(256, 256), n_frames=20, seed=2, motion=(2.5, 1.0), rotation=0.0)
    steps = 4
    earlier, later = frames(source, [8, 8 + steps])
    n = earlier.shape[0]
    scores = {}
    for dy in range(-8, 9):
        for dx in range(-12, 13):
            a = earlier[max(0, -dy):n - max(0, dy), max(0, -dx):n - max(0, dx)]
            b = later[max(0, dy):n - max(0, -dy), max(0, dx):n - max(0, -dx)]
            scores[dx, dy] = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    best = max(scores, key=scores.get)
    assert best == (10, 4)  # steps * motion = (10, 4) pixels
    # Cells grow and decay over 4 steps, so the aligned frames match well but not exactly.
    assert scores[best] > 0.6
    assert scores[best] > scores[0, 0] + 0.2


def test_missing_frames_are_listed_and_read_as_nan():
    source = SyntheticSource(shape=(32, 48), n_frames=6, missing=(1, 4), start="2024-05-01T12:00",
                             time_step="PT10M")
    items = source.items()
    assert [item.path for item in items] == [f"synthetic:{i}" for i in range(6)]
    assert items[1].time == np.datetime64("2024-05-01T12:10:00")
    assert source.time_step() == np.timedelta64(600, "s")
    for i, item in enumerate(items):
        frame = source.read(item)["precip"]
        assert frame.shape == (32, 48)
        assert np.isnan(frame).all() == (i in (1, 4))
        assert not np.isnan(frame).any() or i in (1, 4)


def test_grid_is_1_km_polar_stereographic_north_up():
    source = get_source("synthetic", shape=(40, 60), n_frames=2)
    assert isinstance(source, Source)
    assert source.trusted
    grid = source.read_grid(source.items()[0])
    assert grid.shape == (40, 60)
    assert grid.units == "m"
    np.testing.assert_allclose(np.diff(grid.x), 1000.0)
    np.testing.assert_allclose(np.diff(grid.y), -1000.0)
    assert grid.crs_attrs["grid_mapping_name"] == "polar_stereographic"
    assert source.fields()[0].name == "precip"
    assert source.fields()[0].units == "mm h-1"


def test_bad_options_are_source_errors():
    with pytest.raises(SourceError, match="ISO 8601"):
        SyntheticSource(time_step="5 minutes")
    with pytest.raises(SourceError, match=r"8\.\.8192"):
        SyntheticSource(shape=(4, 64))
    with pytest.raises(SourceError, match=r"accepts.*time_step"):
        get_source("synthetic", frames=3)
    with pytest.raises(SourceError, match="outside"):
        SyntheticSource(n_frames=3).frame(3)


@pytest.mark.fault("sources", "`--synthetic --frames 1000000000000`",
                   "refused before any work, naming the bound")
def test_a_frame_count_past_the_bound_is_refused_before_any_work():
    """A hostile-user find: --synthetic --frames 1000000000000 started and grew to 4 GB in a minute."""
    from nowcast.pipelines.sources.synthetic import MAX_FRAMES

    with pytest.raises(SourceError, match=r"must be 1\.\.200000"):
        get_source("synthetic", n_frames=10**12)
    assert get_source("synthetic", n_frames=MAX_FRAMES, shape=(8, 8)).n_frames == MAX_FRAMES
