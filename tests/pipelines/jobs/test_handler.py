"""The scoring job's Beam handler: worker processes that exit quickly."""

from __future__ import annotations

import pytest

_EXIT_PROBE = """
import sys
from nowcast.pipelines.jobs.handler import skip_final_collection_at_exit
if sys.argv[2] == "skip":
    skip_final_collection_at_exit()


class Cycle:
    def __del__(self):
        with open(sys.argv[1], "a") as handle:
            handle.write("collected")


cycle = Cycle()
cycle.self = cycle
del cycle  # garbage now; nothing allocates after this, so only the exit's collection can find it
"""


@pytest.mark.parametrize(("mode", "collected"), [("default", True), ("skip", False)])
def test_worker_exit_skips_the_final_collection(tmp_path, mode, collected):
    """With the exit hook a worker leaves its heap to the OS: an unreachable cycle is never collected."""
    import subprocess
    import sys
    from pathlib import Path

    marker = tmp_path / "marker"
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", _EXIT_PROBE, str(marker), mode], check=True, cwd=root)
    assert marker.exists() is collected
