"""The deployment stack as separate processes (nowcast.flows.stack): up, a deployment run, down.

Everything here is real: Debian's PostgreSQL behind ``prefect server start``,
deployments registered by ``prefect deploy`` from infra/prefect.yaml, a
``prefect worker`` process that runs them, moto's S3 server holding the
stores, and ``dask scheduler``/``dask worker`` processes (each in its own
folder with its own TMPDIR) running the Beam job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nowcast.flows import stack
from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.sources import get_source
from nowcast.processes import alive
from tests.pipelines.jobs.ingest_helpers import snapshot

SYNTHETIC = {"synthetic_frames": 24, "synthetic_size": 32, "time_chunk": 8, "seed": 3}

CLIENT = """
import json, sys, time
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

params = json.loads(sys.argv[1])
for attempt in range(3):  # a run that lands on the schedule's own tick is cancelled (CANCEL_NEW): again
    run = run_deployment("ingest/scheduled", parameters={"params": params}, timeout=600)
    if not (run.state.is_cancelled() and "concurrency limit" in (run.state.message or "")):
        break
    time.sleep(10)
with get_client(sync_client=True) as client:
    names = sorted(f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments())
    pools = {d.work_pool_name for d in client.read_deployments()}
    pulls = sorted({json.dumps(d.pull_steps) for d in client.read_deployments()})
print(json.dumps({"state": run.state.type.value, "message": run.state.message, "id": str(run.id),
                  "deployments": names, "pools": sorted(pools), "pull_steps": pulls}))
"""


def _s3_snapshot(fs, prefix: str) -> dict[str, str]:
    return {key.removeprefix(prefix + "/"): hashlib.sha256(fs.cat_file(key)).hexdigest()
            for key in fs.find(prefix)}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """(folder, state): the stack up for this module's tests; afterwards every process is gone."""
    folder = tmp_path_factory.mktemp("deployed")
    with pytest.MonkeyPatch.context() as patch:  # the stack's processes take their settings from here
        # the scheduler service inserts a new schedule's runs within 5 s (default 60 s) and the worker
        # polls every 2 s (default 10 s): the test's 30-second schedules then run on time
        patch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "5")
        patch.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")
        state = stack.up(folder / "stack")
    try:
        yield folder, state
    finally:
        stopped = stack.down(folder / "stack")
    assert set(stopped) == {*state["pids"], "postgres"}  # type: ignore[misc]
    for pid in state["pids"].values():  # type: ignore[attr-defined]
        assert not alive(pid)  # exited: gone, or a zombie its parent has not reaped yet
    assert not (folder / "stack" / stack.STATE_FILE).exists()


@pytest.mark.slow
def test_a_deployment_runs_on_the_stack_worker_into_s3_through_the_dask_cluster(deployed, tmp_path):
    folder, state = deployed
    env = stack.client_env(state)
    assert str(state["database"]).startswith("postgresql+asyncpg://")
    params = {"archive": f"{env['NOWCAST_STORES']}/dask/archive.zarr", "input_dir": None, **SYNTHETIC,
              "runner": {"kind": "dask", "dask_address": env["NOWCAST_DASK_ADDRESS"]}}
    done = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(params)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["state"] == "COMPLETED", report
    assert report["deployments"] == [  # registered by prefect deploy from infra/prefect.yaml
        "backfill/on-demand-cpu", "evaluate/on-demand", "forecast/scheduled-cpu", "ingest/scheduled",
        "train/on-demand-cpu"]
    assert report["pools"] == [stack.POOL]
    # no pull step: `prefect deploy` had added one into the folder it ran in, and a run failed once it moved
    assert report["pull_steps"] == ["[]"]
    worker_log = (folder / "stack" / "prefect-worker.log").read_text()
    assert report["id"] in worker_log  # the separate worker process ran it

    fs = stack.s3_filesystem(env)
    remote = _s3_snapshot(fs, f"{stack.BUCKET}/dask/archive.zarr")
    source = get_source("synthetic", shape=(32, 32), n_frames=24, seed=3, density=2.0)
    local = str(tmp_path / "local.zarr")
    run(IngestSpec(archive=local, source=source, time_chunk=8))  # the local runner, on local disk
    assert remote == snapshot(local)  # byte-identical: cluster + object store against the local runner
    # the check reports went away; the writers' lock stays beside the store (docs/operations.md)
    assert fs.ls(f"{stack.BUCKET}/dask") == [f"{stack.BUCKET}/dask/archive.zarr",
                                             f"{stack.BUCKET}/dask/archive.zarr.lock"]
    _windows_and_scoring_match_the_local_runner(env, fs, local, tmp_path)


