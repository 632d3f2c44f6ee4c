"""Training input: windows.zarr read chunk by chunk into a tf.data pipeline.

``windows.zarr`` (docs/schemas.md) stores physical values with NaN where the
radar did not see, plus the train-split normalisation statistics. This module
reads it through :class:`nowcast.pipelines.stores.windows.WindowsStore`, the
same schema module the windows job writes with:

- :class:`~nowcast.model.normalization.Normalizer` maps physical values to
  the model's space and back (log1p and standardise rain; NaN inputs become
  "nothing" plus a coverage channel). The pipeline's sample weights are 0
  where the target is NaN, so the loss ignores those pixels.
- Several windows stores (one per radar network, each with its own grid)
  train one model: their chunks are drawn together and their train
  statistics merged (``Normalizer.from_stores``).
- :func:`make_dataset` builds the pipeline: the sample chunks of a split are
  shuffled, read ``cycle_length`` at a time in parallel (each read decodes one
  zarr chunk along ``sample``), mixed in a shuffle buffer, optionally flipped
  and rotated (the same transform on inputs and targets), batched and
  prefetched. Memory holds at most ``cycle_length`` chunks plus the buffer,
  never a split.
- What a training epoch draws is a function of ``(seed, epoch)`` only: the
  chunk order, the mixing and the augmentation are seeded per epoch, and the
  pipeline's parallel reads keep their order. So a run resumed at epoch 5
  after a crash draws what an uninterrupted run draws in epoch 5
  (:mod:`nowcast.model.checkpoint`), whatever the process did before.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from nowcast.model.normalization import Normalizer, model_samples
from nowcast.pipelines.stores.windows import WindowsError, WindowsStore

T = TypeVar("T")


def read_model_chunk(store: WindowsStore, index: int, normalizer: Normalizer | None,
                     wet: tuple[float, float] | None = None) -> tuple[np.ndarray, ...]:
    """A sample chunk as :func:`~nowcast.model.normalization.model_samples` gives it to Keras.

    With ``normalizer=None`` the values stay physical (NaN kept), which
    tests use to compare with the store.
    """
    inputs, targets = store.read_chunk(int(index))
    return model_samples(inputs, targets, normalizer, wet)


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


def chunk_order(total: int, seed: int, epoch: int, endless: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Chunk indices in a random order drawn for ``(seed, epoch)``, each with an augmentation key.

    One pass over ``total`` chunks, or with ``endless`` pass after pass, each drawn anew.

    >>> [int(i) for i, _ in chunk_order(4, seed=0, epoch=1)] == [int(i) for i, _ in chunk_order(4, 0, 1)]
    True
    >>> sorted(int(i) for i, _ in chunk_order(4, seed=0, epoch=2))
    [0, 1, 2, 3]
    """
    for one_pass in itertools.count() if endless else range(1):
        rng = np.random.default_rng([seed, epoch, one_pass])
        keys = rng.integers(0, 2**31 - 1, size=(total, 2))
        yield from zip(rng.permutation(total).tolist(), keys, strict=True)


def read_ahead(read: Callable[..., T], items: Iterable[tuple], workers: int) -> Iterator[T]:
    """``read(*item)`` for each item, on ``workers`` threads at most ``workers`` items ahead, in order."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[concurrent.futures.Future[T]] = collections.deque()
        for item in items:
            pending.append(pool.submit(read, *item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
                 with_weights: bool = True, steps: int | None = None, drop_remainder: bool = False,
                 wet: tuple[float, float] | None = None, epoch: Callable[[], int] = lambda: 0):
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
        seed: seed of both shuffles and the augmentation, with ``epoch``.
        shuffle_buffer: samples held for shuffling.
        cycle_length: chunks read concurrently.
        augment: random flips and 90-degree rotations (inputs and targets alike).
        with_weights: also yield per-pixel weights, 0 where the target is NaN.
        steps: batches per iteration, drawn from as many seeded passes over
            the split as they need (training with ``steps_per_epoch``); None:
            one pass.
        drop_remainder: drop a final short batch.
        wet: ``(threshold, fraction)``: keep only samples whose target has at
            least ``fraction`` of observed pixels at or above ``threshold``.
        epoch: the epoch an iteration draws (called when it starts; Keras
            starts one per epoch, after ``on_epoch_begin``): with ``seed`` it
            fixes the order, the mixing and the augmentation.

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

    def read(index, key) -> tuple[np.ndarray, ...]:
        """A chunk's samples, each with its own augmentation key: the chunk's key plus its row."""
        store, chunk = chunk_of[int(index)]
        inputs, targets, weights = read_model_chunk(stores[store], int(chunk), active, wet)
        rows = np.arange(len(inputs), dtype="int64")
        return inputs, targets, weights, np.stack([np.full_like(rows, key[0]), key[1] + rows], axis=1)

    signature = (*specs, tf.TensorSpec((None, 2), tf.int64))
    total_chunks = len(chunk_of)
    if shuffle:
        # Chunks in an order drawn for (seed, epoch), read cycle_length at a time on threads of this process
        # and kept in that order (tf.data runs a parallel map after a Python source one call at a time under
        # deterministic kernels); the buffer's shuffle is the same in every iteration, so its output differs
        # only with its input.
        ds = tf.data.Dataset.from_generator(
            lambda: read_ahead(read, chunk_order(total_chunks, seed, epoch(), endless=steps is not None),
                               max(1, cycle_length)), output_signature=signature)
        ds = ds.unbatch().shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        parallel = None
    else:
        # Store order (evaluation): chunks still read in parallel, emitted in sequence.
        def read_in_order(index):
            arrays = tf.numpy_function(read, [index, tf.stack([tf.constant(seed, tf.int64), index])],
                                       [spec.dtype for spec in signature], stateful=False)
            for array, spec in zip(arrays, signature, strict=True):
                array.set_shape(spec.shape)
            return tuple(arrays)

        ds = tf.data.Dataset.range(total_chunks).map(read_in_order, num_parallel_calls=tf.data.AUTOTUNE,
                                                     deterministic=True).unbatch()
        parallel = tf.data.AUTOTUNE
    def kept(x, y, w):
        return (x, y, w) if with_weights else (x, y)

    if augment:
        square = in_shape[1] == in_shape[2]
        ds = ds.map(lambda x, y, w, key: kept(*_augment(x, y, w, tf.cast(key, tf.int32), square)),
                    num_parallel_calls=parallel, deterministic=True if parallel else None)
    else:
        ds = ds.map(lambda x, y, w, key: kept(x, y, w))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if steps is not None:
        ds = ds.take(steps).apply(tf.data.experimental.assert_cardinality(steps))
    elif wet is None:  # a known length gives Keras's progress bar its total
        batches = num_samples // batch_size if drop_remainder else -(-num_samples // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.prefetch(tf.data.AUTOTUNE)
