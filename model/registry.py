"""Versioned model artifacts: ``models/<name>/<version>/`` and a ``latest`` pointer.

A version folder holds ``model.keras`` (Keras 3 format), ``metadata.json``
(what the model was trained on and how its inputs are normalised, plus the
sha256 of ``model.keras``), ``metrics.json`` and ``manifest.json`` (the
sha256 of each of the other three). ``models/<name>/latest``
names the promoted version.

The registry root is a local folder or any fsspec URL (``s3://bucket/models``
with the s3 extra, ``gs://`` with gcs), so workers on other machines share
it through the object store. Nothing half-written is ever read as a version:
on a local disk a version is written into a hidden temporary folder and
renamed into place, and ``latest`` is replaced with ``os.replace``; on an
object store ``metadata.json`` is uploaded last (a version without it is not
a version) and ``latest`` is one object, replaced by a single PUT.

Loading verifies every file against the manifest (an edited normalisation
in metadata.json is refused like a changed model.keras), compares the metadata with a description of
the archive the caller is about to feed the model (time step, variables and
their units, grid shape) and refuses any mismatch with an error that names it;
then it loads with ``safe_mode=True`` (no arbitrary code from the file). Keras
reads ``.keras`` files from a local disk, so a remote version is first copied
into a local cache (``NOWCAST_MODEL_CACHE``, default
``~/.cache/nowcast/models``) under its checksum and checked there (a cached
copy that matches the recorded checksum is used as it is). The
model's custom layers live in :mod:`nowcast.model.layers`, imported by
:func:`load_model` so that they are registered before deserialisation (and only
there: listing, showing and promoting versions do not import Keras, a 10 s
import on a small machine).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

from nowcast.errors import InputError
from nowcast.pipelines.stores.archive import ArchiveDescription, same_units
from nowcast.pipelines.stores.groups import filesystem

if TYPE_CHECKING:
    import keras

__all__ = ["ArchiveDescription", "ArchiveMismatchError", "ChecksumMismatchError", "LoadedModel",
           "RegistryError", "VerifiedVersion", "check_archive", "list_versions", "load_model",
           "promote_version", "read_metadata", "resolve_version", "save_model", "verify_version"]

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"  # sha256 of every other file of the version
LATEST = "latest"
log = logging.getLogger(__name__)
_PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy", "zarr", "xarray", "pysteps")


class RegistryError(InputError):
    """A model version that is missing, malformed or cannot be stored."""


class ChecksumMismatchError(RegistryError):
    """``model.keras`` does not match the sha256 recorded in its metadata."""


class UnsafeModelError(RegistryError):
    """A model file that would run code on load (refused: models load in Keras' safe mode)."""


class ArchiveMismatchError(RegistryError):
    """The model was trained on data unlike the archive it is asked to read."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A verified model with its metadata and metrics."""

    model: keras.Model
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    path: str


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model's behaviour, plus the Keras backend."""
    import keras

    versions = {"python": platform.python_version(), "keras_backend": keras.backend.backend()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


SAVE_TRIES = 20  # versions a save may find taken (by saves finishing in the same second) before it gives up


def new_version(taken: int = 0) -> str:
    """A sortable UTC timestamp version, e.g. ``20260127T101500Z``; ``taken`` > 0, when that name went to
    another save in the same second: ``20260127T101500Z-2`` and on."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stamp}-{taken + 1}" if taken else stamp


class _VersionTakenError(Exception):
    """The version's name is taken (by a save that finished first)."""


def _write_version(model: keras.Model, fs: Any, parent: str, final: str, name: str, version: str,
                   metadata: Mapping[str, Any], metrics: Mapping[str, object] | None) -> None:
    """The version's files, staged on the local disk, then moved into place whole.

    Raises:
        _VersionTakenError: another save took ``final`` meanwhile (local disk); nothing is left behind.
    """
    with tempfile.TemporaryDirectory(prefix=f"nowcast-{version}-") as local:
        staging = Path(local)
        model.save(staging / MODEL_FILE)
        full = {**metadata, "name": name, "version": version, "manifest": MANIFEST_FILE,
                "model_sha256": sha256_file(staging / MODEL_FILE), "packages": package_versions(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staging / METADATA_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
        (staging / METRICS_FILE).write_text(json.dumps(dict(metrics or {}), indent=2, sort_keys=True,
                                                       default=str) + "\n")
        manifest = {"files": {file: sha256_file(staging / file) for file in (MODEL_FILE, METRICS_FILE,
                                                                              METADATA_FILE)}}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        files = (MODEL_FILE, METRICS_FILE, MANIFEST_FILE, METADATA_FILE)
        if not isinstance(fs, LocalFileSystem):  # metadata.json last: until it lands, readers see no version
            for file in files:
                fs.put_file(str(staging / file), f"{final}/{file}")
            return
        os.makedirs(parent, exist_ok=True)  # a hidden folder beside the final one, renamed into place
        hidden = tempfile.mkdtemp(prefix=f".{version}.", dir=parent)
        try:
            # mkdtemp's 0700 would hide the version from scorers running as another user: its parent's mode
            os.chmod(hidden, os.stat(parent).st_mode & 0o777)
            for file in files:  # a move, not a rename: the temporary folder may be another file system
                shutil.move(staging / file, os.path.join(hidden, file))
            try:
                os.rename(hidden, final)
            except OSError as error:  # ENOTEMPTY/EEXIST: a save of the same version won the race
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise _VersionTakenError(final) from error
                raise
        finally:
            shutil.rmtree(hidden, ignore_errors=True)  # gone once renamed; a complete model otherwise


def _location(root: str | Path, *parts: str) -> tuple[Any, str]:
    """The filesystem of ``root`` and the path of ``parts`` below it."""
    fs, base = filesystem(str(root))
    return fs, "/".join([base.rstrip("/"), *parts])


def _url(fs: Any, path: str) -> str:
    """A path as the caller names it again: plain for the local disk, with its protocol otherwise."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _check_part(part: str, label: str) -> None:
    """A name or version is a plain folder name. One with a space at either end (a folder copied as
    ``cand ``) was promoted, and ``latest`` then read back as another version, ``cand``."""
    if not part or "/" in part or part.startswith(".") or part == LATEST or part != part.strip():
        raise RegistryError(f"model {label} {part!r} must be a plain folder name (no '/', no leading '.', "
                            f"no space at either end, not '{LATEST}'); `nowcast models list` shows the "
                            "versions")


def save_model(model: keras.Model, root: str | Path, name: str, metadata: Mapping[str, Any],
               metrics: Mapping[str, object] | None = None, version: str | None = None,
               promote: bool = True) -> str:
    """Writes ``root/name/version/`` and (by default) points ``latest`` at it.

    Args:
        model: the trained model.
        root: the registry folder or URL (``models/``, ``s3://bucket/models``).
        name: model name, e.g. ``cnn_lstm``.
        metadata: training facts (window spec, normalisation, archive, ...); this
            function adds ``name``, ``version``, ``model_sha256``, ``packages`` and ``saved_at``.
        metrics: validation scores to store beside it.
        version: defaults to a UTC timestamp (``-2``, ``-3``... after it when saves finish in the same
            second); an existing version is never overwritten.
        promote: replace ``latest`` with this version.

    Returns:
        The version's folder (a path, or a URL for a remote registry).
    """
    for attempt in range(SAVE_TRIES):
        saved = version or new_version(attempt)
        for part, label in ((name, "name"), (saved, "version")):
            _check_part(part, label)
        fs, parent = _location(root, name)
        final = f"{parent}/{saved}"
        try:
            if fs.exists(f"{final}/{METADATA_FILE}") or (isinstance(fs, LocalFileSystem)
                                                         and fs.exists(final)):
                raise _VersionTakenError(final)
            _write_version(model, fs, parent, final, name, saved, metadata, metrics)
            break
        except _VersionTakenError:  # another save took the name first: a version of our own choosing moves on
            if version or attempt == SAVE_TRIES - 1:
                raise RegistryError(f"{_url(fs, final)} already exists; versions are immutable, pick a new "
                                    "version") from None
        except OSError as error:
            raise RegistryError(f"cannot write {_url(fs, final)}: {error.strerror or error}; make "
                                f"{_url(fs, parent)} writable (or give another --models)") from error
    if promote:  # just written from the bytes its checksum was taken of: not downloaded again to verify
        promote_version(root, name, saved, verify=False)
    return _url(fs, final)


def promote_version(root: str | Path, name: str, version: str, *, verify: bool = True) -> None:
    """Atomically points ``root/name/latest`` at an existing version (a plain folder name: ``a/../b`` once
    pointed ``latest`` outside the name's versions)."""
    _check_part(name, "name")
    _check_part(version, "version")
    fs, parent = _location(root, name)
    if not fs.isfile(f"{parent}/{version}/{METADATA_FILE}"):
        known = ", ".join(list_versions(root, name)) or "none"
        raise RegistryError(f"cannot promote {name}/{version}: {_url(fs, f'{parent}/{version}')} is not a "
                            f"saved version (versions of {name}: {known})")
    if verify:  # a promoted version that cannot score stops every scheduled forecast that follows latest
        try:
            verify_version(root, name, version, archive=None)
        except RegistryError as error:
            raise type(error)(f"cannot promote {name}/{version}: {error}") from None
    _pointer(fs, parent, name)
    try:
        if isinstance(fs, LocalFileSystem):
            tmp = os.path.join(parent, f".{LATEST}.{os.getpid()}.tmp")
            Path(tmp).write_text(version + "\n")
            os.replace(tmp, os.path.join(parent, LATEST))
        else:  # one PUT replaces the object whole
            fs.pipe_file(f"{parent}/{LATEST}", (version + "\n").encode())
    except OSError as error:
        raise RegistryError(f"cannot promote {name}/{version}: {error.strerror or error} writing "
                            f"{_url(fs, parent)}/{LATEST}; make the folder writable") from error


def resolve_version(root: str | Path, name: str, version: str = LATEST) -> str:
    """The folder (path or URL) of ``name/version``, following the ``latest`` pointer."""
    _check_part(name, "name")  # `../other/name` once scored with another registry's model
    if version != LATEST:
        _check_part(version, "version")
    fs, parent = _location(root, name)
    if version == LATEST:
        promoted = promoted_version(root, name)
        if promoted is None:
            pointer = _url(fs, f"{parent}/{LATEST}")
            raise RegistryError(f"no promoted version of {name!r} in {root}: {pointer} is missing; promote a "
                                f"version (`nowcast models promote {name}/VERSION`) or give one")
        version = promoted
    path = f"{parent}/{version}"
    if not fs.isfile(f"{path}/{MODEL_FILE}") or not fs.isfile(f"{path}/{METADATA_FILE}"):
        raise RegistryError(f"{_url(fs, path)} is not a complete model version "
                            f"(needs {MODEL_FILE} and {METADATA_FILE})")
    return _url(fs, path)


def version_name(version_dir: str) -> str:
    """A version's name in the registry: its folder's (path or URL), which ``latest`` and the listings
    use; the metadata's ``version`` stays what it was saved as, so a copied or renamed folder differs
    (scoring once looked for the old folder)."""
    return version_dir.rstrip("/").rsplit("/", 1)[-1]


def read_metadata(version_dir: str, file: str = METADATA_FILE) -> dict[str, Any]:
    """A version's ``metadata.json`` (or another of its JSON files; ``{}`` when that one is absent)."""
    fs, path = filesystem(f"{version_dir.rstrip('/')}/{file}")
    if file != METADATA_FILE and not fs.isfile(path):
        return {}
    return _json(fs, path)


def _json(fs: Any, path: str) -> Any:
    """The JSON document at ``path``; a file that is not one is a damaged version, named with the fix."""
    try:
        document = json.loads(fs.cat_file(path))
        if not isinstance(document, dict):  # `[]` once reached the callers' .get as an AttributeError
            raise ValueError(f"a JSON {type(document).__name__}, not an object")
        return document
    except FileNotFoundError as missing:
        raise RegistryError(f"{_url(fs, path)} is missing: the model version is damaged; restore it from a "
                            "copy, or promote or train another version (`nowcast models list`)") from missing
    except (ValueError, UnicodeDecodeError) as error:
        raise RegistryError(f"{_url(fs, path)} is not valid JSON ({error}): the model version is damaged; "
                            "restore it from a copy, or promote or train another version (`nowcast models "
                            "list`)") from error


def list_names(root: str | Path, incomplete: bool = False) -> list[str]:
    """The model names under ``root`` with at least one complete version (with ``incomplete``, or a
    version folder without its metadata), sorted; a zarr store there is no model (it was listed as one
    whose arrays were damaged versions, to be removed)."""
    fs, base = _location(root)
    if not fs.isdir(base):
        return []
    folders = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)]
    return sorted(f for f in folders if not f.startswith(".") and not fs.isfile(f"{base}/{f}/zarr.json")
                  and (list_versions(root, f) or (incomplete and list_versions(root, f, complete=False))))


def one_models_folder(root: str | Path) -> str | None:
    """What to give instead when ``root`` is the folder of one model (``models/convlstm``, a level too
    deep), not a registry; None when it is not one. Listed as "no models", or "train one first"."""
    text = str(root).rstrip("/")
    parent, _, name = text.rpartition("/")
    if not name or list_names(text) or not list_versions(parent or ".", name):
        return None
    return (f"{root} is the folder of one model, {name}, not a registry: give the registry that holds it, "
            f"--models {parent or '.'}")


def promoted_version(root: str | Path, name: str) -> str | None:
    """The version ``latest`` points at; None when none is promoted."""
    fs, parent = _location(root, name)
    pointer = _pointer(fs, parent, name)
    if not fs.isfile(pointer):
        return None
    try:
        version = fs.cat_file(pointer).decode().strip()
        _check_part(version, "version")
    except (UnicodeDecodeError, RegistryError):
        raise RegistryError(f"{_url(fs, pointer)} is damaged (it does not hold a version name): promote a "
                            f"version again (`nowcast models promote {name}/VERSION`; `nowcast models list "
                            f"{name}` shows them)") from None
    return version


def _pointer(fs: Any, parent: str, name: str) -> str:
    """The path of ``name``'s ``latest`` pointer; a folder there (which no write can replace) is refused."""
    pointer = f"{parent}/{LATEST}"
    if fs.isdir(pointer):
        raise RegistryError(f"{_url(fs, pointer)} is a folder where the pointer file belongs: move it aside, "
                            f"then promote a version (`nowcast models promote {name}/VERSION`)")
    return pointer


def list_versions(root: str | Path, name: str, complete: bool = True) -> list[str]:
    """The complete versions of ``name`` (those with their metadata), sorted; with ``complete`` False,
    the version folders without it (a save in progress or stopped part way, a copy of some files)."""
    fs, parent = _location(root, name)
    if not fs.isdir(parent):
        return []
    folders = [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(parent, detail=True)
               if entry["type"] == "directory"]
    return sorted(f for f in folders if not f.startswith(".") and f != LATEST
                  and fs.isfile(f"{parent}/{f}/{METADATA_FILE}") == complete)


def _local_copy(version_dir: str, expected: str | None) -> str:
    """``model.keras`` of a version on the local disk: itself, or a cached copy of a remote one."""
    fs, path = filesystem(f"{version_dir.rstrip('/')}/{MODEL_FILE}")
    if isinstance(fs, LocalFileSystem):
        return path
    cache = Path(os.environ.get("NOWCAST_MODEL_CACHE", Path.home() / ".cache" / "nowcast" / "models"))
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"{expected or 'unknown'}.keras"
    if not expected or not cached.is_file() or sha256_file(cached) != expected:
        handle, partial = tempfile.mkstemp(prefix=".download.", suffix=".keras", dir=cache)
        os.close(handle)
        fs.get_file(path, partial)
        os.replace(partial, cached)
    return str(cached)


def check_manifest(version_dir: str, known: Mapping[str, str]) -> None:
    """Every file of the version against ``manifest.json`` (``known``: digests already computed).

    A version saved before manifests existed has none; its metadata then goes unchecked (logged).

    Raises:
        ChecksumMismatchError: naming each file whose bytes differ from the manifest.
    """
    fs, folder = filesystem(version_dir.rstrip("/"))
    if not fs.isfile(f"{folder}/{MANIFEST_FILE}"):
        if read_metadata(version_dir).get("manifest"):  # deleted: edited metadata then went unchecked
            raise ChecksumMismatchError(f"{version_dir}: {MANIFEST_FILE} is missing, though the version was "
                                        "saved with one: the version is damaged; restore it, or retrain and "
                                        "save a new version")
        log.warning("%s has no %s (saved by an older nowcast): only %s is verified", version_dir,
                    MANIFEST_FILE, MODEL_FILE)
        return
    manifest = _json(fs, f"{folder}/{MANIFEST_FILE}")
    recorded = manifest.get("files") if isinstance(manifest, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    unlisted = [file for file in (MODEL_FILE, METADATA_FILE, METRICS_FILE) if file not in recorded]
    if unlisted:  # an edited manifest listing nothing checked nothing: edited metadata loaded as sound
        raise ChecksumMismatchError(f"{version_dir}: {MANIFEST_FILE} does not list {', '.join(unlisted)}: "
                                    "the version is damaged; restore it, or retrain and save a new version")

    def digest_of(file: str) -> str | None:  # a digest already computed is not computed again; None: gone
        if file in known:
            return known[file]
        path = f"{folder}/{file}"
        return hashlib.sha256(fs.cat_file(path)).hexdigest() if fs.isfile(path) else None

    found = {file: digest_of(file) for file in recorded}
    changed = [file if found[file] else f"{file} (missing)" for file, digest in recorded.items()
               if found[file] != digest]
    if changed:
        raise ChecksumMismatchError(
            f"{version_dir}: {', '.join(changed)} changed since the version was saved (their sha256 differs "
            f"from {MANIFEST_FILE}); a model's files are immutable: restore them, or retrain and save a new "
            "version")


# what a forecast store holds one of (forecasts.check_identity): a version changing them cannot write there
FORECAST_LAYOUT = ("target", "t_in", "t_out")


def archive_change(root: str | Path, name: str, version: str) -> str | None:
    """Why forecasts of the archive that ``name``'s promoted version was trained on would refuse
    ``version`` (another time step or units; another grid for a model not rebuilt for any grid), or a
    forecast store written by it would (another target, input or lead count), said before it replaces
    that version as latest; None when neither would, or nothing is promoted."""
    try:
        previous = promoted_version(root, name)
        if previous is None or previous == version:
            return None
        fs, parent = _location(root, name)
        was, now = (read_metadata(_url(fs, f"{parent}/{each}")) for each in (previous, version))
        check_archive(now, ArchiveDescription.from_dict(was["archive"]))
        layout = [f"{key} {was.get(key)!r} before, {now.get(key)!r} now" for key in FORECAST_LAYOUT
                  if was.get(key) != now.get(key)]
        if layout:  # the scheduled forecast failed into its store from then on, without a word here
            return (f"{name}/{version} replaces {name}/{previous} as latest with other forecasts "
                    f"({'; '.join(layout)}): a forecast store written by {previous} will refuse them; give "
                    f"the forecasts a new store, or `nowcast models promote {name}/{previous}` to go back")
    except ArchiveMismatchError as error:
        return (f"{name}/{version} replaces {name}/{previous} as latest, but forecasts of "
                f"archives like the one {previous} was trained on will refuse it ({error}); `nowcast models "
                f"promote {name}/{previous}` goes back")
    except (RegistryError, OSError, KeyError, TypeError, ValueError):  # a damaged or missing version:
        return None  # promoting anew fixes the first, the promotion names the second
    return None


def check_archive(metadata: Mapping[str, Any], archive: ArchiveDescription) -> None:
    """Refuses an archive whose time step, variables/units or grid differ from training.

    A fully convolutional model (metadata ``fully_convolutional``) runs on
    any grid; an older model trained on the whole grid needs the same grid
    shape, and one trained on patches (``input_shape`` smaller than the grid)
    runs tile by tile on any grid at least one patch large. All need the same
    time step and units.

    Raises:
        ArchiveMismatchError: naming every difference found.
    """
    try:
        trained = ArchiveDescription.from_dict(metadata["archive"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # was a KeyError traceback
        raise RegistryError(f"the version's metadata does not record its training archive ({error!r}): it is "
                            "damaged or was not saved by nowcast; restore it, or promote or train another "
                            "version (`nowcast models list`)") from None
    problems = []
    if trained.time_step != archive.time_step:
        problems.append(f"time step: model trained on {trained.time_step}, archive has {archive.time_step}")
    for var, units in trained.variables.items():
        if var not in archive.variables:
            problems.append(f"variable {var!r} ({units}) is missing from the archive")
        elif not same_units(archive.variables[var], units):  # mm/h is mm h-1
            problems.append(f"variable {var!r}: model expects units {units!r}, archive has "
                            f"{archive.variables[var]!r}")
    patch = tuple(int(n) for n in metadata.get("input_shape") or trained.grid_shape)
    if metadata.get("fully_convolutional"):
        pass  # rebuilt for any grid with the same weights
    elif patch == tuple(trained.grid_shape):
        if tuple(trained.grid_shape) != tuple(archive.grid_shape):
            problems.append(f"grid: model trained on the whole {tuple(trained.grid_shape)} grid, archive has "
                            f"{tuple(archive.grid_shape)}")
    elif any(a < p for a, p in zip(archive.grid_shape, patch, strict=True)):
        problems.append(f"grid: archive grid {tuple(archive.grid_shape)} is smaller than the model's "
                        f"{patch} patch")
    if problems:
        raise ArchiveMismatchError(
            f"model {metadata.get('name')}/{metadata.get('version')} does not fit this archive: "
            + "; ".join(problems) + ". Ingest the data as the model's training data was (its step, units "
            "and grid), or train a model on this archive."
        )


@dataclasses.dataclass(frozen=True)
class VerifiedVersion:
    """A version that passed every check short of Keras' own load: where it is, a local copy of its
    model file with the recorded checksum, and its metadata and metrics."""

    path: str
    local: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]


def verify_version(root: str | Path, name: str, version: str = LATEST, *,
                   archive: ArchiveDescription | None) -> VerifiedVersion:
    """What :func:`load_model` checks before it deserialises, without importing Keras.

    Raises:
        RegistryError: the version is missing or incomplete.
        ChecksumMismatchError: ``model.keras`` changed since it was saved.
        ArchiveMismatchError: the archive differs from the training archive.
    """
    path = resolve_version(root, name, version)
    metadata = read_metadata(path)
    expected = metadata.get("model_sha256")
    local = _local_copy(path, expected)
    actual = sha256_file(local)
    if expected != actual:
        raise ChecksumMismatchError(
            f"{path}/{MODEL_FILE} has sha256 {actual} but its metadata records {expected}; the file was "
            "modified or corrupted after saving: restore it or retrain and save a new version"
        )
    check_manifest(path, {MODEL_FILE: actual})
    if archive is not None:
        check_archive(metadata, archive)
    metrics = read_metadata(path, METRICS_FILE)
    return VerifiedVersion(path=path, local=local, metadata=metadata, metrics=metrics)


def load_model(root: str | Path, name: str, version: str = LATEST, *,
               archive: ArchiveDescription | None) -> LoadedModel:
    """Loads a verified model version (:func:`verify_version`) in Keras' safe mode.

    Args:
        root: the registry folder or URL.
        name: model name.
        version: a version or ``latest``.
        archive: the archive the caller will forecast from; ``None`` skips the
            comparison (only for inspection, never for scoring).

    Raises:
        RegistryError: the version is missing or incomplete.
        ChecksumMismatchError: ``model.keras`` changed since it was saved.
        ArchiveMismatchError: the archive differs from the training archive.
        UnsafeModelError: the file carries code that would run on load.
    """
    import keras

    import nowcast.model.layers
    import nowcast.model.losses  # noqa: F401 (registers the training losses)

    verified = verify_version(root, name, version, archive=archive)
    try:
        loaded = keras.saving.load_model(verified.local, safe_mode=True)
    except ValueError as error:
        if "safe_mode" not in str(error):
            raise
        raise UnsafeModelError(
            f"{verified.path}/{MODEL_FILE} carries Python code (a Lambda layer or a pickled function) that "
            "would run on load; nowcast loads models in Keras' safe mode and refuses it. Retrain with "
            "nowcast's architectures (nowcast.model.architectures), which need no code in the file "
            f"({error})"
        ) from None
    return LoadedModel(model=loaded, metadata=verified.metadata, metrics=verified.metrics, path=verified.path)
