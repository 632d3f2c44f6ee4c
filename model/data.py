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
  its inverse ``expm1`` is exact and non-negative after clipping. With
  ``coverage`` (new models), NaN inputs (outside radar coverage, or missing)
  become the normalised value of "nothing" (0 mm/h for rain, the mean
  otherwise) and one more input channel marks which pixels of the target
  variable were observed, so the model never mistakes the unobserved for
  rain; without it (older models) NaN becomes 0, the training mean. The
  pipeline's sample weights are 0 where the target is NaN, so the loss
  ignores those pixels.
- Several windows stores (one per radar network, each with its own grid)
  train one model: their chunks are drawn together and their train
  statistics merged (:meth:`Normalizer.from_stores`).
- :func:`make_dataset` builds the pipeline: the sample chunks of a split are
  shuffled, read in parallel by ``interleave`` (each read decodes one zarr
  chunk along ``sample``), mixed in a shuffle buffer, optionally flipped and
  rotated (the same transform on inputs and targets), batched and prefetched.
  Memory holds at most ``cycle_length`` chunks plus the buffer, never a split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
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
        coverage: fill unobserved inputs with "nothing" and add a channel that
            marks the observed pixels of the target (see the module docstring).
    """

    channels: tuple[str, ...]
    target: str
    stats: Mapping[str, Mapping[str, Any]]
    coverage: bool = False

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

    def nothing(self, var: str) -> float:
        """The model-space value unobserved inputs of ``var`` take: 0 mm/h for rain, else the mean (0)."""
        if not self.coverage or self.kind(var) != "log1p":
            return 0.0
        mean, std = self._mean_std(var)
        return -mean / std

    def normalize(self, values: np.ndarray, var: str) -> np.ndarray:
        """Physical values of ``var`` to model space; NaN becomes :meth:`nothing`."""
        mean, std = self._mean_std(var)
        values = np.asarray(values, dtype="float32")
        if self.kind(var) == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        out = (values - np.float32(mean)) / np.float32(std)
        fill = self.nothing(var)
        return np.nan_to_num(out, nan=fill, posinf=fill, neginf=fill).astype("float32", copy=False)

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

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: the variables, plus the coverage mask."""
        return len(self.channels) + int(self.coverage)

    def normalize_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Physical ``(..., channel)`` inputs, each channel by its own variable, plus the coverage mask."""
        inputs = np.asarray(inputs)
        out = np.empty((*inputs.shape[:-1], self.input_channels), dtype="float32")
        for c, var in enumerate(self.channels):
            out[..., c] = self.normalize(inputs[..., c], var)
        if self.coverage:
            observed = inputs[..., self.channels.index(self.target)] if self.target in self.channels \
                else inputs[..., 0]
            out[..., -1] = np.isfinite(observed)
        return out

    def to_dict(self) -> dict[str, object]:
        return {"channels": list(self.channels), "target": self.target,
                "kinds": {v: self.kind(v) for v in {*self.channels, self.target}},
                "stats": {k: dict(v) for k, v in self.stats.items()}, "coverage": self.coverage}

    @classmethod
    def from_store(cls, store: WindowsStore, coverage: bool = False) -> Normalizer:
        """The normalisation from windows.zarr's train statistics."""
        return cls(store.channels, store.target, store.normalization, coverage)

    @classmethod
    def from_stores(cls, stores: Sequence[WindowsStore], coverage: bool = False) -> Normalizer:
        """One normalisation for several windows stores: their train statistics merged by count.

        Raises:
            WindowsError: if the stores hold other variables.
        """
        first = stores[0]
        for store in stores[1:]:
            if (store.channels, store.target) != (first.channels, first.target):
                raise WindowsError(f"{store.url} holds {store.channels} -> {store.target}, {first.url} "
                                   f"{first.channels} -> {first.target}: train on windows of the same "
                                   "variables")
        names = dict.fromkeys((*first.channels, first.target))
        stats = {name: merge_statistics([store.normalization.get(name) or {} for store in stores])
                 for name in names}
        return cls(first.channels, first.target, stats, coverage)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        return cls(tuple(data["channels"]), str(data["target"]), data["stats"], bool(data.get("coverage")))


