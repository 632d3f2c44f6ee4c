"""The tf.data input: exactly the stored windows, normalised as documented."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from nowcast.model import data
from nowcast.model.normalization import NormalizationError, Normalizer
from nowcast.pipelines.stores.windows import WindowsError, WindowsStore, fingerprint


def _rows(batches, index: int) -> list[bytes]:
    return sorted(np.ascontiguousarray(row).tobytes() for b in batches for row in np.asarray(b[index]))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_pipeline_yields_exactly_the_stored_windows(tiny_windows, split):
    root = zarr.open_group(tiny_windows, mode="r")[split]
    inputs, targets = root["inputs"][...], root["targets"][...]
    batches = list(data.make_dataset(tiny_windows, split, batch_size=3, seed=1, normalize=False))
    assert sum(b[0].shape[0] for b in batches) == inputs.shape[0]
    # NaN bytes compare equal as bytes, so the rows match exactly, NaN included.
    assert _rows(batches, 0) == sorted(np.ascontiguousarray(r).tobytes() for r in inputs)
    assert _rows(batches, 1) == sorted(np.ascontiguousarray(r).tobytes() for r in targets)
    for b in batches:
        np.testing.assert_array_equal(b[2].numpy(), np.isfinite(b[1].numpy()[..., 0]).astype("float32"))


def test_shuffle_changes_order_between_seeds_but_not_content(tiny_windows):
    first = [b[0].numpy() for b in data.make_dataset(tiny_windows, "train", 10, seed=1, normalize=False)]
    second = [b[0].numpy() for b in data.make_dataset(tiny_windows, "train", 10, seed=2, normalize=False)]
    assert not np.array_equal(first[0], second[0], equal_nan=True)
    assert _rows([[first[0]]], 0) == _rows([[second[0]]], 0)


def test_normalisation_is_log1p_standardised_with_nan_to_zero(tiny_windows):
    store = WindowsStore(tiny_windows, "train")
    stats = store.attrs["normalization"]["precip"]
    raw = zarr.open_group(tiny_windows, mode="r")["train"]["inputs"][...]
    expected = (np.log1p(raw) - stats["log1p_mean"]) / stats["log1p_std"]
    expected = np.where(np.isfinite(raw), expected, 0.0)
    got = np.concatenate([b[0].numpy() for b in data.make_dataset(tiny_windows, "train", 4, shuffle=False)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    norm = Normalizer.from_store(store)
    finite = raw[np.isfinite(raw)]
    round_trip = norm.denormalize(norm.normalize(finite, "precip"))
    np.testing.assert_allclose(round_trip, finite, rtol=1e-4, atol=1e-5)


def test_augmentation_transforms_inputs_and_targets_alike(tmp_path):
    from tests.model.conftest import write_windows

    rng = np.random.default_rng(3)
    inputs = rng.random((8, 2, 8, 8, 1)).astype("float32")
    targets = np.repeat(inputs[:, -1:], 3, axis=1)  # targets = last input frame, so any shared
    url = write_windows(tmp_path / "w.zarr", {"train": (inputs, targets)}, archive="a")  # transform keeps it
    batches = list(data.make_dataset(url, "train", 8, seed=5, augment=True, normalize=False))
    x, y = batches[0][0].numpy(), batches[0][1].numpy()
    for i in range(len(x)):
        np.testing.assert_array_equal(y[i], np.repeat(x[i, -1:], 3, axis=0))
    originals = {np.ascontiguousarray(r).tobytes() for r in inputs}
    assert sum(np.ascontiguousarray(r).tobytes() not in originals for r in x) > 0  # some were transformed


def test_missing_store_and_split_are_named(tmp_path, tiny_windows):
    with pytest.raises(WindowsError, match="run the windows job"):
        WindowsStore(str(tmp_path / "nope.zarr"))
    with pytest.raises(WindowsError, match="split must be one of"):
        WindowsStore(tiny_windows, "holdout")


def test_fingerprint_changes_with_the_data_index(tmp_path):
    from tests.model.conftest import rain_like, write_windows

    rng = np.random.default_rng(0)
    pair = (rain_like(rng, (4, 2, 8, 8, 1)), rain_like(rng, (4, 1, 8, 8, 1)))
    a = fingerprint(write_windows(tmp_path / "a.zarr", {"train": pair}, archive="x"))
    b = fingerprint(write_windows(tmp_path / "b.zarr", {"train": pair}, archive="x"))
    c = fingerprint(write_windows(tmp_path / "c.zarr", {"train": pair}, archive="x", start="2021-01-01"))
    assert a == b != c


def test_wet_filter_keeps_only_wet_samples(tiny_windows):
    raw = zarr.open_group(tiny_windows, mode="r")["train"]["targets"][...]
    fraction = (raw >= 2.0).sum(axis=(1, 2, 3, 4)) / np.isfinite(raw).sum(axis=(1, 2, 3, 4))
    cut = float(np.median(fraction))
    batches = list(data.make_dataset(tiny_windows, "train", 4, normalize=False, wet=(2.0, cut)))
    kept = _rows(batches, 1)
    expected = sorted(np.ascontiguousarray(r).tobytes()
                      for r, f in zip(raw, fraction, strict=True) if f >= cut)
    assert kept == expected
    assert 0 < len(kept) < len(raw)


@pytest.mark.fault("train", "an archive that is dry (or constant) over its training frames",
                   "refused naming the variable and the fix, to ingest a period with rain (it said 'standard "
                   "std' and pointed at a training range no option sets)")
def test_a_train_split_without_variation_is_refused_with_the_fix():
    dry = {"precip": {"mean": 0.0, "std": 0.0, "log1p_mean": 0.0, "log1p_std": 0.0}}
    with pytest.raises(NormalizationError, match=r"'precip' does not vary over the train split \(its log1p "
                                                 r"standard deviation is 0.0\): the archive is dry, or "
                                                 r"constant, .* ingest a period with rain"):
        Normalizer(("precip",), "precip", dry)
