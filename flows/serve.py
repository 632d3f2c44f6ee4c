"""Deployments of every flow, and a local server that runs them (``nowcast server``).

``build_deployments(workdir)`` gives the five deployments with parameters
pointing at the stores under ``workdir``: ``ingest/local`` and
``forecast/local`` on a cron schedule (every 5 minutes by default), and
``backfill/local``, ``train/local`` and ``evaluate/local`` on demand.
``nowcast serve`` registers them with the Prefect API in ``PREFECT_API_URL``
and runs whatever is triggered in this process (Prefect's runner);
``nowcast server`` first starts ``prefect server start`` (SQLite under
``PREFECT_HOME``) on 127.0.0.1:4200 and a small file server for the PNG
artifacts, so the UI is at http://127.0.0.1:4200. Work-pool deployments for
process, Docker and Kubernetes (GPU) workers are in infra/prefect.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import http.server
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from nowcast.errors import InputError
from nowcast.files import make_folder
from nowcast.flows.artifacts import ROOT_ENV, URL_ENV
from nowcast.flows.evaluate import evaluate_flow
from nowcast.flows.forecast import backfill_flow, forecast_flow
from nowcast.flows.ingest import ingest_flow
from nowcast.flows.params import ROOTS_ENV, placeable, with_root, work_folder
from nowcast.flows.stopping import interrupt
from nowcast.flows.temporary_server import SERVER_SETTINGS, end_with_parent
from nowcast.flows.train import train_flow
from nowcast.flows.workdir import held
from nowcast.pipelines.stores.groups import check_writable, is_local, local_path

DEFAULT_CRON = "*/5 * * * *"
DEPLOYMENT = "local"
DEPLOYED = ("ingest", "forecast", "backfill", "train", "evaluate")  # build_deployments' flows, in its order


def stores(workdir: str | Path) -> dict[str, str]:
    """Absolute store locations under ``workdir``."""
    root = Path(workdir).resolve()
    return {"archive": str(root / "archive.zarr"), "windows": str(root / "windows.zarr"),
            "models": str(root / "models"), "forecasts": str(root / "forecasts.zarr")}


def _one_at_a_time(scheduled: bool = True):
    """A deployment's limit: one run. For a scheduled one, as infra/prefect.yaml sets it, a tick that finds
    one going is cancelled, not queued (the next tick catches up; served deployments queued late ticks,
    which then ran one after another finding nothing left). An on-demand run waits for the one going: with
    each deployment one at a time, the runner's processes (one per deployment) always leave the schedule
    its own (two backfills had taken both of the two, and the forecasts stopped until they ended)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    strategy = ConcurrencyLimitStrategy.CANCEL_NEW if scheduled else ConcurrencyLimitStrategy.ENQUEUE
    return ConcurrencyLimitConfig(limit=1, collision_strategy=strategy)


def build_deployments(workdir: str | Path = "runs/demo", cron: str = DEFAULT_CRON,
                      model_name: str = "convlstm") -> list:
    """The five deployments (prefect RunnerDeployment objects) for stores under ``workdir``."""
    root = Path(workdir).resolve()
    s = stores(root)
    model = {"models": s["models"], "model_name": model_name, "model_version": "latest"}
    tags = ["nowcast"]
    one_at_a_time, queued = _one_at_a_time(), _one_at_a_time(scheduled=False)
    return [
        ingest_flow.to_deployment(
            DEPLOYMENT, cron=cron, tags=tags, description="ingest new files from the incoming folder",
            concurrency_limit=one_at_a_time,  # a slow run and the next would both append the same new files
            parameters={"params": {"archive": s["archive"], "input_dir": str(root / "incoming")}}),
        forecast_flow.to_deployment(
            DEPLOYMENT, cron=cron, tags=tags, description="forecast the newest frames not yet forecast",
            concurrency_limit=one_at_a_time,
            parameters={"params": {"archive": s["archive"], "forecasts": s["forecasts"], **model}}),
        backfill_flow.to_deployment(
            DEPLOYMENT, tags=tags, description="forecast a historical range, resumable",
            concurrency_limit=queued,
            parameters={"params": {"archive": s["archive"], "forecasts": s["forecasts"], **model}}),
        train_flow.to_deployment(
            DEPLOYMENT, tags=tags, description="windows, fit, verify, register (promote if better)",
            concurrency_limit=queued,
            parameters={"params": {"archive": s["archive"], "windows": s["windows"], "models": s["models"],
                                   "workdir": str(root / "train"), "architecture": model_name}}),
        evaluate_flow.to_deployment(
            DEPLOYMENT, tags=tags, description="verification tables and pictures", concurrency_limit=queued,
            parameters={"params": {"windows": s["windows"], "workdir": str(root / "evaluate"),
                                   "archive": s["archive"], "forecasts": s["forecasts"], **model}}),
    ]


