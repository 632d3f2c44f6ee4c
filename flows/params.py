"""Flow parameters as pydantic models: the forms the Prefect UI shows, validated before any work.

Every flow takes one of these models. Prefect validates a flow's parameters
before its first task runs, so a bad value (an end before the start, a model
version that is not in the registry, a store outside the configured storage
roots) fails the run at once with a message that names the fix, and nothing
is read or written.

Storage roots: stores must lie under one of the roots listed in the
``NOWCAST_STORAGE_ROOTS`` environment variable (separated by ``:`` or ``,``;
local folders or URL prefixes such as ``s3://bucket/nowcast/``). Without it,
the working directory of the process running the flow is the only root.
"""

from __future__ import annotations

import datetime
import glob
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nowcast.errors import InputError
from nowcast.pipelines.stores.groups import (
    PID_MAX,
    StoreError,
    check_suffix,
    check_url,
    enclosing_store,
    is_local,
    local_path,
    staging_suffix,
)
from nowcast.pipelines.stores.timeaxis import DEFAULT_TIME_CHUNK, MAX_TIME_CHUNK, to_datetime64

if TYPE_CHECKING:  # Beam is imported when a job runs, not when a form or the command line is built
    from nowcast.pipelines.jobs.runners import RunnerOptions

ROOTS_ENV = "NOWCAST_STORAGE_ROOTS"
DEFAULT_WORKDIR = "runs/demo"
# validation context key: the values come from the user's own command line, whose stores are not confined
# to the storage roots (those guard a server against what is typed into its forms)
LOCAL_USER = "local_user"


class ParameterError(InputError):
    """A flow parameter that cannot work; raised before the flow does anything."""


def with_root(roots: str | None, root: str) -> str:
    """The storage roots (``NOWCAST_STORAGE_ROOTS``) with the served folder among them: roots exported for
    a stack had made the served deployments refuse their own default stores, as outside the roots.

    >>> with_root(None, "/srv"), with_root("s3://nowcast", "/srv")
    ('/srv', 's3://nowcast,/srv')
    """
    return f"{roots},{root}" if roots and roots.strip() else root


def storage_roots() -> list[str]:
    """The configured storage roots (absolute paths or URL prefixes)."""
    raw = os.environ.get(ROOTS_ENV, "")
    roots = [r.strip() for r in re.split(r",|:(?!//)", raw) if r.strip()] or [os.getcwd()]
    return [_made_absolute(r) for r in roots]


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _made_absolute(url: str) -> str:
    """A local path (or file:// URL) as an absolute path, ``~`` expanded (a shell leaves it in
    ``--archive=~/a.zarr``); an object-store URL unchanged."""
    return url if _is_remote(url) else os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def not_a_file(url: str, name: str) -> str:
    """``url``, refused when it is an existing local file: every store and work folder is a folder.

    Raises:
        ParameterError: naming the option and the fix (a file there once failed only after the work).
    """
    if not _is_remote(url) and os.path.isfile(url.removeprefix("file://")):
        raise ParameterError(f"{name} {url} is a file, not a folder: give a folder path (or move the file)")
    return url


def check_store_url(url: str) -> str:
    """Returns ``url`` (local paths made absolute) if it lies under a storage root.

    Raises:
        ParameterError: naming the roots and how to add one.
    """
    url = _spelt_right(url)
    roots = storage_roots()
    if _is_remote(url):
        # object stores take '..' literally, but fsspec and readers may not: a URL never climbs
        climbs = ".." in url.split("://", 1)[1].split("/")
        if not climbs and any(url.startswith(root.rstrip("/") + "/") for root in roots if "://" in root):
            return url
    else:
        path = _made_absolute(url)
        real = os.path.realpath(path)  # a symbolic link inside a root that leads out of it stays outside
        for root in roots:
            if "://" not in root and all(os.path.commonpath([base, p]) == base
                                         for base, p in ((root, path), (os.path.realpath(root), real))):
                return path
    default = url.startswith(f"{DEFAULT_WORKDIR}/")  # a run given part of `params` gets the rest's defaults
    # a form in the UI has no folder of its own: 'archive.zarr' was refused without saying where it was
    relative = "" if _is_remote(url) or os.path.isabs(os.path.expanduser(url.removeprefix("file://"))) else (
        f" (a relative path is taken from the folder the flow runs in: {_made_absolute(url)}; give an "
        "absolute path)")
    raise ParameterError(
        f"store {url!r}{relative} is outside the configured storage roots {roots}; use a location under one "
        f"of them, or add its folder to {ROOTS_ENV} (separated by ':' or ',') where the flow runs"
        + ("; it is the form's default: parameters given to a run (`prefect deployment run --param "
           "params=...`) replace the deployment's whole `params`, so give every store" if default else "")
    )


