"""Store addressing: every store is a URL (path, file://, memory://, s3://, gs://)."""

from __future__ import annotations

import os

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore


def is_local(url: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    """The filesystem path of a local store URL."""
    if not is_local(url):
        raise ValueError(f"{url} is not a local path")
    return os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)


def zarr_store(url: str, read_only: bool = False) -> Store:
    """A zarr v3 store for ``url``: LocalStore on disk, fsspec for everything else."""
    if is_local(url):
        return LocalStore(local_path(url), read_only=read_only)
    return FsspecStore.from_url(url, read_only=read_only)


def exists(url: str) -> bool:
    """Whether a store (its root metadata) exists at ``url``."""
    if is_local(url):
        return os.path.exists(os.path.join(local_path(url), "zarr.json"))
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path.rstrip('/')}/zarr.json")
