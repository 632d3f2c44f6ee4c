"""Training input: windows.zarr read chunk by chunk into a tf.data pipeline.

``windows.zarr`` (docs/schemas.md) stores physical values with NaN where the
radar did not see, plus the train-split normalisation statistics. This module
reads it through :class:`nowcast.pipelines.stores.windows.WindowsStore`, the
same schema module the windows job writes with:

- :class:`Normalizer` maps physical values to the model's space and back.
  For variables with ``valid_min >= 0`` (rain), ``log1p`` then standardise
  with the stored ``log1p_mean``/``log1p_std``; others are standardised with
  ``mean``/``std``. ``log1p`` rather than dBR (``10 log10 R``): it is defined
  at zero without a threshold or a fill value for dry pixels (dBR needs both,
  e.g. -15 dBR below 0.1 mm/h), it compresses heavy rain about as much, and
  its inverse ``expm1`` is exact and non-negative after clipping. NaN (outside
  radar coverage, or missing) becomes 0 after normalisation, i.e. the training
  mean, and the pipeline's sample weights are 0 there so the loss ignores it.
- :func:`make_dataset` builds the pipeline: the sample chunks of a split are
  shuffled, read in parallel by ``interleave`` (each read decodes one zarr
  chunk along ``sample``), mixed in a shuffle buffer, optionally flipped and
  rotated (the same transform on inputs and targets), batched and prefetched.
  Memory holds at most ``cycle_length`` chunks plus the buffer, never a split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from nowcast.pipelines.stores.windows import WindowsError, WindowsStore


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per-variable normalisation from the train-split statistics.

    Attributes:
        channels: input variable names, in channel order.
        target: the forecast variable.
        stats: ``normalization`` attribute of windows.zarr, per variable.
    """

    channels: tuple[str, ...]
    target: str
    stats: Mapping[str, Mapping[str, Any]]

    def __post_init__(self) -> None:
        for var in (*self.channels, self.target):
            if var not in self.stats:
                raise WindowsError(f"no normalisation statistics for {var!r}; windows.zarr must store "
                                   "them under attrs['normalization'] (rerun the windows job)")
            kind, (_, std) = self.kind(var), self._mean_std(var)
            if not np.isfinite(std) or std <= 0:
                raise WindowsError(f"{kind} std of {var!r} is {std}; the train split has no variation "
                                   "(all dry or constant?): widen the training range")

    def kind(self, var: str) -> str:
        """``log1p`` for non-negative variables with log statistics, else ``standard``."""
        return "log1p" if "log1p_mean" in self.stats[var] else "standard"

    def _mean_std(self, var: str) -> tuple[float, float]:
        s = self.stats[var]
        if s.get("mean") is None:
            raise WindowsError(f"normalisation statistics of {var!r} are empty (the train split has no "
                               "finite values); widen the training range or relax the wet filter")
        if self.kind(var) == "log1p":
            return float(s["log1p_mean"]), float(s["log1p_std"])
        return float(s["mean"]), float(s["std"])

    def normalize(self, values: np.ndarray, var: str) -> np.ndarray:
        """Physical values of ``var`` to model space; NaN becomes 0."""
        mean, std = self._mean_std(var)
        values = np.asarray(values, dtype="float32")
        if self.kind(var) == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        out = (values - np.float32(mean)) / np.float32(std)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype("float32", copy=False)

    def denormalize(self, values: np.ndarray, var: str | None = None) -> np.ndarray:
        """Model space back to physical units (rain clipped at 0)."""
        var = var or self.target
        mean, std = self._mean_std(var)
        out = np.multiply(np.asarray(values, dtype="float32"), np.float32(std))  # the one new array
        out += np.float32(mean)
        if self.kind(var) == "log1p":
            np.expm1(out, out=out)
            np.maximum(out, np.float32(0.0), out=out)
        return out

    def normalize_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """``(..., channel)`` inputs, each channel by its own variable."""
        out = np.empty(np.shape(inputs), dtype="float32")
        for c, var in enumerate(self.channels):
            out[..., c] = self.normalize(inputs[..., c], var)
        return out

    def to_dict(self) -> dict[str, object]:
        return {"channels": list(self.channels), "target": self.target,
                "kinds": {v: self.kind(v) for v in {*self.channels, self.target}},
                "stats": {k: dict(v) for k, v in self.stats.items()}}

    @classmethod
    def from_store(cls, store: WindowsStore) -> Normalizer:
        """The normalisation from windows.zarr's train statistics."""
        return cls(store.channels, store.target, store.normalization)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Normalizer:
        return cls(tuple(data["channels"]), str(data["target"]), data["stats"])  # type: ignore[arg-type]


