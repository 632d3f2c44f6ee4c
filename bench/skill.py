"""Forecast skill on real radar: cnn_lstm and convlstm against persistence, LK extrapolation, S-PROG.

Split (by event, so no test frame is ever seen in training):

- train: MeteoSwiss 2015-05-15 (all 40 five-minute frames of
  ../shared/data/radar/mch/20150515), cut into 64x64 patches of every
  4-in/6-out window; training keeps patches whose targets are at least 5%
  wet (>= 0.5 mm/h), since most patches of a radar composite are dry;
- test: MeteoSwiss 2016-07-11 (../shared/data/radar/mch/20160711), every
  init time with 4 past and 6 future frames (``--stride`` apart), on the
  whole 640x710 grid.

``--quick`` (CI's smoke run) uses the first 12 frames of each event, two
training steps and one test init time.

Both events are ingested with nowcast.pipelines.jobs.ingest (pysteps importers) and the
training windows cut with nowcast.pipelines.jobs.windows; the models train with
nowcast.model.train (CPU, a few minutes), are saved to a registry, and are loaded
back against the test archive's description (which they must fit) and
against BoM's 10-minute archive description (which they must refuse).
Both models advect the last frame along a block-matched motion field and
forecast the change along it (``advection`` and ``matched_motion``, see
model/architectures.py). They forecast the whole grid the way the scoring job
does (nowcast.model.forecaster's forecaster: 64x64 tiles overlapping by half a tile,
blended with linear ramps, clipped at 0), the baselines on the whole grid.
Every forecast is scored by nowcast.model.verification on the pixels inside radar
coverage. Leads are 5..30 min.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from bench.common import parser, peak_rss, write_results
from nowcast.model import verification
from nowcast.model.forecaster import load_forecaster
from nowcast.model.registry import ArchiveDescription, ArchiveMismatchError, load_model
from nowcast.model.train import TrainConfig, train
from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
from nowcast.pipelines.sources.radar import RadarSource

RADAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "radar"
TRAIN_EVENT, TEST_EVENT = "mch/20150515", "mch/20160711"
T_IN, T_OUT, PATCH = 4, 6, 64
# both forecast the change along a block-matched motion (model/architectures.py: MatchMotion)
MOTION = {"advection": True, "matched_motion": True}
MODELS = {
    "cnn_lstm": {"filters": [16, 32], "lstm_units": 64, "decoder_filters": 8, **MOTION},
    "convlstm": {"filters": [16, 32], "lstm_units": 24, **MOTION},
}
EPOCHS = {"cnn_lstm": 6, "convlstm": 10}  # convlstm was still improving after 6
WET = (0.5, 0.05)


def ingest(event: str, url: str, frames: int | None = None) -> str:
    """Ingests an event's first ``frames`` files (all by default) in this process."""
    source = RadarSource(str(RADAR / event), "mch")
    ingest_items(IngestSpec(archive=url, source=source), source.items()[:frames], None)
    return url


