"""Covering a grid with the model's patches and blending the patch forecasts back (pure numpy).

Models are trained on patches (the ``input_shape`` in their metadata), so a
grid larger than the patch is cut into **overlapping tiles** of the patch
size, every tile is forecast, and the tiles are blended with weights that
ramp linearly from 1/(overlap+1) at a tile's edge to 1 beyond ``overlap``
pixels in. A pixel covered by one tile gets exactly that tile's forecast; in
the overlaps the seams fade, which hides the edge effects of the zero
padding. The last tile of each row and column is aligned with the grid's
edge, so every pixel is covered and no padding is needed.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class TilingError(ValueError):
    """A grid, patch and overlap that cannot tile."""


def tile_starts(size: int, patch: int, overlap: int) -> list[int]:
    """First pixel of every tile along one axis: steps of ``patch - overlap``, the last flush with the end.

    >>> tile_starts(10, 4, 1)
    [0, 3, 6]
    >>> tile_starts(4, 4, 1)
    [0]
    """
    if patch > size:
        raise TilingError(f"the grid ({size} pixels) is smaller than the model's {patch}-pixel patch")
    if not 0 <= overlap < patch:
        raise TilingError(f"overlap must be in [0, {patch}), got {overlap}")
    step = patch - overlap
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def ramp(patch: int, overlap: int) -> np.ndarray:
    """1-D blending weights: ``min(i + 1, patch - i, overlap + 1) / (overlap + 1)``, all positive."""
    i = np.arange(patch)
    return (np.minimum(np.minimum(i + 1, patch - i), overlap + 1) / (overlap + 1)).astype("float32")


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How a ``grid`` is covered by overlapping ``patch`` tiles.

    Attributes:
        grid: ``(ny, nx)`` of the archive.
        patch: ``(py, px)`` the model was trained on.
        overlap: pixels shared by neighbouring tiles (per axis, capped at patch - 1).
    """

    grid: tuple[int, int]
    patch: tuple[int, int]
    overlap: int

    @property
    def origins(self) -> list[tuple[int, int]]:
        """Top-left pixel of each tile, row by row."""
        oy, ox = (min(self.overlap, p - 1) for p in self.patch)
        return [(y0, x0) for y0 in tile_starts(self.grid[0], self.patch[0], oy)
                for x0 in tile_starts(self.grid[1], self.patch[1], ox)]

    @property
    def weights(self) -> np.ndarray:
        """``(py, px)`` blending weight of a tile's pixels."""
        oy, ox = (min(self.overlap, p - 1) for p in self.patch)
        return np.outer(ramp(self.patch[0], oy), ramp(self.patch[1], ox))

    def split(self, windows: np.ndarray) -> np.ndarray:
        """``(n, t, ny, nx, c)`` -> ``(n * tiles, t, py, px, c)``, tiles of each window together."""
        py, px = self.patch
        return np.stack([w[:, y0:y0 + py, x0:x0 + px] for w in windows for y0, x0 in self.origins])

    def blend(self, tiles: np.ndarray) -> np.ndarray:
        """``(n * tiles, t, py, px)`` -> ``(n, t, ny, nx)``: weighted mean of the overlapping tiles."""
        origins, weights = self.origins, self.weights.astype("float64")  # products exact: one tile -> itself
        py, px = self.patch
        n = tiles.shape[0] // len(origins)
        grouped = tiles.reshape(n, len(origins), *tiles.shape[1:])
        total = np.zeros((n, tiles.shape[1], *self.grid), dtype="float64")
        norm = np.zeros(self.grid, dtype="float64")
        weighted = np.empty((n, tiles.shape[1], py, px), dtype="float64")
        for k, (y0, x0) in enumerate(origins):
            norm[y0:y0 + py, x0:x0 + px] += weights
            np.multiply(grouped[:, k], weights, out=weighted)
            total[:, :, y0:y0 + py, x0:x0 + px] += weighted
        total /= norm
        return total.astype("float32")