def check_serving(workdir: str | Path, cron: str, ports: tuple[int, ...] = ()) -> Path:
    """Refuses a work folder that cannot be one, a cron Prefect would refuse, and ports that are taken or
    out of range, before anything starts (each was a traceback, the last two after the server's start, or
    a wait of two minutes; a port held by another Prefect server was silently shared). Returns the work
    folder as the path it checked (``file://`` and ``~`` spelt out: served as given, they made a folder
    named ``file:``).

    Raises:
        InputError: naming the option and the fix.
    """
    from prefect.client.schemas.schedules import CronSchedule

    if not is_local(str(workdir)):  # made a folder 's3:'; checked before any request to the bucket
        raise InputError(f"--workdir {workdir}: the served stores, the incoming folder and the pictures lie "
                         "in a local folder; give one (a run's stores can still be in a bucket: give them in "
                         f"its parameters, with the bucket in {ROOTS_ENV})")
    folder = placeable(work_folder(str(workdir), "--workdir"))
    check_writable(folder, "--workdir")  # read-only: a traceback once the server had started
    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise InputError(f"--cron {cron!r} is not a cron expression Prefect takes: five fields, minute hour "
                         f"day month weekday, e.g. {DEFAULT_CRON!r}") from None
    if len(set(ports)) < len(ports):
        raise InputError(f"--port and --files-port are both {ports[0]}: give two ports")
    for port in ports:
        if not 0 < port < 65536:
            raise InputError(f"port {port} is not a TCP port (1 to 65535)")
        with socket.socket() as probe:
            # as the servers bind (uvicorn, http.server): the closed connections of a server stopped a
            # moment ago (TIME_WAIT, up to a minute) do not hold the port, a listening socket does
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise InputError(f"port {port} on 127.0.0.1 is in use (another `nowcast server`?): stop what "
                                 "holds it, or give another port") from None
    return Path(local_path(folder))


def serve_deployments(workdir: str | Path = "runs/demo", cron: str = DEFAULT_CRON, limit: int | None = None,
                      model_name: str = "convlstm") -> None:
    """Registers the deployments and runs triggered flow runs here until interrupted."""
    root = Path(workdir).resolve()
    make_folder(root / "incoming", "the served incoming folder")
    os.environ[ROOTS_ENV] = with_root(os.environ.get(ROOTS_ENV), str(root))
    built = build_deployments(root, cron, model_name)
    runner = _runner(limit or len(built))  # a process for each, as each runs one at a time
    deployments = [runner.add_deployment(each) for each in built]
    crash_lost_runs(deployments)  # left by a serving process that was killed
    try:
        asyncio.run(_served(runner))
    finally:
        crash_lost_runs(deployments)  # the runner has ended the runs it had in flight


IN_FLIGHT = ("PENDING", "RUNNING", "CANCELLING")
LOST = ("lost: the process serving it stopped before the run finished; the stores keep what its finished "
        "chunks wrote. Run it again (a backfill resumes where it stopped)")


