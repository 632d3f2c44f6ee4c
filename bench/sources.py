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
from nowcast.pipelines.sources import RadarSource, SyntheticSource  # noqa: E402
from nowcast.pipelines.sources.radar import FORMATS  # noqa: E402
from nowcast.pipelines.sources.synthetic import _block_cells  # noqa: E402

NOTES = (
    "Synthetic: 512x512 on one core (BLAS threads 1), per wall second and per CPU second (the "
    "latter is robust to other jobs on the machine); warm = sequential frames, cold = every frame "
    "with an empty cell cache (the first frame of a worker's chunk). Radar: files/s of "
    "RadarSource.read vs the direct pysteps importer + to_rainrate on the same files."
)
RADAR_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "radar"
FOLDERS = {"knmi": "knmi", "bom": "bom", "fmi": "fmi", "mch": "mch", "odim": "rmi"}  # under RADAR_DIR


def _rate(count: int, run) -> tuple[float, float]:
    """(per wall second, per CPU second) of ``run()``; CPU time is robust to a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def synthetic_rates(shape: tuple[int, int], frames: int) -> dict[str, tuple[float, float]]:
    """Frames per second: sequential (warm cell cache) and scattered (every frame cold)."""
    source = SyntheticSource(shape=shape, n_frames=100_000, seed=0)
    source.frame(0)  # texture and first cells

    def warm() -> None:
        for i in range(1, frames + 1):
            source.frame(i)

    def cold() -> None:
        for i in range(frames):
            _block_cells.cache_clear()
            source.frame(1000 + 97 * i)

    rng = np.random.default_rng(0)

    def floor() -> None:
        for _ in range(frames):
            rng.standard_normal(shape, dtype="float32")

    return {"warm": _rate(frames, warm), "cold": _rate(frames, cold), "randn_floor": _rate(frames, floor)}


def radar_rates(files_per_format: int) -> dict[str, dict[str, float]]:
    """Files per second per format: this source against the direct pysteps read."""
    from nowcast.pipelines.sources.importers import load_pysteps

    importers, to_rainrate = load_pysteps()
    direct = {
        "knmi": lambda p: importers.import_knmi_hdf5(p),
        "bom": lambda p: importers.import_bom_rf3(p),
        "fmi": lambda p: importers.import_fmi_pgm(p, gzipped=True),
        "mch": lambda p: importers.import_mch_gif(p, product="AQC", unit="mm", accutime=5.0),
        "odim": lambda p: importers.import_odim_hdf5(p),
    }
    rates = {}
    for fmt in FORMATS:
        source = RadarSource(str(RADAR_DIR / FOLDERS[fmt]), fmt)
        items = source.items()[:files_per_format]
        for item in items:  # imports, page cache: both readers then start warm
            source.read(item)
        ours = _rate(len(items), lambda items=items, source=source: [source.read(i) for i in items])

        def direct_reads(items=items, fmt=fmt) -> None:
            for item in items:
                field, _, metadata = direct[fmt](item.path)
                to_rainrate(np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan), metadata)

        theirs = _rate(len(items), direct_reads)
        rates[fmt] = {"source_files_per_s": round(ours[0], 2), "source_files_per_cpu_s": round(ours[1], 2),
                      "pysteps_files_per_s": round(theirs[0], 2),
                      "pysteps_files_per_cpu_s": round(theirs[1], 2)}
    return rates


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    frames = 20 if args.quick else 300
    with peak_rss() as rss:
        synthetic = synthetic_rates((512, 512), frames)
        radar = radar_rates(3 if args.quick else 30) if RADAR_DIR.is_dir() else {}
    figures = {
        "synthetic_512_frames_per_s": round(synthetic["warm"][0], 1),
        "synthetic_512_frames_per_cpu_s": round(synthetic["warm"][1], 1),
        "synthetic_512_cold_frames_per_s": round(synthetic["cold"][0], 1),
        "synthetic_512_cold_frames_per_cpu_s": round(synthetic["cold"][1], 1),
        "randn_512_frames_per_s": round(synthetic["randn_floor"][0], 1),
        "randn_512_frames_per_cpu_s": round(synthetic["randn_floor"][1], 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "synthetic_frames": frames,
        "radar_read": radar,
        "peak_rss_mb": round(rss["peak"] / 2**20, 1),
    }
    path = write_results("sources", figures, args.out, args.quick,
                         notes=NOTES)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