def _span(times: np.ndarray) -> list[str]:
    """First and last timestamp (UTC, to the second)."""
    return [str(times[0])[:19], str(times[-1])[:19]]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--stride", type=int, default=None, help="frames between test init times")
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, shuffles, augmentation)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    epochs = {name: args.epochs or (1 if args.quick else EPOCHS[name]) for name in MODELS}
    stride = args.stride or (12 if args.quick else 2)
    steps = 2 if args.quick else None
    work = Path(tempfile.mkdtemp(prefix="bench_skill_"))
    try:
        with peak_rss() as rss:
            started = time.perf_counter()
            frames_per_event = 12 if args.quick else None
            train_archive = ingest(TRAIN_EVENT, str(work / "train_archive.zarr"), frames_per_event)
            test_archive = ingest(TEST_EVENT, str(work / "test_archive.zarr"), frames_per_event)
            windows = str(work / "windows.zarr")
            spec = WindowSpec(channels=("precip",), target="precip", t_in=T_IN, t_out=T_OUT, stride=1,
                              patch_size=(PATCH, PATCH), split=SplitSpec(fractions=(1.0, 0.0, 0.0)),
                              samples_per_chunk=16)
            counts = run_in_process(WindowJob(archive=train_archive, output=windows, spec=spec)).counts
            prepare_s = time.perf_counter() - started

            trained, train_seconds = {}, {}
            for name, options in MODELS.items():
                cfg = TrainConfig(windows=windows, models=str(work / "models"), architecture=name,
                                  workdir=str(work / "runs" / name), options=options, epochs=epochs[name],
                                  steps_per_epoch=steps, batch_size=16, learning_rate=2e-3,
                                  loss="intensity_weighted_mse", patience=2, augment=True,
                                  verbose=0 if args.quick else 2,
                                  wet=WET, seed=args.seed)
                result = train(cfg)
                trained[name] = result.path
                train_seconds[name] = result.metrics["train_seconds"]

            test = xr.open_zarr(test_archive, consolidated=False)
            frames = test["precip"].values.astype("float32")
            times = test["time"].values
            units = {"precip": test["precip"].attrs["units"]}
            description = ArchiveDescription(str(test.attrs["time_step"]), units, tuple(frames.shape[1:]))
            bom = ArchiveDescription("PT10M", {"precip": "mm h-1"}, (512, 512))
            models, refusals = {}, {}
            for name in MODELS:  # the scoring job's forecaster: tiles blended with linear ramps
                models[name] = load_forecaster(str(work / "models"), name, "latest", description.to_dict(),
                                               overlap=PATCH // 2, predict_batch_size=32,
                                               valid_range=(0.0, None))
                try:
                    load_model(work / "models", name, archive=bom)
                    refusals[name] = "NOT refused"
                except ArchiveMismatchError as error:
                    refusals[name] = str(error).split(": ", 1)[1][:160]

            inits = list(range(T_IN - 1, len(frames) - T_OUT, stride))
            if args.quick:
                inits = inits[:1]
            states = {n: verification.skill_init(T_OUT) for n in [*MODELS, *verification.BASELINES]}
            seconds = dict.fromkeys(states, 0.0)
            example = None
            for i in inits:
                inputs, truth = frames[i - T_IN + 1 : i + 1], frames[i + 1 : i + 1 + T_OUT]
                forecasts = {}
                for name, forecaster in models.items():
                    t0 = time.perf_counter()
                    forecasts[name] = forecaster.forecast(inputs[None, ..., None])[0]
                    seconds[name] += time.perf_counter() - t0
                for name, baseline in verification.BASELINES.items():
                    t0 = time.perf_counter()
                    forecasts[name] = baseline(inputs, T_OUT)
                    seconds[name] += time.perf_counter() - t0
                for name, fct in forecasts.items():
                    verification.skill_accum(states[name], fct, truth)
                wet = float(np.nanmean(truth >= 1.0))
                if example is None or wet > example[0]:
                    example = (wet, i, truth, forecasts)
            scores = {n: verification.skill_compute(s, 5) for n, s in states.items()}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        suffix = ".quick" if args.quick else ""
        verification.plot_scores(scores, out / f"skill{suffix}_scores.png")
        _, i, truth, forecasts = example
        verification.plot_maps(truth, forecasts, [0, 2, 5], out / f"skill{suffix}_maps.png")
        (out / f"skill{suffix}.md").write_text(
            f"# Skill on {TEST_EVENT} (trained on {TRAIN_EVENT})\n\n" + verification.markdown_table(scores)
            + f"\nMaps: init {str(times[i])[:16]} UTC.\n")
        train_times = xr.open_zarr(train_archive, consolidated=False)["time"].values
        split = {
            "train": {"event": TRAIN_EVENT, "frames": _span(train_times),
                      "windows": counts, "patch": [PATCH, PATCH],
                      "wet_filter": {"threshold_mm_h": WET[0], "min_fraction": WET[1]}},
            "test": {"event": TEST_EVENT, "init_times": [str(times[i])[:19] for i in inits],
                     "frames": _span(times), "grid": list(frames.shape[1:])},
            "shared_frames": int(np.isin(times, train_times).sum()),
        }
        figures = {name: {lead: {k: v for k, v in s.items() if k in verification.METRICS}
                          for lead, s in per_lead.items()} for name, per_lead in scores.items()}
        figures.update({
            "split": split,
            "leads_min": [5 * k for k in range(1, T_OUT + 1)],
            "scores_all": scores,
            "train_seconds": train_seconds,
            "forecast_seconds_per_init": {n: s / max(len(inits), 1) for n, s in seconds.items()},
            "prepare_seconds": prepare_s,
            "epochs": epochs,
            "seed": args.seed,
            "refused_bom_10min": refusals,
            "peak_rss_mb": rss["peak"] / 2**20,
            "fss_1_scale_px": 5,
        })
        notes = (f"Trained on {TRAIN_EVENT}, tested on {TEST_EVENT} (no shared frame); scores inside radar "
                 "coverage only; fss_1 is FSS at 1 mm/h over 5x5 km. See skill.md for the table.")
        path = write_results("skill", figures, out, args.quick, notes)
        for lead in ("30",):
            row = {n: round(scores[n][lead].get("csi_1", float("nan")), 3) for n in scores}
            print(f"CSI 1 mm/h at +{lead} min: {json.dumps(row)}")
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
