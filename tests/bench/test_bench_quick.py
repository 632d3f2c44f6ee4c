"""Every benchmark runs at its smoke size and writes the keys its issue names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.run import names

EXPECTED_KEYS = {
    "ingest": {"frames_per_s_1_worker", "frames_per_s_2_workers", "reference_to_zarr_frames_per_s"},
    "windows": {"windows_job_mb_s", "limit_mb_s", "xbatcher_mb_s", "read_amplification",
                "peak_rss_mb", "peak_rss_mb_double_length"},
    "train": {"pipeline_samples_per_s", "memory_samples_per_s", "step_gflops", "matmul_gflops"},
    "score": {"end_to_end_per_s", "predict_only_per_s", "speedup_2_workers", "latency_512_s",
              "pysteps_latency_512_s"},
    "latency": {"median_s"},
    "scale": {"plan_s_1_day", "plan_s_1_year", "objects_read_1_day", "objects_read_1_year",
              "windows_dask_cluster_mb_s", "windows_limit_mb_s", "score_dask_cluster_per_s",
              "predict_only_per_s"},
    "sources": {"radar_read", "synthetic_512_frames_per_s", "randn_512_frames_per_s"},
    "skill": {"cnn_lstm", "convlstm", "matched_motion", "lagrangian_ar", "persistence", "extrapolation",
              "sprog", "split", "training_events", "checks"},
    "skill_loeo": {"folds", "recipe", "accelerator", "backend", "seed_spread_test_event",
                   "quantisation_max_error_mm_h"},
}
SOURCES = {"cnn_lstm", "convlstm", "matched_motion", "lagrangian_ar", "persistence", "extrapolation", "sprog"}
PER_LEAD = {"mae", "csi_0.5", "csi_1", "csi_5", "fss_1", "bias_0.1", "bias_1"}  # skill's scores per lead


@pytest.mark.slow
@pytest.mark.parametrize("name", names())
def test_quick_benchmark_writes_its_keys(name, tmp_path):
    subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(tmp_path)],
                   check=True, timeout=900)
    result = json.loads((tmp_path / f"{name}.quick.json").read_text())
    missing = EXPECTED_KEYS[name] - result.keys()  # a benchmark without its keys listed here fails
    assert not missing, f"bench.{name} lacks keys {missing}"
    per_source = {"skill": [result], "skill_loeo": [f["scores"] for f in result.get("folds", {}).values()]}
    assert per_source.get(name, True), f"bench.{name} scored no fold"
    for scores in per_source.get(name, []):
        for source in SOURCES - ({"convlstm"} if name == "skill_loeo" else set()):  # its quick run: cnn_lstm
            assert set(scores[source]) == {"5", "10", "15", "20", "25", "30"}, source
            assert all(scores[source][lead].keys() >= PER_LEAD for lead in scores[source]), source
