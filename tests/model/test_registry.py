"""Registry: versions, the latest pointer, checksums and archive checks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

from nowcast.model import registry
from nowcast.model.architectures import ArchitectureConfig, build_model

ARCHIVE = registry.ArchiveDescription(time_step="PT5M", variables={"precip": "mm h-1"}, grid_shape=(8, 8))


def _metadata() -> dict[str, object]:
    return {"archive": ARCHIVE.to_dict(), "t_in": 3, "t_out": 2}


@pytest.fixture(params=[("cnn_lstm", {}), ("convlstm", {}), ("convlstm", {"advection": True}),
                        ("cnn_lstm", {"advection": True, "matched_motion": True}),
                        ("convlstm", {"advection": True, "matched_motion": True, "lagrangian_ar": True})],
                ids=["cnn_lstm", "convlstm", "convlstm-advection", "cnn_lstm-matched-motion",
                     "convlstm-lagrangian-ar"])
def saved(request, tmp_path):
    keras.utils.set_random_seed(0)
    name, options = request.param
    model = build_model(name, ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,),
                                                 lstm_units=4, **options))
    if options.get("advection"):  # the motion head starts at zero; weights make the round trip move pixels
        motion = model.get_layer("motion")
        motion.set_weights([np.random.default_rng(3).normal(0, 0.5, w.shape).astype("float32")
                            for w in motion.get_weights()])
    path = registry.save_model(model, tmp_path, name, _metadata(), {"val_loss": 0.5}, version="v1")
    assert isinstance(path, str)
    return model, Path(path), tmp_path, name


def test_save_then_load_gives_identical_predictions(saved):
    model, path, root, name = saved
    loaded = registry.load_model(root, name, archive=ARCHIVE)
    batch = np.random.default_rng(0).normal(size=(2, 3, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.model(batch)),
                                  keras.ops.convert_to_numpy(model(batch)))
    assert loaded.path == str(path)
    assert loaded.metrics == {"val_loss": 0.5}
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["model_sha256"] == registry.sha256_file(path / "model.keras")
    manifest = json.loads((path / "manifest.json").read_text())["files"]
    assert manifest == {f: registry.sha256_file(path / f)
                        for f in ("model.keras", "metadata.json", "metrics.json")}
    assert meta["packages"]["keras"] == keras.__version__
    # readable as its registry is (0700 from mkdtemp hid a version from scorers running as another user)
    assert path.stat().st_mode & 0o777 == path.parent.stat().st_mode & 0o777


def test_latest_pointer_follows_promotion(saved):
    model, _, root, name = saved
    registry.save_model(model, root, name, _metadata(), version="v2")
    assert (root / name / "latest").read_text().strip() == "v2"
    registry.save_model(model, root, name, _metadata(), version="v3", promote=False)
    assert Path(registry.resolve_version(root, name)).name == "v2"
    registry.promote_version(root, name, "v3")
    assert Path(registry.resolve_version(root, name)).name == "v3"
    assert sorted(p.name for p in (root / name).iterdir()) == ["latest", "v1", "v2", "v3"]
    assert registry.list_versions(root, name) == ["v1", "v2", "v3"]
    with pytest.raises(registry.RegistryError, match="immutable"):
        registry.save_model(model, root, name, _metadata(), version="v1")


@pytest.mark.fault("models", "a model.keras changed after saving",
                   "refused: its sha256 differs from the metadata's")
def test_corrupted_model_file_is_refused(saved):
    _, path, root, name = saved
    with open(path / "model.keras", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(registry.ChecksumMismatchError, match="modified or corrupted"):
        registry.load_model(root, name, archive=ARCHIVE)


@pytest.mark.parametrize("file", ["metadata.json", "metrics.json"])
@pytest.mark.fault("models", "an edited metadata.json or metrics.json",
                   "refused by the version's manifest")
def test_an_edited_metadata_or_metrics_file_is_refused(saved, file):
    """metadata.json (its normalisation statistics, say) could once be edited and used without a word."""
    _, path, root, name = saved
    content = json.loads((path / file).read_text())
    if file == "metadata.json":
        content["t_in"] = 4
    else:
        content["val_loss"] = 0.1
    (path / file).write_text(json.dumps(content))
    with pytest.raises(registry.ChecksumMismatchError, match=f"{file} changed since the version was saved"):
        registry.load_model(root, name, archive=ARCHIVE)


@pytest.mark.parametrize(("damage", "error", "message"), [
    ("metadata.json not JSON", registry.RegistryError, "metadata.json is not valid JSON"),
    ("manifest.json not JSON", registry.RegistryError, "manifest.json is not valid JSON"),
    ("metrics.json deleted", registry.ChecksumMismatchError, r"metrics.json \(missing\) changed"),
    ("manifest.json listing nothing", registry.ChecksumMismatchError,
     "manifest.json does not list model.keras, metadata.json, metrics.json"),
    ("manifest.json listing the model alone", registry.ChecksumMismatchError,
     "manifest.json does not list metadata.json, metrics.json"),
])
@pytest.mark.fault("models", "a version's metadata.json or manifest.json that is not JSON, or a file deleted",
                   "refused naming the file and the fix (restore it, or promote or train another version); "
                   "no JSON traceback; a manifest that lists not every file is damaged too (one listing none "
                   "checked nothing: edited metadata loaded as sound)")
def test_a_damaged_version_file_is_named(saved, damage, error, message):
    _, path, root, name = saved
    file = damage.split()[0]
    if damage.endswith("deleted"):
        (path / file).unlink()
    elif "listing" in damage:
        listed = json.loads((path / file).read_text())["files"]
        kept = {"model.keras": listed["model.keras"]} if damage.endswith("alone") else {}
        (path / file).write_text(json.dumps({"files": kept}))
    else:
        (path / file).write_text("{not json")
    with pytest.raises(error, match=message):
        registry.load_model(root, name, archive=ARCHIVE)


def test_a_version_that_is_no_plain_folder_name_is_not_promoted(saved):
    _, _, root, name = saved
    with pytest.raises(registry.RegistryError, match="must be a plain folder name"):
        registry.promote_version(root, name, f"../{name}/v1")
    assert (root / name / "latest").read_text().strip() == "v1"


def test_a_version_saved_before_manifests_still_loads(saved, caplog):
    _, path, root, name = saved
    (path / "manifest.json").unlink()
    with pytest.raises(registry.ChecksumMismatchError, match=r"manifest\.json is missing, though"):
        registry.load_model(root, name, archive=ARCHIVE)  # saved with one: deleted, edits went unchecked
    metadata = json.loads((path / "metadata.json").read_text())
    del metadata["manifest"]  # as an older nowcast wrote it
    (path / "metadata.json").write_text(json.dumps(metadata))
    caplog.set_level(logging.WARNING, logger=registry.__name__)  # whatever level a command left the root at
    assert registry.load_model(root, name, archive=ARCHIVE).metrics == {"val_loss": 0.5}
    assert "has no manifest.json" in caplog.text


@pytest.mark.parametrize(("archive", "message"), [
    (registry.ArchiveDescription("PT10M", {"precip": "mm h-1"}, (8, 8)), "time step: model trained on PT5M"),
    (registry.ArchiveDescription("PT5M", {"precip": "mm"}, (8, 8)), "expects units 'mm h-1'"),
    (registry.ArchiveDescription("PT5M", {"rain": "mm h-1"}, (8, 8)), "'precip' .* is missing"),
    (registry.ArchiveDescription("PT5M", {"precip": "mm h-1"}, (16, 8)), "grid: model trained on"),
])
@pytest.mark.fault("models", "a model used on an archive of another step, variables or grid",
                   "refused naming the difference")
def test_archive_mismatch_is_refused(saved, archive, message):
    _, _, root, name = saved
    with pytest.raises(registry.ArchiveMismatchError, match=message):
        registry.load_model(root, name, "v1", archive=archive)
    assert issubclass(registry.ArchiveMismatchError, ValueError)


@pytest.mark.fault("models", "a model used on an archive whose rain rate is another spelling of its units "
                   "(mm/h, kg m-2 h-1 for mm h-1)",
                   "it runs (refused as 'expects units mm h-1', with a fix to resample or regrid)")
def test_another_spelling_of_the_units_fits(saved):
    _, _, root, name = saved
    for spelling in ("mm/h", "kg m-2 h-1"):
        archive = registry.ArchiveDescription("PT5M", {"precip": spelling}, (8, 8))
        assert registry.load_model(root, name, "v1", archive=archive) is not None


@pytest.mark.fault("models", "a model name or version that does not exist",
                   "refused naming what exists")
def test_missing_versions_are_named(tmp_path):
    with pytest.raises(registry.RegistryError, match="no promoted version"):
        registry.load_model(tmp_path, "cnn_lstm", archive=ARCHIVE)
    with pytest.raises(registry.RegistryError, match="not a complete model version"):
        registry.load_model(tmp_path, "cnn_lstm", "v9", archive=ARCHIVE)


def test_patch_models_run_on_any_grid_of_at_least_one_patch(tmp_path):
    model = build_model("cnn_lstm", ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,),
                                                       lstm_units=4))
    trained = registry.ArchiveDescription("PT5M", {"precip": "mm h-1"}, (64, 80))
    meta = {"archive": trained.to_dict(), "input_shape": [8, 8]}
    registry.save_model(model, tmp_path, "cnn_lstm", meta, version="v1")
    other_grid = registry.ArchiveDescription("PT5M", {"precip": "mm h-1"}, (32, 40))
    assert registry.load_model(tmp_path, "cnn_lstm", archive=other_grid).metadata["input_shape"] == [8, 8]
    with pytest.raises(registry.ArchiveMismatchError, match="smaller than the model's"):
        registry.load_model(tmp_path, "cnn_lstm", archive=registry.ArchiveDescription(
            "PT5M", {"precip": "mm h-1"}, (4, 40)))
    with pytest.raises(registry.ArchiveMismatchError, match="time step"):
        registry.load_model(tmp_path, "cnn_lstm", archive=registry.ArchiveDescription(
            "PT10M", {"precip": "mm h-1"}, (64, 80)))


def test_a_registry_on_an_object_store_saves_promotes_and_loads(s3_bucket, tmp_path, monkeypatch):
    """The same registry on S3 (moto's server): workers on other machines share models through it."""
    import s3fs

    monkeypatch.setenv("NOWCAST_MODEL_CACHE", str(tmp_path / "cache"))
    keras.utils.set_random_seed(0)
    model = build_model("cnn_lstm", ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,),
                                                       lstm_units=4))
    root = f"{s3_bucket}/models"
    path = registry.save_model(model, root, "cnn_lstm", _metadata(), {"val_loss": 0.5}, version="v1")
    assert path == f"{root}/cnn_lstm/v1"
    registry.save_model(model, root, "cnn_lstm", _metadata(), version="v2", promote=False)
    assert registry.resolve_version(root, "cnn_lstm") == path  # latest: v1
    assert registry.list_versions(root, "cnn_lstm") == ["v1", "v2"]
    registry.promote_version(root, "cnn_lstm", "v2")
    loaded = registry.load_model(root, "cnn_lstm", archive=ARCHIVE)
    assert loaded.path == f"{root}/cnn_lstm/v2"
    assert loaded.metadata["version"] == "v2"
    batch = np.random.default_rng(0).normal(size=(2, 3, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.model(batch)),
                                  keras.ops.convert_to_numpy(model(batch)))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{loaded.metadata['model_sha256']}.keras"]
    with pytest.raises(registry.RegistryError, match="immutable"):
        registry.save_model(model, root, "cnn_lstm", _metadata(), version="v1")

    fs = s3fs.S3FileSystem()
    fs.pipe_file(f"{root}/cnn_lstm/v2/model.keras".removeprefix("s3://"), b"not a model")
    fs.invalidate_cache()
    monkeypatch.setenv("NOWCAST_MODEL_CACHE", str(tmp_path / "fresh"))  # a worker without the good copy
    with pytest.raises(registry.ChecksumMismatchError, match="modified or corrupted"):
        registry.load_model(root, "cnn_lstm", archive=ARCHIVE)
    fs.rm(f"{root}/cnn_lstm/v1/metadata.json".removeprefix("s3://"))
    with pytest.raises(registry.RegistryError, match="not a complete model version"):
        registry.load_model(root, "cnn_lstm", "v1", archive=ARCHIVE)


