"""The Beam windows job on the three runners: identical stores, counters that add up."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.jobs.windows import WindowJob, run, run_in_process
from nowcast.pipelines.plans.window_spec import SplitSpec, WetFilter, WindowSpec
from nowcast.pipelines.plans.windows import frame_splits
from nowcast.pipelines.stores.windows import SPLITS
from tests.pipelines.jobs.ingest_helpers import snapshot
from tests.pipelines.jobs.windows_testing import make_archive, random_frames

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker

SPEC = WindowSpec(channels=("precip", "temp"), target="precip", t_in=3, t_out=2, stride=2,
                  patch_size=(4, 4), patch_stride=(3, 4), wet=WetFilter(threshold=0.5, min_fraction=0.4),
                  split=SplitSpec(block="PT12H", fractions=(0.6, 0.2, 0.2), method="contiguous"),
                  samples_per_chunk=3)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    rng = np.random.default_rng(7)
    frames = random_frames(rng, 72, 7, 8)
    present = np.ones(72, bool)
    present[[5, 40, 41]] = False
    for field in frames.values():
        field[~present] = np.nan
    return make_archive(tmp_path_factory.mktemp("archive") / "a.zarr", frames, present, 6).url


def _store(url: str) -> dict[str, object]:
    root = zarr.open_group(url, mode="r")
    arrays = {f"{split}/{name}": np.asarray(root[split][name][:])
              for split in SPLITS for name in ("inputs", "targets", "init_time", "y0", "x0")}
    return {"arrays": arrays, "attrs": dict(root.attrs)}


def _assert_same(got: dict[str, object], want: dict[str, object]) -> None:
    assert got["attrs"] == want["attrs"]
    for name, values in want["arrays"].items():
        np.testing.assert_array_equal(got["arrays"][name], values, err_msg=name)


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> dict[str, object]:
    """The job without Beam (checked against numpy slicing in test_windows_plan.py)."""
    output = str(tmp_path_factory.mktemp("reference") / "w.zarr")
    result = run_in_process(WindowJob(archive, output, SPEC, max_source_chunks=3))
    assert all(result.counts["samples"][s] for s in SPLITS), "the spec should fill every split"
    assert all(result.counts["skipped"].values()), "the spec should skip for every reason"
    return _store(output)


def test_in_memory_runner_matches_and_counts(archive, reference, tmp_path):
    output = str(tmp_path / "w.zarr")
    result = run(WindowJob(archive, output, SPEC, max_source_chunks=3), RunnerOptions(kind="inmemory"))
    _assert_same(_store(output), reference)
    counts = result.counts
    metrics = result.metrics
    assert metrics["windows_planned"] == counts["planned"]
    assert metrics["windows_emitted"] == counts["emitted"]
    for reason, value in counts["skipped"].items():
        assert metrics[f"windows_skipped_{reason}"] == value
    assert counts["planned"] == counts["emitted"] + sum(counts["skipped"].values())
    assert metrics["samples_written"] == sum(counts["samples"].values())
    sample_bytes = 4 * 16 * (SPEC.t_in * 2 + SPEC.t_out)
    assert metrics["bytes_written"] == sample_bytes * sum(counts["samples"].values())
    assert metrics["bytes_read"] == round(result.read_amplification * 72 * 7 * 8 * 4 * 2)


@pytest.mark.slow
def test_multiprocessing_runner_matches(archive, reference, tmp_path):
    output = str(tmp_path / "w.zarr")
    run(WindowJob(archive, output, SPEC, max_source_chunks=3), RunnerOptions(kind="multiprocess", workers=2))
    _assert_same(_store(output), reference)


def test_multithreading_runner_matches(archive, reference, tmp_path):
    output = str(tmp_path / "w.zarr")
    threads = RunnerOptions(kind="inmemory", extra_args=("--direct_running_mode=multi_threading",
                                                         "--direct_num_workers=2"))
    run(WindowJob(archive, output, SPEC, max_source_chunks=3), threads)
    _assert_same(_store(output), reference)


@pytest.mark.slow
def test_dask_runner_matches(archive, reference, tmp_path):
    from dask.distributed import LocalCluster

    output = str(tmp_path / "w.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        run(WindowJob(archive, output, SPEC, max_source_chunks=3),
            RunnerOptions(kind="dask", dask_address=cluster.scheduler_address))
    _assert_same(_store(output), reference)


def test_no_train_windows_leaves_empty_statistics(archive, tmp_path):
    spec = WindowSpec(channels=("temp",), target="temp", t_in=2, t_out=1,
                      split=SplitSpec(fractions=(0.0, 0.5, 0.5)))
    result = run(WindowJob(archive, str(tmp_path / "w.zarr"), spec), RunnerOptions(kind="inmemory"))
    assert result.counts["samples"]["train"] == 0
    assert result.normalization == {"temp": {"count": 0, "mean": None, "std": None, "min": None,
                                             "max": None}}


def test_events_far_apart_in_one_archive_give_windows_inside_each_event_only(tmp_path):
    """Two rain events a day apart ingested into one archive: the gap is missing frames, and no
    window spans it (each event keeps every window that fits inside it)."""
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from tests.pipelines.jobs.ingest_helpers import ArraySource, times

    first, second = times("2024-05-01T12:00", 8), times("2024-05-02T18:00", 9)
    archive = str(tmp_path / "a.zarr")
    for event in (first, second):  # the second ingest appends across the gap
        source = ArraySource(tuple(event))
        ingest_items(IngestSpec(archive=archive, source=source, time_chunk=6), source.items(), None)
    spec = WindowSpec(channels=("precip",), target="precip", t_in=3, t_out=2,
                      split=SplitSpec(fractions=(1.0, 0.0, 0.0)))
    result = run_in_process(WindowJob(archive, str(tmp_path / "w.zarr"), spec))
    assert result.counts["emitted"] == (8 - 5 + 1) + (9 - 5 + 1)
    init_times = zarr.open_group(str(tmp_path / "w.zarr"), mode="r")["train/init_time"][:]
    starts = (init_times.astype("datetime64[s]") - 2 * np.timedelta64(300, "s")).astype("datetime64[s]")
    ends = starts + 4 * np.timedelta64(300, "s")
    for begin, end in zip(starts, ends, strict=True):
        inside = [(np.datetime64(e[0]) <= begin and end <= np.datetime64(e[-1])) for e in (first, second)]
        assert any(inside), (begin, end)


def test_the_progress_count_goes_from_none_to_every_planned_chunk(archive, tmp_path):
    """`nowcast windows`' bar: chunks filled, 0 in the new store, the plan's total once the job is done."""
    from nowcast.pipelines.plans.windows import plan_from_archive
    from nowcast.pipelines.stores.windows import chunks_written

    job = WindowJob(archive, str(tmp_path / "w.zarr"), SPEC, max_source_chunks=3)
    total = plan_from_archive(archive, SPEC).layout().num_chunks()
    job.prepare()  # the store at its final size, nothing written yet
    assert chunks_written(job.output) == 0
    run_in_process(WindowJob(archive, job.output, SPEC, overwrite=True))
    samples = {split: zarr.open_group(job.output, mode="r")[split]["inputs"].shape[0] for split in SPLITS}
    assert total == sum(-(-n // SPEC.samples_per_chunk) for n in samples.values()) > len(SPLITS)
    assert chunks_written(job.output) == total


@pytest.mark.fault("windows", "an archive chunk that does not decode, read while cutting windows, with a "
                   "windows store already at the output",
                   "exit 2 naming the chunk, its times and the fix (check, then ingest --repair); the "
                   "previous store untouched, no staging copy left")
def test_a_damaged_archive_chunk_is_named_and_the_previous_store_is_kept(archive, tmp_path, capsys):
    from nowcast.flows.cli import main

    output = tmp_path / "w.zarr"
    run_in_process(WindowJob(archive, str(output), SPEC, max_source_chunks=3))
    before = snapshot(str(output))
    damaged = tmp_path / "a.zarr"
    shutil.copytree(archive, damaged)
    (damaged / "precip" / "c" / "2" / "0" / "0").write_bytes(b"not zstd at all")
    code = main(["windows", "--archive", str(damaged), "--windows", str(output), "--t-in", "3",
                 "--t-out", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "precip chunk 2/0/0 (2021-03-01T12:00 .. 2021-03-01T17:00)" in err
    assert f"nowcast check {damaged}" in err
    assert "--repair" in err
    assert "Traceback" not in err
    assert snapshot(str(output)) == before
    assert not list(tmp_path.glob("w.zarr.creating-*"))


@pytest.mark.fault("models", "`evaluate` on test windows cut again with other split settings (or another "
                   "block, or all frames as test), which hold frames the model was trained on",
                   "a warning counting the samples that hold frames of the model's training split, saying "
                   "their scores flatter the model and what to evaluate instead (a table of the training "
                   "data's scores, exit 0)")
@pytest.mark.parametrize("method", ["hash", "contiguous"])
def test_samples_of_another_cut_that_hold_training_frames_are_counted(archive, tmp_path, method):
    from nowcast.model.train import training_range
    from nowcast.pipelines.plans.windows import seen_in_training
    from nowcast.pipelines.stores.windows import WindowsStore, describe_archive

    def cut(name: str, fractions: tuple[float, float, float]) -> str:
        spec = WindowSpec(channels=("precip",), target="precip", t_in=3, t_out=2,
                          split=SplitSpec(block="PT12H", fractions=fractions, method=method))
        run_in_process(WindowJob(archive, str(tmp_path / name), spec))
        return str(tmp_path / name)

    trained_on = cut("trained.zarr", (0.5, 0.25, 0.25))
    train = WindowsStore(trained_on, "train")
    metadata = {"window_spec": train.attrs["window_spec"], "training_range": [training_range(train, 3, 2)],
                "training_archives": [describe_archive(trained_on).to_dict()]}
    assert seen_in_training(train, metadata) == train.num_samples
    for split in ("val", "test"):  # the model's own cut: by construction none
        assert WindowsStore(trained_on, split).num_samples
        assert seen_in_training(WindowsStore(trained_on, split), metadata) == 0
    every = WindowsStore(cut("all-test.zarr", (0.0, 0.0, 1.0)), "test")
    step = np.timedelta64(1, "h")
    frames_of = [set(t + np.arange(-2, 3) * step) for t in every.init_times()]
    trained = set().union(*(set(t + np.arange(-2, 3) * step) for t in train.init_times()))
    # frames of the training split inside the training windows' range: the training windows' frames, and
    # those a gap kept out of every training window (a frame beside a missing one)
    times = np.datetime64("2021-03-01T00:00", "s") + np.arange(72) * step
    split = WindowSpec.from_dict(train.attrs["window_spec"]).split
    span = metadata["training_range"][0]
    in_range = (times >= np.datetime64(span["start"])) & (times <= np.datetime64(span["end"]))
    of_training_split = set(times[(frame_splits(times, split) == 0) & in_range])
    assert trained <= of_training_split
    seen = seen_in_training(every, metadata)
    assert sum(bool(frames & trained) for frames in frames_of) <= seen
    assert seen == sum(bool(frames & of_training_split) for frames in frames_of)
    assert 0 < seen < every.num_samples
    assert seen_in_training(every, {}) == 0  # a model that does not record its training windows
    another_grid = {**describe_archive(trained_on).to_dict(), "grid_shape": [64, 64]}
    assert seen_in_training(every, {**metadata, "training_archives": [another_grid]}) == 0  # another radar


@pytest.mark.fault("windows", "a patch size that does not divide the grid (128 px on KNMI's 765 x 700)",
                   "a warning names the rows and columns no sample holds, with the fix (they were left out "
                   "of training and evaluation without a word)")
def test_edges_no_patch_reaches_are_named(tmp_path):
    from nowcast.pipelines.plans.windows import plan_from_archive
    from tests.pipelines.jobs.scoring_helpers import make_archive

    archive = make_archive(str(tmp_path / "a.zarr"), frames=12, size=(20, 24))
    spec = WindowSpec(("precip",), "precip", t_in=3, t_out=2, patch_size=(16, 8))
    assert plan_from_archive(archive, spec).uncovered().startswith(
        "patches of 16 x 8 leave the last 4 rows and 0 columns of the 20 x 24 grid out of every sample")
    assert plan_from_archive(archive, WindowSpec(("precip",), "precip", t_in=3, t_out=2,
                                                 patch_size=(10, 8))).uncovered() is None
