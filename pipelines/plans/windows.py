"""Window planning from the archive's metadata alone (no pass over the data).

The plan decides which windows exist, which are skipped and why, which split
each belongs to, how samples are laid out in output chunks, and which tasks
(one Beam element each) write which output chunks from which source chunks.
Every function here is plain numpy on small per-frame arrays, so a plan for
years of frames takes well under a second and tests run without Beam.

Sample order: within a split, samples follow ``init_time`` (then patch row,
then patch column), and each output chunk holds ``samples_per_chunk``
consecutive samples. A task owns whole output chunks whose windows lie in a
short run of source chunks, so each source chunk is read once (plus a halo of
``t_in + t_out - 1`` frames shared with the next task).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec, WindowSpecError
from nowcast.pipelines.stores.archive import ArchiveError, ArchiveInfo, read_info, valid_flags
from nowcast.pipelines.stores.groups import array, open_group
from nowcast.pipelines.stores.timeaxis import format_time_step, parse_time_step
from nowcast.pipelines.stores.windows import SPLITS, SplitIndex, WindowsLayout, WindowsStore, describe_archive

SKIP_REASONS = ("missing_frame", "straddles_split", "too_dry")
SKIP_FIXES = {  # what gives windows back, per reason
    "missing_frame": "missing_frame: ingest the missing frames, or shorten t_in or t_out to fit between gaps",
    "straddles_split": "straddles_split: lengthen split_block to hold t_in + t_out frames",
    "too_dry": "too_dry: lower the wet filter's min_fraction, or ingest wetter frames",
}
DEFAULT_MAX_SOURCE_CHUNKS = 16


@dataclasses.dataclass(frozen=True)
class FrameMeta:
    """The per-frame metadata a plan needs.

    Attributes:
        times: ``(time,)`` datetime64[s] axis.
        valid: ``(time,)`` bool, frame present.
        wet_fraction: ``(time,)`` float, fraction of observed pixels at or above
            the wet filter's threshold (None without a filter).
    """

    times: np.ndarray
    valid: np.ndarray
    wet_fraction: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class OutputChunk:
    """Samples ``[first, first + len(starts))`` of one split: one output chunk."""

    split: str
    first: int
    starts: np.ndarray
    y0: np.ndarray
    x0: np.ndarray


@dataclasses.dataclass(frozen=True)
class Task:
    """One Beam element: read ``source_chunks`` once, write ``outputs``.

    Attributes:
        index: position in the plan (for progress lines).
        source_chunks: archive time-chunk indices to read, ascending.
        outputs: the whole output chunks this task writes.
        stat_frames: frame indices whose train statistics this task adds (each
            train frame belongs to exactly one task, so no frame counts twice).
    """

    index: int
    source_chunks: tuple[int, ...]
    outputs: tuple[OutputChunk, ...]
    stat_frames: np.ndarray


@dataclasses.dataclass(frozen=True)
class SplitSamples:
    """The samples of one split, in output order."""

    starts: np.ndarray
    y0: np.ndarray
    x0: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Everything the job needs, decided before any frame is read."""

    spec: WindowSpec
    info: ArchiveInfo
    samples: dict[str, SplitSamples]
    counts: dict[str, object]
    tasks: tuple[Task, ...]
    patches: np.ndarray
    frame_split: np.ndarray  # split index (0 train, 1 val, 2 test) of every archive frame

    @property
    def patch_shape(self) -> tuple[int, int]:
        return self.spec.patch_size or self.info.grid.shape

    def uncovered(self) -> str | None:
        """The grid's edge rows and columns that no patch reaches (patches that do not tile the grid), as a
        sentence with the fix; None when the patches cover it."""
        (ny, nx), (py, px) = self.info.grid.shape, self.patch_shape
        rows = ny - (int(self.patches[:, 0].max()) + py)
        columns = nx - (int(self.patches[:, 1].max()) + px)
        if rows <= 0 and columns <= 0:
            return None
        return (f"patches of {py} x {px} leave the last {rows} rows and {columns} columns of the {ny} x {nx} "
                "grid out of every sample (never trained on, nor scored by evaluate); a patch size that "
                "divides the grid covers them (or, in Python, a WindowSpec patch_stride that does)")

    def init_times(self, split: str) -> np.ndarray:
        """``datetime64[s]`` time of the last input frame of each sample."""
        starts = self.samples[split].starts
        return self.info.start + (starts + self.spec.t_in - 1).astype("int64") * self.info.time_step

    def source_bytes(self, chunks: tuple[int, ...] | None = None) -> int:
        """Uncompressed bytes of the given source chunks (all chunks if None), all variables."""
        info = self.info
        size = int(np.prod(info.grid.shape)) * 4 * len(self.spec.variables)
        if chunks is None:
            return info.length * size
        return sum(min(info.time_chunk, info.length - c * info.time_chunk) for c in chunks) * size

    def layout(self) -> WindowsLayout:
        """The windows.zarr this plan fills: shapes, sample index and root attributes."""
        spec = self.spec
        splits = {name: SplitIndex(init_time=self.init_times(name), y0=self.samples[name].y0,
                                   x0=self.samples[name].x0) for name in SPLITS}
        attrs = {"window_spec": json.loads(spec.to_json()), "archive": self.info.url,
                 "time_step": format_time_step(self.info.time_step), "counts": self.counts}
        return WindowsLayout(t_in=spec.t_in, t_out=spec.t_out, patch_shape=self.patch_shape,
                             channels=spec.channels, target=spec.target,
                             samples_per_chunk=spec.samples_per_chunk, splits=splits, attrs=attrs)

    def read_amplification(self) -> float:
        """Source bytes the plan reads divided by the archive's bytes (of the variables used)."""
        read = sum(self.source_bytes(task.source_chunks) for task in self.tasks)
        return read / self.source_bytes()


