"""Pure planning: numpy and store metadata in, plain data out; no Beam, no Keras.

Window specs and plans, where ingest frames go, which init times to score.
"""

from nowcast.pipelines.plans.ingest import ChunkTask, IngestError, frame_indices, plan_chunks
from nowcast.pipelines.plans.scoring import (
    ScoreTask,
    ScoringError,
    ScoringSpec,
    plan_tasks,
    scoreable,
    select_indices,
)
from nowcast.pipelines.plans.window_spec import SplitSpec, WetFilter, WindowSpec, WindowSpecError
from nowcast.pipelines.plans.windows import WindowPlan, plan_from_archive, plan_windows

__all__ = [
    "ChunkTask", "IngestError", "ScoreTask", "ScoringError", "ScoringSpec", "SplitSpec", "WetFilter",
    "WindowPlan", "WindowSpec", "WindowSpecError", "frame_indices", "plan_chunks", "plan_from_archive",
    "plan_tasks", "plan_windows", "scoreable", "select_indices",
]
