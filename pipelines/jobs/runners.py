"""Beam runner selection shared by every job.

Local runs pin the FnApiRunner explicitly: the default DirectRunner tries to
download the Prism binary first, which fails offline. Every other Beam
runner (Flink, Spark, Dataflow, a portable job endpoint) is reached with
``kind="beam"`` and Beam's own pipeline flags, passed through unchanged
(``--runner=FlinkRunner --flink_master=host:8081``); the options a runner
cannot start without are checked first, so a missing one is a clear error,
not a traceback or a download attempt.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Literal
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineRunner

from nowcast.errors import InputError

RunnerKind = Literal["inmemory", "multiprocess", "dask", "beam"]
KINDS = ("inmemory", "multiprocess", "dask", "beam")
log = logging.getLogger(__name__)

# Per Beam runner, the options it needs (each entry: one of these names). Without an endpoint,
# Flink and Spark would start a local job server from a jar downloaded at run time.
REQUIRED_OPTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "FlinkRunner": (("flink_master",),),
    "SparkRunner": (("spark_master_url", "spark_rest_url"),),
    "PortableRunner": (("job_endpoint",),),
    "DataflowRunner": (("project",), ("region",), ("temp_location", "staging_location")),
}


class RunnerError(InputError):
    """Runner options that cannot work."""


class WorkerLostError(RunnerError):
    """A worker process of the multiprocess runner died while the pipeline ran (killed, out of memory)."""


def _flags(args: Sequence[str]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` pipeline flags by name (a bare flag maps to "").

    >>> _flags(["--runner=FlinkRunner", "--flink_master", "host:8081", "--streaming"])
    {'runner': 'FlinkRunner', 'flink_master': 'host:8081', 'streaming': ''}
    """
    flags: dict[str, str] = {}
    args = list(args)
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, sep, value = arg[2:].partition("=")
        if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
        flags[name] = value
    return flags


def _check_runner_name(runner: str) -> str:
    """Beam's own check of a runner's name, made before any store is written (Beam makes it at run time);
    returns the class name Beam reads it as (``flink`` is ``FlinkRunner``).

    >>> _check_runner_name("flink"), _check_runner_name("sparkrunner")
    ('FlinkRunner', 'SparkRunner')
    """
    known = StandardOptions.KNOWN_RUNNER_NAMES
    if "." in runner:
        module, _, name = runner.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            found = None
        if not (isinstance(found, type) and issubclass(found, PipelineRunner)):
            raise RunnerError(f"--runner={runner} is no PipelineRunner class that imports here; check the "
                              "dotted path and that its package is installed")
        return name
    spelt = {**{n.lower().removesuffix("runner"): n for n in known}, **{n.lower(): n for n in known}}
    if runner.lower() not in spelt:
        raise RunnerError(f"--runner={runner} is not a Beam runner: use one of {', '.join(known)}, or the "
                          "dotted path of a PipelineRunner class")
    return spelt[runner.lower()]


def check_beam_args(args: Sequence[str]) -> str:
    """The runner named by pass-through Beam flags, after checking the options it needs.

    Raises:
        RunnerError: no ``--runner``, a local runner that needs a download, a
            missing required option, or a runner whose package is not installed.
    """
    flags = _flags(args)
    runner = flags.get("runner", "")
    if not runner:
        raise RunnerError("the beam runner takes Beam's own pipeline flags and needs --runner=<Name>, e.g. "
                          "--runner=FlinkRunner --flink_master=host:8081 (after '--' on the command line)")
    short = _check_runner_name(runner)
    if short in ("DirectRunner", "PrismRunner"):
        raise RunnerError(f"--runner={runner} downloads the Prism binary at run time; for a local run use "
                          "the inmemory or multiprocess runner")
    missing = [" or ".join(f"--{o}" for o in options)
               for options in REQUIRED_OPTIONS.get(short, ()) if not any(flags.get(o) for o in options)]
    if missing:
        raise RunnerError(f"--runner={runner} needs {', '.join(missing)}; pass them after '--' as Beam flags")
    if short == "DataflowRunner":
        try:
            import apache_beam.runners.dataflow.dataflow_runner  # noqa: F401
            import google.cloud.storage  # noqa: F401
        except ImportError:
            raise RunnerError("--runner=DataflowRunner needs Beam's GCP packages: pip install "
                              "'apache-beam[gcp]' in this environment (and the workers' image)") from None
    return runner


DEFAULT_WORKERS = 2


