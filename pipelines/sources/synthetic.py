"""Synthetic precipitation: advected, growing and decaying rain cells on a 1 km grid.

For users without radar data and for tests: fields that look like radar rain
rates (mostly dry, a few percent above 1 mm/h, convective peaks of tens of
mm/h) and move with a known, spatially smooth motion field, so a nowcast can
be checked against the truth.

Frame ``i`` is a closed-form function of ``(configuration, i)``: cells are born
in per-step slots whose properties come from a random generator seeded with
``(seed, block of 16 slots)``, and each cell's position, size and intensity follow from
its birth slot and the frame time. A worker can therefore generate any subset
of frames, in any order, and get the same numbers as a sequential run; the
cost of a frame is O(pixels) (separable Gaussians summed over their boxes plus
an advected texture), independent of ``i``.

The flow is a solid-body rotation about a distant centre, ``V(p) = w x (p - c)``
with ``V = motion`` at the domain centre: smooth in space, constant in time,
and with exact closed-form trajectories.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import numpy as np

from nowcast.pipelines.sources.base import SourceError, SourceItem
from nowcast.pipelines.stores.archive import PRECIP, FieldSpec
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.timeaxis import parse_time_step, to_datetime64

PROJECTION = "+proj=stere +lat_0=90 +lon_0=10 +lat_ts=60 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
CENTRE_XY = (0.0, -3_700_000.0)  # about 56.5 N, 10 E in the projection above
PIXEL_M = 1000.0
MAX_LIFETIME = 60  # steps; a frame looks back this many birth slots
SLOTS_PER_BLOCK = 16  # birth slots drawn from one generator
STORM_SPREAD = 18.0  # pixels; how far a storm's cells lie from its centre
TEXTURE_SIZE = 256  # wrapped by uint16 bit operations: must stay 256
DRIZZLE_FLOOR = 0.1  # mm/h; weaker rates read as dry, like a radar's detection floor
MAX_RATE = 150.0  # mm/h; a cap on the rare texture peaks
CELL_REACH = 4.0  # sigmas; beyond it a cell adds < 4e-4 of its peak (below the drizzle floor)


MAX_FRAMES = 200_000  # about two years of 5-minute frames: a bound, so a typo cannot fill memory or a disk


@dataclasses.dataclass(frozen=True, init=False)
class SyntheticSource:
    """Generated rain-rate frames (mm/h) with a known motion field.

    Args:
        shape: grid size ``(ny, nx)`` in 1 km pixels.
        n_frames: number of frames listed.
        start: time of frame 0 (ISO 8601).
        time_step: ISO 8601 step between frames, e.g. ``PT5M`` (stored as ``step``,
            since ``time_step()`` is the source method).
        seed: the random seed; frames are a pure function of it and the other options.
        motion: flow ``(u, v)`` at the domain centre, pixels per step; ``u`` along
            columns (east), ``v`` along rows (down, i.e. south on this north-up grid).
        rotation: angular velocity of the flow, radians per step (0: uniform flow).
        density: roughly how many cells are alive per 100 x 100 pixels (sets the wet fraction).
        missing: frame indices listed but read as all-NaN (to exercise gaps).
    """

    shape: tuple[int, int]
    n_frames: int
    start: str
    step: str
    seed: int
    motion: tuple[float, float]
    rotation: float
    density: float
    missing: tuple[int, ...]

    trusted: ClassVar[bool] = True  # generated frames need no pre-ingest check

    def __init__(self, shape: tuple[int, int] = (256, 256), n_frames: int = 288,
                 start: str = "2024-01-01T00:00", time_step: str = "PT5M", seed: int = 0,
                 motion: tuple[float, float] = (2.0, 1.0), rotation: float = 0.002,
                 density: float = 2.0, missing: tuple[int, ...] = ()) -> None:
        values = {
            "shape": tuple(int(n) for n in shape), "n_frames": int(n_frames), "start": str(start),
            "step": str(time_step), "seed": int(seed), "motion": tuple(float(m) for m in motion),
            "rotation": float(rotation), "density": float(density),
            "missing": tuple(sorted({int(i) for i in missing})),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)
        if len(self.shape) != 2 or min(self.shape) < 8 or max(self.shape) > 8192:
            raise SourceError(f"shape {self.shape} must be (ny, nx) with both in 8..8192 pixels")
        if not 1 <= self.n_frames <= MAX_FRAMES:
            raise SourceError(f"n_frames={self.n_frames} must be 1..{MAX_FRAMES} (a year of 5-minute frames "
                              "is 105,120): generate a longer record in several ingests")
        if self.density <= 0:
            raise SourceError(f"density={self.density} must be positive (live cells per 100x100 px)")
        if len(self.motion) != 2 or not all(math.isfinite(m) for m in self.motion):
            raise SourceError(f"motion={self.motion} must be (u, v) in pixels per step")
        try:
            parse_time_step(self.step)
            to_datetime64(self.start)
        except ValueError as error:
            raise SourceError(f"synthetic source: {error}") from error

    @property
    def name(self) -> str:
        return "synthetic"

    def fields(self) -> tuple[FieldSpec, ...]:
        return (PRECIP,)

    def time_step(self) -> np.timedelta64:
        return parse_time_step(self.step)

    def items(self) -> list[SourceItem]:
        start, step = to_datetime64(self.start), parse_time_step(self.step)
        return [SourceItem(time=start + i * step, path=f"synthetic:{i}", index_in_file=0)
                for i in range(self.n_frames)]

    def grid(self) -> Grid:
        """The synthetic 1 km polar stereographic grid (north-up: y descending)."""
        ny, nx = self.shape
        x = CENTRE_XY[0] + (np.arange(nx) - (nx - 1) / 2) * PIXEL_M
        y = CENTRE_XY[1] - (np.arange(ny) - (ny - 1) / 2) * PIXEL_M
        return Grid.from_coords(y, x, PROJECTION, units="m")

    def read_grid(self, item: SourceItem) -> Grid:
        return self.grid()

    def read(self, item: SourceItem) -> dict[str, np.ndarray]:
        return {PRECIP.name: self.frame(_frame_index(item))}

    def motion_field(self) -> np.ndarray:
        """Velocity ``(2, ny, nx)`` in pixels per step: ``[0]`` along columns, ``[1]`` along rows.

        The pysteps convention (``V[0]`` = x, ``V[1]`` = y in array index space),
        so it can be compared with ``pysteps.motion`` estimates directly.
        """
        ny, nx = self.shape
        if self.rotation == 0:
            u, v = np.full((ny, nx), self.motion[0]), np.full((ny, nx), self.motion[1])
        else:
            cx, cy = self._rotation_centre()
            rows, cols = np.mgrid[0:ny, 0:nx].astype("float64")
            u, v = -self.rotation * (rows - cy), self.rotation * (cols - cx)
        return np.stack([u, v]).astype("float32")

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as a float32 rain rate (mm/h); all-NaN if listed in ``missing``."""
        if not 0 <= index < self.n_frames:
            raise SourceError(f"frame {index} is outside 0..{self.n_frames - 1}")
        ny, nx = self.shape
        if index in self.missing:
            return np.full((ny, nx), np.nan, dtype="float32")
        cells = self._live_cells(index)
        cols = np.arange(nx, dtype="float32")
        rows = np.arange(ny, dtype="float32")
        gx = np.exp(-0.5 * np.square((cols[None, :] - cells["x"][:, None]) / cells["sx"][:, None]))
        gy = np.exp(-0.5 * np.square((rows[None, :] - cells["y"][:, None]) / cells["sy"][:, None]))
        gy *= cells["peak"][:, None]
        # Each cell is added over its +-4 sigma box, one cell after another: unlike a BLAS
        # product (whose sums depend on the thread count), the result is the same everywhere.
        col0 = np.clip(np.floor(cells["x"] - CELL_REACH * cells["sx"]), 0, nx).astype(int)
        col1 = np.clip(np.ceil(cells["x"] + CELL_REACH * cells["sx"]) + 1, 0, nx).astype(int)
        row0 = np.clip(np.floor(cells["y"] - CELL_REACH * cells["sy"]), 0, ny).astype(int)
        row1 = np.clip(np.ceil(cells["y"] + CELL_REACH * cells["sy"]) + 1, 0, ny).astype(int)
        rain = np.zeros((ny, nx), dtype="float32")
        for k in range(len(gx)):
            if col0[k] < col1[k] and row0[k] < row1[k]:
                rain[row0[k]:row1[k], col0[k]:col1[k]] += np.multiply.outer(
                    gy[k, row0[k]:row1[k]], gx[k, col0[k]:col1[k]])
        rain *= self._texture_at(index)
        rain[rain < DRIZZLE_FLOOR] = 0.0
        np.minimum(rain, MAX_RATE, out=rain)
        return rain.astype("float32", copy=False)

    # Cell population --------------------------------------------------------------------------

    def _rotation_centre(self) -> tuple[float, float]:
        """Centre of the solid-body rotation (column, row) that gives ``motion`` at the domain centre."""
        ny, nx = self.shape
        ccol, crow = (nx - 1) / 2, (ny - 1) / 2
        u, v = self.motion
        return ccol - v / self.rotation, crow + u / self.rotation

    def _advect(self, col: np.ndarray, row: np.ndarray, steps: np.ndarray | float
                ) -> tuple[np.ndarray, np.ndarray]:
        """Positions after ``steps`` along the flow (exact trajectories; negative steps go back)."""
        if self.rotation == 0:
            return col + self.motion[0] * steps, row + self.motion[1] * steps
        cx, cy = self._rotation_centre()
        angle = self.rotation * np.asarray(steps, dtype="float64")
        cos, sin = np.cos(angle), np.sin(angle)
        dx, dy = col - cx, row - cy
        return cx + cos * dx - sin * dy, cy + sin * dx + cos * dy

    def _live_cells(self, index: int) -> dict[str, np.ndarray]:
        """Position, size and peak of every cell alive at frame ``index`` near the domain."""
        first, last = (index - MAX_LIFETIME + 1) // SLOTS_PER_BLOCK, index // SLOTS_PER_BLOCK
        blocks = [_block_cells(self, block) for block in range(first, last + 1)]
        born = {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}
        age = index - born["birth"]
        alive = (age >= 0) & (age <= born["life"])
        born = {key: values[alive] for key, values in born.items()}
        age = age[alive]
        phase = np.sin(np.pi * age / born["life"])
        envelope = phase * np.sqrt(phase)  # grows, peaks mid-life, decays
        col, row = self._advect(born["col"], born["row"], index - born["anchor"])
        scale = 0.5 + 0.5 * envelope
        cells = {"x": col, "y": row, "sx": born["sx"] * scale, "sy": born["sy"] * scale,
                 "peak": born["peak"] * envelope}
        ny, nx = self.shape
        reach = CELL_REACH * np.maximum(cells["sx"], cells["sy"])
        near = ((cells["x"] > -reach) & (cells["x"] < nx + reach) & (cells["y"] > -reach)
                & (cells["y"] < ny + reach) & (cells["peak"] > DRIZZLE_FLOOR))
        return {key: values[near].astype("float32") for key, values in cells.items()}

    def _birth_box(self) -> tuple[float, float, float, float]:
        """(col0, col1, row0, row1) where cells are born: the domain plus what drifts in."""
        ny, nx = self.shape
        speed = math.hypot(*self.motion) + abs(self.rotation) * math.hypot(ny, nx)
        margin = speed * MAX_LIFETIME / 2 + 3 * 24.0
        return -margin, nx + margin, -margin, ny + margin

    def _texture_at(self, index: int) -> np.ndarray:
        """The Lagrangian texture carried by the flow to frame ``index`` (mean about 1)."""
        texture = _texture(self.seed)
        ny, nx = self.shape
        # Back-trajectories to frame 0 are affine in (col, row): build them as outer sums.
        origin_col, origin_row = self._advect(np.array([0.0]), np.array([0.0]), -index)
        unit_col = np.subtract(self._advect(np.array([1.0]), np.array([0.0]), -index),
                               (origin_col, origin_row))
        unit_row = np.subtract(self._advect(np.array([0.0]), np.array([1.0]), -index),
                               (origin_col, origin_row))
        # The texture is periodic, so the origin can be wrapped into [0, size) first; the
        # coordinates then stay small enough for float32 and uint16.
        shift = 4.0 * (TEXTURE_SIZE + max(ny, nx))  # keeps coordinates positive
        start_col = float(origin_col[0]) % TEXTURE_SIZE + shift
        start_row = float(origin_row[0]) % TEXTURE_SIZE + shift
        cols = np.arange(nx, dtype="float32")
        rows = np.arange(ny, dtype="float32")
        src_col = np.add.outer(rows * np.float32(unit_row[0, 0]) + np.float32(start_col),
                               cols * np.float32(unit_col[0, 0])).astype(np.uint16)
        src_row = np.add.outer(rows * np.float32(unit_row[1, 0]) + np.float32(start_row),
                               cols * np.float32(unit_col[1, 0])).astype(np.uint16)
        # Flat index (row mod 256) * 256 + (col mod 256) in uint16: the shift drops the high
        # bits of the row for free (4x faster than the same in int64 with np.take).
        src_row <<= 8
        src_col &= TEXTURE_SIZE - 1
        src_row |= src_col
        return texture[src_row]