@pytest.fixture
def two_versions(tmp_path):
    """cnn_lstm saved twice (v1, v2 promoted), the smallest model."""
    keras.utils.set_random_seed(0)
    model = build_model("cnn_lstm", ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,),
                                                       lstm_units=4))
    for version in ("v1", "v2"):
        registry.save_model(model, tmp_path, "cnn_lstm", _metadata(), {"val_loss": 0.5}, version=version)
    return tmp_path


@pytest.mark.fault("models", "promoting a version that is incomplete or damaged",
                   "refused naming why (it was promoted, and every schedule following latest failed); "
                   "latest unchanged")
def test_only_a_sound_version_is_promoted(two_versions):
    root = two_versions
    (root / "cnn_lstm" / "v3").mkdir()
    (root / "cnn_lstm" / "v3" / "metadata.json").write_text("{}")
    with pytest.raises(registry.RegistryError, match=r"cannot promote cnn_lstm/v3: .* not a complete model"):
        registry.promote_version(root, "cnn_lstm", "v3")
    (root / "cnn_lstm" / "v1" / "model.keras").write_bytes(b"overwritten")
    with pytest.raises(registry.ChecksumMismatchError, match=r"cannot promote cnn_lstm/v1: .*sha256"):
        registry.promote_version(root, "cnn_lstm", "v1")
    assert registry.promoted_version(root, "cnn_lstm") == "v2"


