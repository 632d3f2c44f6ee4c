"""The main job (``make demo``) runs end to end against a real Prefect server."""

from __future__ import annotations

import numpy as np
import pytest

from flows.demo import demo_flow
from pipelines.archive import open_archive


@pytest.mark.slow
def test_demo_flow_ingests_and_draws(tmp_path, prefect_server):
    out = demo_flow(workdir=str(tmp_path / "demo"), frames=48, size=64)
    ds = open_archive(out["archive"])
    assert ds.sizes["time"] == 48 and bool(ds["valid"].all())
    assert np.nanmax(ds["precip"].values) > 0.1  # some rain was synthesised
    with open(out["frames_png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
