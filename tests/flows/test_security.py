"""Security: models load without running code, stores stay inside the storage roots, servers bind to
loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from nowcast.flows.params import ROOTS_ENV, ParameterError, check_store_url
from nowcast.flows.serve import start_file_server, stop_process, wait_for_api
from nowcast.processes import free_port


@pytest.mark.fault("security", "a .keras file carrying a Lambda layer",
                   "refused: models load in safe mode")
def test_a_model_file_carrying_a_lambda_layer_is_refused(tmp_path):
    """A .keras file can carry a Python function (a Lambda layer) that runs on load; the registry's
    checksums and manifest all agree here, as they would for a file saved by someone malicious."""
    import keras

    from nowcast.model.registry import UnsafeModelError, load_model, save_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    save_model(model, tmp_path, "evil", {"architecture": "cnn_lstm"}, version="v1")
    with pytest.raises(UnsafeModelError, match=r"Lambda layer .* safe mode"):
        load_model(tmp_path, "evil", archive=None)


@pytest.mark.fault("security", "store paths with `..`, symbolic links out, other hosts or schemes",
                   "refused as outside the storage roots")
def test_store_urls_cannot_climb_out_of_the_storage_roots(tmp_path, monkeypatch):
    root = tmp_path / "stores"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "private").mkdir()
    os.symlink(tmp_path / "private", root / "link")
    monkeypatch.setenv(ROOTS_ENV, f"{root}:s3://bucket/nowcast/")
    assert check_store_url(str(root / "inside" / "a.zarr")) == str(root / "inside" / "a.zarr")
    for outside in (
        str(root / ".." / "private" / "a.zarr"),  # climbs with ..
        f"file://{root}/../private/a.zarr",
        str(root / "link" / "a.zarr"),  # a link inside the root that leads out of it
        "s3://bucket/nowcast/../secrets/a.zarr",
        "s3://bucket/nowcast-other/a.zarr",  # a prefix of the root's name is not the root
        "http://169.254.169.254/latest/meta-data/",  # other hosts and schemes
        "memory://nowcast/a.zarr",
    ):
        with pytest.raises(ParameterError, match="outside the configured storage roots") as refused:
            check_store_url(outside)
        assert "form's default" not in str(refused.value)
    # a run given part of `params` gets the form's defaults for the rest: the message says so
    with pytest.raises(ParameterError, match="it is the form's default: parameters given to a run"):
        check_store_url("runs/demo/archive.zarr")


@pytest.mark.fault("security", "requests climbing out of the artifact server's folder",
                   "404; the server binds 127.0.0.1")
def test_the_artifact_file_server_serves_its_folder_only_and_on_loopback(tmp_path):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "map.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    port = free_port()
    server = start_file_server(tmp_path / "public", port)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/map.png", timeout=5) as response:
            assert response.read() == b"png"
        for climb in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{climb}", timeout=5)
    finally:
        server.shutdown()


@pytest.mark.slow
@pytest.mark.fault("security", "`nowcast server` started with defaults, then SIGKILLed",
                   "listens on 127.0.0.1 only; its Prefect server ends with it (it went on holding the port, "
                   "and the next `nowcast server` on that port used it without a word)")
def test_the_local_server_listens_on_loopback_only(tmp_path):
    """`nowcast server`: the Prefect server and the artifact server bind to 127.0.0.1 by default."""
    import psutil

    process, ports = _local_server(tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for_api(f"http://127.0.0.1:{ports[0]}/api", timeout_s=180)
        deadline = time.monotonic() + 60  # the artifact server starts once the API answers
        while not psutil.net_connections(kind="inet") or not any(
                c.laddr.port == ports[1] and c.status == psutil.CONN_LISTEN
                for c in psutil.net_connections(kind="inet")):
            assert time.monotonic() < deadline, "the artifact server did not start"
            time.sleep(0.2)
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        listening = {(conn.laddr.ip, conn.laddr.port) for p in family
                     for conn in _connections(p) if conn.status == psutil.CONN_LISTEN}
        process.kill()
        process.wait()
        _gone, alive = psutil.wait_procs(family[1:], timeout=60)
        assert not alive, f"outlived `nowcast server`: {alive}"
    finally:
        stop_process(process)
    assert {port for _, port in listening} >= set(ports), listening
    assert {address for address, _ in listening} <= {"127.0.0.1", "::1"}, listening


def _local_server(tmp_path, stderr) -> tuple[subprocess.Popen, list[int]]:
    """``nowcast server`` on two free ports with its own PREFECT_HOME: the process and the ports."""
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), ROOTS_ENV: str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    command = ["server", "--workdir", str(tmp_path / "work"), "--port", str(ports[0]), "--files-port",
               str(ports[1])]
    return subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", *command], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=stderr), ports


@pytest.mark.slow
@pytest.mark.fault("command line", "`nowcast server` stopped by SIGTERM (a service manager), once or twice",
                   "stops as on Ctrl-C: one line 'stopped (SIGTERM)', exit 143, its Prefect server gone; a "
                   "second SIGTERM during the stop ends it too (Prefect's runner had taken SIGTERM: exit 0 "
                   "without a word, and a second one called sys.exit inside its event loop)")
@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice"])
def test_the_local_server_stops_on_sigterm_as_on_ctrl_c(tmp_path, signals):
    import signal

    import psutil

    process, ports = _local_server(tmp_path, stderr=subprocess.PIPE)
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


def _connections(process) -> list:
    """A process's sockets; none for a short-lived child that exited since it was listed (once a race)."""
    import psutil

    try:
        return process.net_connections(kind="inet")
    except psutil.NoSuchProcess:
        return []
