"""``nowcast stack up|down|status``: the deployment, as separate processes on this machine.

What a weather service runs on several machines, started here as separate
process trees that share nothing but their network ports and the object
store:

- **PostgreSQL** (Debian's ``postgresql``; its own cluster under the stack
  folder) behind **a Prefect server** (``prefect server start``; SQLite
  stays the laptop default of ``nowcast server``);
- **an S3-compatible object store**: moto's server (``moto_server``, a real S3
  HTTP API on 127.0.0.1) holding every store in the bucket ``nowcast``;
  clients find it through ``AWS_ENDPOINT_URL`` and take credentials from the
  environment (moto's dummy ones here, never in a file of the repository);
- **a dask.distributed cluster**: ``dask scheduler`` and ``workers`` ``dask
  worker`` processes, each in its own working directory with its own
  ``TMPDIR``, for the Beam jobs' DaskRunner;
- **deployments registered with** ``prefect deploy`` from infra/prefect.yaml
  (the process pool's ones) and **a** ``prefect worker`` on that pool, a
  separate process that runs them.

``up`` writes ``stack.json`` (ports, process ids, the environment a client
needs: :func:`client_env`) into the stack folder; ``down`` stops every
process (process groups, newest first) and the database. The logs stay in
the stack folder. Run as root, PostgreSQL runs as the ``postgres`` user with
its data in a private temporary folder, which ``down`` removes (the stack is
for trying the deployment out, not for keeping the Prefect history); as
another user the database lives in the stack folder and is kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from nowcast.errors import InputError
from nowcast.files import make_folder, write_atomically
from nowcast.flows.temporary_server import SERVER_SETTINGS
from nowcast.pipelines.stores.groups import check_writable
from nowcast.processes import alive, free_port, started

STATE_FILE = "stack.json"
BUCKET = "nowcast"
POOL = "local-process"
# the process pool's deployments of infra/prefect.yaml (`prefect deploy --name`: flow function/deployment)
DEPLOYMENTS = ("ingest_flow/scheduled", "forecast_flow/scheduled-cpu", "backfill_flow/on-demand-cpu",
               "train_flow/on-demand-cpu", "evaluate_flow/on-demand")
REPO = Path(__file__).resolve().parents[1]
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "nowcast-stack", "AWS_SECRET_ACCESS_KEY": "nowcast-stack",
                     "AWS_DEFAULT_REGION": "us-east-1"}


MAX_DASK_WORKERS = 64


class StackError(RuntimeError):
    """A part of the stack that could not start; the message names it and its log."""


class PortTakenError(StackError):
    """A server that exited because another process took its port between the probe and its start."""


PORT_TAKEN = "already in use"  # what PostgreSQL, moto, Prefect and dask (Errno 98) each write then


class StackStateError(InputError):
    """No stack, a stack already up, or a ``stack.json`` that cannot be read: the message says what to do."""


def _bin(name: str) -> str:
    """An executable of this environment (beside the running Python), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed; install the dev extra (pip install -e '.[dev]')")
    return found


S3_CLIENT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@contextlib.contextmanager
def s3_client(env: Mapping[str, str]) -> Iterator[None]:
    """This process as a client of the stack's object store for the block (``env``: its S3 variables).

    Sets the S3 variables in ``os.environ`` and restores them afterwards, and
    drops s3fs's cached filesystems on both sides, which keep the endpoint
    they were made with.
    """
    import s3fs

    saved = {k: os.environ.get(k) for k in S3_CLIENT_VARIABLES}
    os.environ.update({k: env[k] for k in S3_CLIENT_VARIABLES if k in env})
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()


def _postgres_bin() -> Path:
    """The binaries of Debian's newest PostgreSQL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise StackError("PostgreSQL is not installed: apt-get install postgresql (Debian), as .ci/run does")
    return Path(found[-1]).parent


def _as_postgres(command: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _wait(what: str, ready, log: Path, timeout_s: float = 120.0, process: subprocess.Popen | None = None,
          since: int = 0):
    """Until ``ready()``. A StackError when the time is out, or when ``process`` exits first: then quoting
    its log's line that says the port was taken (PortTakenError), else its last line. ``since``: where in
    ``log`` this start's lines begin."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        if process is not None and process.poll() is not None:
            said, lost = _exit_reason(log, since)
            raise (PortTakenError if lost else StackError)(
                f"{what} exited with {process.returncode} ({said}); see {log}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not become ready in {timeout_s:.0f} s; see {log}")
        time.sleep(0.3)


