"""``nowcast server`` as a process: how it stops, and what becomes of the flow runs in flight when it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nowcast.flows.serve import stop_process, wait_for_api
from nowcast.flows.temporary_server import SERVER_SETTINGS
from nowcast.processes import free_port
from tests.flows.served import api, flow_run, local_server
from tests.pause import pause_env
from tests.pipelines.jobs.scoring_helpers import make_archive, save_tiny_model, synthetic_stats

FRAMES, SIZE = 40, (32, 32)


@pytest.mark.slow
@pytest.mark.fault("command line", "`nowcast server` stopped by SIGTERM (a service manager), once or twice",
                   "stops as on Ctrl-C: one line 'stopped (SIGTERM)', exit 143, its Prefect server gone; a "
                   "second SIGTERM during the stop ends it too (Prefect's runner had taken SIGTERM: exit 0 "
                   "without a word, and a second one called sys.exit inside its event loop)")
@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice"])
def test_the_local_server_stops_on_sigterm_as_on_ctrl_c(tmp_path, signals):
    import psutil

    process, ports = local_server(tmp_path, stderr=subprocess.PIPE)
    try:
        wait_for_api(f"http://127.0.0.1:{ports[0]}/api", timeout_s=180)
        time.sleep(3)  # the deployments registered and the runner polling
        family = psutil.Process(process.pid).children(recursive=True)
        for _ in range(signals):
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        _, err = process.communicate(timeout=60)
        _gone, alive = psutil.wait_procs(family, timeout=30)
    finally:
        stop_process(process)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.decode().strip().splitlines()[-1] == "nowcast server: stopped (SIGTERM)", err
    assert not alive, f"outlived `nowcast server`: {alive}"


@pytest.mark.slow
@pytest.mark.fault("flows", "`nowcast server` stopped (SIGTERM) or killed (SIGKILL) with a forecast run in "
                   "flight, then started again",
                   "the lost run is marked Crashed, saying what to do (when the server stops, or when it "
                   "starts again and no process runs it), and the next forecast run gets the deployment's "
                   "slot (it stayed Running for good, and every later forecast waited in "
                   "AwaitingConcurrencySlot)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_run_lost_with_its_server_is_crashed_and_frees_its_slot(tmp_path, signum, short_lock_lease):
    import psutil

    work = tmp_path / "work"
    archive = make_archive(str(work / "archive.zarr"), FRAMES, SIZE, time_chunk=8)
    save_tiny_model(work / "models", archive, synthetic_stats(FRAMES, SIZE), patch=(16, 16), t_in=3, t_out=2,
                    name="convlstm")
    paused = tmp_path / "paused"
    process, ports = local_server(tmp_path, stderr=subprocess.PIPE,
                                  env=pause_env(paused, r"^written/c/", 1))  # the forecast's first chunk
    try:
        api_url = f"http://127.0.0.1:{ports[0]}/api"
        wait_for_api(api_url, timeout_s=180, server=process)
        lost = api(api_url, f"/deployments/{_forecast_deployment(api_url)}/create_flow_run")["id"]  # type: ignore[index]
        _wait(lambda: paused.exists() and paused.read_text(), "no forecast chunk was written", process)
        engine = int(paused.read_text())
        assert flow_run(api_url, lost)["state_type"] == "RUNNING"
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        stop_process(process)
    if signum == signal.SIGKILL:
        # the run's own process outlives a killed server (Prefect's runner started it); it would go on and
        # report to a server started again on the port; paused here for good, it dies too
        assert psutil.pid_exists(engine)
        os.kill(engine, signal.SIGKILL)
    else:
        assert "Traceback" not in err.decode(), err.decode()[-3000:]
        assert err.decode().strip().splitlines()[-1] == "nowcast server: stopped (SIGTERM)", err

    process, ports = local_server(tmp_path, stderr=subprocess.DEVNULL)
    try:
        api_url = f"http://127.0.0.1:{ports[0]}/api"
        wait_for_api(api_url, timeout_s=180, server=process)
        deployment = _forecast_deployment(api_url)
        # marked when the stop swept (SIGTERM), or when the start sweeps, after registering the deployments
        _wait(lambda: flow_run(api_url, lost)["state_type"] != "RUNNING", "still Running", process)
        state = flow_run(api_url, lost)["state"]
        assert state["type"] == "CRASHED", state
        assert state["message"].startswith("lost: the process serving it"), state
        following = api(api_url, f"/deployments/{deployment}/create_flow_run")["id"]  # type: ignore[index]
        # Running: it has the deployment's slot (it then waits for the store's writer slot, whose lease the
        # lost run held until the server's repossessor frees it, about 75 s: flows/concurrency.py)
        ends = ("RUNNING", "COMPLETED")
        _wait(lambda: flow_run(api_url, following)["state_type"] in (*ends, "FAILED", "CRASHED"),
              "the next forecast run did not start", process)
        assert flow_run(api_url, following)["state_type"] in ends
    finally:
        stop_process(process)


def _forecast_deployment(api_url: str) -> str:
    """The id of forecast/local, once the served deployments are registered."""
    def found() -> str | None:
        flows = {flow["id"]: flow["name"] for flow in api(api_url, "/flows/filter")}  # type: ignore[union-attr]
        return next((deployment["id"] for deployment in api(api_url, "/deployments/filter")  # type: ignore[union-attr]
                     if flows.get(deployment["flow_id"]) == "forecast"), None)
    return _wait(found, "forecast/local was not registered")


def _wait(condition, what: str, process: subprocess.Popen | None = None, timeout_s: float = 240):
    """``condition()``'s first true value, polled every second (a liveness bound, not a speed check)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if process is not None and process.poll() is not None:
            out = process.stderr.read().decode()[-3000:] if process.stderr else ""
            raise AssertionError(f"{what}: the server exited ({process.returncode}):\n{out}")
        assert time.monotonic() < deadline, what
        time.sleep(1)
    return value


