"""Window planning and the written windows, against numpy slicing (no Beam here).

The job's per-task code runs through :func:`run_in_process`, the same
functions the Beam DoFn calls; test_windows.py checks the runners give the
same store.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
from nowcast.pipelines.plans.window_spec import SplitSpec, WetFilter, WindowSpec, WindowSpecError
from nowcast.pipelines.plans.windows import plan_from_archive
from nowcast.pipelines.stores.windows import SPLITS, WindowsError
from tests.pipelines.jobs.windows_testing import make_archive, oracle, random_frames, read_split

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


ARCHIVES = {  # name: (length, (ny, nx), time_chunk, share of missing frames)
    "long": (60, (5, 6), 4, 0.1),
    "odd": (37, (3, 7), 9, 0.15),
    "tiny_chunks": (24, (2, 2), 2, 0.0),
    "gappy": (48, (7, 4), 5, 0.3),
    "short": (9, (4, 4), 3, 0.0),
}


@dataclasses.dataclass(frozen=True)
class Archive:
    frames: dict[str, np.ndarray]
    present: np.ndarray
    info: object


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Archive]:
    """A few tiny archives (built once: building one costs more than planning and cutting)."""
    root = tmp_path_factory.mktemp("archives")
    built = {}
    for seed, (name, (length, shape, time_chunk, missing)) in enumerate(ARCHIVES.items()):
        rng = np.random.default_rng(seed)
        frames = random_frames(rng, length, *shape)
        present = rng.random(length) >= missing
        for field in frames.values():
            field[~present] = np.nan
        built[name] = Archive(frames, present, make_archive(root / name, frames, present, time_chunk))
    return built


@st.composite
def cases(draw: st.DrawFn) -> dict[str, object]:
    """One of the archives and a random spec over it."""
    archive = draw(st.sampled_from(sorted(ARCHIVES)))
    ny, nx = ARCHIVES[archive][1]
    channels = draw(st.sampled_from([("precip",), ("temp",), ("precip", "temp"), ("temp", "precip")]))
    patch = {}
    if draw(st.booleans()):
        patch = {"patch_size": (draw(st.integers(1, ny)), draw(st.integers(1, nx))),
                 "patch_stride": (draw(st.integers(1, ny)), draw(st.integers(1, nx)))}
    wet = None
    if draw(st.booleans()):
        wet = WetFilter(threshold=draw(st.sampled_from([0.1, 0.5, 2.0])),
                        min_fraction=draw(st.sampled_from([0.0, 0.125, 0.25, 0.5])))
    split = SplitSpec(block=draw(st.sampled_from(["PT3H", "PT6H", "P1D"])),
                      fractions=draw(st.sampled_from([(1.0, 0.0, 0.0), (0.5, 0.25, 0.25), (0.4, 0.3, 0.3)])),
                      method=draw(st.sampled_from(["hash", "contiguous"])), seed=draw(st.integers(0, 3)))
    target = "precip" if wet is not None else draw(st.sampled_from(["precip", "temp"]))
    spec = WindowSpec(channels=channels, target=target, t_in=draw(st.integers(1, 4)),
                      t_out=draw(st.integers(1, 3)), stride=draw(st.integers(1, 5)), wet=wet, split=split,
                      samples_per_chunk=draw(st.integers(1, 5)), **patch)
    return {"archive": archive, "spec": spec, "max_source_chunks": draw(st.integers(1, 6))}


def _starts(init_time: np.ndarray, info, spec: WindowSpec) -> list[int]:
    """Window starts back from stored init times (seconds since the epoch)."""
    offset = (init_time - int(info.start.astype("int64"))) // int(info.time_step.astype("int64"))
    return (offset - spec.t_in + 1).tolist()


def _run(case: dict[str, object], archives: dict[str, Archive]):
    archive = archives[case["archive"]]
    output = tempfile.mkdtemp(dir=Path(archive.info.url).parent, prefix="windows-")
    job = WindowJob(archive.info.url, output, case["spec"], max_source_chunks=case["max_source_chunks"],
                    overwrite=True)
    return archive.frames, archive.present, archive.info, job, run_in_process(job)


@SETTINGS
@given(case=cases())
def test_windows_equal_numpy_slicing_and_gaps_skip_exactly(archives, case):
    archive, spec = archives[case["archive"]], case["spec"]
    expected, skipped = oracle(archive.frames, archive.present, archive.info, spec)
    if not any(expected.values()):  # every window skipped: refused, no empty store
        with pytest.raises(WindowSpecError, match="gives no window"):
            _run(case, archives)
        return
    frames, present, info, job, result = _run(case, archives)
    assert result.counts["skipped"] == skipped
    assert result.counts["planned"] == len(range(0, len(present) - spec.length + 1, spec.stride))
    for split in SPLITS:
        out = read_split(job.output, split)
        starts = _starts(out["init_time"], info, spec)
        assert list(zip(starts, out["y0"].tolist(), out["x0"].tolist(), strict=True)) \
            == expected[split]
        py, px = spec.patch_size or info.grid.shape
        for i, (start, y0, x0) in enumerate(expected[split]):
            window = (slice(y0, y0 + py), slice(x0, x0 + px))
            want_in = np.stack([frames[c][start:start + spec.t_in][:, window[0], window[1]]
                                for c in spec.channels], axis=-1)
            want_out = frames[spec.target][start + spec.t_in:start + spec.length][:, window[0], window[1]]
            np.testing.assert_array_equal(out["inputs"][i], want_in)
            np.testing.assert_array_equal(out["targets"][i, ..., 0], want_out)


@SETTINGS
@given(case=cases())
def test_splits_share_no_frame_and_tasks_read_each_chunk_once(archives, case):
    info = archives[case["archive"]].info
    spec = case["spec"]
    plan = plan_from_archive(info.url, spec, case["max_source_chunks"])
    used = {split: set() for split in SPLITS}
    for split in SPLITS:
        for start in plan.samples[split].starts:
            used[split].update(range(int(start), int(start) + spec.length))
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    reads = [c for task in plan.tasks for c in task.source_chunks]
    halo_chunks = math.ceil((spec.length - 1) / info.time_chunk) + 1
    assert len(reads) - len(set(reads)) <= max(len(plan.tasks) - 1, 0) * halo_chunks
    needed = {c for frames_of in used.values() for f in frames_of for c in [f // info.time_chunk]}
    assert set(reads) == needed
    for task in plan.tasks:
        assert len(task.source_chunks) <= case["max_source_chunks"] or len(task.outputs) == 1


@SETTINGS
@given(case=cases())
def test_normalization_equals_numpy_on_train_frames(archives, case):
    archive = archives[case["archive"]]
    expected, _ = oracle(archive.frames, archive.present, archive.info, case["spec"])
    assume(any(expected.values()))  # else refused
    frames, _, info, job, _result = _run(case, archives)
    spec = job.spec
    ny, nx = info.grid.shape
    py, px = spec.patch_size or (ny, nx)
    train = read_split(job.output, "train")
    mask = np.zeros((ny, nx), bool)
    for y0, x0 in zip(train["y0"], train["x0"], strict=True):
        mask[y0:y0 + py, x0:x0 + px] = True
    used = sorted({f for s in _starts(train["init_time"], info, spec) for f in range(s, s + spec.length)})
    stored = xr.open_zarr(job.output, consolidated=False).attrs["normalization"]
    assert set(stored) == set(spec.variables)
    for name in spec.variables:
        values = frames[name][used][:, mask].astype("float64") if used else np.zeros(0)
        values = values[np.isfinite(values)]
        got = stored[name]
        assert got["count"] == values.size
        if not values.size:
            assert got["mean"] is None
            continue
        np.testing.assert_allclose([got["mean"], got["std"], got["min"], got["max"]],
                                   [values.mean(), values.std(), values.min(), values.max()],
                                   rtol=1e-9, atol=1e-9)
        if name == "precip":
            logs = np.log1p(values)
            np.testing.assert_allclose([got["log1p_mean"], got["log1p_std"]], [logs.mean(), logs.std()],
                                       rtol=1e-9, atol=1e-9)
        else:
            assert "log1p_mean" not in got


def test_a_missing_frame_skips_exactly_the_windows_that_span_it(tmp_path):
    frames = random_frames(np.random.default_rng(1), 48, 3, 3)
    present = np.ones(48, bool)
    present[[20, 33]] = False
    info = make_archive(tmp_path / "a.zarr", frames, present, 8)
    spec = WindowSpec(channels=("precip",), target="precip", t_in=4, t_out=2, stride=3,
                      split=SplitSpec(fractions=(1, 0, 0)))
    plan = plan_from_archive(info.url, spec)
    starts = set(range(0, 43, 3))
    spans = {s for s in starts if s <= 20 < s + 6 or s <= 33 < s + 6}
    assert set(plan.samples["train"].starts.tolist()) == starts - spans
    assert plan.counts["skipped"]["missing_frame"] == len(spans) == 4


def test_store_layout_reads_back_with_xarray(tmp_path):
    frames = random_frames(np.random.default_rng(2), 40, 4, 6)
    info = make_archive(tmp_path / "a.zarr", frames, np.ones(40, bool), 8)
    spec = WindowSpec(channels=("temp", "precip"), target="precip", t_in=3, t_out=2, stride=2,
                      patch_size=(2, 3), samples_per_chunk=3, split=SplitSpec(block="PT12H"),
                      wet=WetFilter(threshold=0.1, min_fraction=0.05))
    job = WindowJob(info.url, str(tmp_path / "w.zarr"), spec)
    result = run_in_process(job)
    root = xr.open_zarr(job.output, consolidated=False)
    assert root.attrs["channels"] == ["temp", "precip"]
    assert root.attrs["target"] == "precip"
    assert WindowSpec.from_dict(root.attrs["window_spec"]) == spec
    assert root.attrs["time_step"] == "PT1H"
    assert root.attrs["archive"] == info.url
    assert root.attrs["counts"] == result.counts
    assert result.summary().startswith(f"windows: {result.counts['planned']} planned")
    train = xr.open_zarr(job.output, group="train", consolidated=False)
    assert train["inputs"].dims == ("sample", "t_in", "y", "x", "channel")
    assert train["inputs"].shape[1:] == (3, 2, 3, 2)
    assert train["targets"].shape[1:] == (2, 2, 3, 1)
    assert train["inputs"].encoding["chunks"] == (3, 3, 2, 3, 2)
    assert train["init_time"].dtype == np.dtype("datetime64[ns]")
    assert train["init_time"].values[0] == np.datetime64("2021-03-01T02:00")


@pytest.mark.parametrize(("change", "message"), [
    ({"t_in": 0}, "t_in must be a positive integer"),
    ({"stride": 1.5}, "stride must be a positive integer"),
    ({"channels": ()}, "channels is empty"),
    ({"channels": ("precip", "precip")}, "twice"),
    ({"patch_stride": (2, 2)}, "patch_stride needs patch_size"),
    ({"patch_size": (0, 3)}, "patch_size must be two positive integers"),
])
@pytest.mark.fault("windows", "an impossible windowing spec",
                   "refused naming the problem")
def test_bad_specs_name_the_problem(change, message):
    base = {"channels": ("precip",), "target": "precip", "t_in": 2, "t_out": 1}
    with pytest.raises(WindowSpecError, match=message):
        WindowSpec(**{**base, **change})


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SplitSpec(fractions=(0.5, 0.5, 0.5)), "sum to 1"),
    (lambda: SplitSpec(block="one day"), "ISO 8601"),
    (lambda: SplitSpec(method="random"), "use 'hash' or 'contiguous'"),
    (lambda: WetFilter(threshold=1.0, min_fraction=1.5), r"in \[0, 1\]"),
    (lambda: WindowSpec.from_dict({"channels": ["precip"], "target": "precip", "t_in": 1, "t_out": 1,
                                   "lead": 3}), "unknown window spec fields"),
])
def test_bad_parts_name_the_problem(make, message):
    with pytest.raises(WindowSpecError, match=message):
        make()


@pytest.mark.parametrize(("spec", "message"), [
    (WindowSpec(channels=("wind",), target="precip", t_in=2, t_out=1),
     r"'wind' is not in archive .*'precip'"),
    (WindowSpec(channels=("precip",), target="precip", t_in=2, t_out=1, patch_size=(9, 2)),
     "exceed the archive grid"),
    (WindowSpec(channels=("precip",), target="precip", t_in=2, t_out=1,
                wet=WetFilter(threshold=0.3, min_fraction=0.1)),
     r"threshold 0.3 is not stored .* pick one of \[0.1, 0.5, 1.0, 2.0, 5.0, 10.0\]"),
    (WindowSpec(channels=("precip",), target="precip", t_in=10, t_out=8),
     r"has 16 frames, windows need 18 \(t_in 10 \+ t_out 8\): ingest more frames, or shorten"),
])
def test_specs_that_do_not_fit_the_archive_name_the_fix(tmp_path, spec, message):
    info = make_archive(tmp_path / "a.zarr", random_frames(np.random.default_rng(3), 16, 4, 4),
                        np.ones(16, bool), 8)
    with pytest.raises(WindowSpecError, match=message):
        run_in_process(WindowJob(info.url, str(tmp_path / "w.zarr"), spec))
    assert not (tmp_path / "w.zarr").exists()


@pytest.mark.fault("windows", "windows longer than the archive, an archive without a valid frame, or one "
                   "whose every window is skipped (a gap every few frames, split blocks shorter than a "
                   "window)",
                   "refused naming the frame counts or the skip counts with their fixes; no windows store "
                   "written (the last wrote an empty store, exit 0)")
@pytest.mark.parametrize(("length", "present", "block", "message"), [
    (8, True, "PT1H", r"has 8 frames, windows need 9 \(t_in 5 \+ t_out 4\)"),
    (16, False, "PT1H", r"has no valid frame \(all 16 are missing\): ingest frames with data first"),
    (16, "gaps", "PT1H", r"gives no window: 8 planned, every one skipped \(missing_frame 8\); missing_frame: "
                         "ingest the missing frames"),
    (16, True, "PT10M", r"skipped \(straddles_split 8\); straddles_split: lengthen split_block"),
])
def test_an_archive_that_gives_no_window_is_refused_before_any_store(tmp_path, length, present, block,
                                                                     message):
    frames = random_frames(np.random.default_rng(5), length, 4, 4)
    valid = np.arange(length) % 3 != 2 if present == "gaps" else np.full(length, present)
    frames = {name: np.where(valid[:, None, None], values, np.nan) for name, values in frames.items()}
    info = make_archive(tmp_path / "a.zarr", frames, valid, 8)
    spec = WindowSpec(channels=("precip",), target="precip", t_in=5, t_out=4,
                      split=SplitSpec(block=block, method="hash"))
    with pytest.raises(WindowSpecError, match=message):
        run_in_process(WindowJob(info.url, str(tmp_path / "w.zarr"), spec))
    assert not (tmp_path / "w.zarr").exists()
    assert not list(tmp_path.glob("w.zarr.creating-*"))


def test_existing_output_needs_overwrite(tmp_path):
    info = make_archive(tmp_path / "a.zarr", random_frames(np.random.default_rng(4), 16, 3, 3),
                        np.ones(16, bool), 8)
    spec = WindowSpec(channels=("precip",), target="precip", t_in=2, t_out=1)
    run_in_process(WindowJob(info.url, str(tmp_path / "w.zarr"), spec))
    with pytest.raises(WindowsError, match="overwrite"):
        run_in_process(WindowJob(info.url, str(tmp_path / "w.zarr"), spec))
    run_in_process(WindowJob(info.url, str(tmp_path / "w.zarr"), spec, overwrite=True))
    with pytest.raises(WindowSpecError, match="must differ from the archive"):
        WindowJob(info.url, info.url, spec)
