"""The main job (``make demo``) runs the whole chain end to end against a real Prefect server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nowcast.flows.demo import demo_flow
from nowcast.pipelines.stores.archive import open_archive
from nowcast.pipelines.stores.forecasts import written_flags

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_flow_runs_the_chain_and_reports(tmp_path, prefect_server, monkeypatch):
    monkeypatch.setenv("NOWCAST_STORAGE_ROOTS", str(tmp_path))
    out = demo_flow(workdir=str(tmp_path / "demo"), frames=96, size=32, epochs=1, backfill_hours=0.5,
                   workers=1)
    ds = open_archive(out.stores["archive"])
    assert ds.sizes["time"] == 96
    assert bool(ds["valid"].all())
    assert np.nanmax(ds["precip"].values) > 0.1  # some rain was synthesised
    flags = written_flags(out.stores["forecasts"])
    assert out.backfilled == 6
    assert flags.sum() == 6
    assert flags[-6:].all()
    assert (Path(out.stores["models"]) / "convlstm" / out.version / "model.keras").is_file()
    assert "| persistence |" in out.table
    assert "| extrapolation |" in out.table
    assert {"frames", "test_maps", "stored_maps"} <= set(out.pictures)
    for path in out.pictures.values():
        assert Path(path).read_bytes()[:8] == PNG