def _without_location(digests: dict[str, str], remote: dict[str, str]) -> tuple[dict, dict]:
    """Both snapshots without the root metadata, which names the store's and its archive's location."""
    return ({k: v for k, v in digests.items() if k != "zarr.json"},
            {k: v for k, v in remote.items() if k != "zarr.json"})


def _windows_and_scoring_match_the_local_runner(env, fs, local_archive: str, tmp_path) -> None:
    """The windows and scoring jobs on the stack's dask cluster with S3 stores, against the local runner.

    The jobs' drivers run here (the launcher); the work runs in the dask worker
    processes, which reach the stores and the model registry only through S3.
    """
    from nowcast.pipelines.jobs import scoring
    from nowcast.pipelines.jobs.runners import RunnerOptions
    from nowcast.pipelines.jobs.windows import WindowJob
    from nowcast.pipelines.jobs.windows import run as run_windows
    from nowcast.pipelines.plans.scoring import ScoringSpec
    from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
    from nowcast.pipelines.stores.groups import open_group
    from tests.pipelines.jobs.scoring_helpers import MODEL, save_tiny_model, synthetic_stats

    with stack.s3_client(env):  # this process is the jobs' launcher
        stores = f"{env['NOWCAST_STORES']}/dask"
        cluster = RunnerOptions("dask", dask_address=env["NOWCAST_DASK_ADDRESS"])
        split = SplitSpec(block="PT1H", fractions=(0.5, 0.5, 0.0), method="contiguous")
        spec = WindowSpec(channels=("precip",), target="precip", t_in=3, t_out=2, stride=1,
                          patch_size=(16, 16), split=split, samples_per_chunk=8)
        run_windows(WindowJob(archive=f"{stores}/archive.zarr", output=f"{stores}/windows.zarr", spec=spec),
                    cluster)
        run_windows(WindowJob(archive=local_archive, output=str(tmp_path / "windows.zarr"), spec=spec),
                    RunnerOptions("inmemory"))
        local, remote = _without_location(snapshot(str(tmp_path / "windows.zarr")),
                                          _s3_snapshot(fs, f"{stack.BUCKET}/dask/windows.zarr"))
        assert local == remote
        assert len(local) > 10

        models = f"{stores}/models"  # the registry too lives on S3: the workers load the model from there
        save_tiny_model(models, local_archive, synthetic_stats(24, (32, 32), seed=3), patch=(16, 16))
        for archive, forecasts, runner in ((f"{stores}/archive.zarr", f"{stores}/forecasts.zarr", cluster),
                                           (local_archive, str(tmp_path / "forecasts.zarr"),
                                            RunnerOptions("inmemory"))):
            spec_ = ScoringSpec(archive=archive, forecasts=forecasts, models=models, model=MODEL)
            result = scoring.run(spec_, runner)
            assert result.scored == 22
        local, remote = _without_location(snapshot(str(tmp_path / "forecasts.zarr")),
                                          _s3_snapshot(fs, f"{stack.BUCKET}/dask/forecasts.zarr"))
        assert local == remote
        attrs = [dict(open_group(url).attrs) for url in (str(tmp_path / "forecasts.zarr"),
                                                         f"{stores}/forecasts.zarr")]
        assert {k: v for k, v in attrs[0].items() if k != "archive_url"} == \
            {k: v for k, v in attrs[1].items() if k != "archive_url"}  # the same archive fingerprint