@pytest.mark.parametrize("damage", ["not text", "a folder", "empty"])
@pytest.mark.fault("models", "a `latest` pointer that is not a version name (binary, empty, a folder)",
                   "refused naming the pointer and the fix (promote again), no traceback; promote repairs it "
                   "(a folder is refused: move it aside)")
def test_a_damaged_latest_pointer_is_named(two_versions, damage):
    root = two_versions
    pointer = root / "cnn_lstm" / "latest"
    pointer.unlink()
    if damage == "a folder":
        pointer.mkdir()
    else:
        pointer.write_bytes(b"\xff\xfe" if damage == "not text" else b"\n")
    with pytest.raises(registry.RegistryError, match=r"latest is (damaged|a folder)"):
        registry.resolve_version(root, "cnn_lstm")
    if damage == "a folder":
        with pytest.raises(registry.RegistryError, match="move it aside"):
            registry.promote_version(root, "cnn_lstm", "v1")
        assert not list((root / "cnn_lstm").glob(".latest*"))
        return
    registry.promote_version(root, "cnn_lstm", "v1")
    assert registry.resolve_version(root, "cnn_lstm").endswith("v1")


@pytest.mark.fault("models", "a version's metadata.json or metrics.json that is JSON but not an object",
                   "refused naming the file (it was an AttributeError traceback in list, show and score)")
