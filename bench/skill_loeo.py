"""Leave one event out: bench.skill's models, a larger recipe trained on an accelerator, scored here.

Each of the five 5-minute events of ../shared/data/radar (bench.skill's four
training events and its test event) is held out in turn: cnn_lstm and
convlstm train on the windows of the other four (70/30 train/validation split
in time in each, as bench.skill) and forecast the held-out event's whole grid
as the scoring job runs them, beside persistence, LK extrapolation, S-PROG and
the models' untrained base (``lagrangian_ar``). The fold that holds out
MeteoSwiss 2016-07-11 is bench.skill's protocol with the larger recipe, and
is trained with more seeds.

Three stages, because the accelerator (the device tool's GPU machine: JAX but
no TensorFlow, zarr or pysteps, and 64 MiB carried to it) cannot read the
stores:

1. ``prepare`` (here): ingest and cut windows as bench.skill does, then write
   a bundle: each event's frames (rain rate quantised to 0.01 mm/h as uint16,
   compressed; the windows store's samples are checked against a cut from the
   unquantised frames), each split's sample index (init frame, y0, x0) read
   from windows.zarr, and per fold the merged normalisation and the model
   shapes (nowcast.model.train.training_set).
2. ``train`` (the accelerator, ``KERAS_BACKEND=jax``): cuts the same samples
   from the frames (the wet filter and normalisation of
   nowcast.model.normalization), trains with random flips and rotations,
   Adam, MAE, early stopping and a plateau schedule on the validation split,
   each run stopped at the end of the first epoch past the recipe's
   ``budget_s``, and saves the weights. Every fold, model and seed is its own
   process, all at once on the one GPU.
3. ``score`` (here): calibrates each lead's change on the validation split and
   registers each trained model with the metadata nowcast.model.train writes
   (``validate``, ``register``), scores every held-out event and writes
   bench/results/skill_loeo.json and skill_loeo.md.

``python -m bench.skill_loeo`` runs all three in one go on whatever backend
is present; ``--quick`` (CI's smoke run) does so on 20 frames per event, the
test event's fold only, cnn_lstm only, two training steps and one init time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np

from bench.common import RESULTS_DIR, machine, write_results
from nowcast.model.architectures import ArchitectureConfig, build_model, motion_penalty
from nowcast.model.losses import get_loss
from nowcast.model.normalization import Normalizer, model_samples, wet_samples

EVENTS = {"knmi/20100826": "knmi", "fmi/pgm/20160928": "fmi", "mch/20150515": "mch",
          "rmi/radqpe/20210704": "odim", "mch/20160711": "mch"}  # event folder -> format
TEST_EVENT = "mch/20160711"
RECIPE = {"batch_size": 32, "steps_per_epoch": 60, "epochs": 30, "patience": 5, "learning_rate": 2e-3,
          "loss": "mae", "budget_s": 240.0}
QUICK_RECIPE = {**RECIPE, "batch_size": 4, "steps_per_epoch": 2, "epochs": 1, "budget_s": 60.0}
EXTRA_SEEDS = (1, 2)  # more seeds on the test event's fold
NAN_CODE = 65535  # the quantised frames' code for unobserved pixels
SPLITS = ("train", "val")


def key(event: str) -> str:
    """A file-name-safe name of an event folder."""
    return event.replace("/", "_")


def quantise(frames: np.ndarray) -> np.ndarray:
    """Rain rates as uint16 hundredths of mm/h (NaN as NAN_CODE; at most 655.34 mm/h)."""
    codes = np.clip(np.rint(np.nan_to_num(frames, nan=0.0) * 100), 0, NAN_CODE - 1).astype("uint16")
    codes[~np.isfinite(frames)] = NAN_CODE
    return codes


def dequantise(codes: np.ndarray) -> np.ndarray:
    frames = codes.astype("float32") / np.float32(100)
    frames[codes == NAN_CODE] = np.nan
    return frames


def cut_samples(frames: np.ndarray, index: np.ndarray, t_in: int, t_out: int, patch: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Physical inputs and targets ``(n, t, patch, patch, 1)`` of samples ``(init frame, y0, x0)``."""
    windows = np.stack([frames[i - t_in + 1 : i + t_out + 1, y : y + patch, x : x + patch]
                        for i, y, x in index])[..., None]
    return windows[:, :t_in], windows[:, t_in:]


