"""An ingest appends to an archive while a windows job and a scoring job read it (issue 15), on local disk
and on S3 (moto's server: the archive, the windows and their locks on the object store; the forecasts on
local disk, as S3 writes would double the test's time, and scoring into S3 is tests/flows/test_stack.py's).

What "equals a serial run" means here: the ingest appends whole batches, each
under the archive's writers' lock, so the archive passes through a few states
(its first 12 frames, then 20, then 32). A reader plans from the state it
finds and reads only frames that plan counts as valid, which no later batch
changes. So each reader's store must be byte-identical to what a serial run
writes over one of those states (the one its plan saw, 20 or 32 frames: the
readers start once the first batch is in; which one depends on timing, and
the forecast store's length tells which its run saw), never a mix of two,
and the archive must end byte-identical to one ingest of every frame.
"""

from __future__ import annotations

import threading

import pytest

from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.jobs.scoring import ScoringSpec
from nowcast.pipelines.jobs.scoring import run as run_scoring
from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
from nowcast.pipelines.jobs.windows import run as run_windows
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
from nowcast.pipelines.stores.forecasts import read_store_info
from nowcast.pipelines.stores.groups import filesystem
from tests.pipelines.jobs.ingest_helpers import store_digests
from tests.pipelines.jobs.scoring_helpers import (
    MODEL,
    append_frames,
    make_archive,
    save_tiny_model,
    synthetic_stats,
)

FRAMES, SIZE, CHUNK = 32, (16, 16), 8
# frames in the archive before the ingest, and after each batch it appends: batches end mid-chunk, so the
# last one rewrites a chunk (frames 16..23) that the readers may be reading
STATES = (12, 20, 32)
SPEC = WindowSpec(channels=("precip",), target="precip", t_in=3, t_out=2,
                  split=SplitSpec(block="PT30M", fractions=(0.6, 0.2, 0.2), method="contiguous"))


@pytest.fixture
def where(request, tmp_path) -> str:
    """The folder of the stores: local, or a new bucket on the session's S3 server."""
    if request.param == "local":
        return str(tmp_path)
    return str(request.getfixturevalue("s3_bucket"))


@pytest.mark.parametrize("where", ["local", "s3"], indirect=True)
@pytest.mark.fault("stores", "an ingest appending to the archive while a windows job and a scoring job "
                   "read it (local disk and S3)",
                   "each reader's store equals a serial run over one archive state, never a mix; the archive "
                   "equals one ingest of every frame")
def test_readers_during_an_ingest_write_what_a_serial_run_over_one_archive_state_writes(where, tmp_path):
    archive = f"{where}/archive.zarr"

    def windows(output: str, serial: bool = False) -> None:
        if serial:
            run_in_process(WindowJob(archive, output, SPEC))
        else:
            run_windows(WindowJob(archive, output, SPEC, overwrite=True), RunnerOptions(kind="inmemory"))

    models = tmp_path / "models"
    save_tiny_model(models, make_archive(str(tmp_path / "full.zarr"), FRAMES, SIZE, CHUNK),
                    synthetic_stats(FRAMES, SIZE), patch=SIZE)

    def scoring(output: str, serial: bool = False) -> None:
        run_scoring(ScoringSpec(archive=archive, forecasts=output, models=str(models), model=MODEL))

    readers = {"windows.zarr": windows, "forecasts.zarr": scoring}
    folders = {"archive.zarr": where, "windows.zarr": where, "forecasts.zarr": str(tmp_path)}
    append_frames(archive, STATES[0], FRAMES, SIZE, CHUNK)
    first_batch = threading.Event()

    def ingest() -> None:
        for upto in STATES[1:]:
            append_frames(archive, upto, FRAMES, SIZE, CHUNK)
            first_batch.set()

    def after_the_first_batch(read, output: str):  # the readers start with the ingest under way, whatever
        return lambda: first_batch.wait(600) and read(output)  # the timing

    failures: list[BaseException] = []
    threads = [threading.Thread(target=_recording(failures, job)) for job in
               (ingest, *(after_the_first_batch(read, f"{folders[name]}/{name}")
                          for name, read in readers.items()))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a job never ended"
    assert not failures, failures
    got = {name: store_digests(f"{folders[name]}/{name}") for name in ("archive.zarr", *readers)}

    # the forecast store's init_time axis is as long as the archive its run planned from: the serial
    # scoring run over that state is the one reference (a scoring run costs more than a windows job)
    planned = {"forecasts.zarr": read_store_info(f"{tmp_path}/forecasts.zarr").length}
    serial: dict[str, list[dict[str, str]]] = {name: [] for name in readers}
    seen = STATES[1:]  # the states a reader can plan from: it starts once the first batch is in
    assert planned["forecasts.zarr"] in seen, planned
    for upto in seen:  # the archive again at the same path (the stores name it), one state at a time
        fs, path = filesystem(archive)
        fs.rm(path, recursive=True)
        append_frames(archive, upto, FRAMES, SIZE, CHUNK)
        for name, read in readers.items():
            if planned.get(name, upto) == upto:
                output = f"{folders[name]}/{name.removesuffix('.zarr')}-{upto}.zarr"
                read(output, serial=True)
                serial[name].append(store_digests(output))
    assert got["archive.zarr"] == store_digests(archive), "the readers changed the archive, or lost frames"
    for name, references in serial.items():
        if name in planned:
            assert got[name] == references[0], (f"{name} differs from the serial run over the archive state "
                                                f"it planned from ({planned[name]} frames): a mixed read")
            continue
        assert len({tuple(sorted(r.items())) for r in references}) == len(seen), "states not told apart"
        assert got[name] in references, f"{name} equals no serial run over an archive state: a mixed read"
        print(f"{name}: the serial run over {seen[references.index(got[name])]} frames")  # shown with -s


def _recording(failures: list[BaseException], job):
    """``job`` for a thread: an exception is kept for the test to report, not lost in the thread."""
    def run() -> None:
        try:
            job()
        except BaseException as error:  # reported by the test
            failures.append(error)
    return run
