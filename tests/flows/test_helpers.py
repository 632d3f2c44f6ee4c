"""Plain helpers of the flows, without Prefect: chunking, promotion rule, store roots, artifact URLs."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast.flows.artifacts import artifact_key, public_url
from nowcast.flows.forecast import chunked
from nowcast.flows.params import ROOTS_ENV, ParameterError, check_store_url
from nowcast.model.verify import Verification


def test_chunks_cover_the_init_times_in_order():
    times = tuple(f"t{i}" for i in range(7))
    assert chunked(times, 3) == [("t0", "t1", "t2"), ("t3", "t4", "t5"), ("t6",)]
    assert chunked((), 3) == []


def scores(mae: list[float], csi: list[float]) -> dict[str, dict[str, float]]:
    return {str(5 * (k + 1)): {"mae": m, "csi_1": c} for k, (m, c) in enumerate(zip(mae, csi, strict=True))}


def test_promotion_needs_a_higher_csi_and_a_lower_mae_than_extrapolation():
    base = scores([1.0, 2.5], [0.5, 0.3])
    better = Verification({"m": scores([1.0, 2.0], [0.5, 0.4]), "extrapolation": base}, 4, None)
    wetter = Verification({"m": scores([1.0, 3.0], [0.6, 0.5]), "extrapolation": base}, 4, None)
    blurrier = Verification({"m": scores([0.5, 2.0], [0.4, 0.3]), "extrapolation": base}, 4, None)
    tie = Verification({"m": base, "extrapolation": base}, 4, None)
    unscored = Verification({"m": {"5": {"n": 0.0}}, "extrapolation": {"5": {"n": 0.0}}}, 0, None)
    assert better.beats("m", "extrapolation")
    assert better.margins("m", "extrapolation") == pytest.approx({"csi_1": 0.05, "mae": 0.25})
    assert better.mean("m", "mae") == pytest.approx(1.5)
    assert not wetter.beats("m", "extrapolation")  # higher CSI, but a larger error
    assert not blurrier.beats("m", "extrapolation")  # smaller error, but lower CSI
    assert not tie.beats("m", "extrapolation")
    assert not unscored.beats("m", "extrapolation")
    assert np.isnan(unscored.mean("m"))


def test_store_roots_accept_paths_and_url_prefixes(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOTS_ENV, f"{tmp_path}:s3://bucket/nowcast/")
    assert check_store_url(str(tmp_path / "a" / ".." / "b.zarr")) == str(tmp_path / "b.zarr")
    assert check_store_url("s3://bucket/nowcast/archive.zarr") == "s3://bucket/nowcast/archive.zarr"
    for outside in (str(tmp_path) + "-sibling/a.zarr", str(tmp_path / ".." / "a.zarr"),
                    "s3://bucket/nowcast-other/a.zarr", "gs://bucket/nowcast/a.zarr"):
        with pytest.raises(ParameterError, match=ROOTS_ENV):
            check_store_url(outside)


def test_artifact_keys_and_served_urls(tmp_path, monkeypatch):
    assert artifact_key("Evaluate test_maps.PNG") == "evaluate-test-maps-png"
    monkeypatch.delenv("NOWCAST_ARTIFACT_URL", raising=False)
    assert public_url(tmp_path / "x.png") is None
    monkeypatch.setenv("NOWCAST_ARTIFACT_URL", "http://127.0.0.1:4201/")
    monkeypatch.setenv("NOWCAST_ARTIFACT_ROOT", str(tmp_path))
    assert public_url(tmp_path / "demo" / "x.png") == "http://127.0.0.1:4201/demo/x.png"
    assert public_url("/elsewhere/x.png") is None
