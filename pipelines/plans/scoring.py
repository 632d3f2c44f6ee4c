"""Scoring planning: which init times a request selects, which can be scored, how they are grouped.

Plain functions over the archive's metadata and flags; the scoring job
(:mod:`nowcast.pipelines.jobs.scoring`) runs them on the driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from nowcast.errors import InputError
from nowcast.pipelines.stores.archive import ArchiveInfo
from nowcast.pipelines.stores.timeaxis import format_time_step, time_index, to_datetime64


class ScoringError(InputError):
    """A scoring request that cannot run; nothing was written."""


@dataclasses.dataclass(frozen=True)
class ScoringSpec:
    """What to score, with which model, into which store; validated once, at construction.

    Attributes:
        archive: archive URL (inputs).
        forecasts: forecast store URL; created on the first run.
        models: registry root folder (``models/``).
        model: model name in the registry.
        version: model version, or ``latest`` (resolved once, recorded in the store).
        init_times: explicit init times (ISO timestamps on the archive axis).
        start: first init time of a range (inclusive); default the archive start.
        end: last init time of a range (inclusive); default the archive end.
        overwrite: rescore init times that are already written.
        overlap: tile overlap in pixels for grids larger than the model's patch
            (default a quarter of the patch).
        batch_size: most windows (init times) per RunInference batch.
        predict_batch_size: tiles per model call.
        threads_per_worker: TensorFlow threads per worker process (default: TensorFlow's,
            one per core); with several workers on one machine, cores / workers.
    """

    archive: str
    forecasts: str
    models: str
    model: str
    version: str = "latest"
    init_times: tuple[str, ...] | None = None
    start: str | None = None
    end: str | None = None
    overwrite: bool = False
    overlap: int | None = None
    batch_size: int = 4
    predict_batch_size: int = 16
    threads_per_worker: int | None = None

    def __post_init__(self) -> None:
        if self.init_times is not None and (self.start or self.end):
            raise ScoringError("give either init_times or a start/end range, not both")
        if self.init_times is not None and not self.init_times:
            raise ScoringError("init_times is empty; omit it to score every frame not yet written")
        for name in ("batch_size", "predict_batch_size"):
            if getattr(self, name) < 1:
                raise ScoringError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ScoringError(f"threads_per_worker must be at least 1, got {self.threads_per_worker}")
        if self.overlap is not None and self.overlap < 0:
            raise ScoringError(f"overlap must be non-negative, got {self.overlap}")
        try:
            bounds = [to_datetime64(t) for t in (self.start, self.end) if t]
            [to_datetime64(t) for t in self.init_times or ()]
        except ValueError as error:
            raise ScoringError(f"cannot read a timestamp: {error}; use ISO 8601, e.g. 2024-05-01T12:05") \
                from None
        if self.start and self.end and bounds[0] > bounds[1]:
            raise ScoringError(f"start {self.start} is after end {self.end}")


@dataclasses.dataclass(frozen=True)
class ScoreTask:
    """Init times whose last input frame lies in one archive time chunk (read together)."""

    block: int
    indices: tuple[int, ...]


def scoreable(valid: np.ndarray, t_in: int) -> np.ndarray:
    """Init times whose ``t_in`` input frames (``i - t_in + 1 .. i``) are all valid."""
    valid = np.asarray(valid, dtype=bool)
    counts = np.concatenate([[0], np.cumsum(valid, dtype="int64")])
    ok = np.zeros(valid.shape, dtype=bool)
    if len(valid) >= t_in:
        ok[t_in - 1:] = (counts[t_in:] - counts[:-t_in]) == t_in
    return ok


def select_indices(spec: ScoringSpec, archive: ArchiveInfo, follows: bool = False) -> np.ndarray:
    """Archive indices of the requested init times (all of the axis by default).

    Raises:
        ScoringError: an init time off the archive, or a range holding none of its frames
            (for a stream that ``follows`` the archive, an open range that starts after its last
            frame selects nothing yet: it waits for those frames; a batch run given one, a start
            with its year mistyped, scored nothing with exit 0).
    """
    if spec.init_times is not None:
        indices = []
        for t in spec.init_times:
            try:
                index = time_index(t, archive.start, archive.time_step)
            except ValueError as error:
                raise ScoringError(str(error)) from None
            if not 0 <= index < archive.length:
                raise ScoringError(f"init time {t} is outside the archive ({archive.start} .. "
                                   f"{archive.end}); ingest that frame first")
            indices.append(index)
        return np.unique(np.asarray(indices, dtype="int64"))
    first = 0
    last = archive.length - 1
    if spec.start:
        offset = (to_datetime64(spec.start) - archive.start) / archive.time_step
        first = max(first, int(np.ceil(offset)))
    if spec.end:
        last = min(last, int((to_datetime64(spec.end) - archive.start) // archive.time_step))
    waiting = follows and spec.end is None and first >= archive.length  # started before its first frame
    if last < first and not waiting:  # a range past either end, or between two frames, would score nothing
        if spec.start and spec.end and archive.start <= to_datetime64(spec.start) <= archive.end:
            raise ScoringError(f"no archive frame lies in {spec.start} .. {spec.end}: the archive's frames "
                               f"are {format_time_step(archive.time_step)} apart from {archive.start}; give "
                               "times on that step, or a wider range")
        raise ScoringError(f"no archive frame lies in {spec.start or 'its start'} .. "
                           f"{spec.end or 'its end'}: the archive {archive.url} covers {archive.start} .. "
                           f"{archive.end}; give a range that overlaps it, or ingest those frames first")
    return np.arange(first, last + 1, dtype="int64")


def plan_tasks(indices: Sequence[int], time_chunk: int) -> list[ScoreTask]:
    """Groups init indices by the archive time chunk of their last input frame."""
    blocks: dict[int, list[int]] = {}
    for index in sorted(int(i) for i in indices):
        blocks.setdefault(index // time_chunk, []).append(index)
    return [ScoreTask(block, tuple(members)) for block, members in sorted(blocks.items())]
