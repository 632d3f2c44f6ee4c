"""Scoring planning: which init times can be scored and how they are grouped (no store, no model)."""

from __future__ import annotations

import numpy as np

from nowcast.pipelines.plans.scoring import plan_tasks, scoreable


def test_scoreable_needs_t_in_valid_frames():
    valid = np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)
    np.testing.assert_array_equal(scoreable(valid, 3), [0, 0, 1, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(scoreable(valid[:2], 3), [0, 0])


def test_tasks_group_init_times_by_archive_chunk():
    tasks = plan_tasks([17, 3, 8, 9, 2, 23], 8)
    assert [(t.block, t.indices) for t in tasks] == [(0, (2, 3)), (1, (8, 9)), (2, (17, 23))]