@dataclasses.dataclass(frozen=True)
class RunnerOptions:
    """Which Beam runner a job uses.

    Attributes:
        kind: ``inmemory`` (FnApiRunner, one process), ``multiprocess``
            (FnApiRunner with ``workers`` processes), ``dask`` (DaskRunner on the
            dask.distributed scheduler at ``dask_address``), or ``beam`` (any
            Beam runner, named and configured by ``extra_args``).
        workers: worker processes for ``multiprocess``.
        dask_address: scheduler address for ``dask``.
        extra_args: Beam pipeline flags, passed through unchanged
            (``--runner=FlinkRunner``, ``--flink_master=...``).
    """

    kind: RunnerKind = "inmemory"
    workers: int = DEFAULT_WORKERS
    dask_address: str | None = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RunnerError(f"unknown runner {self.kind!r}; use one of {', '.join(KINDS)} (beam: any Beam "
                              "runner by its own flags, e.g. --runner=FlinkRunner --flink_master=host:8081)")
        if self.workers < 1:
            raise RunnerError(f"workers must be at least 1, got {self.workers}")
        if self.kind == "dask" and not self.dask_address:
            raise RunnerError("the dask runner needs dask_address (--dask-address), the scheduler's address, "
                              "e.g. tcp://127.0.0.1:8786")
        # options of another runner were ignored without a word (exit 0 on the in-memory runner)
        if self.dask_address and self.kind != "dask":
            raise RunnerError(f"dask_address ({self.dask_address}, --dask-address) is the dask runner's: "
                              f"choose the dask runner (--runner dask), or drop it ({self.kind} runs without "
                              "a scheduler)")
        if self.workers != DEFAULT_WORKERS and self.kind != "multiprocess":
            raise RunnerError(f"workers ({self.workers}, --workers) sets the multiprocess runner's "
                              f"processes: choose it (--runner multiprocess), or drop --workers (the "
                              f"{self.kind} runner does not use it)")
        if self.kind == "beam":
            check_beam_args(self.extra_args)
        elif "runner" in _flags(self.extra_args):
            raise RunnerError(f"--runner in the Beam flags needs the beam runner, not {self.kind!r}")

    def check_reachable(self, timeout_s: float = 10.0) -> None:
        """Refuses a dask scheduler that does not answer, before a job makes or changes a store: the dask
        client's own 30 s timeout came after the archive was created (an empty archive and an OSError
        traceback). Addresses of other protocols than tcp and tls are left to dask."""
        if self.kind != "dask" or not self.dask_address:
            return
        parts = urlsplit(self.dask_address if "://" in self.dask_address else f"tcp://{self.dask_address}")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:  # a port that is no number
            host = port = None
        if parts.scheme not in ("tcp", "tls") or not host or not port:
            return
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as error:
            raise RunnerError(f"the dask scheduler at {self.dask_address} does not answer "
                              f"({error.strerror or error}): start it (`dask scheduler`; `nowcast stack up` "
                              "starts one), or give its address with --dask-address; nothing was written"
                              ) from None

    def build(self) -> tuple[PipelineRunner | str, PipelineOptions]:
        """The runner and pipeline options for ``beam.Pipeline(runner, options=...)``."""
        args = list(self.extra_args)
        if self.kind in ("inmemory", "multiprocess"):
            from apache_beam.runners.portability.fn_api_runner import FnApiRunner

            if self.kind == "multiprocess":  # one process per worker, even for a single worker
                # the workers log at the driver's level: quiet unless the command asked for -v
                level = logging.getLevelName(max(logging.getLogger().getEffectiveLevel(), logging.DEBUG))
                args += ["--direct_running_mode=multi_processing",
                         f"--direct_num_workers={self.workers}",
                         f"--default_sdk_harness_log_level={level}"]
            return FnApiRunner(), PipelineOptions(args)
        if self.kind == "dask":
            from apache_beam.runners.dask.dask_runner import DaskRunner

            from nowcast.pipelines.jobs import dask_bundles

            dask_bundles.install()  # each partition returns its own outputs, not its process's
            if not {"dask_partition_size", "dask_npartitions"} & _flags(args).keys():
                # a task per partition: Beam's default of up to 128 elements in one partition ran a job of
                # a few hundred chunk tasks on one or two workers of the cluster
                args = ["--dask_partition_size=1", *args]
            return DaskRunner(), PipelineOptions([f"--dask_client_address={self.dask_address}", *args])
        options = PipelineOptions(args)
        return str(options.view_as(StandardOptions).runner), options