def read_model_chunk(store: WindowsStore, index: int, normalizer: Normalizer | None,
                     wet: tuple[float, float] | None = None) -> tuple[np.ndarray, ...]:
    """Inputs, targets (target channel only) and coverage weights of a sample chunk, ready for Keras.

    With ``normalizer=None`` the values stay physical (NaN kept), which
    tests use to compare with the store. ``wet = (threshold, fraction)``
    keeps only samples whose observed target pixels are at least that
    fraction at or above the threshold (physical units), e.g. to skip dry
    patches that the windows job's whole-frame wet filter keeps.
    """
    inputs, targets = store.read_chunk(int(index))
    targets = targets[..., :1]
    if wet is not None:
        observed = np.isfinite(targets).sum(axis=(1, 2, 3, 4))
        above = (np.nan_to_num(targets, nan=-np.inf) >= wet[0]).sum(axis=(1, 2, 3, 4))
        keep = above >= wet[1] * np.maximum(observed, 1)
        inputs, targets = inputs[keep], targets[keep]
    weights = np.isfinite(targets[..., 0]).astype("float32")
    if normalizer is not None:
        inputs = normalizer.normalize_inputs(inputs)
        targets = normalizer.normalize(targets, normalizer.target)
    return inputs, targets, weights


def _augment(inputs, targets, weights, seed_pair, square: bool):
    """The same random flip and rotation on inputs, targets and weights (TF ops, graph mode)."""
    import tensorflow as tf

    k = tf.random.stateless_uniform([], seed_pair, 0, 4 if square else 2, dtype=tf.int32)
    k = k if square else k * 2  # only 0/180 degrees keep a non-square patch's shape
    flip = tf.random.stateless_uniform([], seed_pair + 1, 0, 2, dtype=tf.int32)

    def transform(frames):
        frames = tf.image.rot90(frames, k)
        return tf.cond(flip > 0, lambda: tf.image.flip_left_right(frames), lambda: frames)

    w = transform(weights[..., None])[..., 0]
    return transform(inputs), transform(targets), w


def make_dataset(url: str, split: str = "train", batch_size: int = 8, *, shuffle: bool = True,
                 seed: int = 0, shuffle_buffer: int = 256, cycle_length: int = 4, augment: bool = False,
                 normalize: bool = True, with_weights: bool = True, repeat: bool = False,
                 drop_remainder: bool = False, wet: tuple[float, float] | None = None):
    """A ``tf.data.Dataset`` of ``(inputs, targets[, weights])`` batches from windows.zarr.

    Args:
        url: windows.zarr location.
        split: ``train``, ``val`` or ``test``.
        batch_size: samples per batch.
        shuffle: shuffle chunk order (each epoch) and samples within a buffer.
        seed: seed of both shuffles and the augmentation.
        shuffle_buffer: samples held for shuffling.
        cycle_length: chunks read concurrently.
        augment: random flips and 90-degree rotations (inputs and targets alike).
        normalize: apply the stored normalisation (NaN to 0); ``False`` yields
            the physical values as stored.
        with_weights: also yield per-pixel weights, 0 where the target is NaN.
        repeat: repeat forever (training with ``steps_per_epoch``).
        drop_remainder: drop a final short batch.
        wet: ``(threshold, fraction)``: keep only samples whose target has at
            least ``fraction`` of observed pixels at or above ``threshold``.

    Returns:
        The dataset; shapes ``(b, t_in, y, x, c)``, ``(b, t_out, y, x, 1)``, ``(b, t_out, y, x)``.
    """
    import tensorflow as tf

    store = WindowsStore(url, split)
    if store.num_samples == 0:
        raise WindowsError(f"{url}/{split} holds no samples; widen the split or relax the wetness filter")
    normalizer = Normalizer.from_store(store) if normalize else None
    in_shape, out_shape = store.sample_shapes
    out_shape = (*out_shape[:-1], 1)
    specs = (tf.TensorSpec((None, *in_shape), tf.float32), tf.TensorSpec((None, *out_shape), tf.float32),
             tf.TensorSpec((None, *out_shape[:-1]), tf.float32))

    def read_arrays(index):
        arrays = tf.numpy_function(lambda i: read_model_chunk(store, i, normalizer, wet), [index],
                                   [tf.float32, tf.float32, tf.float32], stateful=False)
        for array, spec in zip(arrays, specs, strict=True):
            array.set_shape(spec.shape)
        return tuple(arrays)

    chunks = tf.data.Dataset.range(store.num_chunks)
    if shuffle:
        chunks = chunks.shuffle(store.num_chunks, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        chunks = chunks.repeat()
    if shuffle:
        # Samples of `cycle_length` chunks, read concurrently, alternate in the stream.
        ds = chunks.interleave(lambda i: tf.data.Dataset.from_tensor_slices(read_arrays(i)),
                               cycle_length=max(1, min(cycle_length, store.num_chunks)), block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        # Store order (evaluation): chunks still read in parallel, emitted in sequence.
        ds = chunks.map(read_arrays, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    if augment:
        square = in_shape[1] == in_shape[2]
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda sample, s: _augment(sample[0], sample[1], sample[2], tf.cast(s, tf.int32), square),
            num_parallel_calls=tf.data.AUTOTUNE)
    if not with_weights:
        ds = ds.map(lambda x, y, w: (x, y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if not repeat and wet is None:  # a known length gives Keras's progress bar its total
        batches = store.num_samples // batch_size if drop_remainder else -(-store.num_samples // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.prefetch(tf.data.AUTOTUNE)
