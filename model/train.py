"""Train a forecaster from windows.zarr and save it to the registry.

``nowcast train`` runs it inside the train flow (windows, fit, verify, register).

Defaults: Adam, MSE (or intensity-weighted MSE), early stopping on the
validation loss with the best weights restored, the best model checkpointed,
a crash-safe checkpoint after each epoch (:mod:`nowcast.model.checkpoint`) so
a run killed at any point resumes from its last finished epoch when started
again with the same ``workdir``, TensorBoard logs and a CSV history under
``workdir``, Keras's progress bar, and a seeded run
(``keras.utils.set_random_seed``) on deterministic kernels by default: the
same settings give the same weights bit for bit, resumed or not. With a validation split, each lead's
learned change is then weighted by the factor that gives the lowest
validation MAE (:mod:`nowcast.model.calibration`). With GPUs present (TensorFlow backend)
training uses ``mixed_float16`` and a ``MirroredStrategy``; on CPU neither.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras

from nowcast.errors import InputError
from nowcast.model import calibration, data, registry
from nowcast.model.architectures import ArchitectureConfig, build_model, motion_penalty
from nowcast.model.checkpoint import DATA, Epochs, TrainingCheckpoint
from nowcast.model.forecaster import PROBABILITY_MATCHING
from nowcast.model.losses import get_loss
from nowcast.model.normalization import Normalizer
from nowcast.pipelines.stores.timeaxis import format_time_step, parse_time_step
from nowcast.pipelines.stores.windows import WindowsStore, describe_archive, fingerprint


class TrainConfigError(InputError):
    """A training configuration that cannot run."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run, validated once.

    Attributes:
        windows: windows.zarr URL, or several (one per radar network: one model
            learns from all of them; their samples must have one shape).
        models: registry root folder.
        architecture: ``cnn_lstm`` or ``convlstm``.
        workdir: checkpoints, backups, TensorBoard logs and CSV history.
        options: :class:`ArchitectureConfig` fields other than the shapes
            (``filters``, ``lstm_units``, ...).
        epochs: maximum epochs.
        steps_per_epoch: batches per epoch (``None``: one pass over the split).
        batch_size: samples per batch.
        learning_rate: Adam's learning rate.
        loss: ``mae`` (default: its optimum is the median, in log space the log of
            the median rain rate, so it neither blurs nor adds drizzle), ``mse``,
            ``log_cosh`` or ``intensity_weighted_mse``.
        intensity_weight: weight of the intensity term.
        patience: early-stopping patience in epochs.
        seed: seeds Python, NumPy, the backend, the input shuffles and the initial weights.
        augment: random flips/rotations of training samples.
        version: registry version (default: a UTC timestamp).
        run: who asked for the version, recorded in its metadata (``train_run``):
            a flow finds the version its interrupted run saved by it.
        archive: archive description (time_step, variables, grid_shape) to
            record instead of reading the archive named by windows.zarr.
        verbose: Keras verbosity (1: progress bar).
        wet: ``(threshold, fraction)``: train and validate only on samples whose
            targets are at least that wet (see :func:`nowcast.model.data.make_dataset`).
        promote: point the registry's ``latest`` at the new version; a flow that
            verifies the model first saves it unpromoted and promotes it after.
        coverage: add the coverage channel and fill unobserved inputs with
            "nothing" (see :mod:`nowcast.model.data`); off only for comparisons
            with older models.
        lr_schedule: ``plateau`` halves the learning rate when the monitored
            loss stalls for ``patience // 2`` epochs; ``constant`` keeps it.
        postprocessing: what the forecaster does to the model's output,
            recorded in the metadata: ``probability_matching`` (default: each
            lead takes the value distribution of the extrapolation it corrects,
            so the frequency bias stays near 1; docs/model.md compares the two)
            or None (the model's own output).
        deterministic: deterministic kernels (TensorFlow backend): the same
            settings give the same weights bit for bit, and a resumed run an
            uninterrupted run's. Off: some kernels may run faster, and runs
            differ in the last bits (once on, on for the rest of the process:
            TensorFlow has no public switch back).
    """

    windows: str | tuple[str, ...]
    models: str
    architecture: str = "cnn_lstm"
    workdir: str = "runs"
    options: Mapping[str, object] = dataclasses.field(default_factory=dict)
    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 8
    learning_rate: float = 1e-3
    loss: str = "mae"
    intensity_weight: float = 1.0
    patience: int = 4
    seed: int = 0
    augment: bool = False
    version: str | None = None
    run: str | None = None
    archive: Mapping[str, object] | None = None
    verbose: int = 1
    wet: tuple[float, float] | None = None
    promote: bool = True
    coverage: bool = True
    lr_schedule: str = "plateau"
    postprocessing: str | None = PROBABILITY_MATCHING
    deterministic: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.windows, str):
            object.__setattr__(self, "windows", tuple(self.windows))
            if not self.windows:
                raise TrainConfigError("windows is empty: give at least one windows.zarr")
        if self.postprocessing not in (None, PROBABILITY_MATCHING):
            raise TrainConfigError(f"postprocessing {self.postprocessing!r} is unknown; use "
                                   f"{PROBABILITY_MATCHING!r} or None")
        if self.lr_schedule not in ("plateau", "constant"):
            raise TrainConfigError(f"lr_schedule {self.lr_schedule!r} is unknown; use 'plateau' or "
                                   "'constant'")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 0:
            raise TrainConfigError("epochs and batch_size must be >= 1 and patience >= 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise TrainConfigError("steps_per_epoch must be >= 1 or None")
        if not self.learning_rate > 0:
            raise TrainConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.seed < 0:
            raise TrainConfigError(f"seed must be >= 0, got {self.seed}")
        get_loss(self.loss)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    path: str  # the version folder: a path, or a URL for a remote registry
    history: dict[str, list[float]]
    metrics: dict[str, float]


def gpu_count() -> int:
    """GPUs visible to the TensorFlow backend (0 for other backends or none)."""
    if keras.backend.backend() != "tensorflow":
        return 0
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def lead_times(time_step: str, t_out: int) -> list[str]:
    """ISO 8601 lead times ``k * time_step`` for ``k = 1..t_out``.

    >>> lead_times("PT5M", 3)
    ['PT5M', 'PT10M', 'PT15M']
    """
    step = parse_time_step(time_step)
    return [format_time_step(step * k) for k in range(1, t_out + 1)]


def training_range(store: WindowsStore, t_in: int, t_out: int) -> dict[str, str]:
    """First input frame and last target frame covered by a store's training windows."""
    times = store.init_times()
    step = parse_time_step(store.time_step)
    return {"start": str(times.min() - (t_in - 1) * step), "end": str(times.max() + t_out * step)}


def _fingerprint(urls: Sequence[str]) -> str:
    """One sha256 over the training splits of every store (see windows.fingerprint)."""
    if len(urls) == 1:
        return fingerprint(urls[0], "train")
    return hashlib.sha256("".join(fingerprint(url, "train") for url in urls).encode()).hexdigest()


def training_data_hash(windows: str | tuple[str, ...]) -> str:
    """The ``training_data_hash`` that a version trained on ``windows`` now records."""
    return _fingerprint(_urls(windows))


def _rewritten(urls: Sequence[str], trained_on: str) -> bool:
    """Whether the training windows are no longer those the run started on."""
    try:
        return _fingerprint(urls) != trained_on
    except Exception:  # gone, or half replaced
        return True


def _urls(windows: str | tuple[str, ...]) -> tuple[str, ...]:
    return (windows,) if isinstance(windows, str) else tuple(windows)


def callbacks(cfg: TrainConfig, monitor: str) -> list[keras.callbacks.Callback]:
    """Early stopping, learning-rate schedule, best checkpoint, CSV history, TensorBoard."""
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cbs: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(work / "best.keras"), monitor=monitor, save_best_only=True),
        keras.callbacks.CSVLogger(str(work / "history.csv"), append=True),
    ]
    if cfg.lr_schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                     patience=max(cfg.patience // 2, 1), min_lr=1e-5))
    if keras.backend.backend() == "tensorflow":
        cbs.append(keras.callbacks.TensorBoard(str(work / "logs"), profile_batch=0))
    return cbs


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """What a run learns from: the stores' train splits, their merged normalisation, the model's shape."""

    urls: tuple[str, ...]
    stores: list[WindowsStore]
    normalizer: Normalizer
    arch: ArchitectureConfig

    @property
    def val_urls(self) -> list[str]:
        """The stores that hold validation samples."""
        return [url for url, store in zip(self.urls, self.stores, strict=True) if store.has_samples("val")]


def trained_archive(cfg: TrainConfig, urls: Sequence[str]) -> tuple[registry.ArchiveDescription,
                                                                      list[registry.ArchiveDescription]]:
    """The kind of archive the model is trained on (``cfg.archive``, else the windows stores' own), and the
    windows stores' archives (none with ``cfg.archive``).

    Raises:
        TrainConfigError: for windows stores of archives of different time steps or units (it was found
            only after the whole fit).
    """
    archives = [describe_archive(url) for url in urls] if not cfg.archive else []
    archive = registry.ArchiveDescription.from_dict(cfg.archive) if cfg.archive else archives[0]
    if any(a.time_step != archive.time_step or a.variables != archive.variables for a in archives):
        raise TrainConfigError(f"the windows stores come from archives of different time steps or units "
                               f"({[a.to_dict() for a in archives]}); train one model per time step")
    return archive, archives


def training_set(cfg: TrainConfig) -> TrainingSet:
    """Opens ``cfg.windows``' train splits and derives the normalisation and the architecture's shapes."""
    urls = _urls(cfg.windows)
    trained_archive(cfg, urls)  # before any work
    stores = data.open_stores(urls, "train")
    store = stores[0]
    normalizer = Normalizer.from_stores(stores, coverage=cfg.coverage)
    (t_in, height, width, _), (t_out, *_rest) = store.sample_shapes
    arch = ArchitectureConfig.from_dict({"motion_penalty": motion_penalty(normalizer.unit(normalizer.target)),
                                         **dict(cfg.options), "t_in": t_in, "t_out": t_out, "height": height,
                                         "width": width, "channels": normalizer.input_channels,
                                         "target_channel": list(store.channels).index(store.target)
                                         if store.target in store.channels else 0})
    return TrainingSet(urls, stores, normalizer, arch)


def run_identity(cfg: TrainConfig, tset: TrainingSet) -> dict[str, object]:
    """What a checkpoint must match to be resumed: every setting that shapes the epochs already run."""
    fields = ("architecture", "options", "steps_per_epoch", "batch_size", "learning_rate", "loss",
              "intensity_weight", "patience", "seed", "augment", "wet", "coverage", "lr_schedule",
              "deterministic")
    return {**{name: getattr(cfg, name) for name in fields}, "windows": list(tset.urls),
            DATA: _fingerprint(tset.urls)}


def use_deterministic_kernels(on: bool) -> None:
    """TensorFlow's deterministic kernels from now on in this process when ``on`` (TensorFlow has no
    public switch back: a later run in the same process with ``deterministic=False`` keeps them)."""
    if on and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _keep_history_rows(path: Path, epochs: int) -> None:
    """Keeps the CSV history rows of the epochs before ``epochs`` (the checkpoint's): a resumed run writes
    the rest again (a kill can come after a row and before its checkpoint), a new run (0) starts afresh."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < epochs]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)


def train(cfg: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Trains ``cfg.architecture`` on windows.zarr and saves it as a registry version.

    A checkpoint left in ``cfg.workdir`` by a killed run of the same settings
    is resumed. ``extra_callbacks`` run after the defaults (e.g. a flow's
    progress reporter).
    """
    keras.utils.set_random_seed(cfg.seed)
    use_deterministic_kernels(cfg.deterministic)
    tset = training_set(cfg)
    identity = run_identity(cfg, tset)
    checkpoint = TrainingCheckpoint(Path(cfg.workdir) / "backup", identity)
    saved = checkpoint.state()  # refuses another run's checkpoint before any work
    epochs = Epochs()
    train_ds = data.make_dataset(tset.urls, "train", cfg.batch_size, normalizer=tset.normalizer,
                                 seed=cfg.seed, augment=cfg.augment, steps=cfg.steps_per_epoch, wet=cfg.wet,
                                 epoch=lambda: epochs.current)
    val_ds = validation_dataset(cfg, tset)
    gpus = gpu_count()
    strategy = contextlib.nullcontext()
    monitor = "val_loss" if val_ds is not None else "loss"
    try:  # the policy is global: a run failing anywhere must not leave the next one in float16
        if gpus:
            import tensorflow as tf

            keras.mixed_precision.set_global_policy("mixed_float16")
            strategy = tf.distribute.MirroredStrategy().scope()
        with strategy:
            net = build_model(cfg.architecture, tset.arch, seed=cfg.seed)
            net.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                        loss=get_loss(cfg.loss, cfg.intensity_weight), metrics=["mae"])
        first = checkpoint.restore(net, saved)
        epochs.current = first
        _keep_history_rows(Path(cfg.workdir) / "history.csv", first)
        started = time.time()
        defaults = callbacks(cfg, monitor)
        # each epoch's data comes from make_dataset's own seeded passes (steps_per_epoch included)
        net.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs,
                initial_epoch=cfg.epochs if checkpoint.stopped else first,
                shuffle=False,  # make_dataset shuffles chunks and samples itself
                callbacks=[*defaults, epochs, checkpoint.watch(defaults), *extra_callbacks],
                verbose=cfg.verbose)
        seconds = time.time() - started
        lead_scale, val_metrics = validate(cfg, tset, net)
    except Exception:
        if _rewritten(tset.urls, str(identity[DATA])):  # a reshape error deep in Keras
            raise TrainConfigError(f"{', '.join(tset.urls)} was rewritten (or removed) while this run read "
                                   "it: rerun once the windows job is done (runs that cut different "
                                   "windows need a --windows each)") from None
        raise
    finally:
        keras.mixed_precision.set_global_policy("float32")
    history = dict(checkpoint.history)
    metrics = {"train_seconds": seconds, "epochs_run": len(history.get("loss", []))}
    result = register(cfg, tset, net, history, {**metrics, **val_metrics}, lead_scale, gpus)
    shutil.rmtree(checkpoint.folder, ignore_errors=True)  # the version is saved: nothing left to resume
    return result