def absolute(url: str) -> str:
    """A local path made absolute; a URL unchanged."""
    return _made_absolute(_spelt_right(url))


def _spelt_right(url: str) -> str:
    """``url`` stripped, refused when empty or misspelt (:func:`check_url`)."""
    url = url.strip()
    if not url:
        raise ParameterError("a store URL is empty; give a path or URL")
    try:
        return check_url(url)
    except StoreError as error:
        raise ParameterError(str(error)) from None


def parse_time(value: str, name: str) -> np.datetime64:
    """An ISO 8601 UTC timestamp as datetime64[s]; one with an offset (``+02:00``) is converted to UTC;
    as the maps and messages write it (``2024-01-01 03:00 UTC``) too.

    >>> parse_time("2024-01-01T03:00+02:00", "start"), parse_time("2024-01-01 03:00 UTC", "time")
    (np.datetime64('2024-01-01T01:00:00'), np.datetime64('2024-01-01T03:00:00'))
    """
    text = str(value).strip().removesuffix("Z").removesuffix(" UTC")
    if text.isdigit() and len(text) not in (4, 8):  # numpy reads 1704103200 as that year (20240101 is ISO)
        raise ParameterError(f"{name} {value!r} is a number, not an ISO 8601 time (Unix seconds?); give one "
                             "such as 2024-01-01T06:00")
    try:
        parsed = to_datetime64(text)  # an offset applied there: numpy would warn about it
    except ValueError:
        raise ParameterError(f"{name} {value!r} is not an ISO 8601 time such as 2024-01-01T06:00") from None
    if np.isnat(parsed):
        raise ParameterError(f"{name} is empty; give an ISO 8601 time such as 2024-01-01T06:00")
    if _fraction_of_a_second(text):
        raise ParameterError(f"{name} {value!r} has a fraction of a second, which the time axis cannot hold; "
                             "give whole seconds such as 2024-01-01T06:00:00")
    return parsed


def _fraction_of_a_second(text: str) -> bool:
    """Whether an ISO time names a fraction of a second (numpy-only spellings carry none)."""
    try:
        return datetime.datetime.fromisoformat(text).microsecond != 0
    except ValueError:
        return False


