"""Ingest planning: where frames go on the archive's axis and which chunks a batch touches."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast.pipelines.plans.ingest import IngestError, frame_indices, plan_chunks
from nowcast.pipelines.sources.base import SourceItem


def test_plan_groups_frames_by_time_chunk():
    start = np.datetime64("2024-01-01T00:00", "s")
    step = np.timedelta64(300, "s")
    items = [SourceItem(start + k * step, f"f{k}") for k in (0, 1, 5, 9)]
    tasks = plan_chunks(frame_indices(items, start, step), time_chunk=4, length=10)
    assert [(t.first_index, t.count, [i for i, _ in t.frames]) for t in tasks] == [
        (0, 4, [0, 1]), (4, 4, [5]), (8, 2, [9])]


def test_frame_indices_refuse_off_axis_and_early_times():
    start = np.datetime64("2024-01-01T00:00", "s")
    step = np.timedelta64(300, "s")
    with pytest.raises(IngestError, match="not on the archive's PT5M axis"):
        frame_indices([SourceItem(start + np.timedelta64(60, "s"), "odd")], start, step)
    with pytest.raises(IngestError, match="before the archive start"):
        frame_indices([SourceItem(start - step, "early")], start, step)