def read_frame_meta(info: ArchiveInfo, spec: WindowSpec) -> FrameMeta:
    """Reads the time axis, ``valid`` and the wet statistic; checks the spec against the archive."""
    names = [f.name for f in info.fields]
    for variable in spec.variables:
        if variable not in names:
            raise WindowSpecError(
                f"variable {variable!r} is not in archive {info.url} (it holds {names}); "
                "pick one it holds (--variable on the command line; channels/target of the windows spec) "
                "or ingest the variable"
            )
    times = info.start + np.arange(info.length, dtype="int64") * info.time_step
    valid = valid_flags(info.url)
    wet = None
    if spec.wet is not None:
        field = info.field(spec.wet_variable)  # type: ignore[arg-type]
        stored = np.asarray(field.thresholds, dtype="float64")
        hits = np.flatnonzero(np.isclose(stored, float(spec.wet.threshold), rtol=1e-6, atol=0))
        if not len(hits):
            raise WindowSpecError(
                f"wet filter threshold {spec.wet.threshold} is not stored for {field.name!r}; "
                f"pick one of {[float(t) for t in stored]} (the archive's {field.name}_fraction_above)"
            )
        group = open_group(info.url, error=ArchiveError)
        wet = np.asarray(array(group, f"{field.name}_fraction_above")[:, int(hits[0])], dtype="float64")
    return FrameMeta(times=times.astype("datetime64[s]"), valid=valid, wet_fraction=wet)