def run_pipeline(options: RunnerOptions, attach: Callable[[beam.Pipeline], object]) -> PipelineResult:
    """Builds a pipeline with ``attach``, runs it to completion, and releases the runner.

    The DaskRunner opens a dask client per run and leaves it connected; it is
    closed here so that a finished job holds no connection to the scheduler.
    The multiprocess runner is watched for a worker that dies (:func:`_run_watched`).

    Returns:
        The finished run (its metrics, where the runner has them: see :func:`counters`).

    Raises:
        WorkerLostError: a worker process of the multiprocess runner died; the others were stopped.
    """
    runner, pipeline_options = options.build()
    pipeline = beam.Pipeline(runner=runner, options=pipeline_options)
    attach(pipeline)
    if options.kind == "multiprocess":
        return _run_watched(pipeline)
    try:
        result = pipeline.run()
    except RuntimeError as error:  # Flink's and Spark's runners fetch a job server jar from the internet
        if "job server jar" not in str(error):
            raise
        raise RunnerError(f"the {runner} job server did not start: {str(error).split('. Also')[0]}; stage "
                          "that jar where Beam's message says, or pass --job_endpoint of a running job "
                          "server (with --runner=PortableRunner)") from None
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()
    return result


# Why each worker process of a multiprocess run died, in the order they died (see _watch_workers).
_lost_workers: list[str] = []
# The runner's handlers of the worker processes started and not yet released (see _release_runner).
_worker_handlers: weakref.WeakSet = weakref.WeakSet()


def _watch_workers() -> None:
    """Makes the FnApiRunner's worker threads record a worker process that dies.

    A worker killed part way (SIGKILL, the OOM killer) makes only the thread
    that started it raise; the runner itself waits for the dead worker's answer
    for ever, so a job would hang instead of failing.
    """
    from apache_beam.runners.portability import local_job_service

    worker = local_job_service.SubprocessSdkWorker
    if getattr(worker.run, "watched", False):
        return
    original = worker.run

    def run(self) -> None:
        try:
            original(self)
        except Exception as error:  # "Worker subprocess exited with return code -9": reported by the watch
            _lost_workers.append(str(error))

    run.watched = True  # type: ignore[attr-defined]
    worker.run = run  # type: ignore[method-assign]

    from apache_beam.runners.portability.fn_api_runner.worker_handlers import SubprocessSdkWorkerHandler

    start = SubprocessSdkWorkerHandler.start_worker

    def start_worker(self) -> None:
        _worker_handlers.add(self)
        start(self)

    SubprocessSdkWorkerHandler.start_worker = start_worker  # type: ignore[method-assign]


def _release_runner(handlers: list, error: Exception) -> None:
    """Ends the runner's waits on workers that are gone, so the thread running the pipeline fails and ends
    (releasing its gRPC server) instead of waiting for ever: each instruction waiting for an answer gets
    ``error``, and each data channel reads as closed, which the runner checks every second."""
    for handler in handlers:
        try:
            handler.control_conn.abort(error)
            handler.data_conn._closed = True  # what its close() sets, without close()'s blocking join
        except Exception:  # Beam's internals changed: the thread waits on, the run fails all the same
            log.warning("could not end the stopped run's wait on a worker", exc_info=True)


def _run_watched(pipeline: beam.Pipeline) -> PipelineResult:
    """Runs ``pipeline`` on the multiprocess runner in a thread while this one watches its workers.

    When a worker dies, or this thread is interrupted, the remaining workers are
    killed before the error leaves: a job's store lock is released on the way
    out, and no orphaned worker may write after that. The runner's waits on
    them are ended too (:func:`_release_runner`), so the pipeline's thread
    fails and ends in the background rather than waiting for ever.
    """
    _watch_workers()
    lost_before = len(_lost_workers)
    handlers_before = set(_worker_handlers)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            result = pipeline.run()
            result.wait_until_finish()
            outcome["result"] = result
        except BaseException as error:  # re-raised in the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="beam-multiprocess", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
            if len(_lost_workers) > lost_before and thread.is_alive():
                raise WorkerLostError(
                    f"a worker process of the multiprocess runner died part way ({_lost_workers[-1]}: "
                    "killed, or out of memory; check the system log); the run was stopped and its other "
                    "workers with it. What was written before is complete: rerun the job (fewer --workers "
                    "if memory ran out)")
    except BaseException as error:
        _kill_workers()
        _release_runner([h for h in _worker_handlers if h not in handlers_before],
                        RuntimeError(f"the run was stopped: {error}"))
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def _kill_workers() -> None:
    """SIGKILLs this process's Beam SDK worker processes (the multiprocess runner's)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if any("sdk_worker_main" in part for part in child.cmdline()):
                child.kill()
        except psutil.Error:  # gone already
            continue


def counters(result: PipelineResult, namespace: str) -> dict[str, int]:
    """Committed counter values of ``namespace``; empty where the runner has no metrics (DaskRunner)."""
    try:
        query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(namespace))
    except NotImplementedError:
        return {}
    return {c.key.metric.name: int(c.committed or 0) for c in query["counters"]}
