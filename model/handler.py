"""Applying a registered model to full-grid windows, and the Beam RunInference handler for it.

Scoring feeds whole archive frames, but models are trained on patches (the
``input_shape`` in their metadata) and neither architecture is fully
convolutional (``cnn_lstm`` has a Dense bottleneck, ``convlstm`` a Reshape to
the patch size). So a grid larger than the patch is cut into **overlapping
tiles** of the patch size, every tile is forecast, and the tiles are blended
with weights that ramp linearly from 1/(overlap+1) at a tile's edge to 1
beyond ``overlap`` pixels in. A pixel covered by one tile gets exactly that
tile's forecast; in the overlaps the seams fade, which hides the edge effects
of the zero padding. The last tile of each row and column is aligned with
the grid's edge, so every pixel is covered and no padding is needed.

The tiles of one window go to the model in equal batches of at most
``predict_batch_size`` (the last one zero-padded), never mixed with another
window's: the CPU kernels' last bits depend on a sample's
position in the batch, so this keeps a forecast bitwise reproducible across
runs, runners, restarts and Beam batch sizes.

The handler (:class:`KerasForecastHandler`) loads the model once per worker
through :mod:`model.registry` (checksum and archive checks included), turns
on GPU memory growth when TensorFlow sees a GPU, and returns physical values
clipped to the variable's valid range.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import gc
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

log = logging.getLogger(__name__)


class ForecastError(ValueError):
    """A model or window that cannot produce a forecast."""


# ---------------------------------------------------------------- tiling (pure numpy)

def tile_starts(size: int, patch: int, overlap: int) -> list[int]:
    """First pixel of every tile along one axis: steps of ``patch - overlap``, the last flush with the end.

    >>> tile_starts(10, 4, 1)
    [0, 3, 6]
    >>> tile_starts(4, 4, 1)
    [0]
    """
    if patch > size:
        raise ForecastError(f"the grid ({size} pixels) is smaller than the model's {patch}-pixel patch")
    if not 0 <= overlap < patch:
        raise ForecastError(f"overlap must be in [0, {patch}), got {overlap}")
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


# ---------------------------------------------------------------- the loaded model

@dataclasses.dataclass
class Forecaster:
    """A verified model ready to forecast whole-grid windows in physical units.

    Attributes:
        model: the Keras model (normalised ``(b, t_in, py, px, c)`` -> ``(b, t_out, py, px, 1)``).
        metadata: the registry metadata (``name``, ``version``, ``channels``, ``target``, ...).
        normalizer: the training normalisation (``model.data.Normalizer``).
        tiling: how the archive grid is cut into the model's patches.
        predict_batch_size: tiles per model call (fixed, the last batch zero-padded).
        valid_range: ``(min, max)`` physical bounds of the target; None leaves a side open.
    """

    model: Any
    metadata: Mapping[str, Any]
    normalizer: Any
    tiling: Tiling
    predict_batch_size: int
    valid_range: tuple[float | None, float | None]

    def __post_init__(self) -> None:
        self._predict = compiled_predict(self.model)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.normalizer.channels)

    @property
    def target(self) -> str:
        return str(self.normalizer.target)

    @property
    def t_in(self) -> int:
        return int(self.metadata["t_in"])

    @property
    def t_out(self) -> int:
        return int(self.metadata["t_out"])

    def predict_normalized(self, tiles: np.ndarray) -> np.ndarray:
        """Model output ``(k, t_out, py, px)`` for the normalised tiles of one window.

        The ``k`` tiles go in ``ceil(k / predict_batch_size)`` equal batches
        (the last one zero-padded to the same size), so a window's tiles always
        sit at the same batch positions whatever else is being scored: the CPU
        kernels' results depend on a sample's position in the batch (last
        bits), and this keeps forecasts bitwise reproducible.
        """
        if not len(tiles):
            return np.zeros((0, self.t_out, *self.tiling.patch), "float32")
        batches = -(-len(tiles) // self.predict_batch_size)
        size = -(-len(tiles) // batches)
        outputs = []
        for first in range(0, len(tiles), size):
            batch = tiles[first:first + size]
            count = len(batch)
            if count < size:
                batch = np.concatenate([batch, np.zeros((size - count, *batch.shape[1:]), batch.dtype)])
            out = np.asarray(self._predict(batch), dtype="float32")
            outputs.append(out[:count, ..., 0])
        return np.concatenate(outputs)

    def forecast(self, windows: np.ndarray) -> np.ndarray:
        """Physical ``(n, t_in, ny, nx, c)`` windows -> physical ``(n, t_out, ny, nx)`` forecasts.

        NaN inputs (unobserved) enter the model as the training mean, as in
        training; a pixel whose target variable is NaN in every input frame
        (outside radar coverage) is NaN in the forecast. Values are clipped to
        the target's valid range.
        """
        windows = np.asarray(windows, dtype="float32")
        if windows.ndim != 5 or windows.shape[1] != self.t_in or windows.shape[-1] != len(self.channels):
            raise ForecastError(f"windows must be (n, {self.t_in}, y, x, {len(self.channels)}), "
                                f"got {windows.shape}")
        normalized = self.normalizer.normalize_inputs(windows)
        out = np.empty((len(windows), self.t_out, *self.tiling.grid), "float32")
        # each window's blending and de-normalising (numpy) runs on a second thread while the
        # model (which releases the GIL) forecasts the next window's tiles
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast-finish") as finisher:
            finishing = [finisher.submit(self._finish, self.predict_normalized(self.tiling.split(w[None])),
                                         windows[i], out, i)
                         for i, w in enumerate(normalized)]
            for done in finishing:
                done.result()
        return out

    def _finish(self, tiles: np.ndarray, window: np.ndarray, out: np.ndarray, i: int) -> None:
        """One window's tile forecasts -> its physical forecast in ``out[i]``."""
        physical = self.normalizer.denormalize(self.tiling.blend(tiles), self.target)[0]
        low, high = self.valid_range
        if low is not None or high is not None:
            np.clip(physical, low, high, out=physical)
        unobserved = np.isnan(window[..., self.channels.index(self.target)]).all(axis=0)
        physical[:, unobserved] = np.float32("nan")
        out[i] = physical