def test_a_json_document_that_is_not_an_object_is_a_damaged_version(two_versions):
    root = two_versions
    (root / "cnn_lstm" / "v2" / "metadata.json").write_text("[]")
    with pytest.raises(registry.RegistryError, match=r"v2/metadata.json .*a JSON list, not an object"):
        registry.read_metadata(registry.resolve_version(root, "cnn_lstm"))


@pytest.mark.fault("models", "a model name or version with '..' given to score, backfill or show",
                   "refused as not a plain folder name (it read another registry's model)")
def test_names_that_leave_the_registry_are_refused(two_versions, tmp_path_factory):
    other = tmp_path_factory.mktemp("empty_registry")
    with pytest.raises(registry.RegistryError, match="must be a plain folder name"):
        registry.resolve_version(other, f"../{two_versions.name}/cnn_lstm")
    with pytest.raises(registry.RegistryError, match="must be a plain folder name"):
        registry.resolve_version(two_versions, "cnn_lstm", "../cnn_lstm/v1")


@pytest.mark.fault("models", "a damaged version among sound ones in `nowcast models list` (JSON not "
                   "parsable, model.keras truncated)",
                   "every version is listed, the damaged one marked with why; exit 0 (it stopped at the "
                   "first damaged one and hid the rest)")
def test_models_list_marks_a_damaged_version_and_shows_the_rest(two_versions, capsys):
    from nowcast.flows.cli import main

    (two_versions / "cnn_lstm" / "v1" / "metadata.json").write_text("{trunc")
    assert main(["models", "list", "--models", str(two_versions)]) == 0
    out = capsys.readouterr().out
    assert "v1  damaged: " in out
    assert "v2  saved " in out
    assert out.rstrip().endswith("latest")
    model = two_versions / "cnn_lstm" / "v2" / "model.keras"  # truncated: it was listed as saved, and latest
    model.write_bytes(model.read_bytes()[:100])
    assert main(["models", "list", "--models", str(two_versions)]) == 0
    line = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert line.startswith("  v2  damaged: "), line
    assert "sha256" in line, line
    assert line.endswith("latest"), line