def test_stack_commands_without_a_stack_say_so(tmp_path, capsys):
    from nowcast.flows.cli import main

    assert main(["stack", "status", "--folder", str(tmp_path)]) == 2
    assert "no stack is up" in capsys.readouterr().err
    assert main(["stack", "down", "--folder", str(tmp_path)]) == 0
    assert "no stack was up" in capsys.readouterr().out
    (tmp_path / stack.STATE_FILE).write_text('{"folder": "/tm')  # cut short by a full disk
    for action in ("status", "down"):
        assert main(["stack", action, "--folder", str(tmp_path)]) == 2
        assert "stack.json cannot be read" in capsys.readouterr().err


@pytest.mark.fault("command line", "`stack up` with a folder that is a file, lies under one, or that the "
                   "system cannot make (under /proc)",
                   "exit 2 naming the folder, nothing started (a traceback, exit 1)")
def test_a_stack_folder_that_cannot_be_written_is_refused(tmp_path, capsys):
    from nowcast.flows.cli import main

    (tmp_path / "afile").write_text("")
    for folder in ("afile", "afile/sub"):
        assert main(["stack", "up", "--folder", str(tmp_path / folder)]) == 2
        assert f"the stack folder {tmp_path / folder} cannot be written" in capsys.readouterr().err
    assert main(["stack", "up", "--folder", "/proc/nowcast-stack"]) == 2  # root passes the access check
    assert "the stack folder /proc/nowcast-stack cannot be" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.fault("command line", "`stack up` killed (SIGKILL) while the Prefect server starts",
                   "`stack status` exits 2 saying the up did not finish (no output, exit 0); `stack down` "
                   "stops every service it had started (the Prefect server, in its own session and recorded "
                   "only once ready, was left running)")
def test_a_stack_up_killed_while_starting_leaves_nothing_to_down(tmp_path, capsys):
    from nowcast.flows.cli import main
    from nowcast.processes import alive

    folder = tmp_path / "stack"
    up = subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", "stack", "up", "--folder", str(folder)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, server = time.monotonic() + 120, None
    try:  # killed as soon as it has started the Prefect server, long before that answers
        while server is None and time.monotonic() < deadline and up.poll() is None:
            server = _child_running(up.pid, b"server\x00start")
            time.sleep(0.05)
        assert server is not None, "no Prefect server was started"
    finally:
        up.kill()
        up.wait()
    assert alive(server)
    assert main(["stack", "status", "--folder", str(folder)]) == 2  # it said nothing, exit 0
    assert "its `stack up` did not finish" in capsys.readouterr().err
    stack.down(folder)
    assert not alive(server)
    assert not (folder / stack.STATE_FILE).exists()