def frame_splits(times: np.ndarray, split: SplitSpec) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of every frame, from its time block."""
    seconds = (times.astype("datetime64[s]") - np.datetime64(0, "s")).astype("int64")
    block_seconds = int(split.block_step / np.timedelta64(1, "s"))
    blocks = np.floor_divide(seconds, block_seconds)
    if not len(blocks):
        return np.zeros(0, dtype="int8")
    edges = np.cumsum(split.fractions)[:2]
    if split.method == "contiguous":
        first, count = blocks.min(), blocks.max() - blocks.min() + 1
        cuts = np.round(edges * count).astype("int64")
        return np.searchsorted(cuts, blocks - first, side="right").astype("int8")
    unique, inverse = np.unique(blocks, return_inverse=True)
    draws = np.array([_uniform(split.seed, int(b)) for b in unique])
    return np.searchsorted(edges, draws, side="right").astype("int8")[inverse]


def _uniform(seed: int, block: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def patch_origins(grid_shape: tuple[int, int], spec: WindowSpec) -> np.ndarray:
    """``(n, 2)`` top-left (y0, x0) of every patch, row-major; one (0, 0) without patches."""
    if spec.patch_size is None:
        return np.zeros((1, 2), dtype="int32")
    (ny, nx), (py, px), (sy, sx) = grid_shape, spec.patch_size, spec.patch_stride or spec.patch_size
    if py > ny or px > nx:
        raise WindowSpecError(f"patches of {py} x {px} (--patch-size) exceed the archive grid {ny} x {nx}: "
                              f"give a patch size of at most {min(ny, nx)}, or none for whole frames")
    ys, xs = np.arange(0, ny - py + 1, sy), np.arange(0, nx - px + 1, sx)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2).astype("int32")


def window_starts(meta: FrameMeta, spec: WindowSpec, frame_split: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, dict[str, int]]:
    """Candidate window starts, the reason each is skipped ('' if kept), and counts.

    A window spans frames ``[start, start + t_in + t_out)``. It is skipped for
    the first reason that applies: a frame is missing, its frames fall in
    more than one split, or its target frames are too dry.
    """
    length = len(meta.valid)
    starts = np.arange(0, max(length - spec.length + 1, 0), spec.stride, dtype="int64")
    ends = starts + spec.length
    missing = np.concatenate([[0], np.cumsum(~meta.valid)])
    changes = np.concatenate([[0], np.cumsum(frame_split[1:] != frame_split[:-1])])
    reason = np.full(len(starts), "", dtype=object)
    reason[missing[ends] - missing[starts] > 0] = "missing_frame"
    straddles = changes[ends - 1] - changes[starts] > 0
    reason[(reason == "") & straddles] = "straddles_split"
    if spec.wet is not None and meta.wet_fraction is not None and len(starts):
        wet = np.nan_to_num(np.asarray(meta.wet_fraction, dtype="float64"), nan=0.0)
        target_mean = np.lib.stride_tricks.sliding_window_view(wet, spec.t_out)[
            starts + spec.t_in].sum(axis=1) / spec.t_out
        reason[(reason == "") & (target_mean < spec.wet.min_fraction)] = "too_dry"
    counts = {r: int((reason == r).sum()) for r in SKIP_REASONS}
    return starts, reason, counts


def check_frames_for_windows(meta: FrameMeta, info: ArchiveInfo, spec: WindowSpec) -> None:
    """Refuses an archive that cannot give a single window: too few frames, or none valid.

    Either would otherwise plan nothing and write an empty windows store
    that training finds useless only later.
    """
    if len(meta.valid) < spec.length:
        raise WindowSpecError(
            f"archive {info.url} has {len(meta.valid)} frames, windows need {spec.length} (t_in "
            f"{spec.t_in} + t_out {spec.t_out}): ingest more frames, or shorten t_in or t_out")
    if not meta.valid.any():
        raise WindowSpecError(f"archive {info.url} has no valid frame (all {len(meta.valid)} are missing): "
                              "ingest frames with data first")


def check_some_window(plan: WindowPlan) -> None:
    """Refuses a plan that emits no window (every one skipped): it would write an empty windows store that
    training or evaluate find useless only later. The message gives each skip reason's fix."""
    if plan.counts["emitted"]:
        return
    skipped = {reason: count for reason, count in plan.counts["skipped"].items() if count}  # type: ignore
    raise WindowSpecError(f"archive {plan.info.url} gives no window: {plan.counts['planned']} planned, every "
                          f"one skipped ({', '.join(f'{r} {n}' for r, n in skipped.items())}); "
                          + "; ".join(SKIP_FIXES[r] for r in skipped))


def plan_windows(meta: FrameMeta, info: ArchiveInfo, spec: WindowSpec,
                 max_source_chunks: int = DEFAULT_MAX_SOURCE_CHUNKS) -> WindowPlan:
    """Plans a windowing job from metadata.

    Args:
        meta: per-frame metadata (see :func:`read_frame_meta`).
        info: the archive layout.
        spec: the validated window spec.
        max_source_chunks: source chunks a task may read (its memory bound);
            larger tasks mean less halo re-reading (read amplification about
            ``1 + 1 / max_source_chunks`` when the halo fits in one chunk).

    Returns:
        The plan; ``counts`` holds windows planned, emitted and skipped by
        reason, and samples per split.
    """
    if max_source_chunks < 1:
        raise WindowSpecError(f"max_source_chunks must be at least 1, got {max_source_chunks}")
    check_frames_for_windows(meta, info, spec)
    patches = patch_origins(info.grid.shape, spec)
    frame_split = frame_splits(meta.times, spec.split)
    starts, reason, skipped = window_starts(meta, spec, frame_split)
    kept = starts[reason == ""]
    samples: dict[str, SplitSamples] = {}
    for index, name in enumerate(SPLITS):
        split_starts = kept[frame_split[kept] == index] if len(kept) else kept
        samples[name] = SplitSamples(
            starts=np.repeat(split_starts, len(patches)),
            y0=np.tile(patches[:, 0], len(split_starts)),
            x0=np.tile(patches[:, 1], len(split_starts)),
        )
    counts: dict[str, object] = {
        "planned": len(starts),
        "emitted": len(kept),
        "skipped": skipped,
        "samples": {name: len(samples[name]) for name in SPLITS},
        "patches_per_window": len(patches),
    }
    tasks = _pack_tasks(samples, spec, info, max_source_chunks)
    return WindowPlan(spec=spec, info=info, samples=samples, counts=counts, tasks=tasks,
                      patches=patches, frame_split=frame_split)