@functools.lru_cache(maxsize=256)
def _block_cells(source: SyntheticSource, block: int) -> dict[str, np.ndarray]:
    """The cells born in steps ``[block * SLOTS_PER_BLOCK, (block + 1) * SLOTS_PER_BLOCK)``.

    A pure function of the seed and the block number: one generator per block
    (not per step) keeps a cold frame cheap.
    """
    rng = np.random.default_rng([source.seed, block + 2**32])
    col0, col1, row0, row1 = source._birth_box()
    mean_life = 12 + 0.75 * 36  # mean of the lifetime law below, for sizes near 24 px
    rate = source.density * (col1 - col0) * (row1 - row0) / 1e4 / mean_life
    per_slot = rng.poisson(rate, SLOTS_PER_BLOCK)
    n = int(per_slot.sum())
    slot = block * SLOTS_PER_BLOCK + np.repeat(np.arange(SLOTS_PER_BLOCK), per_slot)
    size = np.exp(rng.uniform(math.log(2.0), math.log(24.0), n))  # pixels
    aspect = np.exp(rng.uniform(-0.4, 0.4, n))
    # Small cells are convective (intense, short-lived), large ones stratiform (weak, long-lived).
    peak = np.exp(rng.normal(math.log(30.0) - 0.9 * np.log(size / 2.0), 0.6))
    life = 12 + 36 * rng.uniform(0.5, 1.0, n) * (size / 24.0) ** 0.3
    life = np.minimum(life, MAX_LIFETIME - 1)
    # Cells gather in storms: most sit near one of a few storm centres of the block. Positions
    # are given at the block's first step and carried by the flow, so a storm's cells move together.
    storms = max(1, n // 5)
    storm_col, storm_row = rng.uniform(col0, col1, storms), rng.uniform(row0, row1, storms)
    storm = rng.integers(0, storms, n)
    clustered = rng.random(n) < 0.75
    spread = rng.normal(0.0, STORM_SPREAD, (2, n))
    col = np.where(clustered, storm_col[storm] + spread[0], rng.uniform(col0, col1, n))
    row = np.where(clustered, storm_row[storm] + spread[1], rng.uniform(row0, row1, n))
    return {
        "birth": slot + rng.uniform(0.0, 1.0, n),
        "life": life,
        "anchor": np.full(n, float(block * SLOTS_PER_BLOCK)),
        "col": col,
        "row": row,
        "sx": size * aspect,
        "sy": size / aspect,
        "peak": peak,
    }


@functools.lru_cache(maxsize=8)
def _texture(seed: int) -> np.ndarray:
    """A periodic, smoothed log-normal noise (flattened), mean about 1."""
    rng = np.random.default_rng([seed, 7])
    noise = rng.standard_normal((TEXTURE_SIZE, TEXTURE_SIZE))
    k = np.fft.fftfreq(TEXTURE_SIZE)
    radius = np.hypot(k[:, None], k[None, :])
    amplitude = (radius**2 + (2.0 / TEXTURE_SIZE) ** 2) ** -0.8 * np.exp(-((radius / 0.15) ** 2))
    field = np.fft.ifft2(np.fft.fft2(noise) * amplitude).real
    field = (field - field.mean()) / field.std()
    sigma = 0.8
    return np.exp(sigma * field - sigma**2 / 2).astype("float32").ravel()


def _frame_index(item: SourceItem) -> int:
    prefix, _, number = item.path.partition(":")
    if prefix != "synthetic" or not number.isdigit():
        raise SourceError(f"{item.path!r} is not a synthetic item (expected 'synthetic:<index>')")
    return int(number)