def _child_running(parent: int, command: bytes) -> int | None:
    """The pid of a child of ``parent`` whose command line holds ``command`` (NUL-separated), or None."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent \
                    and command in Path(f"/proc/{entry}/cmdline").read_bytes():
                return int(entry)
    return None


@pytest.mark.fault("command line", "`stack down` or `status` with a stack.json whose processes are gone and "
                   "whose pids now name other processes (a crash, a reboot)",
                   "no process that is not the stack's is signalled (down SIGKILLed whatever had the "
                   "number); status exits 2 saying the stack is not whole; down clears the state")
def test_a_stale_stack_state_signals_no_other_process(tmp_path, capsys):
    from nowcast.flows.cli import main

    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        state = {"folder": str(tmp_path), "ports": {}, "env": {"PREFECT_API_URL": "http://127.0.0.1:9/api"},
                 "pids": {"s3": bystander.pid}, "started": {"s3": "another boot:1"},
                 "postgres_data": str(tmp_path / "pg")}
        (tmp_path / stack.STATE_FILE).write_text(json.dumps(state))
        assert main(["stack", "status", "--folder", str(tmp_path)]) == 2
        assert "is not whole (s3 no longer runs; PostgreSQL does not run; its `stack up` did not finish)" \
            in capsys.readouterr().err
        assert main(["stack", "down", "--folder", str(tmp_path)]) == 0
        assert "was no longer running; its state is cleared" in capsys.readouterr().out
        assert bystander.poll() is None
        assert not (tmp_path / stack.STATE_FILE).exists()
    finally:
        bystander.kill()
        bystander.wait()


@contextlib.contextmanager
def _ports_taken(count: int):
    """``count`` ports of 127.0.0.1 held for the block by bound sockets, as an outgoing connection holds its
    source port: what a server finds when another process took its port between the probe and its start."""
    import socket

    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        yield ports


@pytest.mark.fault("command line", "`stack up`: the port probed free for a service (object store, database, "
                   "Prefect server, dask scheduler) is taken by another process before the service binds it",
                   "the service starts again on another free port; once every try lost its port, a "
                   "StackError quotes the service's log line (CI saw moto exit 1, naming only its log)")
def test_a_service_that_lost_its_port_starts_on_another(tmp_path, monkeypatch):
    from nowcast.processes import free_port

    env = {**os.environ, **stack.DUMMY_CREDENTIALS}
    with _ports_taken(1) as taken:
        offered = iter([taken[0], free_port()])
        monkeypatch.setattr(stack, "free_port", lambda: next(offered))
        endpoint, moto = stack.start_s3(tmp_path, env)
    try:
        assert not endpoint.endswith(f":{taken[0]}")
        assert stack.s3_filesystem({**env, "AWS_ENDPOINT_URL": endpoint}).ls(stack.BUCKET) == []
        assert "in use" in (tmp_path / "s3.log").read_text()  # the first try's refusal, kept in the log
    finally:
        moto.terminate()
        moto.wait(10)
    with _ports_taken(3) as taken:
        offered = iter(taken)
        monkeypatch.setattr(stack, "free_port", lambda: next(offered))
        with pytest.raises(stack.PortTakenError, match=r"dask scheduler exited with 1 \(.*in use.*\); see "):
            _start_dask_and_stop_it(tmp_path)


def _start_dask_and_stop_it(folder) -> None:
    """``start_dask``, and where it starts (a test expecting it not to), no cluster left running."""
    _, started = stack.start_dask(folder, 1, dict(os.environ))
    for process in started:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)  # reaped, not left behind as a zombie


def test_free_ports_lie_below_the_ephemeral_range():
    """Outgoing connections take their source ports from the ephemeral range, so a port below it cannot be
    lost to one between the probe and the server's start."""
    from nowcast.processes import _ephemeral_low, free_port

    ports = {free_port() for _ in range(20)}
    assert all(20000 <= port < _ephemeral_low() for port in ports), ports
    assert len(ports) > 1


def test_processes_seeded_alike_pick_different_ports():
    """Two test processes that had seeded Python's generator alike (keras.utils.set_random_seed does) picked
    the same "free" ports, and the second `nowcast server` found its port taken."""
    import random

    from nowcast.processes import free_port

    random.seed(1)
    first = [free_port() for _ in range(3)]
    random.seed(1)
    assert [free_port() for _ in range(3)] != first


# --- the life cycle under a live schedule -------------------------------------------------------

