"""Covering a grid with the model's patches and blending the patch forecasts back (pure numpy).

Two coverings share one interface (``grid``, ``patch``, ``origins``,
``split``, ``blend``): :class:`WholeGrid`, for fully convolutional models,
which see the whole grid at once (padded to a size they accept), and
:class:`Tiling`, for models that only take their training patch.

A patch-only model is trained on patches (the ``input_shape`` in its metadata), so a
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

from nowcast.errors import InputError


class TilingError(InputError):
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


@dataclasses.dataclass(frozen=True)
class WholeGrid:
    """The whole grid as one tile, padded at the bottom and right to a multiple of ``multiple``.

    Attributes:
        grid: ``(ny, nx)`` of the archive.
        multiple: the size the model's height and width must be a multiple of.
        fill: per input channel, the value padded pixels take (unobserved:
            "nothing", and 0 in a coverage channel).

    >>> cover = WholeGrid((5, 6), 4, (0.0,))
    >>> cover.patch, cover.split(np.ones((1, 2, 5, 6, 1), "float32")).shape
    ((8, 8), (1, 2, 8, 8, 1))
    >>> cover.blend(np.ones((1, 3, 8, 8), "float32")).shape
    (1, 3, 5, 6)
    """

    grid: tuple[int, int]
    multiple: int
    fill: tuple[float, ...]

    @property
    def patch(self) -> tuple[int, int]:
        """The padded grid: what the model sees."""
        ny, nx = self.grid
        return (-(-ny // self.multiple) * self.multiple, -(-nx // self.multiple) * self.multiple)

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(0, 0)]

    def split(self, windows: np.ndarray) -> np.ndarray:
        """``(n, t, ny, nx, c)`` -> ``(n, t, py, px, c)``, padded with each channel's fill value."""
        (ny, nx), (py, px) = self.grid, self.patch
        if len(self.fill) != windows.shape[-1]:
            raise TilingError(f"{len(self.fill)} fill values for {windows.shape[-1]} channels")
        out = np.empty((*windows.shape[:2], py, px, windows.shape[-1]), dtype=windows.dtype)
        out[...] = np.asarray(self.fill, dtype=windows.dtype)
        out[:, :, :ny, :nx] = windows
        return out

    def blend(self, tiles: np.ndarray) -> np.ndarray:
        """``(n, t, py, px)`` -> ``(n, t, ny, nx)``: the padding cut off."""
        ny, nx = self.grid
        return np.ascontiguousarray(tiles[:, :, :ny, :nx], dtype="float32")
