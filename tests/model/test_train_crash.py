"""Training killed at any point resumes to the very weights an uninterrupted run ends with."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from nowcast import files as files_module
from nowcast.model import calibration, registry
from nowcast.model.checkpoint import CheckpointMismatchError
from nowcast.model.train import TrainConfig, train
from tests.model.conftest import make_tiny_windows
from tests.pause import BATCHES, kill_at_points, kill_points

OPTIONS = {"filters": [4], "lstm_units": 4, "decoder_filters": 2}
EPOCHS, BATCHES_PER_EPOCH = 5, 3  # 10 training samples in batches of 4


def config(windows: str, root: Path, **changes) -> TrainConfig:
    # a rate so high that the validation loss rises: the plateau schedule halves it and early stopping ends
    # the run on the best epoch's weights, so both keep state between epochs that a resumed run must get back
    settings = dict(windows=windows, models=str(root / "models"), architecture="convlstm",
                    workdir=str(root / "run"), options=OPTIONS, epochs=EPOCHS, batch_size=4, patience=2,
                    learning_rate=0.2,
                    loss="intensity_weighted_mse", augment=True, verbose=0, version="v1")
    return TrainConfig(**{**settings, **changes})


def outcome(root: Path) -> tuple[list[np.ndarray], dict, dict]:
    """The saved version's weights, training history and metadata."""
    version = root / "models" / "convlstm" / "v1"
    net = keras.models.load_model(version / "model.keras", compile=False, safe_mode=True)
    history = json.loads((version / "metrics.json").read_text())["history"]
    return net.get_weights(), history, json.loads((version / "metadata.json").read_text())


def assert_same_run(got, expected) -> None:
    (weights, history, meta), (want_weights, want_history, want_meta) = got, expected
    assert len(weights) == len(want_weights)
    for w, want in zip(weights, want_weights, strict=True):
        assert np.ascontiguousarray(w).tobytes() == np.ascontiguousarray(want).tobytes()  # bit for bit
    assert history == want_history
    assert meta["lead_scale"] == want_meta["lead_scale"]


def csv_epochs(workdir: Path) -> list[int]:
    with open(workdir / "history.csv") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny windows and one uninterrupted run's outcome."""
    root = tmp_path_factory.mktemp("train-reference")
    windows = make_tiny_windows(root)
    result = train(config(windows, root))
    assert result.history["learning_rate"][-1] < result.history["learning_rate"][0]  # the plateau acted
    assert len(result.history["loss"]) < EPOCHS  # early stopping acted
    return windows, outcome(root)


RUN = """
import json, sys
from nowcast.model.train import TrainConfig, train
train(TrainConfig(**json.loads(sys.argv[1])))
"""


@pytest.mark.slow
@pytest.mark.fault("train", "training SIGKILLed at a seeded batch, then the resumed run failing while it "
                   "writes an epoch's checkpoint (weights written, state not)",
                   "the rerun resumes from the last complete checkpoint and ends with an uninterrupted run's "
                   "weights, history and calibration, bit for bit; a rerun with other settings is refused, "
                   "naming them")
def test_sigkill_then_a_crash_while_checkpointing_then_rerun_is_byte_identical(reference, tmp_path,
                                                                               monkeypatch):
    windows, expected = reference
    cfg = config(windows, tmp_path)
    arguments = {**vars(cfg), "options": dict(cfg.options)}
    state = tmp_path / "run" / "backup" / "state.json"

    def part_way(_: int) -> None:
        assert not (tmp_path / "models" / "convlstm" / "v1").exists(), "the kill came after the run ended"

    # a seeded kill point in the second epoch: the checkpoint left is the first epoch's
    kill_at_points([sys.executable, "-c", RUN, json.dumps(arguments)], tmp_path, BATCHES,
                   [BATCHES_PER_EPOCH + kill_points(2 * BATCHES_PER_EPOCH, 1)[0]], part_way)
    assert json.loads(state.read_text())["epoch"] == 1

    def crash_before_the_state(source, target):  # the resumed run's next epoch: its files written, not named
        raise OSError("simulated crash while checkpointing")

    monkeypatch.setattr(files_module.os, "replace", crash_before_the_state)  # in write_atomically
    with pytest.raises(OSError, match="simulated crash"):
        train(cfg)
    monkeypatch.undo()
    assert json.loads(state.read_text())["epoch"] == 1
    assert csv_epochs(tmp_path / "run") == [0, 1]  # the CSV logger wrote epoch 1 before the crash

    with pytest.raises(CheckpointMismatchError, match=r"differs in \['seed'\].*another --workdir"):
        train(config(windows, tmp_path, seed=1))

    result = train(cfg)
    assert csv_epochs(tmp_path / "run") == list(range(len(result.history["loss"])))  # epoch 1 once
    assert len(result.history["loss"]) == len(expected[1]["loss"])  # the whole run's history
    assert_same_run(outcome(tmp_path), expected)
    assert not (tmp_path / "run" / "backup").exists()  # the version is saved: nothing left to resume
    assert_saved_for_scoring(result, cfg)


