"""Training input: windows.zarr read chunk by chunk into a tf.data pipeline.

``windows.zarr`` (docs/schemas.md) stores physical values with NaN where the
radar did not see, plus the train-split normalisation statistics. This module
reads it with zarr directly (``model/`` imports nothing from ``pipelines/``):

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
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import zarr

SPLITS = ("train", "val", "test")


class WindowsError(ValueError):
    """windows.zarr is missing something the model input needs."""


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
    stats: Mapping[str, Mapping[str, float]]

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
    def from_dict(cls, data: Mapping[str, object]) -> Normalizer:
        return cls(tuple(data["channels"]), str(data["target"]), data["stats"])  # type: ignore[arg-type]


def _json_attr(value: object) -> object:
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


class WindowsStore:
    """Read access to one split of windows.zarr, one sample chunk at a time."""

    def __init__(self, url: str, split: str = "train") -> None:
        if split not in SPLITS:
            raise WindowsError(f"split must be one of {SPLITS}, got {split!r}")
        try:
            self.root = zarr.open_group(url, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise WindowsError(f"no windows store at {url!r}: run the windows job first") from err
        if split not in self.root:
            raise WindowsError(f"{url!r} has no {split!r} group (has {sorted(self.root.group_keys())})")
        self.url, self.split = url, split
        self.group = self.root[split]
        self.inputs, self.targets = self.group["inputs"], self.group["targets"]
        self.attrs = {k: _json_attr(v) for k, v in self.root.attrs.items()}
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise WindowsError(f"{url}/{split}: {self.inputs.shape[0]} inputs but {self.targets.shape[0]} "
                               "targets; the windows job was interrupted, rerun it")
        channels = self.attrs.get("channels")
        self.channels = tuple([channels] if isinstance(channels, str) else channels or ())
        self.target = str(self.attrs.get("target", self.channels[0] if self.channels else ""))
        self.chunk = int(self.inputs.chunks[0])

    @property
    def num_samples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk)

    @property
    def sample_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(t_in, y, x, channel)`` and ``(t_out, y, x, channel)``."""
        return tuple(self.inputs.shape[1:]), tuple(self.targets.shape[1:])

    def normalizer(self) -> Normalizer:
        return Normalizer(self.channels, self.target, self.attrs.get("normalization") or {})

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Physical inputs and targets of sample chunk ``index``."""
        sl = slice(index * self.chunk, min((index + 1) * self.chunk, self.num_samples))
        return np.asarray(self.inputs[sl], dtype="float32"), np.asarray(self.targets[sl], dtype="float32")

    def read_model_chunk(self, index: int, normalizer: Normalizer | None,
                         wet: tuple[float, float] | None = None) -> tuple[np.ndarray, ...]:
        """Inputs, targets (target channel only) and coverage weights of a chunk, ready for Keras.

        With ``normalizer=None`` the values stay physical (NaN kept), which
        tests use to compare with the store. ``wet = (threshold, fraction)``
        keeps only samples whose observed target pixels are at least that
        fraction at or above the threshold (physical units), e.g. to skip dry
        patches that the windows job's whole-frame wet filter keeps.
        """
        inputs, targets = self.read_chunk(int(index))
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

    def init_times(self) -> np.ndarray:
        """``init_time`` of every sample as datetime64[s] (decoded via xarray's CF rules)."""
        import xarray as xr

        ds = xr.open_zarr(self.url, group=self.split, consolidated=False)
        return ds["init_time"].values.astype("datetime64[s]")

    def iter_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Physical ``(inputs, targets, init_time)`` chunk by chunk, in store order."""
        times = self.init_times()
        for i in range(self.num_chunks):
            inputs, targets = self.read_chunk(i)
            yield inputs, targets, times[i * self.chunk : i * self.chunk + len(inputs)]


def fingerprint(url: str, split: str = "train") -> str:
    """sha256 identifying a split's data without reading its pixels.

    Hashes the root attributes (window spec, archive URL, normalisation,
    counts), the arrays' shapes, chunks and codecs, and the sample index
    (``init_time``, ``y0``, ``x0``). Windows are a pure function of the
    archive and that index, so equal fingerprints mean equal data for an
    archive that is only appended to.
    """
    store = WindowsStore(url, split)
    digest = hashlib.sha256(json.dumps(store.attrs, sort_keys=True, default=str).encode())
    for name in ("inputs", "targets", "init_time", "y0", "x0"):
        if name in store.group:
            arr = store.group[name]
            digest.update(f"{name}{arr.shape}{arr.chunks}{arr.dtype}".encode())
            digest.update(json.dumps(arr.attrs.asdict(), sort_keys=True, default=str).encode())
            digest.update(np.ascontiguousarray(arr[...]).tobytes() if arr.ndim == 1 else b"")
    return digest.hexdigest()


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
    normalizer = store.normalizer() if normalize else None
    in_shape, out_shape = store.sample_shapes
    out_shape = (*out_shape[:-1], 1)
    specs = (tf.TensorSpec((None, *in_shape), tf.float32), tf.TensorSpec((None, *out_shape), tf.float32),
             tf.TensorSpec((None, *out_shape[:-1]), tf.float32))

    def read_arrays(index):
        arrays = tf.numpy_function(lambda i: store.read_model_chunk(i, normalizer, wet), [index],
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
            lambda sample, s: _augment(*sample, tf.cast(s, tf.int32), square),
            num_parallel_calls=tf.data.AUTOTUNE)
    if not with_weights:
        ds = ds.map(lambda x, y, w: (x, y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if not repeat and wet is None:  # a known length gives Keras's progress bar its total
        batches = store.num_samples // batch_size if drop_remainder else -(-store.num_samples // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.prefetch(tf.data.AUTOTUNE)


def archive_description_dict(url: str, variables: Sequence[str] | None = None) -> dict[str, object]:
    """Time step, variable units and grid shape of the archive behind windows.zarr.

    Read from the archive named in windows.zarr's ``archive`` attribute, with
    zarr directly; returns a dict accepted by
    ``model.registry.ArchiveDescription.from_dict``.
    """
    store = WindowsStore(url, "train")
    archive_url = store.attrs.get("archive")
    if not archive_url:
        raise WindowsError(f"{url} does not name its archive (attrs['archive']); rerun the windows job")
    try:
        archive = zarr.open_group(str(archive_url), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise WindowsError(f"the archive {archive_url!r} named by {url} cannot be opened") from err
    names = list(variables or dict.fromkeys((*store.channels, store.target)))
    units = {name: str(archive[name].attrs.get("units", "")) for name in names}
    grid = tuple(int(n) for n in archive[names[0]].shape[-2:])
    time_step = str(store.attrs.get("time_step") or archive.attrs.get("time_step"))
    return {"time_step": time_step, "variables": units, "grid_shape": list(grid)}
