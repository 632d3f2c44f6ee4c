"""Applying a registered model to full-grid windows in physical units.

Scoring feeds whole archive frames. A fully convolutional model (metadata
``fully_convolutional``) is rebuilt for the grid with its trained weights and
sees the whole grid at once, padded to a size it accepts, so its motion is
estimated over the whole frame; an older model, which only takes its training
patch, covers the grid with overlapping tiles (:mod:`nowcast.model.tiling`).

With probability matching (metadata ``postprocessing``, or the
``probability_matching`` option) each lead's forecast keeps its spatial
ranking but takes the value distribution of the extrapolation it corrects
(the last observation advected along the model's motion, the residual's
base) inside radar coverage, as pysteps' S-PROG matches to the observation:
the model decides where it rains, the observed rain how much and over what
area (less the rain that the motion carries out of coverage), so a forecast
cannot paint drizzle over the domain or lose its heavy cores to smoothing.
A model without such a base matches to the last observation.

The tiles of one window go to the model in equal batches of at most
``predict_batch_size`` (the last one zero-padded), never mixed with another
window's: the CPU kernels' last bits depend on a sample's
position in the batch, so this keeps a forecast bitwise reproducible across
runs, runners, restarts and Beam batch sizes.

:func:`load_forecaster` loads a model through :mod:`nowcast.model.registry`
(checksum and archive checks included) and turns on GPU memory growth when
TensorFlow sees a GPU; the :class:`Forecaster` returns physical values
clipped to the variable's valid range. The scoring job wraps it in a Beam
handler (:mod:`nowcast.pipelines.jobs.handler`); model/ itself imports no Beam.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from nowcast.background import Background
from nowcast.errors import InputError
from nowcast.model.tiling import Tiling, WholeGrid

PROBABILITY_MATCHING = "probability_matching"  # the metadata's ``postprocessing`` value that turns it on
BASE_LAYERS = ("lagrangian_ar", "advection", "persistence")  # what a residual model's change is added to
EXTRAPOLATION_LAYERS = ("advection", "persistence")  # the extrapolation whose distribution matching gives


class ForecastError(InputError):
    """A model or window that cannot produce a forecast."""


@dataclasses.dataclass
class Forecaster:
    """A verified model ready to forecast whole-grid windows in physical units.

    Attributes:
        model: the Keras model (normalised ``(b, t_in, py, px, c)`` -> ``(b, t_out, py, px, 1)``).
        metadata: the registry metadata (``name``, ``version``, ``channels``, ``target``, ...).
        normalizer: the training normalisation (``nowcast.model.normalization.Normalizer``).
        tiling: how the archive grid is covered (:mod:`nowcast.model.tiling`): the
            whole grid, or the model's patches.
        predict_batch_size: tiles per model call (fixed, the last batch zero-padded).
        valid_range: ``(min, max)`` physical bounds of the target; None leaves a side open.
        probability_matching: give each lead the value distribution of the
            extrapolation the model corrects (see the module docstring).
        version: the version's name in the registry, its folder's (the metadata's
            ``version`` is what it was saved as: a copied folder's differs).
    """

    model: Any
    metadata: Mapping[str, Any]
    normalizer: Any
    tiling: Tiling | WholeGrid
    predict_batch_size: int
    valid_range: tuple[float | None, float | None]
    probability_matching: bool = False
    version: str = ""

    def __post_init__(self) -> None:
        self._net, self._with_base = self.model, False
        if self.probability_matching and isinstance(self.tiling, WholeGrid):
            both = with_base(self.model)
            if both is not None:  # one call gives the forecast and the extrapolation it corrects
                self._net, self._with_base = both, True
        self._predict = compiled_predict(self._net)

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
            out = self._predict(batch)
            if self._with_base:  # (k, 3, t_out, py, px): the forecast, its base, the extrapolation
                out = np.stack([np.asarray(o, dtype="float32")[..., 0] for o in out], axis=1)
            else:
                out = np.asarray(out, dtype="float32")[..., 0]
            outputs.append(out[:count])
        return np.concatenate(outputs)

    def forecast(self, windows: np.ndarray) -> np.ndarray:
        """Physical ``(n, t_in, ny, nx, c)`` windows -> physical ``(n, t_out, ny, nx)`` forecasts.

        A pixel missing from a frame but seen in an earlier one takes its latest
        observed value (:func:`latest_observed`); other NaN inputs (unobserved)
        enter the model as in training (see
        :class:`nowcast.model.normalization.Normalizer`); a pixel whose target variable
        is NaN in every input frame (outside radar coverage) is NaN in the
        forecast. Values are clipped to the target's valid range.
        """
        windows = np.asarray(windows, dtype="float32")
        if windows.ndim != 5 or windows.shape[1] != self.t_in or windows.shape[-1] != len(self.channels):
            raise ForecastError(f"windows must be (n, {self.t_in}, y, x, {len(self.channels)}), "
                                f"got {windows.shape}")
        windows = latest_observed(windows)
        normalized = self.normalizer.normalize_inputs(windows)
        out = np.empty((len(windows), self.t_out, *self.tiling.grid), "float32")
        # each window's blending and de-normalising (numpy) runs on a second thread while the
        # model (which releases the GIL) forecasts the next window's tiles
        with Background[None]("forecast-finish") as finisher:
            for i, window in enumerate(normalized):
                finisher.submit(self._finish, self.predict_normalized(self.tiling.split(window[None])),
                                windows[i], out, i)
            finisher.wait()
        return out

    def _finish(self, tiles: np.ndarray, window: np.ndarray, out: np.ndarray, i: int) -> None:
        """One window's tile forecasts -> its physical forecast in ``out[i]``."""
        normalized = self.tiling.blend(tiles[:, 0] if self._with_base else tiles)[0]
        if self.probability_matching:
            last = window[-1, ..., self.channels.index(self.target)]
            references = (self.tiling.blend(tiles[:, 2])[0] if self._with_base else
                          np.broadcast_to(self.normalizer.normalize(last, self.target), normalized.shape))
            covered = np.isfinite(last)
            for lead, reference in zip(normalized, references, strict=True):
                match_distribution(lead, reference, covered)
        physical = self.normalizer.denormalize(normalized, self.target)
        low, high = self.valid_range
        if low is not None or high is not None:
            np.clip(physical, low, high, out=physical)
        unobserved = np.isnan(window[..., self.channels.index(self.target)]).all(axis=0)
        physical[:, unobserved] = np.float32("nan")
        out[i] = physical


def latest_observed(windows: np.ndarray) -> np.ndarray:
    """``(n, t, y, x, c)`` windows whose NaN pixels take the value of the latest earlier frame that
    observed them (a copy; pixels never observed before stay NaN).

    A hole in the last frame (a radar down for a scan, a damaged tile) would otherwise enter the model as
    unobserved and come out as a dry hole inside the rain: on RMI's composite, pixels missing from the
    last frame only were forecast at 0.01-0.035 mm/h where 0.10-0.31 mm/h had been observed.
    """
    filled = np.array(windows, dtype="float32", copy=True)
    for t in range(1, filled.shape[1]):
        frame, before = filled[:, t], filled[:, t - 1]
        missing = np.isnan(frame)
        frame[missing] = before[missing]
    return filled


def match_distribution(field: np.ndarray, reference: np.ndarray, where: np.ndarray) -> None:
    """Gives ``field`` the values of ``reference`` inside ``where``, rank for rank (in place).

    The pixel with the k-th smallest forecast takes the k-th smallest
    reference value, so the forecast keeps its pattern and takes the
    reference's distribution (pysteps' empirical CDF matching). Ties keep
    their order in the array (a stable sort), which matters only where the
    model's continuous output repeats a value exactly.

    >>> field = np.array([[0.3, 0.1], [0.2, 0.9]])
    >>> match_distribution(field, np.array([[5.0, 0.0], [0.0, 1.0]]), np.ones((2, 2), bool))
    >>> field
    array([[1., 0.],
           [0., 5.]])
    """
    values = field[where]
    ranked = np.empty_like(values)
    ranked[np.argsort(values, kind="stable")] = np.sort(reference[where]).astype(values.dtype)
    field[where] = ranked


def with_base(model: Any) -> Any:
    """``model`` with two more outputs: the base its residual corrects and the extrapolation; None without.

    The base (``BASE_LAYERS``) is what the learned change is added to; the
    extrapolation (``EXTRAPOLATION_LAYERS``, the last frame moved along the
    motion) is the distribution probability matching restores. They are the
    same layer unless the model corrects S-PROG's scale-wise forecast
    (``lagrangian_ar``), whose smoothed values are no distribution to match.
    """
    names = {layer.name for layer in model.layers}
    base = next((name for name in BASE_LAYERS if name in names), None)
    extrapolation = next((name for name in EXTRAPOLATION_LAYERS if name in names), None)
    if base is None or extrapolation is None:
        return None
    import keras

    return keras.Model(model.inputs, [model.outputs[0], model.get_layer(base).output,
                                      model.get_layer(extrapolation).output])


def compiled_predict(net: Any):
    """The model's inference call as a compiled function of one batch.

    On the TensorFlow backend a ``tf.function`` around ``model(x, training=False)``
    (traced once per batch shape), which skips the per-call data-adapter work
    of ``predict_on_batch`` that dominates for small tiles (docs/scoring.md);
    other backends use ``predict_on_batch``.
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
        with contextlib.suppress(RuntimeError):  # already initialised here: the first load set growth
            tf.config.experimental.set_memory_growth(gpu, True)
    return len(gpus)


def load_forecaster(models: str, name: str, version: str, archive: Mapping[str, Any], *,
                    overlap: int | None = None, predict_batch_size: int = 16,
                    valid_range: tuple[float | None, float | None] = (None, None),
                    probability_matching: bool | None = None) -> Forecaster:
    """Loads ``models/name/version`` through the registry, checked against ``archive``.

    Args:
        models: registry root folder.
        name: model name.
        version: a version or ``latest``.
        archive: ``ArchiveDescription.to_dict()`` of the archive to forecast from.
        overlap: tile overlap in pixels for a patch-only model; default a quarter of the patch.
        predict_batch_size: tiles per model call.
        valid_range: physical clipping bounds of the target.
        probability_matching: override the model's recorded post-processing.
    """
    from nowcast.model.normalization import Normalizer
    from nowcast.model.registry import load_model, version_name
    from nowcast.pipelines.stores.archive import ArchiveDescription

    if predict_batch_size < 1:
        raise ForecastError(f"predict_batch_size must be at least 1, got {predict_batch_size}")
    enable_gpu_memory_growth()
    description = ArchiveDescription.from_dict(archive)
    loaded = load_model(models, name, version, archive=description)
    meta = loaded.metadata
    for key in ("normalization", "t_in", "t_out", "input_shape"):
        if key not in meta:
            raise ForecastError(f"model {name}/{meta.get('version')} lacks {key!r} in its metadata; "
                                "it was not saved by nowcast.model.train: retrain it")
    normalizer = Normalizer.from_dict(meta["normalization"])
    model, tiling = _covering(loaded.model, meta, normalizer, description.grid_shape, overlap)
    if probability_matching is None:
        probability_matching = meta.get("postprocessing") == PROBABILITY_MATCHING
    return Forecaster(model=model, metadata=meta, normalizer=normalizer, tiling=tiling,
                      predict_batch_size=int(predict_batch_size), valid_range=valid_range,
                      probability_matching=bool(probability_matching), version=version_name(loaded.path))


def _covering(model: Any, meta: Mapping[str, Any], normalizer: Any, grid: tuple[int, int],
              overlap: int | None) -> tuple[Any, Tiling | WholeGrid]:
    """The model to call and how it covers ``grid``: rebuilt for the whole grid, or tiles of its patch."""
    if meta.get("fully_convolutional"):
        from nowcast.model.architectures import ArchitectureConfig, for_grid

        config = ArchitectureConfig.from_dict(meta["architecture_config"])
        fill = tuple(normalizer.nothing(var) for var in normalizer.channels) + (0.0,) * normalizer.coverage
        whole = WholeGrid(tuple(grid), config.downsampling, fill)  # type: ignore[arg-type]
        return for_grid(model, meta["architecture"], config, whole.patch), whole
    patch = (int(meta["input_shape"][0]), int(meta["input_shape"][1]))
    overlap = patch[0] // 4 if overlap is None else int(overlap)
    return model, Tiling(grid, patch, overlap)
