"""Input sources: synthetic frames per second on one core, radar files read per second.

Anchors, measured side by side: for the synthetic generator, the cost of
filling the same (512, 512) float32 frame with ``np.random.standard_normal``
(a floor for any per-pixel work); for radar, the direct pysteps importer plus
``to_rainrate`` on the same files.

    python -m bench.sources [--quick]
"""

from __future__ import annotations

import os

# One core for the generator figure: BLAS threads would blur the per-core number.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import parser, peak_rss, write_results  # noqa: E402
from pipelines.sources import RadarSource, SyntheticSource  # noqa: E402
from pipelines.sources.radar import FORMATS  # noqa: E402
from pipelines.sources.synthetic import _block_cells  # noqa: E402

RADAR_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "radar"


def synthetic_rates(shape: tuple[int, int], frames: int) -> dict[str, float]:
    """Frames per second: sequential (warm cell cache) and scattered (every frame cold)."""
    source = SyntheticSource(shape=shape, n_frames=100_000, seed=0)
    source.frame(0)  # texture and first cells
    start = time.perf_counter()
    for i in range(1, frames + 1):
        source.frame(i)
    warm = frames / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(frames):
        _block_cells.cache_clear()
        source.frame(1000 + 97 * i)
    cold = frames / (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(frames):
        rng.standard_normal(shape, dtype="float32")
    floor = frames / (time.perf_counter() - start)
    return {"warm": warm, "cold": cold, "randn_floor": floor}


def radar_rates(files_per_format: int) -> dict[str, dict[str, float]]:
    """Files per second per format: this source against the direct pysteps read."""
    from pipelines.sources.radar import _pysteps

    importers, to_rainrate = _pysteps()
    direct = {
        "knmi": lambda p: importers.import_knmi_hdf5(p),
        "bom": lambda p: importers.import_bom_rf3(p),
        "fmi": lambda p: importers.import_fmi_pgm(p, gzipped=True),
        "mch": lambda p: importers.import_mch_gif(p, product="AQC", unit="mm", accutime=5.0),
    }
    rates = {}
    for fmt in FORMATS:
        source = RadarSource(str(RADAR_DIR / fmt), fmt)
        items = source.items()[:files_per_format]
        source.read(items[0])  # imports, caches
        start = time.perf_counter()
        for item in items:
            source.read(item)
        ours = len(items) / (time.perf_counter() - start)
        start = time.perf_counter()
        for item in items:
            field, _, metadata = direct[fmt](item.path)
            to_rainrate(np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan), metadata)
        theirs = len(items) / (time.perf_counter() - start)
        rates[fmt] = {"source_files_per_s": round(ours, 2), "pysteps_files_per_s": round(theirs, 2)}
    return rates


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    frames = 20 if args.quick else 300
    with peak_rss() as rss:
        synthetic = synthetic_rates((512, 512), frames)
        radar = radar_rates(3 if args.quick else 30) if RADAR_DIR.is_dir() else {}
    figures = {
        "synthetic_512_frames_per_s": round(synthetic["warm"], 1),
        "synthetic_512_cold_frames_per_s": round(synthetic["cold"], 1),
        "randn_512_frames_per_s": round(synthetic["randn_floor"], 1),
        "synthetic_frames": frames,
        "radar_read": radar,
        "peak_rss_mb": round(rss["peak"] / 2**20, 1),
    }
    path = write_results("sources", figures, args.out, args.quick,
                         notes="Synthetic: 512x512 on one core (BLAS threads 1); warm = sequential "
                               "frames, cold = every frame with an empty cell cache (first frame of a "
                               "worker's chunk). Radar: files/s of RadarSource.read vs the direct pysteps "
                               "importer + to_rainrate on the same files.")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
