"""Tiling and blending of patch-trained models over a full grid (pure numpy, no model)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nowcast.model.tiling import Tiling, TilingError, ramp, tile_starts


@given(size=st.integers(4, 80), patch=st.integers(1, 40), overlap=st.integers(0, 39))
@settings(max_examples=200, deadline=None)
def test_tiles_cover_the_axis_within_bounds(size, patch, overlap):
    if patch > size or overlap >= patch:
        with pytest.raises(TilingError):
            tile_starts(size, patch, overlap)
        return
    starts = tile_starts(size, patch, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        assert 0 <= s <= size - patch
        covered[s:s + patch] = True
    assert covered.all()
    assert starts == sorted(set(starts))
    assert all(b - a <= patch - overlap for a, b in itertools.pairwise(starts))


def test_ramp_is_positive_and_flat_inside():
    weights = ramp(10, 3)
    np.testing.assert_allclose(weights, [0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    np.testing.assert_array_equal(ramp(5, 0), np.ones(5))


@given(ny=st.integers(6, 40), nx=st.integers(6, 40), py=st.integers(2, 6), px=st.integers(2, 6),
       overlap=st.integers(0, 5), seed=st.integers(0, 100))
@settings(max_examples=60, deadline=None)
def test_blend_of_split_returns_the_field(ny, nx, py, px, overlap, seed):
    """Every tile agrees with the field, so the weighted mean is the field itself."""
    field = np.random.default_rng(seed).normal(size=(2, 3, ny, nx, 1)).astype("float32")
    tiling = Tiling((ny, nx), (py, px), overlap)
    tiles = tiling.split(field)
    assert tiles.shape == (2 * len(tiling.origins), 3, py, px, 1)
    np.testing.assert_allclose(tiling.blend(tiles[..., 0]), field[..., 0], rtol=1e-6, atol=1e-6)


def test_single_coverage_pixels_take_their_tile_exactly_and_seams_mix():
    tiling = Tiling((10, 10), (6, 6), 2)
    assert tiling.origins == [(0, 0), (0, 4), (4, 0), (4, 4)]
    tiles = np.stack([np.full((1, 6, 6), float(k)) for k in range(4)]).astype("float32")
    out = tiling.blend(tiles)[0, 0]
    assert out[0, 0] == 0
    assert out[0, 9] == 1
    assert out[9, 0] == 2
    assert out[9, 9] == 3
    seam = out[0, 4:6]  # covered by tiles 0 and 1, weights ramp across the overlap
    assert 0 < seam[0] < seam[1] < 1