def compiled_predict(net: Any):
    """The model's inference call as a compiled function of one batch.

    On the TensorFlow backend a ``tf.function`` around ``model(x, training=False)``
    (traced once per batch shape): measured about 20 % faster per call on CPU than
    ``predict_on_batch``, whose per-call data-adapter work dominates for small
    tiles. Other backends use ``predict_on_batch``.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return net.predict_on_batch
    import tensorflow as tf

    return tf.function(lambda batch: net(batch, training=False))


def enable_gpu_memory_growth() -> int:
    """Lets TensorFlow allocate GPU memory as needed (several workers may share a GPU); returns GPUs seen."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return 0
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth was set by the first load
            pass
    return len(gpus)


def load_forecaster(models: str, name: str, version: str, archive: Mapping[str, Any], *,
                    overlap: int | None = None, predict_batch_size: int = 16,
                    valid_range: tuple[float | None, float | None] = (None, None)) -> Forecaster:
    """Loads ``models/name/version`` through the registry, checked against ``archive``.

    Args:
        models: registry root folder.
        name: model name.
        version: a version or ``latest``.
        archive: ``ArchiveDescription.to_dict()`` of the archive to forecast from.
        overlap: tile overlap in pixels; default a quarter of the patch.
        predict_batch_size: tiles per model call.
        valid_range: physical clipping bounds of the target.
    """
    from model.data import Normalizer
    from model.registry import ArchiveDescription, load_model

    if predict_batch_size < 1:
        raise ForecastError(f"predict_batch_size must be at least 1, got {predict_batch_size}")
    enable_gpu_memory_growth()
    description = ArchiveDescription.from_dict(archive)
    loaded = load_model(models, name, version, archive=description)
    meta = loaded.metadata
    for key in ("normalization", "t_in", "t_out", "input_shape"):
        if key not in meta:
            raise ForecastError(f"model {name}/{meta.get('version')} lacks {key!r} in its metadata; "
                                "it was not saved by model.train: retrain it")
    patch = (int(meta["input_shape"][0]), int(meta["input_shape"][1]))
    overlap = patch[0] // 4 if overlap is None else int(overlap)
    return Forecaster(model=loaded.model, metadata=meta,
                      normalizer=Normalizer.from_dict(meta["normalization"]),
                      tiling=Tiling(tuple(description.grid_shape), patch, overlap),  # type: ignore[arg-type]
                      predict_batch_size=int(predict_batch_size), valid_range=valid_range)


# ---------------------------------------------------------------- Beam handler

@functools.cache
def skip_final_collection_at_exit() -> None:
    """Makes this process's exit skip the garbage collector's last full pass (once per process).

    A process that has loaded TensorFlow and a model spends 1.2-1.6 s at exit
    in the interpreter's final garbage collection (measured,
    docs/scoring.md); ``gc.freeze()`` run from ``atexit`` cuts that to about
    0.15 s. The local multi-process runner stops its workers one after the
    other, so every worker's exit adds to the job's wall time. Nothing is
    lost: at that point the job's writes are finished and the OS reclaims the
    memory; atexit handlers registered before this one still run.
    """
    atexit.register(gc.freeze)


class KerasForecastHandler(ModelHandler[np.ndarray, np.ndarray, Forecaster]):
    """RunInference handler: physical ``(t_in, y, x, c)`` windows in, physical ``(t_out, y, x)`` out.

    Beam loads the model once per worker process (``shared.Shared``) through
    :meth:`load_model`; ``min_batch_size``/``max_batch_size`` bound how many
    windows (init times) Beam hands to one :meth:`run_inference` call, and
    ``predict_batch_size`` how many tiles go to one model call. ``threads``
    caps TensorFlow's threads per worker process (set through the
    environment before the model loads), so N workers on N cores do not
    each start a thread per core.
    """

    def __init__(self, models: str, name: str, version: str, archive: Mapping[str, Any], *,
                 overlap: int | None = None, predict_batch_size: int = 16, min_batch_size: int = 1,
                 max_batch_size: int = 8,
                 valid_range: tuple[float | None, float | None] = (None, None),
                 threads: int | None = None) -> None:
        env = {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"} if threads else {}
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, env_vars=env)
        self.models, self.name, self.version = str(models), name, version
        self.archive = dict(archive)
        self.overlap, self.predict_batch_size, self.valid_range = overlap, predict_batch_size, valid_range

    def load_model(self) -> Forecaster:
        log.info("loading model %s/%s from %s", self.name, self.version, self.models)
        skip_final_collection_at_exit()
        return load_forecaster(self.models, self.name, self.version, self.archive, overlap=self.overlap,
                               predict_batch_size=self.predict_batch_size, valid_range=self.valid_range)

    def run_inference(self, batch: Sequence[np.ndarray], model: Forecaster,
                      inference_args: dict[str, Any] | None = None) -> Iterable[np.ndarray]:
        if not batch:
            return []
        return list(model.forecast(np.stack(batch)))

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        return "nowcast.scoring"