@pytest.mark.fault("models", "`models show` of a damaged version (model.keras truncated, metrics edited); "
                   "`models list` of a version folder without its metadata.json",
                   "show prints the version with why it is damaged (and a warning); list shows the folder "
                   "as incomplete, with the fix (show printed the damaged version as sound; list left the "
                   "folder out, or said 'no models' when it was the only one)")
def test_models_show_and_list_name_damaged_and_incomplete_versions(two_versions, capsys):
    from nowcast.flows.cli import main

    metrics = two_versions / "cnn_lstm" / "v2" / "metrics.json"
    metrics.write_text(metrics.read_text().replace("}", ', "val_loss_edited": 0.001}', 1))
    assert main(["models", "show", "--models", str(two_versions), "cnn_lstm/v2"]) == 0
    shown = capsys.readouterr()
    assert "metrics.json changed since the version was saved" in json.loads(shown.out)["damaged"]
    assert "nowcast models show: warning: " in shown.err
    assert main(["models", "show", "--models", str(two_versions), "cnn_lstm/v1"]) == 0
    assert json.loads(capsys.readouterr().out)["damaged"] is None
    incomplete = two_versions / "cnn_lstm" / "v3"
    incomplete.mkdir()
    shutil.copy(two_versions / "cnn_lstm" / "v1" / "model.keras", incomplete / "model.keras")
    (two_versions / "other" / "v1").mkdir(parents=True)  # a model whose only version is incomplete
    assert main(["models", "list", "--models", str(two_versions)]) == 0
    out = capsys.readouterr().out
    assert "  v3  incomplete: no metadata.json" in out
    assert out.startswith("cnn_lstm\n")
    assert "\nother\n  v1  incomplete: no metadata.json" in out
    assert main(["models", "show", "--models", str(two_versions), "other"]) == 2  # named as a model there
    assert "models there: cnn_lstm" in capsys.readouterr().err


@pytest.mark.fault("models", "a version whose metadata lacks its training archive; `latest` naming a version "
                   "that is gone",
                   "the first is refused naming the damage (a KeyError traceback in score); `models list` "
                   "says where latest points and the fix")
def test_metadata_without_its_archive_and_a_latest_to_nothing_are_named(two_versions, capsys):
    from nowcast.flows.cli import main

    with pytest.raises(registry.RegistryError, match="does not record its training archive"):
        registry.check_archive({"t_in": 3}, ARCHIVE)
    (two_versions / "cnn_lstm" / "latest").write_text("v9\n")
    assert main(["models", "list", "--models", str(two_versions)]) == 0
    assert "latest: points at v9, which is not a saved version" in capsys.readouterr().out


@pytest.mark.fault("models", "two saves of one model name in the same second (two trainings ending at once)",
                   "the second takes the version name with -2 after it and no staging folder is left (it "
                   "was an OSError traceback after a full training, and a hidden folder holding a model)")
def test_saves_in_the_same_second_take_their_own_versions(tmp_path, monkeypatch):
    import time

    keras.utils.set_random_seed(0)
    model = build_model("cnn_lstm", ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,),
                                                       lstm_units=4))
    second = time.gmtime()
    monkeypatch.setattr(registry.time, "gmtime", lambda *args: second)
    paths = [registry.save_model(model, tmp_path, "cnn_lstm", _metadata(), promote=False) for _ in range(3)]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", second)
    assert [registry.version_name(path) for path in paths] == [stamp, f"{stamp}-2", f"{stamp}-3"]
    assert registry.list_versions(tmp_path, "cnn_lstm") == [stamp, f"{stamp}-2", f"{stamp}-3"]
    assert registry.read_metadata(paths[1])["version"] == f"{stamp}-2"
    assert sorted(p.name for p in (tmp_path / "cnn_lstm").iterdir()) == [stamp, f"{stamp}-2", f"{stamp}-3"]
    with pytest.raises(registry.RegistryError, match="already exists; versions are immutable"):
        registry.save_model(model, tmp_path, "cnn_lstm", _metadata(), version=stamp)


@pytest.mark.fault("models", "a registry folder that cannot be written (read-only, or in another's hands) at "
                   "save or promote; a version folder named with a space at its end",
                   "refused naming the folder and the fix, latest unchanged (tracebacks; and `cand ` was "
                   "promoted, then read back as version `cand`)")