def merge_statistics(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stored statistics (count, mean, std, min, max, log1p mean/std) of several stores as one.

    Means weighted by count; variances by the parallel formula on the
    population variances (exact).
    """
    parts = [p for p in parts if p.get("count")]
    if not parts:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    counts = np.array([float(p["count"]) for p in parts])
    total = counts.sum()
    merged: dict[str, Any] = {"count": int(total), "min": min(float(p["min"]) for p in parts),
                              "max": max(float(p["max"]) for p in parts)}
    for prefix in ("", "log1p_") if all("log1p_mean" in p for p in parts) else ("",):
        means = np.array([float(p[f"{prefix}mean"]) for p in parts])
        stds = np.array([float(p[f"{prefix}std"]) for p in parts])
        mean = float((counts * means).sum() / total)
        variance = float((counts * (stds**2 + (means - mean) ** 2)).sum() / total)
        merged[f"{prefix}mean"], merged[f"{prefix}std"] = mean, variance**0.5
    return merged


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


def open_stores(urls: str | Sequence[str], split: str) -> list[WindowsStore]:
    """One split of each windows store; refuses stores whose samples differ in shape."""
    stores = [WindowsStore(url, split) for url in ([urls] if isinstance(urls, str) else urls)]
    if not stores:
        raise WindowsError("no windows store given; cut windows first (nowcast.pipelines.jobs.windows)")
    shapes = {store.url: store.sample_shapes for store in stores}
    if len(set(shapes.values())) > 1:
        raise WindowsError(f"windows stores hold samples of different shapes {shapes}; cut every store "
                           "with the same t_in, t_out and patch_size")
    return stores


def make_dataset(urls: str | Sequence[str], split: str = "train", batch_size: int = 8, *,
                 normalizer: Normalizer | None = None, normalize: bool = True, shuffle: bool = True,
                 seed: int = 0, shuffle_buffer: int = 256, cycle_length: int = 4, augment: bool = False,
                 with_weights: bool = True, repeat: bool = False, drop_remainder: bool = False,
                 wet: tuple[float, float] | None = None):
    """A ``tf.data.Dataset`` of ``(inputs, targets[, weights])`` batches from one or more windows stores.

    Args:
        urls: windows.zarr location, or several (e.g. one per radar network);
            their sample chunks are drawn together.
        split: ``train``, ``val`` or ``test``.
        batch_size: samples per batch.
        normalizer: the normalisation to apply; default the stores' own train
            statistics (merged across stores, no coverage channel).
        normalize: ``False`` yields the physical values as stored (NaN kept).
        shuffle: shuffle chunk order (each epoch) and samples within a buffer.
        seed: seed of both shuffles and the augmentation.
        shuffle_buffer: samples held for shuffling.
        cycle_length: chunks read concurrently.
        augment: random flips and 90-degree rotations (inputs and targets alike).
        with_weights: also yield per-pixel weights, 0 where the target is NaN.
        repeat: repeat forever (training with ``steps_per_epoch``).
        drop_remainder: drop a final short batch.
        wet: ``(threshold, fraction)``: keep only samples whose target has at
            least ``fraction`` of observed pixels at or above ``threshold``.

    Returns:
        The dataset; shapes ``(b, t_in, y, x, c)``, ``(b, t_out, y, x, 1)``, ``(b, t_out, y, x)``.
    """
    import tensorflow as tf

    stores = open_stores(urls, split)
    num_samples = sum(store.num_samples for store in stores)
    if num_samples == 0:
        raise WindowsError(f"{[s.url for s in stores]}/{split} hold no samples; widen the split or relax "
                           "the wetness filter")
    if normalize and normalizer is None:
        normalizer = Normalizer.from_stores(stores)
    active = normalizer if normalize else None
    # (store, chunk) of every sample chunk, flattened so one index draws from all stores
    chunk_of = np.array([(s, c) for s, store in enumerate(stores) for c in range(store.num_chunks)], "int64")
    in_shape, out_shape = stores[0].sample_shapes
    if active is not None:
        in_shape = (*in_shape[:-1], active.input_channels)
    out_shape = (*out_shape[:-1], 1)
    specs = (tf.TensorSpec((None, *in_shape), tf.float32), tf.TensorSpec((None, *out_shape), tf.float32),
             tf.TensorSpec((None, *out_shape[:-1]), tf.float32))

    def read(index: np.int64) -> tuple[np.ndarray, ...]:
        store, chunk = chunk_of[int(index)]
        return read_model_chunk(stores[store], int(chunk), active, wet)

    def read_arrays(index):
        arrays = tf.numpy_function(read, [index], [tf.float32, tf.float32, tf.float32], stateful=False)
        for array, spec in zip(arrays, specs, strict=True):
            array.set_shape(spec.shape)
        return tuple(arrays)

    total_chunks = len(chunk_of)
    chunks = tf.data.Dataset.range(total_chunks)
    if shuffle:
        chunks = chunks.shuffle(total_chunks, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        chunks = chunks.repeat()
    if shuffle:
        # Samples of `cycle_length` chunks, read concurrently, alternate in the stream.
        ds = chunks.interleave(lambda i: tf.data.Dataset.from_tensor_slices(read_arrays(i)),
                               cycle_length=max(1, min(cycle_length, total_chunks)), block_length=1,
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
        batches = num_samples // batch_size if drop_remainder else -(-num_samples // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.prefetch(tf.data.AUTOTUNE)