@pytest.mark.fault("command line", "a second `nowcast server` on the Prefect home of a running one (the "
                   "default ~/.prefect), or on a PREFECT_HOME under a file",
                   "exit 2 naming the Prefect home and the fix, before anything starts (the second took over "
                   "the first's deployments and paused them as it stopped; under a file: 'the Prefect server "
                   "exited (3)', naming nothing)")
def test_one_server_per_prefect_home(tmp_path):
    from nowcast.flows.workdir import held

    home = tmp_path / "prefect"
    with held(home / "nowcast-server", str(home)):  # as the running server holds it
        process, _ports = local_server(tmp_path, stderr=subprocess.PIPE)
        try:
            _, err = process.communicate(timeout=120)
        finally:
            stop_process(process)
    assert process.returncode == 2, err
    assert f"the Prefect home {home} is in use by another run (pid {os.getpid()}" in err.decode()
    assert "give this one its own PREFECT_HOME" in err.decode()
    assert not (tmp_path / "work").exists()
    (tmp_path / "afile").write_text("")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "afile" / "home")}
    env.pop("PREFECT_API_URL", None)
    refused = subprocess.run([sys.executable, "-m", "nowcast.flows.cli", "server", "--workdir",
                              str(tmp_path / "work"), "--port", str(free_port()), "--files-port",
                              str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "PREFECT_HOME" in refused.stderr
    assert "afile is a file" in refused.stderr


@pytest.mark.slow
@pytest.mark.fault("command line", "Ctrl-C in the terminal of `nowcast server` (SIGINT to its whole process "
                   "group)", "one line 'stopped (SIGINT)' and nothing else, its Prefect server gone; without "
                   "-v its output is the UI's address alone (Prefect's server stopped at once with it, and "
                   "the runner's shutdown printed asyncio's ConnectError tracebacks; Prefect's 15-line "
                   "banner was printed)")
def test_ctrl_c_stops_the_local_server_in_order_and_quietly(tmp_path):
    import psutil

    process, ports = local_server(tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                  start_new_session=True)  # its own group, as a terminal's foreground job
    try:
        wait_for_api(f"http://127.0.0.1:{ports[0]}/api", timeout_s=180, server=process)
        time.sleep(3)  # the deployments registered and the runner polling
        family = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=90)
        _gone, alive = psutil.wait_procs(family, timeout=30)
    finally:
        stop_process(process)
    assert err.decode().strip() == "nowcast server: stopped (SIGINT)", err.decode()
    assert out.decode().startswith("Prefect UI: http://127.0.0.1:")
    assert len(out.decode().strip().splitlines()) == 1, out.decode()
    assert not alive


def _prefect_server(home: Path, port: int) -> subprocess.Popen:
    """``prefect server start`` on ``port`` over the database in ``home``, in its own process group."""
    env = {**os.environ, **SERVER_SETTINGS, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _said(log: Path, text: str, times: int = 1, timeout_s: float = 90) -> str:
    """The log of a process once it holds ``text`` ``times`` times (at most ``timeout_s`` of waiting)."""
    deadline = time.monotonic() + timeout_s
    while (said := log.read_text()).count(text) < times:
        assert time.monotonic() < deadline, f"never said {text!r} ({times}x):\n{said[-3000:]}"
        time.sleep(1)
    return said


@pytest.mark.slow
@pytest.mark.fault("command line", "the Prefect server of `nowcast serve` stops (a restart, a crash), comes "
                   "back, and stops again before the command is stopped (SIGTERM)",
                   "one warning when it stops answering, one when it answers again; SIGTERM without a server "
                   "stops the command at once, saying the schedules were left as they are (after one "
                   "websocket traceback it went on without a word, and SIGTERM took 74 s of the client's "
                   "retries, then printed asyncio's ConnectError traceback)")
def test_serve_says_when_its_server_is_gone_and_back_and_stops_without_it(tmp_path):
    home, port, log = tmp_path / "prefect", free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/api"
    server = _prefect_server(home, port)
    serving = None
    try:
        wait_for_api(url, timeout_s=180, server=server)
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
        with open(log, "w") as output:
            serving = subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", "serve", "--workdir",
                                        str(tmp_path / "work"), "--cron", "0 0 1 1 *"], env=env,
                                       stdout=output, stderr=subprocess.STDOUT)
        _said(log, "running the deployments")
        time.sleep(5)  # the deployments registered and the runner polling
        stop_process(server)
        _said(log, f"the Prefect server at {url} does not answer: no run starts until it is back")
        server = _prefect_server(home, port)
        _said(log, f"the Prefect server at {url} answers again")
        stop_process(server)
        _said(log, "does not answer", times=2)
        serving.send_signal(signal.SIGTERM)
        serving.wait(timeout=60)
    finally:
        if serving is not None:
            stop_process(serving)
        stop_process(server)
    said = log.read_text()
    assert serving.returncode == 128 + signal.SIGTERM, said
    assert f"the Prefect server at {url} does not answer: the deployments' schedules stay as they are" in said
    assert said.strip().endswith("nowcast serve: stopped (SIGTERM)"), said
    assert "Traceback" not in said, said