def test_an_unwritable_registry_and_a_padded_version_are_named(two_versions):
    root = two_versions
    model = registry.load_model(root, "cnn_lstm", archive=ARCHIVE).model
    (root / "other").write_text("a file where the name's folder would go")
    with pytest.raises(registry.RegistryError, match=r"cannot write .*other/v1: .*make .* writable"):
        registry.save_model(model, root, "other", _metadata(), version="v1")
    (root / "cnn_lstm" / f".latest.{os.getpid()}.tmp").mkdir()  # the pointer cannot be written
    with pytest.raises(registry.RegistryError, match=r"cannot promote cnn_lstm/v1: .*latest; make the"):
        registry.promote_version(root, "cnn_lstm", "v1")
    shutil.copytree(root / "cnn_lstm" / "v1", root / "cnn_lstm" / "v1 ")
    with pytest.raises(registry.RegistryError, match="no space at either end"):
        registry.promote_version(root, "cnn_lstm", "v1 ")
    assert registry.promoted_version(root, "cnn_lstm") == "v2"


@pytest.mark.fault("models", "a registry on another file system than the temporary folder (a mounted volume, "
                   "/tmp on tmpfs)",
                   "the version is saved (the training ended in exit 2, 'Invalid cross-device link', telling "
                   "the user to make a writable folder writable; every rerun failed the same way)")
def test_a_registry_on_another_file_system_than_the_temporary_folder_saves(tmp_path, monkeypatch):
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system (/dev/shm) beside the test's folder")
    temporary = Path(tempfile.mkdtemp(dir=other))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    try:
        model = build_model("convlstm", ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,)))
        path = registry.save_model(model, tmp_path / "models", "convlstm", _metadata(), version="v1")
        assert registry.verify_version(tmp_path / "models", "convlstm", "v1", archive=ARCHIVE).path == path
        assert not list(temporary.iterdir())
    finally:
        shutil.rmtree(temporary)


@pytest.mark.fault("train", "a training run on an archive of another time step (or units) than the "
                   "promoted version's, or of other input or lead counts, promoted by the train flow or "
                   "`nowcast models promote`",
                   "a warning before the promotion naming what the old archive's forecasts would refuse and "
                   "how to go back (latest was replaced without a word, and the scheduled forecasts of the "
                   "old archive failed); none for another grid, which a model rebuilt for any grid runs on")
def test_a_promotion_across_kinds_of_archive_is_said(tmp_path, capsys):
    from nowcast.flows.cli import main

    model = build_model("convlstm", ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,)))
    whole = {**_metadata(), "fully_convolutional": True}
    registry.save_model(model, tmp_path, "convlstm", whole, version="v1")
    larger = {**whole, "archive": {**ARCHIVE.to_dict(), "grid_shape": [16, 16]}}
    registry.save_model(model, tmp_path, "convlstm", larger, version="v2", promote=False)
    assert registry.archive_change(str(tmp_path), "convlstm", "v2") is None
    ten = {**_metadata(), "archive": {**ARCHIVE.to_dict(), "time_step": "PT10M"}}
    registry.save_model(model, tmp_path, "convlstm", ten, version="v3", promote=False)
    said = registry.archive_change(str(tmp_path), "convlstm", "v3")
    assert said is not None
    assert "convlstm/v3 replaces convlstm/v1 as latest, but forecasts of archives like the one v1 was " \
           "trained on will refuse it (" in said
    assert "time step: model trained on PT10M, archive has PT5M" in said
    assert "`nowcast models promote convlstm/v1` goes back" in said
    assert registry.archive_change(str(tmp_path / "empty"), "convlstm", "v3") is None  # nothing promoted
    registry.save_model(model, tmp_path, "convlstm", {**whole, "t_in": 2, "t_out": 3}, version="v4",
                        promote=False)  # a store written by v1 refused every forecast of it
    assert registry.archive_change(str(tmp_path), "convlstm", "v4") == (
        "convlstm/v4 replaces convlstm/v1 as latest with other forecasts (t_in 3 before, 2 now; t_out 2 "
        "before, 3 now): a forecast store written by v1 will refuse them; give the forecasts a new store, or "
        "`nowcast models promote convlstm/v1` to go back")
    assert main(["models", "promote", "--models", str(tmp_path), "convlstm/v9"]) == 2  # no such version
    assert "warning" not in capsys.readouterr().err
    assert main(["models", "promote", "--models", str(tmp_path), "convlstm/v3"]) == 0
    assert "nowcast models promote: warning: convlstm/v3 replaces convlstm/v1" in capsys.readouterr().err
