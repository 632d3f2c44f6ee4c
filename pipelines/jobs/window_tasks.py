"""The work of one windows task, without Beam: read, cut, write, partial statistics.

The driver creates windows.zarr at its final size
(:func:`nowcast.pipelines.stores.windows.create_windows_store`), so tasks
only ever write whole, aligned sample chunks and never race. A task reads its
source chunks once (:class:`SourceFrames`), cuts its samples
(:func:`cut_samples`), writes them, and returns partial normalisation
statistics (:func:`partial_stats`) that a combine merges (:func:`merge_stats`,
:func:`finish_stats`). All plain numpy/zarr.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from nowcast.pipelines.plans.windows import OutputChunk, Task, WindowPlan
from nowcast.pipelines.stores.archive import ArchiveError
from nowcast.pipelines.stores.groups import array, open_group
from nowcast.pipelines.stores.integrity import read_span
from nowcast.pipelines.stores.windows import WindowsError, write_sample_chunk

Stats = dict[str, float]


class SourceFrames:
    """A task's source frames: each needed archive chunk read exactly once.

    Contiguous runs of chunks are read with one zarr call per variable and kept
    for the task's lifetime (at most ``max_source_chunks`` chunks). A chunk
    that does not decode is named with the fix (:func:`read_span`).
    """

    def __init__(self, archive_url: str, task: Task, variables: Iterable[str],
                 time_chunk: int, length: int) -> None:
        group = open_group(archive_url, error=ArchiveError)
        self.bytes_read = 0
        self._runs: list[tuple[int, int, dict[str, np.ndarray]]] = []
        for first, last in _runs(task.source_chunks):
            lo, hi = first * time_chunk, min((last + 1) * time_chunk, length)
            blocks = {name: read_span(archive_url, array(group, name), lo, hi) for name in variables}
            self.bytes_read += sum(b.nbytes for b in blocks.values())
            self._runs.append((lo, hi, blocks))

    def frames(self, variable: str, lo: int, hi: int) -> np.ndarray:
        """Frames ``[lo, hi)`` of ``variable`` (a view; they must lie in one read run)."""
        for run_lo, run_hi, blocks in self._runs:
            if run_lo <= lo and hi <= run_hi:
                return blocks[variable][lo - run_lo:hi - run_lo]
        raise ArchiveError(f"frames [{lo}, {hi}) were not read by this task (a planning bug)")


def _runs(chunks: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for c in chunks:
        if runs and runs[-1][1] == c - 1:
            runs[-1] = (runs[-1][0], c)
        else:
            runs.append((c, c))
    return runs


def cut_samples(source: SourceFrames, chunk: OutputChunk, plan: WindowPlan) -> tuple[np.ndarray, np.ndarray]:
    """The ``inputs`` and ``targets`` arrays of one output chunk."""
    spec = plan.spec
    py, px = plan.patch_shape
    n = len(chunk.starts)
    inputs = np.empty((n, spec.t_in, py, px, len(spec.channels)), dtype="float32")
    targets = np.empty((n, spec.t_out, py, px, 1), dtype="float32")
    for i, (start, y0, x0) in enumerate(zip(chunk.starts, chunk.y0, chunk.x0, strict=True)):
        start, ys, xs = int(start), slice(int(y0), int(y0) + py), slice(int(x0), int(x0) + px)
        for c, name in enumerate(spec.channels):
            inputs[i, ..., c] = source.frames(name, start, start + spec.t_in)[:, ys, xs]
        targets[i, ..., 0] = source.frames(spec.target, start + spec.t_in, start + spec.length)[:, ys, xs]
    return inputs, targets


def stats_mask(plan: WindowPlan) -> np.ndarray:
    """``(y, x)`` pixels covered by at least one patch (the whole grid without patches)."""
    mask = np.zeros(plan.info.grid.shape, dtype=bool)
    py, px = plan.patch_shape
    for y0, x0 in plan.patches:
        mask[y0:y0 + py, x0:x0 + px] = True
    return mask


def partial_stats(values: np.ndarray, log1p: bool) -> Stats:
    """Count, mean, sum of squared deviations, min, max of the finite values.

    Mean-centred sums (not raw sums of squares) keep the merged variance
    accurate over billions of pixels. Sums are float64; the logarithm is taken
    of the positive values only (log1p(0) = 0), a minority of rain pixels.
    """
    flat = np.asarray(values).reshape(-1)
    observed = np.isfinite(flat)
    finite = flat if observed.all() else np.compress(observed, flat)
    stats = _moments(finite, "")
    stats["min"] = float(finite.min()) if finite.size else math.inf
    stats["max"] = float(finite.max()) if finite.size else -math.inf
    if log1p:
        logs = np.log1p(np.compress(finite > 0, finite).astype("float64"))
        stats.update(_moments(logs, "log1p_", zeros=finite.size - logs.size))
    return stats


def _moments(values: np.ndarray, prefix: str, zeros: int = 0) -> Stats:
    """Moments of ``values`` plus ``zeros`` further values equal to 0 (not materialised)."""
    count = values.size + zeros
    if not count:
        return {f"{prefix}count": 0.0, f"{prefix}mean": 0.0, f"{prefix}m2": 0.0}
    deviations = values.astype("float64")
    mean = float(deviations.sum()) / count
    deviations -= mean
    m2 = float(np.dot(deviations, deviations)) + zeros * mean * mean
    return {f"{prefix}count": float(count), f"{prefix}mean": mean, f"{prefix}m2": m2}


def merge_stats(parts: Iterable[Stats]) -> Stats:
    """Merges partial statistics (Chan et al.'s parallel variance update)."""
    total: Stats = {}
    for part in parts:
        if not total:
            total = dict(part)
            continue
        for prefix in ("", "log1p_") if "log1p_count" in part else ("",):
            _merge_moments(total, part, prefix)
        total["min"] = min(total["min"], part["min"])
        total["max"] = max(total["max"], part["max"])
    return total


def _merge_moments(total: Stats, part: Stats, prefix: str) -> None:
    na, nb = total[f"{prefix}count"], part[f"{prefix}count"]
    if nb == 0:
        return
    n = na + nb
    delta = part[f"{prefix}mean"] - total[f"{prefix}mean"]
    total[f"{prefix}mean"] += delta * nb / n
    total[f"{prefix}m2"] += part[f"{prefix}m2"] + delta * delta * na * nb / n
    total[f"{prefix}count"] = n


def finish_stats(stats: Stats) -> dict[str, float | int | None]:
    """The stored form: count, mean, std (population), min, max, and log1p mean/std."""
    count = stats["count"]

    def nan_none(value: float) -> float | None:
        return float(value) if count and math.isfinite(value) else None

    out: dict[str, float | int | None] = {
        "count": int(count),
        "mean": nan_none(stats["mean"]),
        "std": nan_none(math.sqrt(stats["m2"] / count)) if count else None,
        "min": nan_none(stats["min"]),
        "max": nan_none(stats["max"]),
    }
    if "log1p_count" in stats:
        out["log1p_mean"] = nan_none(stats["log1p_mean"])
        out["log1p_std"] = nan_none(math.sqrt(stats["log1p_m2"] / count)) if count else None
    return out


def log1p_variables(plan: WindowPlan) -> set[str]:
    """Variables whose ``valid_min >= 0`` (non-negative), which get log1p statistics too."""
    return {f.name for f in plan.info.fields
            if f.name in plan.spec.variables and f.valid_min is not None and f.valid_min >= 0}


def task_stats(source: SourceFrames, task: Task, plan: WindowPlan) -> dict[str, Stats]:
    """Partial train statistics of the frames this task owns, per variable."""
    mask = stats_mask(plan)
    whole_grid = bool(mask.all())  # no patches, or patches tiling the grid: no masked copy needed
    logs = log1p_variables(plan)
    frames = np.asarray(task.stat_frames, dtype="int64")
    breaks = np.flatnonzero(np.diff(frames) != 1) + 1
    out: dict[str, Stats] = {}
    for name in plan.spec.variables:
        parts = [partial_stats(np.zeros(0, dtype="float32"), log1p=name in logs)]
        for run in np.split(frames, breaks) if len(frames) else []:
            for lo in range(int(run[0]), int(run[-1]) + 1, plan.info.time_chunk):
                hi = min(lo + plan.info.time_chunk, int(run[-1]) + 1)
                block = source.frames(name, lo, hi)
                parts.append(partial_stats(block if whole_grid else block[:, mask], log1p=name in logs))
        out[name] = merge_stats(parts)
    return out


def finish_all(stats: Mapping[str, Stats]) -> dict[str, dict[str, float | int | None]]:
    """The stored form of every variable's merged statistics, in name order."""
    return {name: finish_stats(value) for name, value in sorted(stats.items())}


def run_task(archive_url: str, output_url: str, task: Task, plan: WindowPlan) -> tuple[
        dict[str, Stats], dict[str, int]]:
    """Does one task without Beam: read, cut, write, partial stats.

    Returns:
        Partial train statistics per variable, and tallies (windows, samples,
        bytes_read, bytes_written).
    """
    info = plan.info
    source = SourceFrames(archive_url, task, plan.spec.variables, info.time_chunk, info.length)
    root = open_group(output_url, "r+", error=WindowsError)
    written = samples = windows = 0
    for chunk in task.outputs:
        inputs, targets = cut_samples(source, chunk, plan)
        written += write_sample_chunk(root, chunk.split, chunk.first, inputs, targets)
        samples += len(chunk.starts)
        windows += int(((chunk.y0 == 0) & (chunk.x0 == 0)).sum())  # first patch of each window
    tallies = {"windows": windows, "samples": samples, "bytes_read": source.bytes_read,
               "bytes_written": written}
    return task_stats(source, task, plan), tallies