def validation_dataset(cfg: TrainConfig, tset: TrainingSet):
    """The validation split in store order, None without one; as wet as training's samples (a dry
    patch's loss says nothing about skill)."""
    if not tset.val_urls:
        return None
    return data.make_dataset(tset.val_urls, "val", cfg.batch_size, normalizer=tset.normalizer, shuffle=False,
                             wet=cfg.wet)


def validate(cfg: TrainConfig, tset: TrainingSet, net: keras.Model) -> tuple[dict | None, dict[str, float]]:
    """Sets each lead's change weight on the validation split, then scores the result there.

    Returns the calibration (:func:`nowcast.model.calibration.calibrate`) and
    the compiled model's validation metrics, ``(None, {})`` without a split.
    """
    val_ds = validation_dataset(cfg, tset)
    if val_ds is None:
        return None, {}
    lead_scale = calibration.calibrate(net, val_ds.as_numpy_iterator(), tset.normalizer,
                                       cfg.postprocessing == PROBABILITY_MATCHING)
    scores = net.evaluate(val_ds, verbose=0, return_dict=True)
    return lead_scale, {f"val_{k}": float(v) for k, v in scores.items()}


def register(cfg: TrainConfig, tset: TrainingSet, net: keras.Model, history: Mapping[str, list[float]],
             metrics: Mapping[str, float], lead_scale: Mapping[str, object] | None, gpus: int) -> TrainResult:
    """Saves a trained ``net`` as a registry version with the metadata scoring needs.

    Also for a model trained elsewhere on the same training set (an
    accelerator node fed arrays cut from the same frames, bench.skill_loeo).
    """
    urls, stores, normalizer, arch = tset.urls, tset.stores, tset.normalizer, tset.arch
    store = stores[0]
    t_in, t_out, (height, width) = arch.t_in, arch.t_out, (arch.height, arch.width)
    time_step = store.time_step
    archive, archives = trained_archive(cfg, urls)
    metadata = {
        "architecture": cfg.architecture,
        "architecture_config": arch.to_dict(),
        "fully_convolutional": True,  # the forecaster rebuilds it for the whole grid (no tiles)
        "postprocessing": cfg.postprocessing,
        "window_spec": store.attrs.get("window_spec"),
        "windows": list(urls),
        "normalization": normalizer.to_dict(),
        "channels": list(store.channels),
        "target": store.target,
        "t_in": t_in,
        "t_out": t_out,
        "input_shape": [height, width],
        "time_step": time_step,
        "lead_times": lead_times(time_step, t_out),
        "archive": archive.to_dict(),
        "training_archives": [a.to_dict() for a in archives],
        "training_range": [training_range(s, t_in, t_out) for s in stores],
        "training_data_hash": _fingerprint(urls),
        "train_run": cfg.run,
        "lead_scale": lead_scale,
        "training": {"loss": cfg.loss, "intensity_weight": cfg.intensity_weight, "batch_size": cfg.batch_size,
                     "learning_rate": cfg.learning_rate, "lr_schedule": cfg.lr_schedule, "seed": cfg.seed,
                     "augment": cfg.augment, "samples": sum(s.num_samples for s in stores), "gpus": gpus,
                     "wet": list(cfg.wet) if cfg.wet else None, "coverage": cfg.coverage,
                     "deterministic": cfg.deterministic},
    }
    record = {**metrics, "history": dict(history)}
    path = registry.save_model(net, cfg.models, cfg.architecture, metadata, record, version=cfg.version,
                               promote=cfg.promote)
    return TrainResult(path=path, history=dict(history), metrics=dict(metrics))