EVERY_S = 30  # the test's schedule for ingest and forecast (infra/prefect.yaml: every 5 minutes)
LIFE = {"size": 32, "density": 40.0, "seed": 5, "hours": 9}  # 5-minute frames, one file per hour
# a planned roll-out: one epoch of a small model on a few hours decides nothing about skill, and whether a
# version beats LK extrapolation is tested in test_flows.py; here the promotion itself is what the schedule
# must survive; on the advection base, as before lagrangian_ar became the default (with it the test's call
# took 478 s here instead of 393 s, and 645 s in CI, for a check that does not look at skill)
TRAIN = {"epochs": 1, "filters": [4, 4], "lstm_units": 4, "base": "advection", "promote": "always"}
WAIT_S = 600  # a liveness bound for each stage, not a speed check
FIRST_TICK_S = 8  # a new schedule's first run: the scheduler service inserts runs every 5 s (the fixture)


def _hourly_files(tmp_path) -> list:
    """The synthetic event as CF NetCDF files, one per hour: what an upstream system drops off."""
    import xarray as xr

    archive = str(tmp_path / "upstream.zarr")
    source = get_source("synthetic", shape=(LIFE["size"],) * 2, n_frames=12 * LIFE["hours"],
                        seed=LIFE["seed"], density=LIFE["density"])
    run(IngestSpec(archive=archive, source=source, time_chunk=12))
    upstream = xr.open_zarr(archive)
    files = []
    for hour in range(LIFE["hours"]):
        part = upstream.isel(time=slice(12 * hour, 12 * hour + 12))
        path = tmp_path / f"{str(part.time.values[0])[:13].replace('-', '')}.nc"
        part[[name for name in part.data_vars if name != "valid"]].load().to_netcdf(path)
        files.append(path)
    return files