def augment(rng: np.random.Generator, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same random 90-degree rotation and flip per sample on arrays ``(n, t, y, x, ...)``."""
    out = [a.copy() for a in arrays]
    for s in range(len(arrays[0])):
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        for a in out:
            a[s] = np.rot90(a[s], k, axes=(1, 2))
            if flip:
                a[s] = a[s][:, :, ::-1]
    return tuple(out)


# --- stage 1: prepare (here) -------------------------------------------------------------------

def fold_config(heldout: str, windows: Mapping[str, str], models: str, name: str, seed: int,
                recipe: Mapping[str, float]):
    """The TrainConfig a fold's model is registered with (train() would run the same)."""
    from bench.skill import MODELS, WET
    from nowcast.model.train import TrainConfig

    return TrainConfig(windows=tuple(url for event, url in windows.items() if event != heldout),
                       models=models, architecture=name, options=MODELS[name], epochs=int(recipe["epochs"]),
                       steps_per_epoch=int(recipe["steps_per_epoch"]), batch_size=int(recipe["batch_size"]),
                       learning_rate=float(recipe["learning_rate"]), loss=str(recipe["loss"]),
                       patience=int(recipe["patience"]), augment=True, wet=WET, seed=seed,
                       version=f"seed{seed}", promote=False, verbose=0)


def tasks(folds: Sequence[str], quick: bool) -> list[dict[str, object]]:
    """Every (held-out event, model, seed) to train."""
    from bench.skill import MODELS

    seeds = {fold: (0, *(() if quick or fold != TEST_EVENT else EXTRA_SEEDS)) for fold in folds}
    models = list(MODELS)[:1] if quick else list(MODELS)  # CI's smoke run: the path, once
    return [{"fold": fold, "model": name, "seed": seed} for fold in folds for name in models
            for seed in seeds[fold]]


def prepare(work: Path, bundle: Path, quick: bool) -> dict[str, object]:
    """Archives and windows of every event under ``work``; the accelerator's bundle under ``bench``."""
    from bench import skill
    from nowcast.model.train import training_set
    from nowcast.pipelines.stores.archive import open_archive
    from nowcast.pipelines.stores.windows import WindowsStore

    bundle.mkdir(parents=True, exist_ok=True)
    frames_per_event = 20 if quick else None
    windows, counts, max_error = {}, {}, 0.0
    for event, fmt in EVENTS.items():
        archive = skill.ingest(fmt, event, str(work / f"{key(event)}.zarr"), frames_per_event)
        windows[event] = str(work / f"{key(event)}_windows.zarr")
        counts[event] = skill.cut(archive, windows[event])
        frames = skill._frames(archive)
        times = open_archive(archive)["time"].values.astype("datetime64[s]")
        codes = quantise(frames)
        max_error = max(max_error, float(np.nanmax(np.abs(dequantise(codes) - frames))))
        arrays = {"rain": codes}
        for split in SPLITS:
            store = WindowsStore(windows[event], split)
            init, y0, x0 = store.sample_index()
            index = np.stack([np.searchsorted(times, init), y0, x0], axis=1).astype("int32")
            if len(index):  # the samples the accelerator cuts are the windows job's
                inputs, targets = store.read_chunk(0)
                mine = cut_samples(frames, index[: len(inputs)], skill.T_IN, skill.T_OUT, skill.PATCH)
                for theirs, cut in zip((inputs, targets), mine, strict=True):
                    np.testing.assert_array_equal(theirs[..., :1], cut, err_msg=f"{event} {split}")
            arrays[split] = index
        np.savez_compressed(bundle / f"{key(event)}.npz", **arrays)
    folds = [TEST_EVENT] if quick else list(EVENTS)
    manifest = {"events": list(EVENTS), "folds": {}, "t_in": skill.T_IN, "t_out": skill.T_OUT,
                "patch": skill.PATCH, "wet": list(skill.WET), "models": skill.MODELS,
                "recipe": QUICK_RECIPE if quick else RECIPE,
                "tasks": tasks(folds, quick), "quantisation_max_error_mm_h": max_error}
    for fold in folds:
        tset = training_set(fold_config(fold, windows, str(work / "models"), "cnn_lstm", 0, RECIPE))
        manifest["folds"][fold] = {"train_events": [e for e in EVENTS if e != fold],
                                   "normalization": tset.normalizer.to_dict()}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {"windows": windows, "counts": counts, "manifest": manifest}


# --- stage 2: train (the accelerator) ---------------------------------------------------------

class Samples:
    """Wet samples of a fold's training events, cut from the bundle's frames on demand."""

    def __init__(self, bundle: Path, events: Sequence[str], split: str, manifest: Mapping, normalizer):
        self.t_in, self.t_out, self.patch = manifest["t_in"], manifest["t_out"], manifest["patch"]
        self.normalizer, self.frames, self.index = normalizer, [], []
        for e, event in enumerate(events):
            with np.load(bundle / f"{key(event)}.npz") as stored:
                frames, index = dequantise(stored["rain"]), stored[split]
            _, targets = cut_samples(frames, index, self.t_in, self.t_out, self.patch) if len(index) else (
                None, np.zeros((0, self.t_out, 1, 1, 1), "float32"))
            keep = wet_samples(targets, tuple(manifest["wet"]))
            self.frames.append(frames)
            self.index.extend((e, *row) for row in index[keep])
        self.index = np.asarray(self.index, "int64").reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """Model-space inputs, targets and weights of ``rows`` (augmented with ``rng``)."""
        parts = [cut_samples(self.frames[e], self.index[rows][self.index[rows, 0] == e, 1:], self.t_in,
                             self.t_out, self.patch) for e in np.unique(self.index[rows, 0])]
        inputs, targets = (np.concatenate(p) for p in zip(*parts, strict=True))
        inputs, targets, weights = model_samples(inputs, targets, self.normalizer)
        return augment(rng, inputs, targets, weights) if rng is not None else (inputs, targets, weights)


class TrainBatches(keras.utils.PyDataset):
    """``steps`` random, augmented batches of ``samples`` per epoch, reproducible from ``seed``."""

    def __init__(self, samples: Samples, batch: int, steps: int, seed: int) -> None:
        super().__init__()
        self.samples, self.size, self.steps, self.seed, self.epoch = samples, batch, steps, seed, 0

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return self.samples.batch(np.sort(rng.integers(0, len(self.samples), self.size)), rng)

    def on_epoch_end(self) -> None:
        self.epoch += 1


class Listed(keras.utils.PyDataset):
    """Fixed batches (the validation split) as Keras reads them."""

    def __init__(self, batches: list[tuple[np.ndarray, ...]]) -> None:
        super().__init__()
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        return self.batches[i]


class Budget(keras.callbacks.Callback):
    """Stops training at the end of the first epoch past ``seconds`` (the accelerator's time is counted)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.started, self.stopped = seconds, time.perf_counter(), False

    def on_epoch_end(self, epoch: int, logs: Mapping | None = None) -> None:
        if time.perf_counter() - self.started > self.seconds:
            self.model.stop_training = self.stopped = True


def train_one(bundle: Path, task: Mapping[str, object], out: Path) -> dict[str, object]:
    """Trains one (fold, model, seed) on the bundle; writes its weights and a JSON of what happened."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    fold, name, seed = str(task["fold"]), str(task["model"]), int(task["seed"])  # type: ignore[call-overload]
    recipe = manifest["recipe"]
    keras.utils.set_random_seed(seed)
    normalizer = Normalizer.from_dict(manifest["folds"][fold]["normalization"])
    events = manifest["folds"][fold]["train_events"]
    train, val = (Samples(bundle, events, split, manifest, normalizer) for split in SPLITS)
    batch, steps = int(recipe["batch_size"]), int(recipe["steps_per_epoch"])

    # as train(): without validation samples (--quick's 20 frames) monitor the loss, calibrate nothing
    val_batches = Listed([val.batch(np.arange(i, min(i + batch, len(val))))
                          for i in range(0, len(val), batch)])
    monitor = "val_loss" if len(val) else "loss"
    arch = ArchitectureConfig.from_dict({"motion_penalty": motion_penalty(normalizer.unit(normalizer.target)),
                                         **manifest["models"][name], "t_in": train.t_in, "t_out": train.t_out,
                                         "height": train.patch, "width": train.patch,
                                         "channels": normalizer.input_channels, "target_channel": 0})
    net = build_model(name, arch, seed=seed)
    net.compile(optimizer=keras.optimizers.Adam(float(recipe["learning_rate"])),
                loss=get_loss(str(recipe["loss"])), metrics=["mae"])
    patience, budget = int(recipe["patience"]), Budget(float(recipe["budget_s"]))
    fit = net.fit(TrainBatches(train, batch, steps, seed), validation_data=val_batches if len(val) else None,
                  epochs=int(recipe["epochs"]), verbose=2, callbacks=[
                      keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                                    restore_best_weights=True),
                      keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                        patience=max(patience // 2, 1), min_lr=1e-5),
                      budget])
    seconds = time.perf_counter() - budget.started
    stem = f"{key(fold)}-{name}-seed{seed}"
    net.save_weights(str(out / f"{stem}.weights.h5"))
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    result = {"task": dict(task), "history": history,
              "metrics": {"train_seconds": seconds, "epochs_run": len(history.get("loss", [])),
                          "stopped_by_budget": budget.stopped, "train_samples": len(train),
                          "val_samples": len(val)},
              "backend": keras.backend.backend(), "devices": _devices()}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return result


def _devices() -> list[str]:
    if keras.backend.backend() == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    return []


def train_all(bundle: Path, out: Path, parallel: bool,
              deadline_s: float | None = None) -> list[dict[str, object]]:
    """Every task of the manifest: each its own process at once (``parallel``), or one by one here.

    Processes still running ``deadline_s`` after the start are killed (their
    task is reported missing), so an accelerator's lease always returns what finished.
    """
    manifest = json.loads((bundle / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    if not parallel:
        return [train_one(bundle, task, out) for task in manifest["tasks"]]
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # many processes share the GPU
    started, procs = time.perf_counter(), {}
    for task in manifest["tasks"]:
        stem = f"{key(str(task['fold']))}-{task['model']}-seed{task['seed']}"
        with open(out / f"{stem}.log", "w") as log:
            procs[stem] = subprocess.Popen([sys.executable, "-m", "bench.skill_loeo", "train-one", "--bundle",
                                            str(bundle), "--out", str(out), "--task", json.dumps(task)],
                                           stdout=log, stderr=subprocess.STDOUT, env=env)
    (out / "run.json").write_text(json.dumps({"processes": len(procs), "deadline_s": deadline_s,
                                              "xla_flags": os.environ.get("XLA_FLAGS", "")}))
    for stem, proc in procs.items():
        left = None if deadline_s is None else max(deadline_s - (time.perf_counter() - started), 1.0)
        try:
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed at the deadline"
        state = "done" if code == 0 else f"FAILED ({code})"
        print(f"{stem}: {state} at {time.perf_counter() - started:.0f} s",
              flush=True)
    return [json.loads(p.read_text()) for p in sorted(out.glob("*seed*.json"))]


# --- stage 3: score (here) -----------------------------------------------------------------------

def score(work: Path, trained: Path, out: Path, quick: bool, stride: int | None) -> Path:
    """Registers the trained weights, scores every held-out event, writes skill_loeo.json/.md."""
    from bench import skill
    from nowcast.model import verification
    from nowcast.model.forecaster import load_forecaster
    from nowcast.model.train import register, training_set, validate
    from nowcast.pipelines.stores.archive import read_info

    manifest = json.loads((trained / "manifest.json").read_text())
    windows = {event: str(work / f"{key(event)}_windows.zarr") for event in EVENTS}
    recipe = manifest["recipe"]
    results = [json.loads(p.read_text()) for p in sorted(trained.glob("*seed*.json"))]
    started = time.perf_counter()
    folds: dict[str, dict] = {}
    for fold in manifest["folds"]:
        archive = str(work / f"{key(fold)}.zarr")
        description = read_info(archive).description().to_dict()
        forecasters, training = {}, {}
        for result in (r for r in results if r["task"]["fold"] == fold):
            name, seed = result["task"]["model"], int(result["task"]["seed"])
            models = str(work / "models" / key(fold))
            cfg = fold_config(fold, windows, models, name, seed, recipe)
            tset = training_set(cfg)
            net = build_model(name, tset.arch)
            net.load_weights(str(trained / f"{key(fold)}-{name}-seed{seed}.weights.h5"))
            net.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=get_loss(cfg.loss),
                        metrics=["mae"])
            lead_scale, val_metrics = validate(cfg, tset, net)  # as train() does after fitting
            register(cfg, tset, net, result["history"], {**result["metrics"], **val_metrics}, lead_scale,
                     gpus=len(result["devices"]))
            label = name if seed == 0 else f"{name}_seed{seed}"
            forecasters[label] = load_forecaster(models, name, f"seed{seed}", description,
                                                 valid_range=(0.0, None))
            training[label] = result["metrics"]
        test_stride = stride or (12 if quick else 2 if fold == TEST_EVENT else 4)
        print(f"{fold}: {len(forecasters)} models calibrated and registered; scoring every {test_stride}th "
              f"init time ({time.perf_counter() - started:.0f} s)", flush=True)
        scores, _, _, inits = skill.score_event(archive, forecasters, skill.BASELINES, test_stride,
                                                1 if quick else None)
        models = sorted(forecasters)
        folds[fold] = {
            "train_events": manifest["folds"][fold]["train_events"],
            "init_times": len(inits), "stride": test_stride,
            "scores": {n: {lead: {k: v for k, v in s.items() if k in verification.METRICS}
                           for lead, s in per_lead.items()} for n, per_lead in scores.items()},
            "training": training,
            "checks": {**skill.goal_checks(scores, models), "wet_bias": skill.wet_bias_check(scores, models)},
        }
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".quick" if quick else ""
    (out / f"skill_loeo{suffix}.md").write_text(summary_table(folds))
    devices = sorted({d for r in results for d in r.get("devices", [])})
    figures = {"folds": folds, "recipe": recipe, "tasks": len(results),
               "backend": sorted({r["backend"] for r in results}), "accelerator": devices,
               "quantisation_max_error_mm_h": manifest["quantisation_max_error_mm_h"],
               "training_run": (json.loads((trained / "run.json").read_text())
                                if (trained / "run.json").exists() else None),
               "score_seconds": time.perf_counter() - started, "scored_on": machine(),
               "seed_spread_test_event": seed_spread(folds.get(TEST_EVENT))}
    notes = ("Each event held out in turn; models trained on the other four (70/30 train/validation "
             "in time), "
             "scored on the held-out event's whole grid inside radar coverage. Training ran where "
             "'accelerator' says (empty: this machine's CPU), scoring here. See skill_loeo.md.")
    return write_results("skill_loeo", figures, out, quick, notes)


def seed_spread(fold: Mapping | None) -> dict[str, dict[str, float]] | None:
    """Per model, the range over seeds of CSI at 1 mm/h and MAE at +30 min (None with one seed)."""
    if not fold:
        return None
    spread = {}
    for name in ("cnn_lstm", "convlstm"):
        runs = [s for label, s in fold["scores"].items() if label == name or label.startswith(f"{name}_seed")]
        if len(runs) > 1:
            spread[name] = {m: float(max(r["30"][m] for r in runs) - min(r["30"][m] for r in runs))
                            for m in ("csi_1", "mae")}
    return spread or None


def summary_table(folds: Mapping[str, Mapping]) -> str:
    """Markdown: per held-out event and source, CSI at 1 mm/h and MAE at +30 min and averaged over leads."""
    lines = ["# Leave one event out\n", "| held out | source | csi_1 +30 | mae +30 | csi_1 mean | mae mean |",
             "| --- | --- | --- | --- | --- | --- |"]
    for fold, result in folds.items():
        for name, leads in result["scores"].items():
            mean = {m: np.mean([s[m] for s in leads.values()]) for m in ("csi_1", "mae")}
            lines.append(f"| {fold} | {name} | {leads['30']['csi_1']:.3f} | {leads['30']['mae']:.3f} | "
                         f"{mean['csi_1']:.3f} | {mean['mae']:.3f} |")
    return "\n".join(lines) + "\n"


def pack(folder: Path, archive: Path) -> None:
    """One tar.gz of the trained weights, their JSON, logs and manifest (the device returns 8 files)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", nargs="?", default="all",
                   choices=["all", "prepare", "train", "train-one", "score"])
    p.add_argument("--quick", action="store_true", help="small smoke size (what CI runs)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (train: the trained models)")
    p.add_argument("--work", type=Path, help="archives, windows and registries (prepare, score; kept)")
    p.add_argument("--bundle", type=Path, help="the accelerator's input (prepare writes, train reads)")
    p.add_argument("--trained", type=Path, help="train's output folder or .tar.gz (score reads)")
    p.add_argument("--task", help="train-one: the task as JSON")
    p.add_argument("--stride", type=int, help="frames between scored init times")
    p.add_argument("--pack", type=Path, help="train: also write the trained models as this .tar.gz")
    p.add_argument("--deadline-s", type=float, help="train: kill training processes still running after this")
    args = p.parse_args(argv)
    if args.stage == "train-one":
        train_one(args.bundle, json.loads(args.task), args.out)
        return 0
    if args.stage == "train":
        trained = args.out
        train_all(args.bundle, trained, parallel=True, deadline_s=args.deadline_s)
        for name in ("manifest.json",):
            (trained / name).write_bytes((args.bundle / name).read_bytes())
        if args.pack:
            pack(trained, args.pack)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_loeo_") as tmp:
        work = args.work or Path(tmp) / "work"
        if args.stage in ("all", "prepare"):
            bundle = args.bundle or Path(tmp) / "bundle"
            prepare(work, bundle, args.quick)
            if args.stage == "prepare":
                return 0
        trained = args.trained or Path(tmp) / "trained"
        if args.stage == "all":
            train_all(bundle, trained, parallel=False)
            (trained / "manifest.json").write_bytes((bundle / "manifest.json").read_bytes())
        elif trained.suffix == ".gz":
            with tarfile.open(trained) as tar:
                tar.extractall(Path(tmp) / "trained", filter="data")
            trained = Path(tmp) / "trained"
        path = score(work, trained, args.out, args.quick, args.stride)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