def crash_lost_runs(deployment_ids: list) -> list[str]:
    """Marks Crashed the runs of these deployments that the server holds in flight but that no process on
    this machine runs (their server stopped under them), and returns their names.

    A run left Running kept the deployment's concurrency slot: after ``nowcast server`` was stopped with a
    forecast in flight and started again, every forecast run waited in AwaitingConcurrencySlot, and the lost
    run showed Running in the UI for good. Crashed releases the slot (Prefect's orchestration does). A run
    whose process still lives on (``PREFECT__FLOW_RUN_ID`` in its environment) is left to report its own
    end. The served deployments point at this machine's stores, so no other machine runs them. Never raises:
    at shutdown the server may be gone already, and the reason for the shutdown matters more.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            in_flight = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(deployment_ids))),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType[name] for name in IN_FLIGHT]))))
            here = running_here() if in_flight else set()  # one pass over the processes, not one per run
            lost = [run for run in in_flight if str(run.id) not in here]
            for run in lost:
                client.set_flow_run_state(run.id, Crashed(message=LOST), force=True)
    except Exception as error:  # a sweep that failed must not hide why serving stopped
        logging.getLogger(__name__).warning("could not check for lost flow runs: %s", error)
        return []
    for run in lost:
        logging.getLogger(__name__).warning("flow run %s (%s) marked Crashed: %s", run.name, run.id, LOST)
    return [run.name for run in lost]


def running_here() -> set[str]:
    """The ids of the flow runs that processes on this machine run (Prefect's runner and workers start
    each with ``PREFECT__FLOW_RUN_ID`` in its environment); processes it may not read are skipped."""
    import psutil

    ids = set()
    for process in psutil.process_iter():
        try:
            run = process.environ().get("PREFECT__FLOW_RUN_ID")
            if run and process.status() != psutil.STATUS_ZOMBIE:
                ids.add(run)
        except (psutil.Error, OSError):
            continue
    return ids


SERVER_CHECK_S = 10.0  # how often a serving process checks that its Prefect server answers


async def _served(runner) -> None:
    """Runs ``runner`` until it is stopped, saying once when its server stops answering and once when it
    answers again: the runner went on without a word (after one traceback) while no run could start."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    watch = asyncio.create_task(_watch_server(api)) if api else None
    try:
        await runner.start()
    finally:
        if watch is not None:
            watch.cancel()


async def _watch_server(api: str) -> None:
    log, lost = logging.getLogger(__name__), False
    while True:
        await asyncio.sleep(SERVER_CHECK_S)
        if lost == await asyncio.to_thread(answers, api):
            lost = not lost
            if lost:
                log.warning("the Prefect server at %s does not answer: no run starts until it is back; "
                            "still trying every %.0f s (Ctrl-C stops)", api, SERVER_CHECK_S)
            else:
                log.warning("the Prefect server at %s answers again: runs start as scheduled", api)


def _runner(limit: int):
    """Prefect's runner (what ``prefect.serve`` runs), stopped by SIGTERM as by Ctrl-C.

    Its own SIGTERM handler, which replaces the command's, stopped it
    gracefully and the command ended with 0 without a word, where Ctrl-C ends
    it with "stopped (SIGINT)" and 130; and a second SIGTERM while it stopped
    called ``sys.exit`` inside its event loop. Now either signal interrupts the
    loop (``stopping.interrupt``): the runner's shutdown still pauses the
    schedules and stops its flow runs, the command says which signal stopped it
    and exits with 128 + its number, and a second signal ends the shutdown.
    """
    from prefect.runner import Runner

    class _Runner(Runner):
        def handle_sigterm(self, *args: object, **kwargs: object) -> None:
            interrupt(signal.SIGTERM, None)

        async def _pause_schedules(self) -> None:
            """Pauses the deployments' schedules, as Prefect's runner does when it stops, unless the server
            does not answer: the runner's retries held a SIGTERM for 74 s, then it printed tracebacks."""
            from prefect.settings import PREFECT_API_URL

            api = PREFECT_API_URL.value()
            if api and not await asyncio.to_thread(answers, api):
                logging.getLogger(__name__).warning(
                    "the Prefect server at %s does not answer: the deployments' schedules stay as they are; "
                    "pause them once it is back (`prefect deployment pause NAME`, or the UI) if no other "
                    "process is to serve them", api)
                return
            await super()._pause_schedules()

    logging.getLogger("asyncio").addFilter(_no_cancelled_handlers)
    logging.getLogger("prefect.FlowRunCancellingObserver").addFilter(_no_lost_connection_traceback)
    return _Runner(pause_on_shutdown=True, limit=limit)