class Life:
    """The test as an operator and an upstream system: files arrive, runs are triggered through the API."""

    def __init__(self, env: dict[str, str]):
        self.env, self.stores = env, env["NOWCAST_STORES"]
        self.last_error: str | None = None
        self.fs = stack.s3_filesystem(env)
        self.started = time.monotonic()

    def log(self, what: str) -> None:
        """The stage reached and the seconds since the start (shown with -s, and beside a failure)."""
        print(f"{time.monotonic() - self.started:6.0f} s  {what}", flush=True)

    def client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def deployment(self, client, name: str):
        flow, _, deployment = name.partition("/")
        return client.read_deployment_by_name(f"{flow}/{deployment}")

    def every(self, name: str, seconds: int) -> None:
        """Replaces the deployment's cron schedule with a short interval, its first run due in a few
        seconds (anchored at now, the first would come a whole interval later)."""
        from datetime import timedelta

        from prefect.client.schemas.schedules import IntervalSchedule

        with self.client() as client:
            deployment = self.deployment(client, name)
            for schedule in client.read_deployment_schedules(deployment.id):
                client.delete_deployment_schedule(deployment.id, schedule.id)
            first = self.now() + timedelta(seconds=FIRST_TICK_S)  # after the scheduler's next loop
            interval = IntervalSchedule(interval=timedelta(seconds=seconds),
                                        anchor_date=first - timedelta(seconds=seconds))
            client.create_deployment_schedules(deployment.id, [(interval, True)])

    def stop_schedules(self) -> None:
        """Deletes the schedules and the runs they had queued (those not started yet), as an operator
        turning a schedule off would: the scheduler creates runs ahead, and they would start one by one."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        with self.client() as client:
            for name in ("ingest/scheduled", "forecast/scheduled-cpu"):
                deployment = self.deployment(client, name)
                for schedule in client.read_deployment_schedules(deployment.id):
                    client.delete_deployment_schedule(deployment.id, schedule.id)
                queued = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
                for run in queued:
                    client.delete_flow_run(run.id)

    def trigger(self, name: str, **params) -> str:
        """A run of the deployment with ``params`` over its defaults, through the API; returns its id."""
        from prefect.deployments import run_deployment

        with self.client() as client:
            defaults = self.deployment(client, name).parameters["params"]
        run = run_deployment(name, parameters={"params": {**defaults, **params}}, timeout=0)
        return str(run.id)

    def wait_run(self, run_id: str) -> str:
        """Waits for a run to end; its final state's type."""
        from uuid import UUID

        deadline = time.monotonic() + WAIT_S
        with self.client() as client:
            while time.monotonic() < deadline:
                state = client.read_flow_run(UUID(run_id)).state
                if state is not None and state.is_final():
                    self.log(f"run {run_id} {state.type.value}")
                    return state.type.value
                time.sleep(2)
        pytest.fail(f"flow run {run_id} did not end within {WAIT_S} s")

    def runs(self, name: str) -> list:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with self.client() as client:
            deployment = self.deployment(client, name)
            return client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))

    def now(self):
        from datetime import UTC, datetime

        return datetime.now(UTC)

    def completed_since(self, name: str, moment) -> bool:
        """Whether a run of ``name`` that started after ``moment`` has completed."""
        return any(run.start_time and run.start_time > moment and run.state and run.state.is_completed()
                   for run in self.runs(name))

    def wait_until(self, what: str, condition) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if condition():
                self.log(what)
                return
            time.sleep(2)
        failed = [(run.name, run.state.message) for name in ("ingest/scheduled", "forecast/scheduled-cpu")
                  for run in self.runs(name) if run.state and run.state.is_failed()]
        pytest.fail(f"{what}: not within {WAIT_S} s (failed scheduled runs: {failed[:3]}; the last error "
                    f"reading a store: {self.last_error})")

    def arrive(self, path) -> None:
        day = path.name[:8]
        self.fs.put_file(str(path), f"{stack.BUCKET}/incoming/{day}/{path.name}")

    def valid_frames(self) -> int:
        from nowcast.pipelines.stores.archive import open_archive

        try:
            return int(open_archive(f"{self.stores}/archive.zarr")["valid"].sum())
        except Exception as error:  # not there yet, or its first ingest is creating it
            self.last_error = f"{type(error).__name__}: {error}"
            return 0

    def forecasts(self):
        """(init times, written, versions, sha256s) of forecasts.zarr."""
        from nowcast.pipelines.stores.forecasts import ForecastStoreError, open_forecasts

        try:
            ds = open_forecasts(f"{self.stores}/forecasts.zarr")
        except ForecastStoreError as error:  # not there yet, or its first scoring run is creating it
            self.last_error = str(error)
            return None
        def text(name: str) -> np.ndarray:  # zarr's variable-length strings as fixed-width ones
            return np.array([str(value) for value in ds[name].values.tolist()])

        return (ds.init_time.values, ds.written.values.astype(bool), text("model_version"),
                text("model_sha256"))

    def written_at(self, init_time) -> str | None:
        """The version that wrote ``init_time``, None while unwritten."""
        found = self.forecasts()
        if found is None:
            return None
        times, written, versions, _ = found
        hits = np.flatnonzero(times == init_time)
        return str(versions[hits[0]]) if len(hits) and written[hits[0]] else None

    def latest(self) -> str | None:
        """The promoted version's name."""
        name = f"{stack.BUCKET}/models/convlstm/latest"
        return self.fs.cat_file(name).decode().strip() if self.fs.exists(name) else None

    def object_versions(self, prefix: str) -> dict[str, int]:
        """How many times each object under ``prefix`` was written (the bucket keeps every version)."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"])
        counts: dict[str, int] = {}
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=stack.BUCKET, Prefix=prefix):
            for version in page.get("Versions", []):
                counts[version["Key"]] = counts.get(version["Key"], 0) + 1
        return counts


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_life_cycle_under_a_live_schedule(deployed, tmp_path):
    """Files arrive and are ingested on a schedule; forecasts run on a schedule; a training run
    promotes a new model half way and the schedule carries on with it, untouched; a backfill
    triggered through the API overlaps the schedule. Every init time records the version that wrote
    it, no forecast object was written twice, and evaluate scores each version."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _, state = deployed
    env = stack.client_env(state)
    files = _hourly_files(tmp_path)
    times = np.array([np.datetime64(f"{f.name[:4]}-{f.name[4:6]}-{f.name[6:8]}T{f.name[9:11]}:00", "s")
                      for f in files])
    step = np.timedelta64(5, "m")
    with stack.s3_client(env), temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        life = Life(env)
        # every write kept as an object version: "written twice" shows as a second version
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).put_bucket_versioning(
            Bucket=stack.BUCKET, VersioningConfiguration={"Status": "Enabled"})
        life.stop_schedules()  # the operator turns forecasting on once a model is promoted
        life.every("ingest/scheduled", EVERY_S)
        for path in files[:6]:
            life.arrive(path)
        life.wait_until("the first 6 hours ingested", lambda: life.valid_frames() == 72)

        assert life.wait_run(life.trigger("train/on-demand-cpu", **TRAIN)) == "COMPLETED"
        first = life.latest()
        assert first is not None
        life.every("forecast/scheduled-cpu", EVERY_S)  # forecasting starts once a model is promoted
        life.arrive(files[6])
        hour7_last = times[6] + 11 * step
        backfill_from = times[4]  # hours 5 to 7: before and within what the schedule forecast
        life.wait_until("hour 7 forecast by the first model", lambda: life.written_at(hour7_last) == first)

        # half way: a new model is trained and promoted while the schedule runs, and a backfill of
        # everything so far overlaps the schedule's runs
        train = life.trigger("train/on-demand-cpu", seed=1, **TRAIN)
        backfill = life.trigger("backfill/on-demand-cpu", start=str(backfill_from), end=str(hour7_last),
                                chunk_size=12)
        life.arrive(files[7])
        assert life.wait_run(train) == "COMPLETED"
        second = life.latest()
        assert second not in (None, first)
        promoted_at = life.now()
        assert life.wait_run(backfill) == "COMPLETED"
        life.wait_until("a scheduled forecast that started after the promotion",
                        lambda: life.completed_since("forecast/scheduled-cpu", promoted_at))
        life.arrive(files[8])  # the last hour: whichever run forecasts it starts after that one
        last = times[-1] + 11 * step
        life.wait_until("the last hour forecast", lambda: life.written_at(last))
        life.stop_schedules()
        life.wait_until("the scheduled runs finished", lambda: not any(
            run.state and not run.state.is_final() and not run.state.is_scheduled()
            for name in ("ingest/scheduled", "forecast/scheduled-cpu") for run in life.runs(name)))

        init_times, written, versions, shas = life.forecasts()
        covered = (init_times >= backfill_from) & (init_times <= last)
        assert written[covered].all(), f"unwritten init times: {init_times[covered & ~written]}"
        assert set(versions[written]) == {first, second}
        assert all(v == "" for v in versions[~written])
        from nowcast.model.registry import read_metadata

        for version in (first, second):  # each init time carries the checksum of the version that wrote it
            expected = read_metadata(f"{life.stores}/models/convlstm/{version}")["model_sha256"]
            assert set(shas[written & (versions == version)]) == {expected}
        # the last hour was forecast by a scheduled run that started after the promotion: the schedule
        # went on with the new model, its parameters untouched
        assert set(versions[init_times >= times[-1]]) == {second}
        for array in ("precip", "model_version", "model_sha256"):
            counts = life.object_versions(f"forecasts.zarr/{array}/c/")
            assert len(counts) == int(written.sum())
            assert max(counts.values()) == 1, {k: n for k, n in counts.items() if n > 1}

        evaluate = life.trigger("evaluate/on-demand", forecasts=f"{life.stores}/forecasts.zarr",
                                baselines=["persistence"], max_samples=60)
        assert life.wait_run(evaluate) == "COMPLETED"
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        with life.client() as client:
            stored = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=["evaluate-stored"])))
        table = stored[0].data
        assert f"convlstm/{first} (stored)" in table
        assert f"convlstm/{second} (stored)" in table
        assert life.fs.ls(f"{stack.BUCKET}/evaluate")  # its pictures went to the object store

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker



def listening_addresses(pids: dict[str, int], *folders: str) -> dict[str, set[str]]:
    """Addresses the stack's processes listen on, by name: its own processes with their children, and
    any process whose command line names one of ``folders`` (PostgreSQL's server, started by pg_ctl)."""
    import psutil

    family = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(pid)
            family.update({p.pid: name for p in [top, *top.children(recursive=True)]})
    for process in psutil.process_iter(["cmdline", "name"]):
        if any(folder in part for part in process.info["cmdline"] or () for folder in folders):
            family.setdefault(process.pid, process.info["name"])
    found: dict[str, set[str]] = {}
    for pid, name in family.items():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.setdefault(name, set()).add(conn.laddr.ip)
    return found


@pytest.mark.slow
@pytest.mark.fault("security", "`nowcast stack up` with defaults",
                   "every part listens on loopback only")
def test_every_part_of_the_stack_listens_on_loopback_only(deployed):
    """Security: the server, the database, S3, the scheduler and its workers are reachable from this
    machine only (a deployment opens them to a network on purpose, behind its own access control)."""
    folder, state = deployed
    found = listening_addresses(state["pids"], str(folder / "stack"), state["postgres_data"])
    assert {"prefect-server", "s3", "dask-scheduler", "postgres"} <= set(found), found
    exposed = {name: addresses - {"127.0.0.1", "::1"} for name, addresses in found.items()}
    assert not any(exposed.values()), exposed


