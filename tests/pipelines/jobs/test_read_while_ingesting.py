"""An ingest appends to an archive while a windows job and a scoring job read it (issue 15, local disk).

What "equals a serial run" means here: the ingest appends whole batches, each
under the archive's writers' lock, so the archive passes through a few states
(its first 12 frames, then 20, then 32). A reader plans from the state it
finds and reads only frames that plan counts as valid, which no later batch
changes. So each reader's store must be byte-identical to what a serial run
writes over one of those states (the one its plan saw; which one depends on
timing and is not asserted), never a mix of two, and the archive must end
byte-identical to one ingest of every frame.
"""

from __future__ import annotations

import shutil
import threading

import pytest

from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.jobs.scoring import ScoringSpec
from nowcast.pipelines.jobs.scoring import run as run_scoring
from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
from nowcast.pipelines.jobs.windows import run as run_windows
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
from tests.pipelines.jobs.ingest_helpers import snapshot
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


@pytest.mark.fault("stores", "an ingest appending to the archive while a windows job and a scoring job "
                   "read it", "each reader's store equals a serial run over one archive state, never a mix; "
                   "the archive equals one ingest of every frame")
def test_readers_during_an_ingest_write_what_a_serial_run_over_one_archive_state_writes(tmp_path):
    models = tmp_path / "models"
    save_tiny_model(models, make_archive(str(tmp_path / "full.zarr"), FRAMES, SIZE, CHUNK),
                    synthetic_stats(FRAMES, SIZE), patch=SIZE)
    archive = str(tmp_path / "archive.zarr")
    append_frames(archive, STATES[0], FRAMES, SIZE, CHUNK)

    def windows(output: str) -> None:
        run_windows(WindowJob(archive, output, SPEC, overwrite=True), RunnerOptions(kind="inmemory"))

    def scoring(output: str) -> None:
        run_scoring(ScoringSpec(archive=archive, forecasts=output, models=str(models), model=MODEL))

    first_batch = threading.Event()

    def ingest() -> None:
        for upto in STATES[1:]:
            append_frames(archive, upto, FRAMES, SIZE, CHUNK)
            first_batch.set()

    def after_the_first_batch(job):  # the readers start with the ingest under way, whatever the timing
        return lambda: first_batch.wait(600) and job()

    failures: list[BaseException] = []
    threads = [threading.Thread(target=_recording(failures, job)) for job in
               (ingest, after_the_first_batch(lambda: windows(str(tmp_path / "windows.zarr"))),
                after_the_first_batch(lambda: scoring(str(tmp_path / "forecasts.zarr"))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a job never ended"
    assert not failures, failures
    got = {name: snapshot(str(tmp_path / name))
           for name in ("archive.zarr", "windows.zarr", "forecasts.zarr")}

    serial: dict[str, list[dict[str, str]]] = {"windows.zarr": [], "forecasts.zarr": []}
    for upto in STATES:  # the archive again at the same path (the stores name it), one state at a time
        shutil.rmtree(archive)
        append_frames(archive, upto, FRAMES, SIZE, CHUNK)
        run_in_process(WindowJob(archive, str(tmp_path / f"windows-{upto}.zarr"), SPEC))
        scoring(str(tmp_path / f"forecasts-{upto}.zarr"))
        serial["windows.zarr"].append(snapshot(str(tmp_path / f"windows-{upto}.zarr")))
        serial["forecasts.zarr"].append(snapshot(str(tmp_path / f"forecasts-{upto}.zarr")))
    assert got["archive.zarr"] == snapshot(archive), "the readers changed the archive, or frames were lost"
    for name, references in serial.items():
        assert len({tuple(sorted(r.items())) for r in references}) == len(STATES), "states not told apart"
        assert got[name] in references, f"{name} equals no serial run over an archive state: a mixed read"
        print(f"{name}: the serial run over {STATES[references.index(got[name])]} frames")  # shown with -s


def _recording(failures: list[BaseException], job):
    """``job`` for a thread: an exception is kept for the test to report, not lost in the thread."""
    def run() -> None:
        try:
            job()
        except BaseException as error:  # reported by the test
            failures.append(error)
    return run
