"""Beam runner selection shared by every job.

Local runs pin the FnApiRunner explicitly: the default DirectRunner tries to
download the Prism binary first, which fails offline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineRunner

RunnerKind = Literal["inmemory", "multiprocess", "dask", "flink", "dataflow"]


class RunnerError(ValueError):
    """Runner options that cannot work."""


@dataclasses.dataclass(frozen=True)
class RunnerOptions:
    """Which Beam runner a job uses.

    Attributes:
        kind: ``inmemory`` (FnApiRunner, one process), ``multiprocess``
            (FnApiRunner with ``workers`` processes), ``dask`` (DaskRunner on the
            dask.distributed scheduler at ``dask_address``), or ``flink`` /
            ``dataflow`` (portable runners configured by ``extra_args``).
        workers: worker processes for ``multiprocess``.
        dask_address: scheduler address for ``dask``.
        extra_args: further Beam pipeline arguments (``--flink_master=...``).
    """

    kind: RunnerKind = "inmemory"
    workers: int = 2
    dask_address: str | None = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("inmemory", "multiprocess", "dask", "flink", "dataflow"):
            raise RunnerError(
                f"unknown runner {self.kind!r}; use inmemory, multiprocess, dask, flink or dataflow"
            )
        if self.workers < 1:
            raise RunnerError(f"workers must be at least 1, got {self.workers}")
        if self.kind == "dask" and not self.dask_address:
            raise RunnerError("the dask runner needs dask_address (e.g. tcp://127.0.0.1:8786)")

    def build(self) -> tuple[PipelineRunner | str, PipelineOptions]:
        """The runner and pipeline options for ``beam.Pipeline(runner, options=...)``."""
        args = list(self.extra_args)
        if self.kind in ("inmemory", "multiprocess"):
            from apache_beam.runners.portability.fn_api_runner import FnApiRunner

            if self.kind == "multiprocess":  # one process per worker, even for a single worker
                args += ["--direct_running_mode=multi_processing",
                         f"--direct_num_workers={self.workers}"]
            return FnApiRunner(), PipelineOptions(args)
        if self.kind == "dask":
            from apache_beam.runners.dask.dask_runner import DaskRunner

            return DaskRunner(), PipelineOptions([f"--dask_client_address={self.dask_address}", *args])
        if self.kind == "flink":
            return "PortableRunner", PipelineOptions(["--runner=FlinkRunner", *args])
        return "DataflowRunner", PipelineOptions(args)


def run_pipeline(options: RunnerOptions, attach: Callable[[beam.Pipeline], object]) -> PipelineResult:
    """Builds a pipeline with ``attach``, runs it to completion, and releases the runner.

    The DaskRunner opens a dask client per run and leaves it connected; it is
    closed here so that a finished job holds no connection to the scheduler.

    Returns:
        The finished run (its metrics, where the runner has them: see :func:`counters`).
    """
    runner, pipeline_options = options.build()
    pipeline = beam.Pipeline(runner=runner, options=pipeline_options)
    attach(pipeline)
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()
    return result


def counters(result: PipelineResult, namespace: str) -> dict[str, int]:
    """Committed counter values of ``namespace``; empty where the runner has no metrics (DaskRunner)."""
    try:
        query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(namespace))
    except NotImplementedError:
        return {}
    return {c.key.metric.name: int(c.committed or 0) for c in query["counters"]}