def assert_saved_for_scoring(result, cfg: TrainConfig) -> None:
    """The version's metadata holds what scoring needs, and the registry loads it."""
    meta = json.loads((Path(result.path) / "metadata.json").read_text())
    assert meta["time_step"] == "PT5M"
    assert meta["lead_times"] == ["PT5M", "PT10M", "PT15M"]
    assert meta["archive"] == {"time_step": "PT5M", "variables": {"precip": "mm h-1"}, "grid_shape": [8, 12]}
    assert meta["normalization"]["kinds"] == {"precip": "log1p"}
    assert meta["training_range"] == [{"start": "2019-12-31T23:45:00", "end": "2020-01-01T01:00:00"}]
    assert meta["fully_convolutional"]
    assert meta["postprocessing"] == "probability_matching"  # the default (docs/model.md)
    assert meta["training"]["loss"] == "intensity_weighted_mse"
    assert meta["normalization"]["coverage"]
    assert meta["architecture_config"]["channels"] == 2  # precip and its coverage mask
    assert len(meta["training_data_hash"]) == 64
    scales = meta["lead_scale"]["scales"]  # chosen on the validation split, saved in the model
    assert len(scales) == 3
    assert set(scales) <= set(calibration.SCALES)
    loaded = registry.load_model(cfg.models, "convlstm", archive=registry.ArchiveDescription.from_dict(
        meta["archive"]))
    assert loaded.model.loss.name == "intensity_weighted_mse"
    assert loaded.model.get_layer("change_scale").get_weights()[0].tolist() == scales
    mix = loaded.model.get_layer("lead_smoothing").get_weights()[0]  # one box size per lead, saved too
    sizes = loaded.model.get_layer("lead_smoothing").sizes
    assert [sizes[k] for k in mix.argmax(axis=1)] == meta["lead_scale"]["smoothing"]
    np.testing.assert_array_equal(mix.sum(axis=1), 1.0)
    ten_minutes = registry.ArchiveDescription("PT10M", {"precip": "mm h-1"}, (8, 12))
    with pytest.raises(registry.ArchiveMismatchError, match="time step"):
        registry.load_model(cfg.models, "convlstm", archive=ten_minutes)


@pytest.mark.fault("train", "training interrupted, then rerun with the same settings after the archive grew "
                   "(train cuts its windows anew: other data)",
                   "the checkpoint is dropped with a warning and training starts afresh (every rerun was "
                   "refused, saying to rerun with the same settings); other settings are still refused, "
                   "naming them and the fixes")
def test_a_checkpoint_of_other_windows_is_dropped_and_one_of_other_settings_refused(tmp_path, caplog):
    from nowcast.model.checkpoint import DATA, STATE, TrainingCheckpoint

    run = {"seed": 0, DATA: "before"}
    backup = tmp_path / "run" / "backup"
    backup.mkdir(parents=True)
    (backup / STATE).write_text(json.dumps({"run": run, "epoch": 2}))
    refused = rf"differs in \['seed', '{DATA}'\]\); .* delete {backup} to start afresh, or give this"
    with pytest.raises(CheckpointMismatchError, match=refused):
        TrainingCheckpoint(backup, {"seed": 1, DATA: "after"}).state()
    with caplog.at_level("WARNING", logger="nowcast.model.checkpoint"):
        assert TrainingCheckpoint(backup, {"seed": 0, DATA: "after"}).state() is None
    assert "the windows changed since the training run interrupted" in caplog.text
    assert "after epoch 2" in caplog.text
    assert not backup.exists()