def _exit_reason(log: Path, since: int) -> tuple[str, bool]:
    """The line of ``log`` (from byte ``since``, this start's) that says why a server exited, and whether it
    lost its port: the line saying so, else the last one."""
    text = ""
    with contextlib.suppress(OSError), open(log, "rb") as written:
        written.seek(since)
        text = written.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lost = [line for line in lines if PORT_TAKEN in line.lower()]
    return (lost or lines or ["nothing in its log"])[-1][:300], bool(lost)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


T = TypeVar("T")


def _on_free_port(start: Callable[[int], T], tries: int = 3) -> tuple[int, T]:
    """``start(port)`` on a free port of 127.0.0.1, and on another when the server lost it
    (PortTakenError) to a process that bound it after the probe."""
    for _ in range(tries - 1):
        port = free_port()
        with contextlib.suppress(PortTakenError):
            return port, start(port)
    port = free_port()
    return port, start(port)  # the last try's PortTakenError reaches the caller


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 1):
        return True


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return 200 <= response.status < 500


# set by up(): told of each service the moment it starts, so stack.json names it before it is ready (a
# `stack up` killed while the Prefect server started left that server running, unknown to `stack down`)
_ON_START: contextvars.ContextVar[Callable[[str, subprocess.Popen], None] | None] = contextvars.ContextVar(
    "stack_on_start", default=None)


def _start(name: str, command: Sequence[str], folder: Path, env: Mapping[str, str],
           cwd: Path | None = None) -> subprocess.Popen:
    """A service in its own process group, its output in ``folder/<name>.log``."""
    with open(folder / f"{name}.log", "ab") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=cwd or folder,
                                   env=dict(env), start_new_session=True)
    if (record := _ON_START.get()) is not None:
        record(name, process)
    return process


def _serve(what: str, name: str, command: Sequence[str], folder: Path, env: Mapping[str, str], ready,
           timeout_s: float = 120.0) -> subprocess.Popen:
    """``_start`` and ``_wait`` until ``ready()``; a server that does not become ready is stopped."""
    log = folder / f"{name}.log"
    since = _size(log)
    process = _start(name, command, folder, env)
    try:
        _wait(what, ready, log, timeout_s, process, since)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process


def client_env(state: Mapping[str, object]) -> dict[str, str]:
    """What a client of the stack sets: the Prefect API, the object store and its credentials."""
    env = state["env"]
    assert isinstance(env, Mapping)
    return {str(k): str(v) for k, v in env.items()}


def _run(what: str, command: Sequence[str]) -> None:
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode:
        raise StackError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")


def _postgres_data(folder: Path) -> Path:
    """The database folder. As root, PostgreSQL runs as ``postgres``, which may not enter ``folder``
    (pytest's and many home folders are private), so the data then lives in a folder of its own
    under the system's temporary folder, recorded in the stack's state."""
    if os.geteuid() != 0:
        return folder / "postgres"
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="nowcast-stack-pg-"))
    data.chmod(0o700)
    shutil.chown(data, "postgres")
    return data


def _postgres(data: Path, port: int) -> str:
    pg = _postgres_bin()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        _run("initdb", _as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "nowcast", "--auth=trust",
                                     "-E", "UTF8"]))
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    log = data / "server.log"
    since = _size(log)
    try:
        _run("PostgreSQL", _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                         options, "start"]))
    except StackError as error:
        said, lost = _exit_reason(log, since)
        if lost:
            raise PortTakenError(f"{error} ({said}); see {log}") from None
        raise
    created = subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "nowcast",
                              "prefect"], capture_output=True, text=True)
    if created.returncode and "already exists" not in created.stderr:
        raise StackError(f"createdb failed: {created.stderr.strip()}")
    return f"postgresql+asyncpg://nowcast@127.0.0.1:{port}/prefect"


def start_s3(folder: Path, env: Mapping[str, str]) -> tuple[str, subprocess.Popen]:
    """moto's S3 server on a free port of 127.0.0.1, ready, with the bucket ``nowcast`` (credentials from
    ``env``): its endpoint and its process."""
    def serve(port: int) -> subprocess.Popen:
        endpoint = f"http://127.0.0.1:{port}"
        return _serve("moto S3 server", "s3", [_bin("moto_server"), "-p", str(port)], folder, env,
                      lambda: _http_ok(endpoint))

    port, moto = _on_free_port(serve)
    endpoint = f"http://127.0.0.1:{port}"
    s3_filesystem({**env, "AWS_ENDPOINT_URL": endpoint}).mkdir(BUCKET)
    return endpoint, moto


