"""Each flow runs for real on a tiny synthetic archive against a real Prefect test server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nowcast.flows.params import (
    ROOTS_ENV,
    BackfillParams,
    EvaluateParams,
    ForecastParams,
    IngestParams,
    TrainParams,
)
from nowcast.pipelines.stores.archive import open_archive
from nowcast.pipelines.stores.forecasts import open_forecasts, written_flags
from nowcast.pipelines.stores.groups import StoreError
from tests.pause import pause_env, paused_pid

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker

SIZE, FRAMES, DENSITY = 48, 96, 40.0
PNG = b"\x89PNG\r\n\x1a\n"


def synthetic(root: Path, frames: int = FRAMES) -> IngestParams:
    return IngestParams(archive=str(root / "archive.zarr"), input_dir=None, synthetic_frames=frames,
                        synthetic_size=SIZE, synthetic_density=DENSITY)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_server):
    """An ingested archive and a model trained by the train flow (promoted or not)."""
    from nowcast.flows.ingest import ingest_flow
    from nowcast.flows.train import train_flow

    root = tmp_path_factory.mktemp("flows")
    previous = os.environ.get(ROOTS_ENV)
    os.environ[ROOTS_ENV] = str(root)
    ingested = ingest_flow(synthetic(root))
    params = TrainParams(archive=str(root / "archive.zarr"), windows=str(root / "windows.zarr"),
                         models=str(root / "models"), workdir=str(root / "train"), epochs=1,
                         base="lagrangian_ar")
    result = train_flow(params)
    yield root, ingested, result
    if previous is None:
        os.environ.pop(ROOTS_ENV, None)
    else:
        os.environ[ROOTS_ENV] = previous


def model_choice(root: Path, version: str) -> dict[str, str]:
    return {"archive": str(root / "archive.zarr"), "forecasts": str(root / "forecasts.zarr"),
            "models": str(root / "models"), "model_version": version}


@pytest.mark.slow
def test_ingest_synthetic_then_nothing_new(trained):
    from nowcast.flows.ingest import ingest_flow

    root, first, _ = trained
    assert first.frames_written == FRAMES
    assert first.time_length == FRAMES
    assert ingest_flow(synthetic(root)).frames_written == 0  # a rerun finds nothing new


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.fault("ingest", "a scheduled ingest whose input folder is in a bucket that does not exist, "
                   "or that holds a file from before the archive's start",
                   "the run fails once, naming the bucket's problem, the fix and the URLs (a bare "
                   "FileNotFoundError, after a retry); the early file is named in a warning and the new ones "
                   "still go in (the run said every frame was in the archive already)")
def test_ingest_folder_takes_only_new_files(where, tmp_path, radar_dir, prefect_server, monkeypatch, request,
                                            caplog):
    """Files arrive in dated subfolders (a scheduled run once looked at the top level only and did
    nothing), in a local folder or under an object-store prefix, with the archive beside them."""
    from nowcast.flows.ingest import ingest_flow

    files = sorted((radar_dir / "mch" / "20150515").iterdir())
    if where == "local":
        root = str(tmp_path)
        (tmp_path / "incoming").mkdir()
        put = shutil.copy
    else:
        import fsspec

        root = request.getfixturevalue("s3_bucket")
        fs = fsspec.filesystem("s3")
        put = fs.put_file
    monkeypatch.setenv(ROOTS_ENV, root)
    incoming, archive = f"{root}/incoming", f"{root}/archive.zarr"
    if where == "s3":  # a bare "The specified bucket does not exist", after a retry
        missing = IngestParams(archive=archive, input_dir=f"{root}-missing/incoming")
        with pytest.raises(StoreError, match=rf"the bucket does not exist \(.*\): create it, or fix the "
                                             rf"bucket's name in the URL \(URLs: .*{root}-missing/incoming"):
            ingest_flow(missing)
    params = IngestParams(archive=archive, input_dir=incoming)
    assert ingest_flow(params).frames_written == 0  # empty folder: a no-op, no archive
    assert not fsspec_exists(archive)

    def arrive(paths) -> None:
        for path in paths:
            folder = f"{incoming}/{path.parent.name}"
            if where == "local":
                os.makedirs(folder, exist_ok=True)
            put(str(path), f"{folder}/{path.name}")

    arrive(files[1:4])
    assert ingest_flow(params).frames_written == 3
    assert ingest_flow(params).frames_written == 0
    arrive(files[4:6])
    assert ingest_flow(params).frames_written == 2
    assert bool(open_archive(archive)["valid"].all())
    assert int(open_archive(archive).sizes["time"]) == 5
    arrive([files[0], files[6]])  # one before the archive's start: "every frame is already in" had hidden it
    with caplog.at_level("WARNING"):
        assert ingest_flow(params).frames_written == 1  # the new one still goes in, as a watcher's would
    assert f"not ingested: {incoming}/{files[0].parent.name}/{files[0].name}: time " in caplog.text
    assert "is before the archive start" in caplog.text


def fsspec_exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(path))


@pytest.mark.slow
def test_train_registers_and_promotes_only_a_model_that_beats_extrapolation(trained):
    from nowcast.model.registry import resolve_version

    root, _, result = trained
    version_dir = Path(result.path)
    assert (version_dir / "model.keras").is_file()
    assert version_dir.parent.name == "convlstm"
    config = json.loads((version_dir / "metadata.json").read_text())["architecture_config"]
    assert config["lagrangian_ar"]  # the base the flow was asked for
    assert config["matched_motion"]
    assert result.promoted == (result.margins["csi_1"] > 0 and result.margins["mae"] > 0)
    assert result.margins["mae"] == pytest.approx(result.extrapolation_mae - result.val_mae)
    latest = root / "models" / "convlstm" / "latest"
    if result.promoted:
        assert resolve_version(root / "models", "convlstm") == str(version_dir)
    else:
        assert not latest.exists()
    assert not (root / "models" / ".candidates").exists()
    assert "| persistence |" in result.table
    assert "| extrapolation |" in result.table
    assert "| convlstm |" in result.table
    for path in result.pictures.values():
        assert Path(path).read_bytes()[:8] == PNG
    # the run's page shows its progress through every long stage, not only the epochs
    for key in ("windows-progress", "train-progress", "train-verify-progress"):
        assert newest_progress(key) == 100.0, key


@pytest.mark.slow
@pytest.mark.fault("train", "a train run interrupted after its version is saved, before the verdict "
                   "(verification, promotion)",
                   "the rerun verifies and promotes that version instead of training again (it trained "
                   "anew and left the first version behind, unpromoted); a version damaged meanwhile is "
                   "trained anew (every rerun was refused on it), and so is one saved before the archive "
                   "grew (it was promoted as trained on the new frames, which it never saw); a run killed "
                   "right after the save, before it recorded the version, is found by the run the version "
                   "records")
def test_a_run_interrupted_after_saving_goes_on_from_its_version(trained, monkeypatch):
    from nowcast.flows import train as train_module
    from nowcast.flows.ingest import ingest_flow
    from nowcast.model.registry import list_versions, read_metadata

    root, _, _ = trained
    shutil.copytree(root / "archive.zarr", root / "archive-resume.zarr")  # this test grows it
    params = TrainParams(archive=str(root / "archive-resume.zarr"), windows=str(root / "windows-resume.zarr"),
                         models=str(root / "models-resume"), workdir=str(root / "train-resume"), epochs=1,
                         promote="always")
    verify = train_module.verify

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the new version is verified

    monkeypatch.setattr(train_module, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_flow(params)
    first = list_versions(params.models, params.architecture)
    assert len(first) == 1
    monkeypatch.setattr(train_module, "verify", verify)
    rerun = train_module.train_flow(params)
    assert (rerun.version, rerun.promoted) == (first[0], True)
    assert list_versions(params.models, params.architecture) == first
    assert not (root / "train-resume" / train_module.SAVED).exists()
    # interrupted again, and the version it saved damaged before the rerun: the rerun trains anew (it was
    # refused on the damaged version at every rerun)
    monkeypatch.setattr(train_module, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_flow(params)
    damaged = [v for v in list_versions(params.models, params.architecture) if v not in first]
    assert len(damaged) == 1
    model = Path(params.models) / params.architecture / damaged[0] / "model.keras"
    model.write_bytes(model.read_bytes()[:100])
    monkeypatch.setattr(train_module, "verify", verify)
    rerun = train_module.train_flow(params)
    assert rerun.version not in (*first, *damaged)
    assert rerun.promoted
    # interrupted once more, and frames land before the rerun: the windows are cut again, so the version it
    # saved was trained on other windows and is trained anew
    seen = list_versions(params.models, params.architecture)
    monkeypatch.setattr(train_module, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_flow(params)
    [stale] = [v for v in list_versions(params.models, params.architecture) if v not in seen]
    ingest_flow(synthetic(root, FRAMES + 24).model_copy(update={"archive": params.archive}))
    monkeypatch.setattr(train_module, "verify", verify)
    rerun = train_module.train_flow(params)
    assert rerun.version not in (*seen, stale)
    trained_on, before = (read_metadata(str(Path(params.models) / params.architecture / v))["training_range"]
                          for v in (rerun.version, stale))
    assert trained_on != before  # the new version saw the frames that landed
    # killed right after the save, before the run recorded which version it saved: the rerun finds it by the
    # run it records (it trained anew, leaving the first one behind unverified)
    seen = list_versions(params.models, params.architecture)
    write = train_module.write_atomically

    def killed_before_recording(path, text):
        if '"path"' in text:
            raise KeyboardInterrupt
        write(path, text)

    monkeypatch.setattr(train_module, "write_atomically", killed_before_recording)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_flow(params)
    [killed] = [v for v in list_versions(params.models, params.architecture) if v not in seen]
    monkeypatch.setattr(train_module, "write_atomically", write)
    rerun = train_module.train_flow(params)
    assert rerun.version == killed
    assert list_versions(params.models, params.architecture) == [*seen, killed]


@pytest.mark.slow
def test_forecast_scores_new_frames_and_is_a_no_op_otherwise(trained):
    from nowcast.flows.forecast import ForecastRun, forecast_flow
    from nowcast.flows.ingest import ingest_flow

    root, _, result = trained
    params = ForecastParams(**model_choice(root, result.version), lookback=3)
    first = forecast_flow(params)
    assert first.scored == 3
    assert first.init_times[-1] == "2024-01-01T07:55:00"
    assert forecast_flow(params) == ForecastRun(scored=0, init_times=[], version=result.version)
    ingest_flow(synthetic(root, FRAMES + 2))  # two new frames land
    again = forecast_flow(params)
    assert again.init_times == ["2024-01-01T08:00:00", "2024-01-01T08:05:00"]
    flags = written_flags(str(root / "forecasts.zarr"))
    assert flags.sum() == 5
    assert flags[-5:].all()


@pytest.mark.slow
@pytest.mark.fault("flows", "a damaged version promoted while forecasts run on a schedule",
                   "the scheduled runs go on with the version that wrote the newest forecast, with a "
                   "warning; without one, the damage is named")
def test_a_damaged_promotion_is_passed_over_by_the_schedule(trained):
    """Before, every scheduled run failed until someone promoted a working version again."""
    from nowcast.flows.forecast import forecast_flow
    from nowcast.model.registry import ChecksumMismatchError, promote_version

    root, _, result = trained
    models = root / "damaged-promotion"  # a registry of its own: the module's `latest` stays as it is
    shutil.copytree(root / "models", models)
    params = ForecastParams(**{**model_choice(root, result.version), "models": str(models),
                               "forecasts": str(root / "scheduled.zarr")}, lookback=2)
    assert forecast_flow(params).scored == 2
    damaged = models / params.model_name / "v-damaged"
    shutil.copytree(models / params.model_name / result.version, damaged)
    promote_version(models, params.model_name, damaged.name)  # sound when promoted (promote checks it),
    (damaged / "model.keras").write_bytes(b"not the model that was saved")  # damaged on disk since

    latest = params.model_copy(update={"model_version": "latest", "lookback": 3})
    run = forecast_flow(latest)
    assert (run.scored, run.version) == (1, result.version)
    assert "v-damaged" in run.passed_over
    assert "sha256" in run.passed_over
    versions = open_forecasts(params.forecasts)["model_version"].values
    assert list(versions[-3:]) == [result.version] * 3
    with pytest.raises(ChecksumMismatchError, match="v-damaged"):  # no forecast written before: no fallback
        forecast_flow(latest.model_copy(update={"forecasts": str(root / "new.zarr")}))
    assert not (root / "new.zarr").exists()


@pytest.mark.fault("backfill", "a version promoted while a backfill of `latest` runs; another run writing "
                   "the range between a backfill's plan and its chunks",
                   "the backfill keeps the version it started with (it switched chunk by chunk and split "
                   "one backfill between two models, without a word); the init times the other run wrote "
                   "count as already written in its summary (it said 0 scored, 0 already written)")
def test_a_promotion_during_a_backfill_does_not_split_it(trained, monkeypatch):
    from nowcast.flows import forecast
    from nowcast.flows.forecast import backfill_flow
    from nowcast.model.registry import promote_version
    from nowcast.pipelines.jobs import scoring

    root, _, result = trained
    models = root / "promoted-meanwhile"  # a registry of its own: the module's `latest` stays as it is
    shutil.copytree(root / "models", models)
    params = BackfillParams(**{**model_choice(root, "latest"), "models": str(models),
                               "forecasts": str(root / "backfilled.zarr")},
                            start="2024-01-01T01:00", end="2024-01-01T01:25", chunk_size=2, concurrency=1)
    promote_version(models, params.model_name, result.version)
    shutil.copytree(models / params.model_name / result.version, models / params.model_name / "v-newer")
    scored = scoring.run

    def promoting_after_the_first_chunk(*args, **kwargs):
        done = scored(*args, **kwargs)
        promote_version(models, params.model_name, "v-newer")
        return done

    monkeypatch.setattr(scoring, "run", promoting_after_the_first_chunk)
    planned = forecast.plan_pending
    plans = []
    monkeypatch.setattr(forecast, "plan_pending", lambda spec: plans.append(planned(spec)) or plans[-1])
    assert backfill_flow(params).scored == 6
    assert set(open_forecasts(params.forecasts)["model_version"].values[12:18]) == {result.version}
    # the range written by another run between a backfill's plan (the first one's, replayed) and its chunks:
    # its summary counts them as written (it said "0 init times scored in 3 chunks, 0 already written")
    monkeypatch.setattr(forecast, "plan_pending", lambda spec: plans[0])
    overlapped = backfill_flow(params)
    assert (overlapped.scored, overlapped.already_written) == (0, 6)


@pytest.mark.slow
@pytest.mark.fault("backfill", "a backfill flow SIGKILLed part way",
                   "its store slot frees within a lease; the rerun scores only the rest")
def test_backfill_killed_part_way_then_rerun_does_only_the_rest(trained, prefect_server):
    from prefect.settings import PREFECT_API_URL

    from nowcast.flows.forecast import backfill_flow

    root, _, result = trained
    forecasts = root / "backfill.zarr"
    params = BackfillParams(**{**model_choice(root, result.version), "forecasts": str(forecasts)},
                            start="2024-01-01T01:00", end="2024-01-01T01:55", chunk_size=3, concurrency=1)
    script = textwrap.dedent(f"""
        from nowcast.flows.forecast import backfill_flow
        from nowcast.flows.params import BackfillParams
        backfill_flow(BackfillParams.model_validate_json({params.model_dump_json()!r}))
    """)
    # paused after its third init time (a whole first chunk of three): killed part way, whatever the speed
    signal_file = root / "backfill-paused"
    env = {**pause_env(signal_file, r"^written/c/", 3), "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=Path(__file__).parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        paused_pid(signal_file, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = np.flatnonzero(written_flags(str(forecasts)))
    assert 0 < len(done) < 12, "the backfill should have been killed part way"
    chunk_files = {i: forecasts / "precip" / "c" / str(i) for i in done}
    stamps = {i: [p.stat().st_mtime_ns for p in sorted(d.rglob("*"))] for i, d in chunk_files.items()}

    rerun = backfill_flow(params)
    assert rerun.already_written == len(done)
    assert rerun.scored == 12 - len(done)
    flags = written_flags(str(forecasts))
    assert flags[12:24].all()
    assert flags.sum() == 12
    assert {i: [p.stat().st_mtime_ns for p in sorted(d.rglob("*"))] for i, d in chunk_files.items()} == stamps
    assert backfill_flow(params).scored == 0


@pytest.mark.slow
def test_evaluate_scores_split_and_stored_forecasts_with_pictures(trained):
    from nowcast.flows.evaluate import evaluate_flow
    from nowcast.flows.forecast import backfill_flow

    root, _, result = trained
    choice = model_choice(root, result.version)
    backfill_flow(BackfillParams(**choice, start="2024-01-01T06:00", end="2024-01-01T06:30", chunk_size=8))
    out = evaluate_flow(EvaluateParams(windows=str(root / "windows.zarr"), workdir=str(root / "evaluate"),
                                       baselines=["persistence"], **choice))
    assert f"| convlstm/{result.version} |" in out.table
    assert "| persistence |" in out.table
    assert "(stored) |" in out.stored_table
    assert out.samples > 0
    assert set(out.pictures) >= {"test_scores", "test_maps", "stored_scores", "stored_maps"}
    for path in out.pictures.values():
        assert Path(path).read_bytes()[:8] == PNG
    assert newest_progress("evaluate-progress") == 100.0  # the UI's progress of the split's verification


def newest_progress(key: str) -> float | None:
    """The percentage of the newest progress artifact ``key`` (what a run's page in the UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert not found or found[0].type == "progress"
    return float(found[0].data) if found else None
