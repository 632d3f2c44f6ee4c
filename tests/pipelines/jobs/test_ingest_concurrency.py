"""Three `nowcast ingest` runs started together into one archive lose nothing: the store equals a serial run.

Before the writers' lock (nowcast.pipelines.stores.lock) each run merged its
frames into chunks it had read before the others wrote, and the last writer
won: both runs exited 0 and frames of one were gone. The groups here are
interleaved, so every archive chunk gets frames from every run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
from nowcast.pipelines.sources.radar import RadarSource
from nowcast.pipelines.stores.archive import open_archive
from tests.pipelines.jobs.ingest_helpers import store_digests

EVENT, FRAMES, WRITERS, CHUNK = "mch/20150515", 6, 3, 3  # each chunk gets a frame of every writer
# (three, not four: the same interleaving, and 2 fewer processes of 10 s each on CI's 2 cores)


def copy_group(files, folder):
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def serial(files, archive: str, start: str) -> None:
    source = RadarSource(str(files[0].parent), "mch")
    items = [item for item in source.items() if item.path.rsplit("/", 1)[-1] in {f.name for f in files}]
    ingest_items(IngestSpec(archive=archive, source=source, start=start, time_chunk=CHUNK), items, None)


def ingest_together(groups, archive: str, start: str) -> list[subprocess.CompletedProcess]:
    runs = [subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", "ingest", "--archive", archive,
                              "--input", str(folder), "--format", "mch", "--start", start,
                              "--time-chunk", str(CHUNK)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for folder in groups]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(run.args, run.returncode, out, err))
    return results


@pytest.fixture
def where(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "stores")
    return f"{request.getfixturevalue('s3_bucket')}/stores"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"], indirect=True)
@pytest.mark.fault("ingest", "three `nowcast ingest` runs at once into a new, then an existing archive",
                   "serialised by the store lock: all exit 0, store byte-identical to a serial run")
def test_three_ingests_started_together_equal_a_serial_run(where, radar_dir, tmp_path):
    """Into a new archive (all three create it), then into the existing one (all three extend it)."""
    files = sorted((radar_dir / EVENT).glob("*.gif"))[:2 * FRAMES]
    start = str(RadarSource(str(radar_dir / EVENT), "mch").items()[0].time)
    archive = f"{where}/together.zarr"
    for phase, batch in (("new", files[:FRAMES]), ("existing", files[FRAMES:])):
        reference = f"{where}/serial-{phase}.zarr"
        serial(files[:FRAMES] if phase == "new" else files, reference, start)
        groups = [copy_group(batch[k::WRITERS], tmp_path / f"{phase}{k}") for k in range(WRITERS)]

        results = ingest_together(groups, archive, start)

        for result in results:
            assert result.returncode == 0, result.stderr[-2000:]
        written = sum(int(result.stdout.split("ingested ")[1].split()[0]) for result in results)
        assert written == len(batch), (phase, [r.stdout for r in results])
        assert int(open_archive(archive)["valid"].sum()) == int(open_archive(reference)["valid"].sum())
        np.testing.assert_array_equal(open_archive(archive)["precip"].values,
                                      open_archive(reference)["precip"].values)
        assert store_digests(archive) == store_digests(reference), phase
