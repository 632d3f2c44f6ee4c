"""A worker process SIGKILLed part way through an ingest, under the multiprocess and the Dask runner.

The killed run fails with a clear error (multiprocess: FnApiRunner would wait
for the dead worker for ever; the thread that ran it ends too) or retries the lost work on another worker
(Dask), and never reports success for work it did not do; a rerun ends
byte-identical to an uninterrupted run. The worker is killed at a pause point
(tests/pause: after its second archive chunk), not after a guessed delay; the
job's driver runs in this process, only the workers pause.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.jobs.runners import RunnerOptions, WorkerLostError
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import valid_flags
from tests.pause import ENV, install, pause_env, paused_pid, uninstall
from tests.pipelines.jobs.ingest_helpers import snapshot

FRAMES, CHUNK = 48, 8
SOURCE = get_source("synthetic", shape=(32, 32), n_frames=FRAMES, seed=3)
AFTER = r"^valid/c/", 2  # a worker stops after writing its second chunk's valid flags (the last write)

pytestmark = pytest.mark.usefixtures("short_lock_lease")  # a killed run's lease, if left, ends in 10 s


def ingest(archive, runner: RunnerOptions | None = None):
    return run(IngestSpec(archive=str(archive), source=SOURCE, time_chunk=CHUNK), runner)


def kill_when_paused(signal_file, killed: list[int]) -> threading.Thread:
    """A thread that SIGKILLs the worker paused at the pause point (never this process, the driver)."""
    def kill() -> None:
        worker = paused_pid(signal_file)
        if worker != os.getpid():
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
# the dead worker's data stream ends with an error in a thread of Beam's own, which nothing joins
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.fault("ingest", "a worker process SIGKILLed part way through an ingest (multiprocess runner)",
                   "exit 2 saying a worker died and to rerun (no hang, the other workers stopped); the rerun "
                   "ends byte-identical to an uninterrupted run")
def test_a_multiprocess_worker_killed_part_way_fails_clearly_and_a_rerun_completes(tmp_path, monkeypatch):
    expected = (ingest(tmp_path / "clean.zarr"), snapshot(str(tmp_path / "clean.zarr")))[1]
    archive, killed = tmp_path / "crashed.zarr", []
    environment = pause_env(tmp_path / "paused", *AFTER)  # for the workers this process starts
    for name in (ENV, "PYTHONPATH"):
        monkeypatch.setenv(name, environment[name])
    killer = kill_when_paused(tmp_path / "paused", killed)

    with pytest.raises(WorkerLostError, match=r"a worker process of the multiprocess runner died part way"
                                              r".*rerun the job"):
        ingest(archive, RunnerOptions("multiprocess", workers=2))

    for thread in threading.enumerate():  # the thread that ran the pipeline is not left waiting for ever
        if thread.name == "beam-multiprocess":
            thread.join(timeout=60)
            assert not thread.is_alive(), "the pipeline's thread still waits on the dead worker"
    killer.join(timeout=10)
    assert killed, "no worker was killed"
    assert 0 < valid_flags(str(archive)).sum() < FRAMES  # stopped part way, and said so
    ingest(archive)
    assert snapshot(str(archive)) == expected


@pytest.mark.slow
@pytest.mark.fault("ingest", "a Dask worker process SIGKILLed part way through an ingest",
                   "Dask reruns the lost tasks on another worker: success only with every frame written, "
                   "byte-identical to an uninterrupted run; a rerun finds nothing to do")
def test_a_dask_worker_killed_part_way_is_retried_and_the_store_is_complete(tmp_path, dask_scheduler):
    from distributed import Client

    expected = (ingest(tmp_path / "clean.zarr"), snapshot(str(tmp_path / "clean.zarr")))[1]
    archive, killed = tmp_path / "crashed.zarr", []
    with Client(dask_scheduler) as client:
        client.run(install, str(tmp_path / "paused"), *AFTER)  # in every worker process of the cluster
        try:
            killer = kill_when_paused(tmp_path / "paused", killed)
            result = ingest(archive, RunnerOptions("dask", dask_address=dask_scheduler))
            killer.join(timeout=10)
        finally:
            client.run(uninstall)  # the cluster serves other tests (the killed worker restarts unpatched)

    assert killed, "no worker was killed"
    assert result.frames_written == FRAMES  # retried, and it says so only because all of it is there:
    assert snapshot(str(archive)) == expected
    assert ingest(archive).frames_written == 0
    assert snapshot(str(archive)) == expected
