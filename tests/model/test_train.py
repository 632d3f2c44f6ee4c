"""Training end to end on tiny windows.zarr stores: several stores, refusals (resuming: test_train_crash)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from nowcast.model.train import TrainConfig, TrainConfigError, train

OPTIONS = {"filters": [4], "lstm_units": 4, "decoder_filters": 2}


@pytest.mark.slow
def test_one_model_learns_from_several_stores_with_merged_statistics(tmp_path):
    """Two networks' windows (other grids, one patch shape) train one model; statistics merge by count."""

    from nowcast.model.architectures import motion_penalty
    from nowcast.model.normalization import Normalizer
    from nowcast.pipelines.stores.windows import WindowsStore
    from tests.model.conftest import rain_like, write_archive, write_windows

    rng = np.random.default_rng(5)
    urls = []
    for name, grid in (("a", (16, 16)), ("b", (24, 32))):
        archive = write_archive(tmp_path / f"{name}_archive.zarr", 64, grid)
        splits = {split: (rain_like(rng, (n, 4, 8, 8, 1)), rain_like(rng, (n, 3, 8, 8, 1)))
                  for split, n in (("train", 6 if name == "a" else 10), ("val", 3))}
        urls.append(write_windows(tmp_path / f"{name}_windows.zarr", splits, archive=archive))
    cfg = TrainConfig(windows=tuple(urls), models=str(tmp_path / "models"), architecture="cnn_lstm",
                      workdir=str(tmp_path / "run"), options=OPTIONS, epochs=1, batch_size=4, verbose=0)
    result = train(cfg)
    meta = json.loads((Path(result.path) / "metadata.json").read_text())
    assert meta["windows"] == urls
    assert [a["grid_shape"] for a in meta["training_archives"]] == [[16, 16], [24, 32]]
    assert meta["training"]["samples"] == 16
    merged = Normalizer.from_dict(meta["normalization"]).stats["precip"]
    values = np.concatenate([np.asarray(WindowsStore(u, "train").inputs[...])[..., 0].ravel() for u in urls])
    values = values[np.isfinite(values)].astype("float64")
    assert merged["count"] == values.size
    assert merged["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert merged["std"] == pytest.approx(values.std(), rel=1e-9)
    assert merged["log1p_std"] == pytest.approx(np.log1p(values).std(), rel=1e-9)
    # the block match's penalty in the normalised units the model sees (the base as on log1p frames)
    assert meta["architecture_config"]["motion_penalty"] == pytest.approx(motion_penalty(merged["log1p_std"]))


@pytest.mark.fault("train", "windows stores of archives of different time steps given to one training",
                   "refused before any work, naming the steps (it was found after the whole fit, leaving its "
                   "history and checkpoints behind)")
def test_stores_of_different_time_steps_are_refused_before_the_fit(tmp_path):
    from tests.model.conftest import rain_like, write_archive, write_windows

    rng = np.random.default_rng(6)
    urls = []
    for name, step in (("five", "PT5M"), ("ten", "PT10M")):
        archive = write_archive(tmp_path / f"{name}_archive.zarr", 64, (16, 16), time_step=step)
        splits = {split: (rain_like(rng, (4, 4, 8, 8, 1)), rain_like(rng, (4, 3, 8, 8, 1)))
                  for split in ("train", "val")}
        urls.append(write_windows(tmp_path / f"{name}_windows.zarr", splits, archive=archive))
    cfg = TrainConfig(windows=tuple(urls), models=str(tmp_path / "models"), architecture="cnn_lstm",
                      workdir=str(tmp_path / "run"), options=OPTIONS, epochs=1, batch_size=4, verbose=0)
    with pytest.raises(TrainConfigError, match=r"archives of different time steps or units .*PT10M"):
        train(cfg)
    assert not (tmp_path / "run" / "history.csv").exists()


@pytest.mark.fault("train", "a bad training configuration",
                   "refused naming the setting")
def test_bad_training_config_is_refused():
    with pytest.raises(TrainConfigError, match="learning_rate"):
        TrainConfig(windows="w", models="m", learning_rate=0)
    with pytest.raises(ValueError, match="unknown loss"):
        TrainConfig(windows="w", models="m", loss="mae2")
    with pytest.raises(TrainConfigError, match="postprocessing"):
        TrainConfig(windows="w", models="m", postprocessing="smooth")
    with pytest.raises(TrainConfigError, match="windows is empty"):
        TrainConfig(windows=(), models="m")


@pytest.mark.fault("train", "a training run failing under mixed precision",
                   "the global precision policy is restored")
def test_a_run_failing_on_a_gpu_machine_leaves_the_precision_policy_as_it_was(tiny_windows, tmp_path,
                                                                               monkeypatch):
    """The mixed-precision policy is process-global. No GPU here: ``gpu_count`` is patched to 1 (on CPU
    the policy and MirroredStrategy still apply), and the model build fails after the policy is set."""
    import nowcast.model.train as train_module

    monkeypatch.setattr(train_module, "gpu_count", lambda: 1)

    def broken_build(*args, **kwargs):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        raise RuntimeError("out of GPU memory while building")

    monkeypatch.setattr(train_module, "build_model", broken_build)
    cfg = TrainConfig(windows=tiny_windows, models=str(tmp_path / "models"), architecture="convlstm",
                      workdir=str(tmp_path / "run"), options=OPTIONS, epochs=1, batch_size=4, verbose=0)
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        train(cfg)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.fault("train", "the windows store rewritten (another windows run, other settings) while a "
                   "training run reads it",
                   "the run stops naming the store and the fix (a 198-line TensorFlow traceback, exit 1)")
def test_windows_rewritten_under_a_training_run_are_named(tmp_path):
    from nowcast.model.train import TrainConfigError
    from tests.model.conftest import make_tiny_windows, rain_like, write_windows

    windows = make_tiny_windows(tmp_path)

    class RewriteAfterTheFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                rng = np.random.default_rng(1)
                shutil.rmtree(windows)  # cut again with other frames and patches
                write_windows(Path(windows), {name: (rain_like(rng, (n, 3, 8, 8, 1)),
                                                     rain_like(rng, (n, 2, 8, 8, 1)))
                                              for name, n in (("train", 10), ("val", 4))})

    cfg = TrainConfig(windows=windows, models=str(tmp_path / "models"), architecture="convlstm",
                      workdir=str(tmp_path / "run"), options=OPTIONS, epochs=3, batch_size=4, verbose=0)
    with pytest.raises(TrainConfigError, match=r"windows\.zarr was rewritten \(or removed\) while this"):
        train(cfg, extra_callbacks=[RewriteAfterTheFirstEpoch()])
