"""A write larger than the free space of its disk is refused before any work (issue 15)."""

from __future__ import annotations

import shutil

import pytest

from nowcast.flows.cli import main
from nowcast.flows.params import MAX_SYNTHETIC_FRAMES
from nowcast.pipelines.jobs.scoring import run as score
from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
from nowcast.pipelines.plans.scoring import ScoringSpec
from nowcast.pipelines.plans.window_spec import WindowSpec
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import ZSTD_LEVEL
from nowcast.pipelines.stores.space import NotEnoughSpaceError, compressed_size, human
from tests.pipelines.jobs.scoring_helpers import MODEL, make_archive, save_tiny_model, synthetic_stats

DiskUsage = type(shutil.disk_usage("/"))
SIZE = 2048  # about 2.9 MiB a frame compressed: the most frames allowed need about 290 GiB


@pytest.mark.fault("stores", "an ingest of more frames than its disk has space for",
                   "exit 2 before any work, naming the path, the space needed and free, and the fix; "
                   "nothing written")
def test_an_ingest_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, capsys):
    source = get_source("synthetic", shape=(SIZE, SIZE), n_frames=2)
    per_frame = compressed_size([source.read(item) for item in source.items()], ZSTD_LEVEL) or 1.0
    frames = int(2 * shutil.disk_usage(tmp_path).free / per_frame) + 1  # twice what the disk holds
    if frames > MAX_SYNTHETIC_FRAMES:
        pytest.skip(f"{human(shutil.disk_usage(tmp_path).free)} free: the largest synthetic ingest fits")
    archive = tmp_path / "stores" / "archive.zarr"

    code = main(["ingest", "--archive", str(archive), "--synthetic", "--frames", str(frames),
                 "--size", str(SIZE)])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "ingest needs about " in err, err
    assert f" at {archive} " in err
    assert f"{frames} new frames" in err
    assert " GiB free" in err
    assert "Free space, give a path on a larger volume, or ingest fewer frames" in err
    assert list(tmp_path.iterdir()) == [], "something was written"


@pytest.mark.fault("windows", "a windows job whose samples need more space than its disk has",
                   "refused before windows.zarr is created, naming the path, the space needed and free, "
                   "and the fix")
def test_a_windows_job_that_cannot_fit_is_refused_before_its_store_is_created(tmp_path, monkeypatch):
    archive = make_archive(str(tmp_path / "archive.zarr"), frames=24, size=(32, 32))
    output = tmp_path / "windows.zarr"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2**30, 2**30 - 4096, 4096))

    with pytest.raises(NotEnoughSpaceError, match=rf"windows needs about .* at {output} \(.* samples of 5 "
                                                  r"patches 32 x 32.*4.0 KiB free.*cut fewer windows"):
        run_in_process(WindowJob(archive, str(output), WindowSpec(("precip",), "precip", t_in=3, t_out=2)))
    assert not output.exists()


@pytest.mark.fault("score", "a scoring run whose forecasts need more space than its disk has",
                   "refused before forecasts.zarr is created, naming the path, the space needed and free, "
                   "and the fix")
def test_a_scoring_run_that_cannot_fit_is_refused_before_its_store_is_created(tmp_path, monkeypatch):
    archive = make_archive(str(tmp_path / "archive.zarr"), frames=16, size=(32, 32))
    save_tiny_model(tmp_path / "models", archive, synthetic_stats(16, (32, 32)))
    forecasts = tmp_path / "forecasts.zarr"
    free = DiskUsage(2**30, 2**30 - 512, 512)  # synthetic rain compresses: its forecasts need about 2.7 KiB
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)

    with pytest.raises(NotEnoughSpaceError, match=rf"scoring needs about .* at {forecasts} \(14 init times "
                                                  r"of 2 leads on a 32 x 32 grid.*512 B free.*score fewer"):
        score(ScoringSpec(archive, str(forecasts), str(tmp_path / "models"), MODEL))
    assert not forecasts.exists()