def _output_chunks(samples: dict[str, SplitSamples], per_chunk: int) -> list[OutputChunk]:
    chunks = []
    for name in SPLITS:
        split = samples[name]
        for first in range(0, len(split), per_chunk):
            part = slice(first, first + per_chunk)
            chunks.append(OutputChunk(name, first, split.starts[part], split.y0[part], split.x0[part]))
    chunks.sort(key=lambda c: (int(c.starts[0]), SPLITS.index(c.split)))
    return chunks


def _needed_chunks(chunk: OutputChunk, length: int, time_chunk: int) -> set[int]:
    needed: set[int] = set()
    for start in np.unique(chunk.starts):
        needed.update(range(int(start) // time_chunk, (int(start) + length - 1) // time_chunk + 1))
    return needed


def _pack_tasks(samples: dict[str, SplitSamples], spec: WindowSpec, info: ArchiveInfo,
                max_source_chunks: int) -> tuple[Task, ...]:
    """Packs time-ordered output chunks into tasks of bounded source reads.

    A greedy pass finds the fewest tasks; the output chunks are then spread
    evenly over that many tasks (where every task still fits the bound), so
    no worker is left with one large task while the others idle.
    """
    chunks = _output_chunks(samples, spec.samples_per_chunk)
    needed = [_needed_chunks(chunk, spec.length, info.time_chunk) for chunk in chunks]
    bounds: list[int] = [0]  # task i owns chunks[bounds[i]:bounds[i + 1]]
    reads: set[int] = set()
    for i, chunk_needs in enumerate(needed):
        if i > bounds[-1] and len(reads | chunk_needs) > max_source_chunks:
            bounds.append(i)
            reads = set()
        reads |= chunk_needs
    bounds.append(len(chunks))
    even = [int(b) for b in np.linspace(0, len(chunks), len(bounds)).round()]
    if all(len(set().union(*needed[lo:hi])) <= max_source_chunks for lo, hi in itertools.pairwise(even)):
        bounds = even
    groups = [(chunks[lo:hi], set().union(*needed[lo:hi]))
              for lo, hi in itertools.pairwise(bounds) if hi > lo]
    owner = np.full(info.length, -1, dtype="int64")
    for task_index in range(len(groups) - 1, -1, -1):
        for chunk in groups[task_index][0]:
            if chunk.split == "train":
                for start in np.unique(chunk.starts)[::-1]:
                    owner[start:start + spec.length] = task_index
    return tuple(
        Task(index=i, source_chunks=tuple(sorted(task_needs)), outputs=tuple(task_chunks),
             stat_frames=np.flatnonzero(owner == i))
        for i, (task_chunks, task_needs) in enumerate(groups)
    )


def plan_from_archive(url: str, spec: WindowSpec,
                      max_source_chunks: int = DEFAULT_MAX_SOURCE_CHUNKS) -> WindowPlan:
    """Reads an archive's metadata and plans ``spec`` on it."""
    info = read_info(url)
    return plan_windows(read_frame_meta(info, spec), info, spec, max_source_chunks)


def seen_in_training(store: WindowsStore, metadata: Mapping[str, Any]) -> int:
    """How many of ``store``'s samples hold frames the model of ``metadata`` was trained on: frames inside
    its training windows' range that its own split put in train (its test windows hold none; another
    cut's, of other split settings, may: their scores then flatter it). 0 where the model does not say,
    or the windows come from another kind of archive than its training archives (grid, step, units)."""
    spec, ranges = metadata.get("window_spec"), metadata.get("training_range") or []
    if not spec or not ranges or not store.num_samples:
        return 0
    if describe_archive(store.url).to_dict() not in (metadata.get("training_archives") or []):
        return 0  # windows of another kind of archive (another grid): the times are another radar's
    split = WindowSpec.from_dict(json.loads(spec) if isinstance(spec, str) else spec).split
    (t_in, *_), (t_out, *_) = store.sample_shapes
    offsets = np.arange(-(t_in - 1), t_out + 1) * parse_time_step(store.time_step)
    frames = store.init_times()[:, None] + offsets  # every frame of every sample
    inside = np.zeros(frames.shape, dtype=bool)
    for span in ranges:
        inside |= (frames >= np.datetime64(span["start"])) & (frames <= np.datetime64(span["end"]))
    if split.method != "contiguous":  # hashed blocks: train and the other splits interleave in the range
        inside &= (frame_splits(frames.ravel(), split) == 0).reshape(frames.shape)
    return int(inside.any(axis=1).sum())