@pytest.mark.slow
@pytest.mark.fault("flows", "the stack's Prefect worker stopped (SIGTERM, a crash) with a flow run "
                   "in flight", "`stack status` exits 2 naming the worker and the fix; `stack up` marks that "
                   "run Crashed and starts a new worker, the stores and the database kept (the run showed "
                   "Running for good, holding its slot, and the fix said, down then up, emptied the object "
                   "store)")
def test_a_stopped_worker_is_started_again_and_its_runs_crashed(deployed, capsys):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    from nowcast.flows.cli import main

    folder, state = deployed
    root = str(folder / "stack")
    env = stack.client_env(state)
    fs = stack.s3_filesystem(env)
    fs.pipe(f"{stack.BUCKET}/kept/marker", b"kept")
    stack_api = {PREFECT_API_URL: env["PREFECT_API_URL"]}
    with temporary_settings(stack_api), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("evaluate/on-demand")
        # what the worker had in flight: Running on the server, no process of it left on this machine
        lost = client.create_flow_run_from_deployment(deployment.id, state=Running())
    worker = stack.read_state(root)["pids"]["prefect-worker"]  # type: ignore[index]
    for signum, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):  # a busy worker may outlast SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker, signum)
        deadline = time.monotonic() + wait_s
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not alive(worker)
    assert main(["stack", "status", "--folder", root]) == 2
    assert ("(prefect-worker no longer runs): nowcast stack up starts a new worker, and marks Crashed the "
            "flow runs the stopped one had") in capsys.readouterr().err
    assert main(["stack", "up", "--folder", root]) == 0
    out = capsys.readouterr().out  # the live schedule's runs may be among them
    assert (f"started a new Prefect worker in the stack in {root}; flow runs the stopped one had left "
            "Running are marked Crashed (run them again): ") in out
    assert lost.name in out
    assert main(["stack", "status", "--folder", root]) == 0
    assert stack.read_state(root)["pids"]["prefect-worker"] != worker  # type: ignore[index]
    with temporary_settings(stack_api), get_client(sync_client=True) as client:
        assert client.read_flow_run(lost.id).state.type.value == "CRASHED"
    assert fs.cat(f"{stack.BUCKET}/kept/marker") == b"kept"
    assert main(["stack", "up", "--folder", root]) == 2  # whole again: up is refused as before
    assert "a stack is already up in" in capsys.readouterr().err
