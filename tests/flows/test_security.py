"""Security: models load without running code, stores stay inside the storage roots, servers bind to
loopback."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from nowcast.flows.params import ROOTS_ENV, ParameterError, check_store_url
from nowcast.flows.serve import start_file_server, stop_process, wait_for_api
from nowcast.processes import free_port
from tests.flows.served import local_server


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
        # (`..` in an object-store URL is refused before the roots are looked at: it names another key)
        refusal = r"outside the configured storage roots|a '\.' or '\.\.' path segment"
        with pytest.raises(ParameterError, match=refusal) as refused:
            check_store_url(outside)
        assert "form's default" not in str(refused.value)
    # a run given part of `params` gets the form's defaults for the rest: the message says so
    with pytest.raises(ParameterError, match="it is the form's default: parameters given to a run"):
        check_store_url("runs/demo/archive.zarr")


@pytest.mark.fault("security", "requests climbing out of the artifact server's folder, or for what is not a "
                   "picture there: a folder's listing, a store chunk, a link out",
                   "404; the server binds 127.0.0.1 and serves the PNG files under its folder only")
def test_the_artifact_file_server_serves_its_pictures_only_and_on_loopback(tmp_path):
    public = tmp_path / "public"
    (public / "archive.zarr" / "precip" / "c").mkdir(parents=True)
    (public / "evaluate").mkdir()
    (public / "evaluate" / "map.png").write_bytes(b"png")
    (public / "archive.zarr" / "precip" / "c" / "0").write_bytes(b"chunk")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "secret.png").write_bytes(b"private picture")
    os.symlink(tmp_path / "secret.png", public / "link.png")
    port = free_port()
    server = start_file_server(public, port)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/evaluate/map.png", timeout=5) as response:
            assert response.read() == b"png"
        for refused in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/", "/evaluate/",
                        "/archive.zarr/precip/c/0", "/link.png", "/missing.png"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{refused}", timeout=5)
    finally:
        server.shutdown()


@pytest.mark.slow
@pytest.mark.fault("security", "`nowcast server` started with defaults, then SIGKILLed",
                   "listens on 127.0.0.1 only; its Prefect server ends with it (it went on holding the port, "
                   "and the next `nowcast server` on that port used it without a word)")
def test_the_local_server_listens_on_loopback_only(tmp_path):
    """`nowcast server`: the Prefect server and the artifact server bind to 127.0.0.1 by default."""
    import psutil

    process, ports = local_server(tmp_path, stderr=subprocess.DEVNULL)
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


def _connections(process) -> list:
    """A process's sockets; none for a short-lived child that exited since it was listed (once a race)."""
    import psutil

    try:
        return process.net_connections(kind="inet")
    except psutil.NoSuchProcess:
        return []