def s3_filesystem(env: Mapping[str, str]):
    """An s3fs filesystem on the stack's object store (``env``: its S3 variables), without any cache:
    its own instance, and every listing asked of the store."""
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
                             use_listings_cache=False, skip_instance_cache=True)


LOOPBACK_ANY = "127.0.0.1:0"  # any free port, on loopback


def start_dask(folder: Path, workers: int, env: Mapping[str, str]) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` on a free port of 127.0.0.1 and ``workers`` one-thread ``dask worker`` processes,
    each in its own folder with its own TMPDIR and HOME (nothing shared but the network and the object
    store): the scheduler's address and the processes, the scheduler first."""
    # --no-dashboard still serves /health over http, on every interface unless told: loopback only
    def serve(port: int) -> subprocess.Popen:
        return _serve("dask scheduler", "dask-scheduler",
                      [_bin("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                       "--no-dashboard", "--dashboard-address", LOOPBACK_ANY], folder, env,
                      lambda: _listening(port))

    port, scheduler = _on_free_port(serve)
    address = f"tcp://127.0.0.1:{port}"
    started = [scheduler]
    for i in range(workers):
        own = folder / f"dask-worker-{i}"
        (own / "tmp").mkdir(parents=True, exist_ok=True)
        started.append(_start(f"dask-worker-{i}", [_bin("dask"), "worker", address,
                                                   "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                                   "--host", "127.0.0.1", "--dashboard-address", LOOPBACK_ANY,
                                                   "--local-directory", str(own)],
                              folder, {**env, "TMPDIR": str(own / "tmp"), "HOME": str(own)}, cwd=own))
    return address, started


def wait_for_workers(address: str, workers: int, timeout_s: float = 120.0) -> None:
    """Blocks until ``workers`` workers have joined the scheduler at ``address``."""
    from distributed import Client

    with Client(address, timeout=timeout_s) as client:
        client.wait_for_workers(workers, timeout=timeout_s)


def up(folder: str | Path = "runs/stack", workers: int = 2) -> dict[str, object]:
    """Starts the stack (see the module docstring); returns its state, also written to ``stack.json``."""
    if not 1 <= workers <= MAX_DASK_WORKERS:  # before any service starts
        raise InputError(f"--workers {workers} must be 1..{MAX_DASK_WORKERS} dask worker processes (one "
                         "per core is the most that helps on one machine)")
    root = Path(folder).resolve()
    check_writable(str(root), "the stack folder")  # a file or read-only folder was a traceback, exit 1
    make_folder(root, "the stack folder")
    if (root / STATE_FILE).exists():
        raise StackStateError(f"a stack is already up in {root} ({STATE_FILE} exists): nowcast stack down "
                              "first")
    base = _service_env()
    ports: dict[str, int] = {}  # each service's, known once it listens (a port can be lost before that)
    state: dict[str, object] = {"folder": str(root), "ports": ports, "env": {}, "pids": {}, "started": {}}
    pids: dict[str, int] = state["pids"]  # type: ignore[assignment]

    def save() -> None:
        _save_state(root, state)

    def record(name: str, process: subprocess.Popen) -> None:
        pids[name] = process.pid
        save()

    data = _postgres_data(root)
    state["postgres_data"] = str(data)
    save()
    recording = _ON_START.set(record)
    try:
        ports["postgres"], database = _on_free_port(lambda port: _postgres(data, port))
        state["database"] = database
        s3, moto = start_s3(root, base)
        pids["s3"] = moto.pid
        ports["s3"] = int(s3.rsplit(":", 1)[1])
        save()
        home = root / "prefect-home"
        home.mkdir(exist_ok=True)
        server_env = {**base, **SERVER_SETTINGS, "PREFECT_HOME": str(home),
                      "PREFECT_API_DATABASE_CONNECTION_URL": database}
        ports["prefect"], server = _on_free_port(lambda port: _serve(
            "Prefect server", "prefect-server", [_bin("prefect"), "server", "start", "--host", "127.0.0.1",
                                                 "--port", str(port)],
            root, server_env, lambda: _http_ok(f"http://127.0.0.1:{port}/api/health"), 180))
        pids["prefect-server"] = server.pid
        save()
        stores = f"s3://{BUCKET}"
        client = {**{k: base[k] for k in DUMMY_CREDENTIALS}, "AWS_ENDPOINT_URL": s3,
                  "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api", "NOWCAST_STORES": stores,
                  "NOWCAST_STORAGE_ROOTS": stores, "NOWCAST_REPO": str(REPO),
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        base.update(client)
        address, processes = start_dask(root, workers, base)
        ports["dask"] = int(address.rsplit(":", 1)[1])
        for i, process in enumerate(processes):
            pids["dask-scheduler" if i == 0 else f"dask-worker-{i - 1}"] = process.pid
        base["NOWCAST_DASK_ADDRESS"] = client["NOWCAST_DASK_ADDRESS"] = address
        state["env"] = client
        save()
        wait_for_workers(address, workers)
        _prefect(["work-pool", "create", POOL, "--type", "process", "--overwrite"], base, root)
        deploy = [arg for name in DEPLOYMENTS for arg in ("--name", name)]
        _prefect(["deploy", "--prefect-file", str(REPO / "infra" / "prefect.yaml"), *deploy, "--no-prompt"],
                 base, root, cwd=REPO)
        _start_worker(root, base)
        state["whole"] = True  # what status looks for: an up killed part way recorded only some services
        save()
    except BaseException:
        down(root)
        raise
    finally:
        _ON_START.reset(recording)
    return state


def _save_state(root: Path, state: dict[str, object]) -> None:
    """Writes ``stack.json``, each pid with its start, so down never signals a process that took its
    number."""
    pids: dict[str, int] = state["pids"]  # type: ignore[assignment]
    state["started"] = {name: started(pid) for name, pid in pids.items()}
    write_atomically(root / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _start_worker(root: Path, env: Mapping[str, str]) -> None:
    """The Prefect worker on the stack's pool (recorded by ``_start``), waited for until it polls."""
    worker_home = root / "prefect-worker"
    (worker_home / "tmp").mkdir(parents=True, exist_ok=True)
    log = root / "prefect-worker.log"
    since = _size(log)  # a restarted worker's lines follow the stopped one's in the same log
    command = [_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
    worker = _start("prefect-worker", command, root, {**env, "TMPDIR": str(worker_home / "tmp")},
                    cwd=worker_home)
    _wait("Prefect worker", lambda: "started" in log.read_bytes()[since:].decode(errors="replace").lower(),
          log, 120, worker, since)


def _service_env() -> dict[str, str]:
    """The environment the stack's services start in (a client's Prefect API left out). Their logs are
    files an operator reads: at INFO whatever the level of the command that started them (the command
    line sets its own console quieter, and children inherit its environment)."""
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in DUMMY_CREDENTIALS.items()},
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO"}
    env.pop("PREFECT_API_URL", None)
    return env


def only_the_worker_gone(state: Mapping[str, object]) -> bool:
    """Whether the Prefect worker is all that stopped of a stack that came up whole."""
    return bool(state.get("whole")) and not_running(state) == [_gone("prefect-worker")]


def restart_worker(folder: str | Path = "runs/stack") -> list[str]:
    """Starts the Prefect worker again in a stack whose worker alone stopped (SIGTERM, a crash), after
    marking Crashed the flow runs it had left Running (no process runs them: they held their slots, and
    showed Running for good); returns those runs' names. The rest of the stack, its object store's
    contents and its database are kept, where ``down`` then ``up`` would lose them.

    Raises:
        StackStateError: no stack there, or more than the worker is gone (then down, then up).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = Path(folder).resolve()
    state = read_state(root)
    if not only_the_worker_gone(state):
        gone = not_running(state)
        what = f"not whole ({'; '.join(gone)})" if gone else "whole"
        raise StackStateError(f"the stack in {root} is {what}: only a stack whose worker alone stopped gets "
                              "a new one")
    env = client_env(state)
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        lost = _crash_lost_runs()
    base = {**_service_env(), **env}
    pids: dict[str, int] = state["pids"]  # type: ignore[assignment]

    def record(name: str, process: subprocess.Popen) -> None:
        pids[name] = process.pid
        _save_state(root, state)

    recording = _ON_START.set(record)
    try:
        _start_worker(root, base)
    finally:
        _ON_START.reset(recording)
    return lost


def _crash_lost_runs() -> list[str]:
    """Marks Crashed the runs of the stack's deployments that no process on this machine runs (every
    deployment of the stack's own server is the stack's)."""
    from prefect import get_client

    from nowcast.flows.serve import crash_lost_runs

    with get_client(sync_client=True) as client:
        ids = [deployment.id for deployment in client.read_deployments()]
    return crash_lost_runs(ids)


def _prefect(args: Sequence[str], env: Mapping[str, str], folder: Path, cwd: Path | None = None) -> None:
    done = subprocess.run([_bin("prefect"), *args], env=dict(env), cwd=cwd or folder, capture_output=True,
                          text=True, timeout=300)
    with open(folder / "prefect-cli.log", "a") as log:
        log.write(f"$ prefect {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode:
        raise StackError(f"prefect {args[0]} failed ({done.returncode}); see {folder / 'prefect-cli.log'}")


def read_state(folder: str | Path = "runs/stack") -> dict[str, object]:
    """``stack.json`` of the stack in ``folder``.

    Raises:
        StackStateError: no stack there, or a state file that is not the one ``up`` wrote.
    """
    path = Path(folder).resolve() / STATE_FILE
    if not path.is_file():
        raise StackStateError(f"no stack is up in {Path(folder).resolve()}: nowcast stack up first")
    try:
        state = json.loads(path.read_text())
        if not (isinstance(state, dict) and isinstance(state.get("pids"), dict)
                and all(isinstance(pid, int) for pid in state["pids"].values())):
            raise ValueError("not the state nowcast stack up writes")
    except (ValueError, UnicodeDecodeError) as error:
        raise StackStateError(f"{path} cannot be read ({error}): stop the stack's processes by hand (their "
                              f"logs are in {path.parent}), then delete {path}") from None
    return state


def running(state: Mapping[str, object]) -> dict[str, int]:
    """The stack's processes that still run: each recorded pid whose process started when ``up`` recorded
    (after a crash or a reboot the number may name another process, which must not be signalled)."""
    pids: dict[str, int] = dict(state["pids"])  # type: ignore[call-overload]
    return {name: pid for name, pid in pids.items() if _ours(state, name, pid)}


def _ours(state: Mapping[str, object], name: str, pid: int) -> bool:
    """Whether ``pid`` runs and is the process ``up`` started as ``name`` (where no start time can be read,
    not on Linux, it is None on both sides)."""
    recorded: dict[str, str | None] = dict(state.get("started") or {})  # type: ignore[call-overload]
    return alive(pid) and started(pid) == recorded.get(name)


def not_running(state: Mapping[str, object]) -> list[str]:
    """What of the stack in ``state`` does not run: recorded processes gone, PostgreSQL stopped, or the
    services a ``stack up`` stopped part way never started."""
    runs = running(state)
    gone = [_gone(name) for name in sorted(set(state["pids"]) - set(runs))]  # type: ignore[call-overload]
    if not _postmaster_runs(Path(str(state.get("postgres_data", "")))):
        gone.append("PostgreSQL does not run")
    if not state.get("whole") and "prefect-worker" not in runs:  # its last service (an older
        gone.append("its `stack up` did not finish")  # nowcast's stack.json has no "whole")
    return gone


def _gone(name: str) -> str:
    return f"{name} no longer runs"


def _postmaster_runs(data: Path) -> bool:
    """Whether the PostgreSQL server of ``data`` runs: its pid file names a live ``postgres`` process (a
    stale file's pid may be any process by now; pg_ctl would signal it)."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        return alive(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except (OSError, ValueError, IndexError):
        return False


def down(folder: str | Path = "runs/stack", timeout_s: float = 20.0) -> list[str]:
    """Stops every process of the stack and its database; returns what was stopped."""
    root = Path(folder).resolve()
    path = root / STATE_FILE
    if not path.is_file():
        return []
    state = read_state(root)
    stopped = []
    ours = running(state)
    for name, pid in reversed(list(ours.items())):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            stopped.append(name)
    deadline = time.monotonic() + timeout_s
    for name, pid in ours.items():
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if _ours(state, name, pid):  # still the stack's after the wait, not a new process's number
                os.killpg(pid, signal.SIGKILL)
        killed_by = time.monotonic() + 10  # until it is gone (and reaped, when it is this process's child)
        while time.monotonic() < killed_by and alive(pid):
            time.sleep(0.1)
    data = Path(str(state.get("postgres_data", root / "postgres")))
    if _postmaster_runs(data):
        subprocess.run(_as_postgres([str(_postgres_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                                     "stop"]), capture_output=True)
        stopped.append("postgres")
    if data.parent != root:  # root's database folder outside the stack folder: the stack's own
        shutil.rmtree(data, ignore_errors=True)
    path.unlink()
    return stopped
