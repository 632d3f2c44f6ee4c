"""The Beam jobs: each a PTransform plus a ``run(spec, runner)`` entry point, and their runners.

A flow, the command line and a test all run these same entry points.
"""

from nowcast.pipelines.jobs.ingest import IngestResult, IngestSpec, WriteChunks, ingest_items
from nowcast.pipelines.jobs.ingest import run as run_ingest
from nowcast.pipelines.jobs.runners import RunnerError, RunnerOptions, run_pipeline
from nowcast.pipelines.jobs.scoring import ScoreInitTimes, ScoringResult
from nowcast.pipelines.jobs.scoring import run as run_scoring
from nowcast.pipelines.jobs.scoring_stream import StreamResult, StreamSpec, run_stream
from nowcast.pipelines.jobs.watch import WatchResult, WatchSpec, run_watch
from nowcast.pipelines.jobs.windows import CutWindows, WindowJob, WindowResult, run_in_process
from nowcast.pipelines.jobs.windows import run as run_windows

__all__ = [
    "CutWindows", "IngestResult", "IngestSpec", "RunnerError", "RunnerOptions", "ScoreInitTimes",
    "ScoringResult", "StreamResult", "StreamSpec", "WatchResult", "WatchSpec", "WindowJob", "WindowResult",
    "WriteChunks", "ingest_items", "run_in_process", "run_ingest", "run_pipeline", "run_scoring",
    "run_stream", "run_watch", "run_windows",
]