def _no_cancelled_handlers(record: logging.LogRecord) -> bool:
    """Drops asyncio's report of a cancelled callback: the runner cancels its control channel's connection
    handlers when it stops, and asyncio logged each as an ERROR with two tracebacks after the command's
    "stopped (SIGTERM)"; nothing had failed."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _no_lost_connection_traceback(record: logging.LogRecord) -> bool:
    """Keeps Prefect's warning that its connection to the server closed, less the traceback (unless -vv):
    the server going away is said in a line (:func:`_watch_server`), not in ten."""
    from websockets.exceptions import ConnectionClosed

    lost = record.exc_info and isinstance(record.exc_info[1], OSError | ConnectionClosed)
    if lost and not logging.getLogger().isEnabledFor(logging.DEBUG):
        record.exc_info, record.exc_text = None, None
    return True


def start_file_server(folder: str | Path, port: int) -> http.server.ThreadingHTTPServer:
    """Serves the PNG pictures under ``folder`` over http on 127.0.0.1, for the UI's image artifacts."""
    handler = functools.partial(_PicturesHandler, directory=str(Path(folder).resolve()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _PicturesHandler(http.server.SimpleHTTPRequestHandler):
    """A PNG file under the folder, and nothing else: no folder listing, no other file (a store's chunks,
    a model, the incoming radar files), no link leading out. It served the work folder's parent, listing
    and all, to any program on the machine."""

    def send_head(self):
        path = Path(self.translate_path(self.path))
        try:
            found = path.resolve(strict=True)
        except OSError:
            found = None
        if (found is None or not found.is_file() or found.suffix.lower() != ".png"
                or not found.is_relative_to(self.directory)):
            self.send_error(http.HTTPStatus.NOT_FOUND, "only the PNG pictures under the served folder")
            return None
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:
        return


def stop_process(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Terminates a child (SIGTERM), then kills it if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def answers(api_url: str, timeout_s: float = 2.0) -> bool:
    """Whether the Prefect API at ``api_url`` answers now: its health check, or any answer short of a
    server error (one that asks for credentials, as Prefect Cloud's may, is a server that is there)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


def wait_for_api(api_url: str, timeout_s: float = 120.0, server: subprocess.Popen | None = None,
                 log: Path | None = None) -> None:
    """Waits until ``<api_url>/health`` answers, or ``server``, the process that serves it, has exited
    (its messages above, or the last lines of ``log``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server is not None and server.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-5:] if log is not None else []
            said = "its messages are above" if log is None else f"it said: {' | '.join(last)} (all in {log})"
            raise InputError(f"the Prefect server for {api_url} exited ({server.returncode}) before it "
                             f"answered; {said}")
        if answers(api_url):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Prefect server at {api_url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)


def run_local_server(workdir: str | Path = "runs/demo", port: int = 4200, files_port: int = 4201,
                     cron: str = DEFAULT_CRON, model_name: str = "convlstm") -> None:
    """``prefect server start`` (SQLite) + artifact file server + served deployments, until Ctrl-C; one
    such server per Prefect home (its database and deployments)."""
    from prefect.settings import PREFECT_HOME

    root = check_serving(workdir, cron, (port, files_port))
    home = Path(PREFECT_HOME.value())
    check_writable(str(home), "PREFECT_HOME")  # under a file: "the server exited (3)", and nothing more
    with held(home / "nowcast-server", str(home), "the Prefect home",
              "stop that `nowcast server` (its deployments are this one's: a second server took them over, "
              "then paused them as it stopped), or give this one its own PREFECT_HOME"):
        _run_local_server(root, port, files_port, cron, model_name,
                          home / "nowcast-server.log")


def _run_local_server(root: Path, port: int, files_port: int, cron: str, model_name: str, log: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    make_folder(root, "--workdir")
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **SERVER_SETTINGS, "PREFECT_UI_API_URL": api}
    # bound at once, as checked: bound after the Prefect server answered, the port had been taken meanwhile
    # (by a connection's ephemeral port) and the command ended with "Address already in use"
    files = start_file_server(root, files_port)
    os.environ.setdefault(URL_ENV, f"http://127.0.0.1:{files_port}/")
    os.environ[ROOT_ENV] = str(root)  # the URLs name paths under the folder served
    # ends with this process, however it ends: a SIGKILL left the server holding the port for the next run
    # its banner and request log go to a file unless -v (a 15-line banner was the command's output)
    shown = logging.getLogger().isEnabledFor(logging.INFO)
    with contextlib.nullcontext(None) if shown else open(log, "ab") as output:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, preexec_fn=end_with_parent, stdout=output,
                                  stderr=None if shown else subprocess.STDOUT,
                                  start_new_session=True)  # Ctrl-C reaches this process alone, which
    # stops the server last: stopped with it, the runner's shutdown (pausing the deployments, crashing lost
    # runs) met a server gone, and printed asyncio's ConnectError tracebacks
    signal.signal(signal.SIGTERM, interrupt)  # a plain kill stops the server too, as Ctrl-C does
    try:
        wait_for_api(api, server=server, log=None if shown else log)
        print(f"Prefect UI: http://127.0.0.1:{port}  (deployments: {', '.join(DEPLOYED)} / {DEPLOYMENT}); "
              f"stores under {root}; Ctrl-C stops everything", flush=True)
        with temporary_settings({PREFECT_API_URL: api}):
            serve_deployments(root, cron, model_name=model_name)
    finally:
        stop_process(server)
        files.shutdown()
