"""Disk space, checked before a large write: a job that cannot fit stops before it writes anything.

A write that fills the disk half way is handled (:func:`.groups.storage_errors`:
exit 2, the store keeps its complete chunks), but it costs the time of the
half and leaves the disk full for everyone else. A writer whose size is known
up front (an ingest of N frames of a known grid) asks here first. Object
stores have no free space to ask about and are not checked.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping

import numpy as np

from nowcast.pipelines.stores.groups import StoreError, is_local, local_path

SAMPLE_CHUNKS = 256  # chunks whose stored size estimates a store's compression ratio


class NotEnoughSpaceError(StoreError):
    """The file system under a store has less free space than a job is about to write."""


def free_bytes(url: str) -> int | None:
    """Free bytes of the file system that holds (or will hold) ``url``; None for an object store.

    >>> free_bytes("s3://bucket/archive.zarr") is None, free_bytes("no/such/folder/archive.zarr") > 0
    (True, True)
    """
    if not is_local(url):
        return None
    path = local_path(url)
    while not os.path.exists(path):  # a new store: the nearest folder that exists
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    usage = shutil.disk_usage(path)  # a file system of no size (/proc, /sys) holds no stores: the write
    return usage.free if usage.total else None  # says why, not "0 B free"


def human(size: float) -> str:
    """Bytes for a message.

    >>> human(512), human(3 * 2**20), human(2.5 * 2**40)
    ('512 B', '3.0 MiB', '2.5 TiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def compressed_size(frames: Iterable[Mapping[str, np.ndarray]], level: int) -> float | None:
    """Mean bytes per frame (all fields) after zstd at ``level``, as the store compresses them; None
    without frames."""
    import numcodecs

    codec = numcodecs.Zstd(level=level)
    sizes = [sum(len(codec.encode(np.ascontiguousarray(field, dtype="float32"))) for field in frame.values())
             for frame in frames]
    return sum(sizes) / len(sizes) if sizes else None


def check_space(url: str, need: float, job: str, detail: str, fix: str) -> None:
    """Refuses ``job`` when the file system of ``url`` has less than ``need`` bytes free.

    Args:
        url: the store about to be written.
        need: the bytes the job will add (an estimate).
        job: the job, for the message (``ingest``).
        detail: how ``need`` was estimated (``96 frames of 2.1 MiB``).
        fix: what else the user can do besides freeing space (``ingest fewer frames``).

    Raises:
        NotEnoughSpaceError: naming the path, the need, the free space and the fix.
    """
    free = free_bytes(url)
    if free is None or need <= free:
        return
    raise NotEnoughSpaceError(
        f"{job} needs about {human(need)} at {url} ({detail}), but its file system has {human(free)} free; "
        f"nothing was written. Free space, give a path on a larger volume, or {fix}")


def check_frames_fit(url: str, count: int, samples: Iterable[Mapping[str, np.ndarray]], level: int,
                     job: str, fix: str) -> None:
    """Refuses writing ``count`` frames to ``url`` when, compressed as ``samples`` compress, they do not
    fit its file system (no check without samples or on an object store)."""
    if count <= 0 or free_bytes(url) is None:
        return
    per_frame = compressed_size(samples, level)
    if per_frame is not None:
        check_space(url, per_frame * count, job,
                    f"{count} new frames of about {human(per_frame)} each, compressed", fix)


def compression_ratio(url: str, name: str) -> float | None:
    """Stored bytes per uncompressed byte of the chunks array ``name`` of the local store ``url`` holds
    (zarr stores an edge chunk at full size), over its first few hundred chunk files (one folder at a
    time: a long archive is not listed whole); None on an object store or without chunks."""
    if not is_local(url):
        return None
    from nowcast.pipelines.stores.groups import array, open_group

    member = array(open_group(url), name)
    chunk_bytes = int(np.prod(member.chunks)) * member.dtype.itemsize
    stored, count = 0, 0
    for folder, _, files in os.walk(os.path.join(local_path(url), name, "c")):
        stored += sum(os.path.getsize(os.path.join(folder, file)) for file in files)
        count += len(files)
        if count >= SAMPLE_CHUNKS:  # enough for an estimate; a scoring poll asks on every new frame
            break
    return stored / (count * chunk_bytes) if count else None