def placeable(url: str) -> str:
    """A local store path that can exist: not a link to nothing, not under a file (both were tracebacks,
    one of them after a whole training run)."""
    if "::" in url:  # fsspec reads it as a chain of URLs: a lock landed in a folder named after the prefix
        raise ParameterError(f"{url}: '::' chains URLs in fsspec, so this path would not be the folder it "
                             "names; choose a path without '::'")
    if not is_local(url):
        return url
    path = Path(local_path(url))
    _short_enough(url, path)
    if path.is_symlink() and not path.exists():
        raise ParameterError(f"{url} is a symbolic link to {os.readlink(path)}, which does not exist: create "
                             "the target, or give the real path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ParameterError(f"{url}: {parent} is a file, not a folder; give a path under a folder")
            break
    return url


NAME_MAX = 255  # bytes in one file name (Linux file systems)


def _short_enough(url: str, path: Path) -> None:
    """Refuses a path whose names the file system cannot hold, counting the suffix of the staging copy
    and checks folder made beside a store (``.creating-HOST-PID-...``): a legal 245-byte store name failed
    with a traceback from the check step, and a longer one from the first look at the path."""
    # a new store is built beside itself; an existing one gets the check step's folder beside it
    try:
        exists = path.exists()
    except OSError:  # a name past the limit: "File name too long"
        exists = False
    room = len((check_suffix() if exists else staging_suffix(pid=PID_MAX)).encode())
    for part in path.parts:
        limit = NAME_MAX - (room if part == path.name else 0)
        if len(part.encode()) > limit:
            raise ParameterError(f"{url}: the name {part[:24]}... is {len(part.encode())} bytes; the file "
                                 f"system holds {NAME_MAX}, and a store's name leaves room for the "
                                 f"{room}-byte suffix of the copy made beside it: give a name of at most "
                                 f"{limit} bytes")


StoreUrl = Annotated[str, Field(min_length=1), AfterValidator(placeable)]
# bounds shared by several forms, so a typo cannot start work no memory, disk or lifetime holds
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding, which Keras's set_random_seed uses, takes no more
MAX_SYNTHETIC_FRAMES = 100_000  # about a year of 5-minute frames
MAX_GRID_SIZE = 4096
MAX_EPOCHS = 1000
MAX_WORKERS = 256


class Runner(BaseModel):
    """Which Beam runner the jobs use (see nowcast.pipelines.jobs.runners)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["inmemory", "multiprocess", "dask", "beam"] = Field(
        "inmemory", description="inmemory: one process; multiprocess: `workers` processes; dask: a cluster; "
                                "beam: any Beam runner, named and configured by `beam_args`")
    workers: int = Field(2, ge=1, le=MAX_WORKERS, description="worker processes for multiprocess")
    dask_address: str | None = Field(None, description="scheduler address for dask, e.g. tcp://host:8786")
    beam_args: list[str] = Field(default_factory=list,
                                 description="Beam pipeline flags, passed through unchanged, e.g. "
                                             "['--runner=FlinkRunner', '--flink_master=host:8081']")

    @model_validator(mode="after")
    def _runs(self) -> Runner:
        self.options()  # a missing required option fails the form, before any work
        return self

    def options(self) -> RunnerOptions:
        from nowcast.pipelines.jobs.runners import RunnerOptions

        try:
            return RunnerOptions(kind=self.kind, workers=self.workers, dask_address=self.dask_address,
                                 extra_args=tuple(self.beam_args))
        except ValueError as error:
            raise ParameterError(str(error)) from None


class _Stores(BaseModel):
    """Shared checks: every field named in ``STORE_FIELDS`` must lie under a storage root."""

    model_config = ConfigDict(extra="forbid")
    STORE_FIELDS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _stores_under_roots(self, info: ValidationInfo):
        local_user = bool(info.context and info.context.get(LOCAL_USER))
        for name in self.STORE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                url = absolute(value) if local_user else check_store_url(value)
                # an archive that is a file is named by its own check (which keeps the data); the stores
                # a flow writes failed only at run time, after their tracebacks in the flow-run log
                setattr(self, name, url if name == "archive" else not_a_file(url, name))
        _apart({name: getattr(self, name) for name in self.STORE_FIELDS if getattr(self, name) is not None})
        return self


def _apart(urls: dict[str, str], folders: tuple[str, ...] = ("workdir", "models")) -> None:
    """Each store and folder of a form has its own path, outside every zarr store, and a registry or work
    folder (``folders``) is no zarr store (outputs written into a store left it warning on every read, and
    a work folder that was the windows store lost the training's checkpoints when the windows were cut
    again)."""
    seen: dict[str, str] = {}
    for name, url in urls.items():
        if url.rstrip("/") in seen:
            raise ParameterError(f"{seen[url.rstrip('/')]} and {name} are both {url}: give each its own path")
        seen[url.rstrip("/")] = name
        path = os.path.abspath(local_path(url)) if is_local(url) else url.rstrip("/")
        store = enclosing_store(path)  # one walk up (on an object store, a request a level)
        parent = os.path.dirname(path) if is_local(url) else path.rsplit("/", 1)[0]
        inside = enclosing_store(parent) if store == path else store
        if inside is not None:
            raise ParameterError(f"{name} {url} lies inside the zarr store {inside}: give a path outside it")
        if name in folders and store == path:
            raise ParameterError(f"{name} {url} is a zarr store, not a folder of its own: give another path")
    registry = urls.get("models", "").rstrip("/")
    for name, url in urls.items():  # the registry listed a store in it as a damaged model, to be removed
        if registry and url.startswith(f"{registry}/"):
            raise ParameterError(f"{name} {url} lies inside the model registry {registry}: give a path "
                                 "outside it")


def work_folder(value: str, name: str = "workdir") -> str:
    """``value`` as an absolute path of a folder that can hold stores: not a file, not a zarr store nor a
    folder inside one (the demo's was a ValidationError traceback; serve wrote its incoming folder into
    the archive). Errors name it ``name``."""
    url = not_a_file(absolute(value), name)
    _apart({name: url}, folders=(name,))
    return url


def _registry_check(models: str, model_name: str, model_version: str) -> None:
    from nowcast.model.registry import (
        LATEST,
        RegistryError,
        list_names,
        list_versions,
        one_models_folder,
        resolve_version,
    )

    try:
        resolve_version(models, model_name, model_version)
    except RegistryError as error:
        if deeper := one_models_folder(models):
            raise ParameterError(deeper) from None
        known = list_versions(models, model_name)
        names = list_names(models)  # `--model-name cnn_lstm` where the registry holds convlstm
        hint = (f"known versions: {known}" if known else f"no versions of {model_name!r} under {models} "
                f"(models there: {', '.join(names) or 'none'})")
        which = "the promoted version" if model_version == LATEST else f"version {model_version!r}"
        raise ParameterError(f"unknown model {model_name}/{model_version}: {which} is not in the registry "
                             f"({error}); {hint}; train one first or pick a listed version") from None


def _archive_exists(url: str) -> None:
    from nowcast.pipelines.stores.groups import exists, not_a_store

    if not exists(url):  # a file or a folder of other data is named as such: ingesting there fails
        raise ParameterError(not_a_store(url) or f"no archive at {url}; ingest into it first (`nowcast "
                             "ingest`, or the ingest flow), or fix the path")


KINDS = {"archive": "an archive", "forecasts": "a forecasts store", "windows": "a windows store"}


def _kind_is(url: str | None, kind: str, creates: bool = False) -> None:
    """Refuses a nowcast store of another kind given as the field ``kind`` (a forecasts store as the
    archive), in those words; a path with nothing there, or nothing nowcast made, is left to the job's own
    checks. ``creates``: the run creates the store at a new path (the fix says so)."""
    from nowcast.pipelines.stores.groups import StoreError, exists, open_group
    from nowcast.pipelines.stores.integrity import store_kind

    if url is None or not exists(url):
        return
    try:
        found = store_kind(open_group(url))
    except StoreError:
        return
    if found != kind:
        raise ParameterError(f"{url} is {KINDS[found]}, not {KINDS[kind]}: {kind} takes {KINDS[kind]}"
                             + (" (or a new path, where one is created)" if creates else ""))


def _scoring_stores(archive: str, forecasts: str, creates: bool = True) -> None:
    """The archive a forecast reads exists and is an archive; its forecasts store is one, or new where
    the run creates it."""
    _archive_exists(archive)
    _kind_is(archive, "archive")
    _kind_is(forecasts, "forecasts", creates=creates)


class IngestParams(_Stores):
    """Ingest frames into the archive, from a folder of radar/NetCDF files or the synthetic generator."""

    STORE_FIELDS: ClassVar[tuple[str, ...]] = ("archive",)
    archive: StoreUrl = Field(f"{DEFAULT_WORKDIR}/archive.zarr", description="archive.zarr (created if new)")
    input_dir: str | None = Field(
        f"{DEFAULT_WORKDIR}/incoming",
        description="folder (or object-store prefix, e.g. s3://bucket/incoming) of radar or NetCDF files, "
                    "searched recursively; only files not yet in the archive are ingested (leave empty "
                    "to use the synthetic generator)")
    format: str = Field("auto", description="knmi, bom, fmi, mch, odim, netcdf, or auto (from the files)")
    synthetic_frames: int = Field(48, ge=1, le=MAX_SYNTHETIC_FRAMES,
                                  description="synthetic: number of 5-minute frames")
    synthetic_size: int = Field(64, ge=8, le=MAX_GRID_SIZE, description="synthetic: grid size (square)")
    synthetic_start: str = Field("2024-01-01T00:00", description="synthetic: time of the first frame")
    synthetic_density: FiniteFloat = Field(2.0, gt=0, le=1000,
                                           description="synthetic: rain cells per 100x100 px")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="synthetic: random seed")
    time_chunk: int = Field(DEFAULT_TIME_CHUNK, ge=1, le=MAX_TIME_CHUNK,
                            description="frames per chunk of a new archive")
    runner: Runner = Field(default_factory=Runner)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from nowcast.pipelines.sources import FORMATS

        known = ("auto", *FORMATS, "netcdf")
        if value not in known:  # a scheduled ingest of an empty folder once "succeeded" with any name
            raise ParameterError(f"format {value!r} is not one nowcast reads: give one of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _check(self):
        if self.input_dir:
            # an object-store prefix may be empty; a local folder must exist (or a pattern match files, or
            # a NetCDF file be there: the NetCDF source reads either)
            path = local_path(self.input_dir) if is_local(self.input_dir) else None
            if path is not None and not (Path(path).exists() or (glob.has_magic(path) and glob.glob(path))):
                raise ParameterError(f"input_dir {self.input_dir!r} does not exist (nor is it a pattern "
                                     "matching files); create the folder and drop files there, or leave it "
                                     "empty for synthetic data (on the command line: --synthetic)")
        else:  # kept as the generator reads it ("2024-01-01 10:00 UTC", which the rest accepts, failed there)
            self.synthetic_start = str(parse_time(self.synthetic_start, "synthetic_start"))
        return self


class WindowsParams(_Stores):
    """Cut input/target windows from the archive into windows.zarr, split into train, val and test."""

    STORE_FIELDS: ClassVar[tuple[str, ...]] = ("archive", "windows")
    archive: StoreUrl = Field(f"{DEFAULT_WORKDIR}/archive.zarr", description="archive.zarr to cut from")
    windows: StoreUrl = Field(f"{DEFAULT_WORKDIR}/windows.zarr", description="windows.zarr (rewritten)")
    variable: str = Field("precip", description="input and target variable")
    t_in: int = Field(4, ge=2, le=48, description="input frames")
    t_out: int = Field(3, ge=1, le=48, description="lead times")
    stride: int = Field(1, ge=1, le=1000, description="frames between window starts")
    patch_size: int | None = Field(None, ge=8, le=4096, description="square patches (empty: whole grid)")
    split_block: str = Field("PT1H", description="ISO 8601 block length of the train/val/test split")
    split_fractions: list[FiniteFloat] = Field(
        [0.6, 0.2, 0.2], min_length=3, max_length=3, description="shares of blocks for train, val and test")
    split_method: Literal["contiguous", "hash"] = Field(
        "contiguous", description="contiguous: train, then val, then test in time; hash: interleaved blocks")
    runner: Runner = Field(default_factory=Runner)

    @model_validator(mode="after")
    def _check(self):
        if abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise ParameterError(f"split_fractions {self.split_fractions} must be three shares from 0 to 1 "
                                 "summing to 1 (train, validation, test; e.g. 0.7 0.15 0.15)")
        _archive_exists(self.archive)
        return self


class TrainParams(WindowsParams):
    """Cut windows, fit a model, verify it against LK extrapolation, register it (promoted only if better)."""

    STORE_FIELDS: ClassVar[tuple[str, ...]] = ("archive", "windows", "models", "workdir")
    archive: StoreUrl = Field(f"{DEFAULT_WORKDIR}/archive.zarr", description="archive.zarr to train from")
    models: StoreUrl = Field(f"{DEFAULT_WORKDIR}/models", description="model registry folder")
    workdir: StoreUrl = Field(f"{DEFAULT_WORKDIR}/train", description="checkpoints, logs, pictures")
    architecture: Literal["cnn_lstm", "convlstm"] = Field(
        "convlstm", description="model architecture (convlstm learns motion from little data)")
    filters: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        [8, 16], min_length=1, max_length=5, description="encoder filters per level")
    lstm_units: int = Field(16, ge=1, le=1024, description="recurrent width")
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS, description="maximum epochs")
    steps_per_epoch: int | None = Field(None, ge=1, le=100_000,
                                        description="batches per epoch (empty: whole split)")
    batch_size: int = Field(8, ge=1, le=1024, description="samples per batch")
    learning_rate: FiniteFloat = Field(2e-3, gt=0, le=1, description="Adam learning rate")
    loss: Literal["mae", "mse", "log_cosh", "intensity_weighted_mse"] = Field(
        "mae", description="training loss, in normalised (log) space (nowcast.model.losses)")
    augment: bool = Field(False, description="random flips and rotations of training samples")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="random seed")
    promote: Literal["if_better", "always", "never"] = Field(
        "if_better", description="if_better: latest moves to the new version only when it beats LK "
                                 "extrapolation; always: a planned roll-out (the report still says by how "
                                 "much it won or lost); never: register a candidate only")

    base: Literal["persistence", "advection", "lagrangian_ar"] | None = Field(
        None, description="what the network corrects: the last frame, the last frame moved along the "
                          "block-matched motion, or S-PROG's scale-wise AR(2) forecast along it "
                          "(bench.skill's recipe; needs t_in >= 3); empty: lagrangian_ar, or advection "
                          "when t_in < 3")

    @model_validator(mode="after")
    def _trainable(self):
        if self.split_fractions[1] == 0:
            raise ParameterError("split_fractions gives no validation share, and promotion verifies on the "
                                 "validation split: give it a share, e.g. 0.7 0.15 0.15")
        if self.base == "lagrangian_ar" and self.t_in < 3:
            raise ParameterError(f"base lagrangian_ar steps each scale on from the last three frames: t_in "
                                 f"is {self.t_in}; use t_in 3 or more, or base advection")
        self._fits_the_encoder()
        self._a_rain_rate()
        self._a_registry()
        return self

    def _a_registry(self) -> None:
        """``models`` is a registry, not one model's folder in one: a registry made there held the new model
        a level too deep, and the real one listed it as damaged, to be removed."""
        from nowcast.model.registry import one_models_folder

        if deeper := one_models_folder(self.models):
            raise ParameterError(deeper)

    def _a_rain_rate(self) -> None:
        """The trained variable is a rain rate: validation scores it as rain (CSI at 1 mm/h, frequency bias)
        and promotion compares it with LK extrapolation on them; a temperature in K scored every CSI 1.000
        and reported its MAE in mm/h."""
        from nowcast.pipelines.stores.archive import PRECIP, read_info, same_units

        try:
            field = read_info(self.archive).field(self.variable)
        except Exception:  # an archive or variable the windows job cannot read names its own problem
            return
        if not same_units(field.units, PRECIP.units):
            raise ParameterError(f"variable {self.variable!r} is in {field.units!r}, not a rain rate "
                                 f"({PRECIP.units}): training verifies and promotes on rain scores (CSI at "
                                 "1 mm/h against LK extrapolation); train on a precipitation variable (cut "
                                 f"windows of {self.variable!r} with `nowcast windows` for other uses)")

    def _fits_the_encoder(self) -> None:
        """The patches (or the whole grid) divide by the encoder's downsampling, checked before the windows
        are cut (the model refused them only after that)."""
        from nowcast.pipelines.stores.archive import read_info

        factor = 2 ** len(self.filters)
        if self.patch_size is not None:
            sizes, what = (self.patch_size, self.patch_size), f"patch_size {self.patch_size}"
        else:
            try:
                sizes = read_info(self.archive).grid.shape
            except Exception:  # an archive the windows job cannot read names its own problem
                return
            what = f"the archive's grid {sizes[0]}x{sizes[1]} (no patch_size)"
        if sizes[0] % factor or sizes[1] % factor:
            fewer = ", or fewer filters" if len(self.filters) > 1 else ""  # one level is the fewest
            largest = f", at most {min(sizes)}" if self.patch_size is None else ""
            raise ParameterError(f"{what} does not divide by {factor}, the downsampling of "
                                 f"{len(self.filters)} encoder levels (filters {list(self.filters)}): give a "
                                 f"patch_size that is a multiple of {factor}{largest}{fewer}")

    @property
    def chosen_base(self) -> str:
        """The base trained: the one given, else the best the inputs allow (lagrangian_ar needs 3 frames)."""
        return self.base or ("lagrangian_ar" if self.t_in >= 3 else "advection")


class _ModelChoice(_Stores):
    models: StoreUrl = Field(f"{DEFAULT_WORKDIR}/models", description="model registry folder")
    model_name: str = Field("convlstm", min_length=1,
                            description="model name in the registry (the architecture trained)")
    model_version: str = Field("latest", min_length=1,
                               description="a registry version, or latest (the promoted one)")

    @model_validator(mode="after")
    def _model_known(self):
        name, slash, version = self.model_version.partition("/")
        if slash and version and "/" not in version:  # NAME/VERSION, as `nowcast models` spells it
            if name != self.model_name:
                raise ParameterError(f"model_version {self.model_version!r} names the model {name!r}, "
                                     f"model_name is {self.model_name!r}: give model_name {name!r} and "
                                     f"model_version {version!r}")
            self.model_version = version
        _registry_check(self.models, self.model_name, self.model_version)
        return self


class ForecastParams(_ModelChoice):
    """Forecast the newest complete frames not yet forecast (a no-op when nothing is new)."""

    STORE_FIELDS: ClassVar[tuple[str, ...]] = ("archive", "forecasts", "models")
    archive: StoreUrl = Field(f"{DEFAULT_WORKDIR}/archive.zarr", description="archive.zarr to read")
    forecasts: StoreUrl = Field(f"{DEFAULT_WORKDIR}/forecasts.zarr", description="forecasts.zarr to write")
    lookback: int = Field(12, ge=1, le=10_000,
                          description="newest init times considered; older gaps are left to backfills")
    runner: Runner = Field(default_factory=Runner)

    @model_validator(mode="after")
    def _archive(self):
        _scoring_stores(self.archive, self.forecasts)
        return self


class ScoreParams(_ModelChoice):
    """Score init times into forecasts.zarr: those in [start, end], or every one not yet written."""

    STORE_FIELDS: ClassVar[tuple[str, ...]] = ("archive", "forecasts", "models")
    archive: StoreUrl = Field(f"{DEFAULT_WORKDIR}/archive.zarr", description="archive.zarr to read")
    forecasts: StoreUrl = Field(f"{DEFAULT_WORKDIR}/forecasts.zarr", description="forecasts.zarr to write")
    start: str | None = Field(None, description="first init time, ISO 8601 UTC, e.g. 2024-01-01T02:00 "
                                                "(empty: the archive's first)")
    end: str | None = Field(None, description="last init time, ISO 8601 UTC, not before start "
                                              "(empty: the archive's last)")
    overwrite: bool = Field(False, description="score init times already written again")
    batch_size: int = Field(4, ge=1, le=1024, description="init times per model call")
    runner: Runner = Field(default_factory=Runner)

    @field_validator("start", "end")
    @classmethod
    def _iso(cls, value: str | None, info) -> str | None:
        if value is None:
            return None
        parsed = parse_time(value, info.field_name)
        start = info.data.get("start")
        if info.field_name == "end" and start is not None and parsed < parse_time(start, "start"):
            raise ParameterError(f"end {parsed} is before start {start}; swap them or widen the range")
        return str(parsed)

    @model_validator(mode="after")
    def _archive(self):
        _scoring_stores(self.archive, self.forecasts)
        return self


class BackfillParams(ScoreParams):
    """Forecast every init time in [start, end], chunk by chunk; init times already written are skipped."""

    start: str = Field(..., description="first init time, ISO 8601 UTC (e.g. 2024-01-01T02:00)")
    end: str = Field(..., description="last init time, ISO 8601 UTC, not before start")
    chunk_size: int = Field(12, ge=1, le=100_000, description="init times per chunk (one task each)")
    concurrency: int = Field(1, ge=1, le=64, description="chunks submitted at a time; they write the store "
                             "in turn, one after another (a chunk's init times run in parallel on the "
                             "runner's workers)")


class EvaluateParams(_ModelChoice):
    """Verify a model on the test split against persistence and extrapolation; tables and pictures."""

    STORE_FIELDS: ClassVar[tuple[str, ...]] = ("windows", "models", "workdir", "forecasts", "archive")
    windows: StoreUrl = Field(f"{DEFAULT_WORKDIR}/windows.zarr", description="windows.zarr (test split)")
    split: Literal["val", "test"] = Field("test", description="which split to verify on")
    baselines: list[Literal["persistence", "extrapolation", "sprog"]] = Field(
        ["persistence", "extrapolation"], description="pysteps baselines verified beside the model")
    max_samples: int = Field(64, ge=1, le=1_000_000, description="samples verified at most")
    workdir: StoreUrl = Field(f"{DEFAULT_WORKDIR}/evaluate", description="where tables and PNGs go")
    archive: StoreUrl | None = Field(None, description="archive.zarr; with forecasts, also scores those")
    forecasts: StoreUrl | None = Field(None, description="forecasts.zarr to verify against the archive")

    @model_validator(mode="after")
    def _stores(self):
        if self.forecasts and not self.archive:  # once ignored without a word
            raise ParameterError("forecasts are verified against the archive's later frames: give archive "
                                 "too (the archive.zarr they were scored from)")
        _kind_is(self.windows, "windows")
        if not self.forecasts:
            _kind_is(self.archive, "archive")
            return self
        from nowcast.pipelines.stores.groups import exists

        # before the split's verification, not after it
        _scoring_stores(str(self.archive), self.forecasts, creates=False)
        if not exists(self.forecasts):
            raise ParameterError(f"no forecast store at {self.forecasts} to verify; score into it first "
                                 "(`nowcast score`), or leave forecasts out")
        return self


class DemoParams(BaseModel):
    """Ingest synthetic rain, cut windows, train, backfill and evaluate, every store and picture under
    the work folder."""

    # each option bounded as the form it feeds is, and checked before the demo does anything (an epoch
    # count past the train form's bound once failed only after the ingest)

    model_config = ConfigDict(extra="forbid")
    workdir: str = Field(DEFAULT_WORKDIR, min_length=1, description="where stores and pictures go")

    @field_validator("workdir")
    @classmethod
    def _a_folder(cls, value: str) -> str:
        return work_folder(value)

    frames: int = Field(288, ge=1, le=MAX_SYNTHETIC_FRAMES,
                        description="synthetic frames (5-min steps)")
    size: int = Field(128, ge=16, le=MAX_GRID_SIZE, multiple_of=4,
                      description="grid size (a multiple of 4: the demo model's encoder halves it twice)")
    epochs: int = Field(4, ge=1, le=MAX_EPOCHS, description="training epochs (small model, CPU)")
    backfill_hours: FiniteFloat = Field(3.0, gt=0, le=10_000, description="hours of forecasts backfilled")
    workers: int = Field(2, ge=1, le=MAX_WORKERS,
                         description="Beam worker processes for ingest and windows (1: in this process)")
