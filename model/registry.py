"""Versioned model artifacts: ``models/<name>/<version>/`` and a ``latest`` pointer.

A version directory holds ``model.keras`` (Keras 3 format), ``metadata.json``
(what the model was trained on and how its inputs are normalised, plus the
sha256 of ``model.keras``) and ``metrics.json``. A version is written into a
hidden temporary directory and renamed into place, so a reader never sees a
half-written version; ``models/<name>/latest`` names the promoted version and
is replaced atomically with ``os.replace``.

Loading verifies the checksum, compares the metadata with a description of
the archive the caller is about to feed the model (time step, variables and
their units, grid shape) and refuses any mismatch with an error that names it;
then it loads with ``safe_mode=True`` (no arbitrary code from the file). The
model's custom layers live in :mod:`nowcast.model.layers`, imported here so
that they are registered before deserialisation.

Paths are local directories: Keras writes and reads ``.keras`` files on a
local filesystem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import keras

import nowcast.model.layers
import nowcast.model.losses  # noqa: F401 (registers the training losses)
from nowcast.pipelines.stores.archive import ArchiveDescription

__all__ = ["ArchiveDescription", "ArchiveMismatchError", "ChecksumMismatchError", "LoadedModel",
           "RegistryError", "check_archive", "load_model", "promote_version", "resolve_version", "save_model"]

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"
LATEST = "latest"
_PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy", "zarr", "xarray", "pysteps")


class RegistryError(ValueError):
    """A model version that is missing, malformed or cannot be stored."""


class ChecksumMismatchError(RegistryError):
    """``model.keras`` does not match the sha256 recorded in its metadata."""


class ArchiveMismatchError(RegistryError):
    """The model was trained on data unlike the archive it is asked to read."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A verified model with its metadata and metrics."""

    model: keras.Model
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    path: Path


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model's behaviour, plus the Keras backend."""
    versions = {"python": platform.python_version(), "keras_backend": keras.backend.backend()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def new_version() -> str:
    """A sortable UTC timestamp version, e.g. ``20260127T101500Z``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def save_model(model: keras.Model, root: str | Path, name: str, metadata: Mapping[str, Any],
               metrics: Mapping[str, object] | None = None, version: str | None = None,
               promote: bool = True) -> Path:
    """Writes ``root/name/version/`` and (by default) points ``latest`` at it.

    Args:
        model: the trained model.
        root: the registry folder (``models/``).
        name: model name, e.g. ``cnn_lstm``.
        metadata: training facts (window spec, normalisation, archive, ...); this
            function adds ``name``, ``version``, ``model_sha256``, ``packages`` and ``saved_at``.
        metrics: validation scores to store beside it.
        version: defaults to a UTC timestamp; an existing version is never overwritten.
        promote: replace ``latest`` with this version.

    Returns:
        The version directory.
    """
    version = version or new_version()
    for part, label in ((name, "name"), (version, "version")):
        if not part or "/" in part or part.startswith(".") or part == LATEST:
            raise RegistryError(f"model {label} {part!r} must be a plain folder name, not '{LATEST}'")
    parent = Path(root) / name
    final = parent / version
    if final.exists():
        raise RegistryError(f"{final} already exists; versions are immutable, pick a new version")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=parent))
    model.save(staging / MODEL_FILE)
    full = {**metadata, "name": name, "version": version, "model_sha256": sha256_file(staging / MODEL_FILE),
            "packages": package_versions(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (staging / METADATA_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
    (staging / METRICS_FILE).write_text(json.dumps(dict(metrics or {}), indent=2, sort_keys=True,
                                                   default=str) + "\n")
    os.rename(staging, final)
    if promote:
        promote_version(root, name, version)
    return final


def promote_version(root: str | Path, name: str, version: str) -> None:
    """Atomically points ``root/name/latest`` at an existing version."""
    parent = Path(root) / name
    if not (parent / version / METADATA_FILE).is_file():
        raise RegistryError(f"cannot promote {name}/{version}: {parent / version} is not a saved version")
    tmp = parent / f".{LATEST}.{os.getpid()}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, parent / LATEST)


def resolve_version(root: str | Path, name: str, version: str = LATEST) -> Path:
    """The directory of ``name/version``, following the ``latest`` pointer."""
    parent = Path(root) / name
    if version == LATEST:
        pointer = parent / LATEST
        if not pointer.is_file():
            raise RegistryError(f"no promoted version of {name!r} in {root}: {pointer} is missing; "
                                "save a model with promote=True or give a version")
        version = pointer.read_text().strip()
    path = parent / version
    if not (path / MODEL_FILE).is_file() or not (path / METADATA_FILE).is_file():
        raise RegistryError(f"{path} is not a complete model version "
                            f"(needs {MODEL_FILE} and {METADATA_FILE})")
    return path


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
    trained = ArchiveDescription.from_dict(metadata["archive"])
    problems = []
    if trained.time_step != archive.time_step:
        problems.append(f"time step: model trained on {trained.time_step}, archive has {archive.time_step}")
    for var, units in trained.variables.items():
        if var not in archive.variables:
            problems.append(f"variable {var!r} ({units}) is missing from the archive")
        elif archive.variables[var] != units:
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
            + "; ".join(problems) + ". Resample/regrid the archive to match, or train a model on it."
        )


def load_model(root: str | Path, name: str, version: str = LATEST, *,
               archive: ArchiveDescription | None) -> LoadedModel:
    """Loads a verified model version.

    Args:
        root: the registry folder.
        name: model name.
        version: a version or ``latest``.
        archive: the archive the caller will forecast from; ``None`` skips the
            comparison (only for inspection, never for scoring).

    Raises:
        RegistryError: the version is missing or incomplete.
        ChecksumMismatchError: ``model.keras`` changed since it was saved.
        ArchiveMismatchError: the archive differs from the training archive.
    """
    path = resolve_version(root, name, version)
    metadata = json.loads((path / METADATA_FILE).read_text())
    expected = metadata.get("model_sha256")
    actual = sha256_file(path / MODEL_FILE)
    if expected != actual:
        raise ChecksumMismatchError(
            f"{path / MODEL_FILE} has sha256 {actual} but its metadata records {expected}; the file was "
            "modified or corrupted after saving: restore it or retrain and save a new version"
        )
    if archive is not None:
        check_archive(metadata, archive)
    metrics_path = path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    loaded = keras.saving.load_model(path / MODEL_FILE, safe_mode=True)
    return LoadedModel(model=loaded, metadata=metadata, metrics=metrics, path=path)
