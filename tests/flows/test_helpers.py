"""Plain helpers of the flows, without Prefect: chunking, promotion rule, store roots, artifact URLs."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from nowcast.errors import InputError
from nowcast.flows.artifacts import artifact_key, public_url
from nowcast.flows.forecast import chunked
from nowcast.flows.params import ROOTS_ENV, ParameterError, check_store_url
from nowcast.model.verify import Verification


def test_chunks_cover_the_init_times_in_order():
    times = tuple(f"t{i}" for i in range(7))
    assert chunked(times, 3) == [("t0", "t1", "t2"), ("t3", "t4", "t5"), ("t6",)]
    assert chunked((), 3) == []


def scores(mae: list[float], csi: list[float]) -> dict[str, dict[str, float]]:
    return {str(5 * (k + 1)): {"mae": m, "csi_1": c} for k, (m, c) in enumerate(zip(mae, csi, strict=True))}


def test_promotion_needs_a_higher_csi_and_a_lower_mae_than_extrapolation():
    base = scores([1.0, 2.5], [0.5, 0.3])
    better = Verification({"m": scores([1.0, 2.0], [0.5, 0.4]), "extrapolation": base}, 4, None)
    wetter = Verification({"m": scores([1.0, 3.0], [0.6, 0.5]), "extrapolation": base}, 4, None)
    blurrier = Verification({"m": scores([0.5, 2.0], [0.4, 0.3]), "extrapolation": base}, 4, None)
    tie = Verification({"m": base, "extrapolation": base}, 4, None)
    unscored = Verification({"m": {"5": {"n": 0.0}}, "extrapolation": {"5": {"n": 0.0}}}, 0, None)
    assert better.beats("m", "extrapolation")
    assert better.margins("m", "extrapolation") == pytest.approx({"csi_1": 0.05, "mae": 0.25})
    assert better.mean("m", "mae") == pytest.approx(1.5)
    assert not wetter.beats("m", "extrapolation")  # higher CSI, but a larger error
    assert not blurrier.beats("m", "extrapolation")  # smaller error, but lower CSI
    assert not tie.beats("m", "extrapolation")
    assert not unscored.beats("m", "extrapolation")
    assert np.isnan(unscored.mean("m"))


@pytest.mark.fault("command line", "evaluate on a split where neither the observations nor the forecasts "
                   "reach 0.5 mm/h (a dry period)",
                   "a warning says why every CSI reads '-' and what to evaluate on instead (the table of '-' "
                   "came without a word, exit 0)")
def test_a_dry_verification_is_told_apart():
    dry = Verification({"m": scores([0.0, 0.0], [float("nan")] * 2), "extrapolation": scores([0.0, 0.0],
                       [float("nan")] * 2)}, 4, None)
    assert dry.dry()
    one_wet_lead = Verification({"m": scores([0.1, 0.0], [0.0, float("nan")])}, 4, None)
    assert not one_wet_lead.dry()


def test_store_roots_accept_paths_and_url_prefixes(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOTS_ENV, f"{tmp_path}:s3://bucket/nowcast/")
    assert check_store_url(str(tmp_path / "a" / ".." / "b.zarr")) == str(tmp_path / "b.zarr")
    assert check_store_url("s3://bucket/nowcast/archive.zarr") == "s3://bucket/nowcast/archive.zarr"
    for outside in (str(tmp_path) + "-sibling/a.zarr", str(tmp_path / ".." / "a.zarr"),
                    "s3://bucket/nowcast-other/a.zarr", "gs://bucket/nowcast/a.zarr"):
        with pytest.raises(ParameterError, match=ROOTS_ENV):
            check_store_url(outside)


def test_artifact_keys_and_served_urls(tmp_path, monkeypatch):
    assert artifact_key("Evaluate test_maps.PNG") == "evaluate-test-maps-png"
    monkeypatch.delenv("NOWCAST_ARTIFACT_URL", raising=False)
    assert public_url(tmp_path / "x.png") is None
    monkeypatch.setenv("NOWCAST_ARTIFACT_URL", "http://127.0.0.1:4201/")
    monkeypatch.setenv("NOWCAST_ARTIFACT_ROOT", str(tmp_path))
    assert public_url(tmp_path / "demo" / "x.png") == "http://127.0.0.1:4201/demo/x.png"
    assert public_url("/elsewhere/x.png") is None


@pytest.mark.fault("flows", "a flow failing with its workdir on an object store",
                   "what it wrote is still copied to the store")
def test_a_workdir_url_is_a_local_folder_copied_to_the_object_store_even_when_the_flow_fails(s3_bucket):
    import fsspec

    from nowcast.flows.workdir import local_workdir, published

    url = f"{s3_bucket}/train"

    def failing_flow() -> Path:
        with local_workdir(url) as folder:
            (folder / "pictures").mkdir(exist_ok=True)
            (folder / "pictures" / "maps.png").write_bytes(b"png")
            (folder / "history.csv").write_text("epoch\n0\n")
            assert published(folder / "pictures" / "maps.png", folder, url) == f"{url}/pictures/maps.png"
            raise RuntimeError(str(folder))

    with pytest.raises(RuntimeError) as failed:
        failing_flow()
    folder = Path(str(failed.value))
    fs = fsspec.filesystem("s3")
    assert fs.cat_file(f"{url}/pictures/maps.png") == b"png"
    assert fs.cat_file(f"{url}/history.csv") == b"epoch\n0\n"
    with local_workdir(str(folder)) as same:  # a local workdir is itself
        assert same == folder


def test_the_train_verdict_says_what_was_done_and_why():
    from nowcast.flows.train import verdict_text

    assert verdict_text("v2", True, True, "if_better", "m") == "promoted v2 to latest (m)"
    assert verdict_text("v2", False, False, "if_better", "m") == \
        "kept v2 unpromoted: it does not beat LK extrapolation on both (m)"
    assert verdict_text("v2", True, False, "always", "m") == \
        "promoted v2 to latest as asked (promote=always); it does not beat LK extrapolation on both (m)"
    assert verdict_text("v2", False, True, "never", "m") == \
        "kept v2 unpromoted as asked (promote=never); it beats LK extrapolation on both (m)"


@pytest.mark.fault("command line", "an object store that cannot be used: a bucket that does not exist, "
                   "no credentials, an endpoint that does not answer; `models list` of a registry URL with "
                   "nothing there",
                   "exit 2 naming the problem, the fix and the command's URLs (each was a botocore or s3fs "
                   "traceback, exit 1)")
def test_object_store_failures_are_one_message_with_the_fix(s3_bucket, tmp_path, capsys, monkeypatch):
    import botocore.exceptions

    from nowcast.flows import cli
    from nowcast.pipelines.stores.groups import object_store_problem

    missing = s3_bucket + "-missing"
    assert cli.main(["ingest", "--synthetic", "--frames", "2", "--size", "16", "--archive",
                     f"{missing}/a.zarr"]) == 2
    err = capsys.readouterr().err
    assert "error: the bucket does not exist (The specified bucket does not exist): create it, or fix the " \
           f"bucket's name in the URL (URLs: {missing}/a.zarr)" in err
    assert "Traceback" not in err
    for registry in (f"{s3_bucket}/nothing", f"{missing}/models"):  # each listed "no models", exit 0
        assert cli.main(["models", "list", "--models", registry]) == 2
        assert f"no model registry at {registry} (nothing there)" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    no_endpoint = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b")
    assert object_store_problem(RuntimeError("chunk failed")) is None
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = no_endpoint
    assert object_store_problem(wrapped).startswith(
        'the object store cannot be reached (Could not connect to the endpoint URL: "http://127.0.0.1:9/b"): '
        "check that the object store runs and is reachable from here (for s3:// URLs its endpoint is "
        "AWS_ENDPOINT_URL, now http://127.0.0.1:9)")
    gcs_offline = OSError("Cannot connect to host storage.googleapis.com:443 ssl:default [Name or service "
                          "not known]")  # aiohttp's, under gcsfs: it had been a traceback
    assert object_store_problem(gcs_offline).startswith("the object store cannot be reached (Cannot connect")
    assert object_store_problem(botocore.exceptions.NoCredentialsError()).startswith(
        "no credentials for the object store")
    in_worker = RuntimeError("PermissionError: Forbidden [while running 'WriteChunks']")  # a Beam worker's
    assert object_store_problem(in_worker).startswith("the object store refused the request")


@pytest.fixture
def stalled_endpoint():
    """An object store's address that takes connections and never answers (a hung server or proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the server closed: the test is over
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


@pytest.mark.fault("command line", "an object store that takes connections and never answers",
                   "exit 2 naming the endpoint and the fix once the read timeout and its tries are spent "
                   "(the command hung for 7 minutes on botocore's defaults; a test's timeout catches a hang)")
@pytest.mark.timeout(120)
def test_a_stalled_object_store_ends_in_a_clear_error(stalled_endpoint, monkeypatch, capsys):
    from nowcast.flows import cli
    from nowcast.pipelines.stores import groups

    monkeypatch.setattr(groups, "S3_TIMEOUTS", {"connect_timeout": 1, "read_timeout": 1})  # 10 s in use
    monkeypatch.setenv("AWS_ENDPOINT_URL", stalled_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nowcast")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nowcast")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    assert cli.main(["models", "list", "--models", "s3://bucket/models"]) == 2
    err = capsys.readouterr().err
    assert f"the object store cannot be reached (Read timeout on endpoint URL: \"{stalled_endpoint}/" in err
    assert f"AWS_ENDPOINT_URL, now {stalled_endpoint})" in err
    assert "Traceback" not in err


def test_object_store_options_keep_the_users_tries(monkeypatch):
    from nowcast.pipelines.stores.groups import storage_options

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    config = storage_options("s3://b/a.zarr")["config_kwargs"]
    assert config["retries"] == {"max_attempts": 2, "mode": "standard"}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # botocore reads it when no retries are configured
    assert "retries" not in storage_options("s3://b/a.zarr")["config_kwargs"]
    assert storage_options("gs://b/a.zarr") == {"use_listings_cache": False}


@pytest.mark.fault("command line", "`nowcast server` started again right after it stopped",
                   "it starts: the stopped server's closed connections (TIME_WAIT, up to a minute) do not "
                   "count as the port in use (it was refused, naming another server)")
def test_a_port_left_with_closed_connections_is_free_for_a_server(tmp_path):
    from nowcast.flows.serve import check_serving

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its port keeps the connection in TIME_WAIT
        client.recv(1)
        client.close()
    check_serving(tmp_path / "w", "*/5 * * * *", (port,))
    with socket.create_server(("127.0.0.1", port)), pytest.raises(InputError, match=f"port {port} .* in use"):
        check_serving(tmp_path / "w", "*/5 * * * *", (port,))


@pytest.mark.fault("train", "two runs in one work folder at once (two trainings, or evaluations, given the "
                   "same --workdir); the first one killed",
                   "the second is refused naming the first run and the fix; a killed holder leaves the "
                   "folder free (two trainings wrote each other's checkpoints: an HDF5 locking traceback "
                   "and a history.csv of two runs' rows, exit 0)")
def test_a_work_folder_is_held_by_one_run_at_a_time(tmp_path):
    import signal
    import subprocess
    import sys

    from nowcast.errors import InputError
    from nowcast.flows.workdir import local_workdir

    folder = tmp_path / "train"
    script = ("import sys, time\nfrom pathlib import Path\nfrom nowcast.flows.workdir import held\n"
              "with held(Path(sys.argv[1]), sys.argv[1]):\n    print('held', flush=True)\n"
              "    time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=rf"{folder} is in use by another run \(pid {holder.pid} on .*"
                                             r"give this run another --workdir"), local_workdir(str(folder)):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with local_workdir(str(folder)) as same:  # free once its holder is gone, however it ended
        assert same == folder


@pytest.mark.fault("flows", "two evaluate runs served by `nowcast server` (fixed picture names)",
                   "each run's image artifact keeps linking its own picture (the links of earlier runs "
                   "showed the newest run's pictures)")
def test_a_runs_picture_links_stay_its_own(tmp_path, monkeypatch):
    from nowcast.flows import artifacts

    monkeypatch.setenv(artifacts.URL_ENV, "http://127.0.0.1:4201/")
    monkeypatch.setenv(artifacts.ROOT_ENV, str(tmp_path))
    linked = []
    monkeypatch.setattr(artifacts, "create_image_artifact", lambda image_url, **_: linked.append(image_url))
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda **_: None)
    picture = tmp_path / "evaluate" / "test_maps.png"
    picture.parent.mkdir()
    for run in (b"first run", b"second run", b"first run"):
        picture.write_bytes(run)
        artifacts.publish_png("evaluate-test-maps", picture, "test maps")
    assert linked[0] != linked[1]
    assert linked[0] == linked[2]  # by content: the same picture, one copy
    for url, run in zip(linked, (b"first run", b"second run"), strict=False):
        assert url.startswith("http://127.0.0.1:4201/evaluate/published/test_maps-")
        assert (tmp_path / url.removeprefix("http://127.0.0.1:4201/")).read_bytes() == run


@pytest.mark.fault("flows", "`nowcast serve` or `server` given --workdir s3://bucket, or started with the "
                   "stack's NOWCAST_STORAGE_ROOTS exported",
                   "a URL is refused naming the fix (it made a local folder 's3:' and served stores there); "
                   "the served folder joins the exported roots (its own deployments refused their default "
                   "stores as outside the roots)")
def test_serving_takes_a_local_folder_and_adds_it_to_the_roots(tmp_path, monkeypatch):
    from nowcast.flows.params import ROOTS_ENV, storage_roots, with_root
    from nowcast.flows.serve import check_serving

    monkeypatch.chdir(tmp_path)
    assert check_serving(f"file://{tmp_path}/w", "*/5 * * * *") == tmp_path / "w"  # not a folder 'file:'
    with pytest.raises(InputError, match=r"--workdir s3://nowcast: the served stores, the incoming folder "
                                         r"and the pictures lie in a local folder; give one"):
        check_serving("s3://nowcast", "*/5 * * * *")
    with pytest.raises(InputError, match=r"--workdir gs://bucket/w: the served stores"):  # before a request:
        check_serving("gs://bucket/w", "*/5 * * * *")  # offline, gcsfs's retries had been a traceback
    assert not (tmp_path / "s3:").exists()
    assert with_root("s3://nowcast", str(tmp_path)) == f"s3://nowcast,{tmp_path}"
    assert with_root(" ", str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv(ROOTS_ENV, with_root("s3://nowcast", str(tmp_path)))
    assert storage_roots() == ["s3://nowcast", str(tmp_path)]


def test_flow_tasks_retry_what_may_pass_and_not_bad_input():
    """A held or growing store and an object store that did not answer may pass; a missing bucket or a
    bad parameter fails the same way again (the retry rule first declined every store error)."""
    from types import SimpleNamespace

    from nowcast.errors import retry_unless_bad_input
    from nowcast.pipelines.stores.archive import ArchiveError, InterruptedExtensionError
    from nowcast.pipelines.stores.groups import StoreError, object_store_errors
    from nowcast.pipelines.stores.lock import LockLostError, LockTimeoutError

    def retried(error: BaseException) -> bool:
        return retry_unless_bad_input(None, None, SimpleNamespace(data=error))

    for passing in (OSError("a hiccup"), LockTimeoutError("held"), LockLostError("lost"),
                    InterruptedExtensionError("growing")):
        assert retried(passing), passing
    assert not retried(ArchiveError("another grid"))
    with pytest.raises(StoreError) as unreachable, object_store_errors("s3://b/a.zarr"):
        raise OSError("Could not connect to the endpoint URL: http://127.0.0.1:1/b")
    assert retried(unreachable.value)
    with pytest.raises(StoreError) as missing, object_store_errors("s3://b/a.zarr"):
        raise FileNotFoundError("The specified bucket does not exist")
    assert not retried(missing.value)


@pytest.mark.fault("flows", "bad input raised in a task of a served flow run (a damaged model in a backfill)",
                   "one line in the serving terminal (Prefect's three reports of it: the task's final state, "
                   "the flow's exception, the engine's exit, were each a line); other errors all stay")
def test_a_served_run_says_bad_input_once():
    import logging

    from nowcast.flows.console import BadInputOnce
    from nowcast.pipelines.plans.ingest import IngestError

    error = IngestError("/data/a.h5: time 2023-12-31T20:00:00 is before the archive start; ingest it into a "
                        "new archive")

    def record(message: str, failure: BaseException | None = None) -> logging.LogRecord:
        info = (type(failure), failure, None) if failure is not None else None
        return logging.LogRecord("prefect", logging.ERROR, __file__, 1, message, None, info)

    once = BadInputOnce()
    said = [record(f"Finished in state Failed('Task run encountered an exception IngestError: {error}')"),
            record("Encountered exception during execution:", error),
            record("Engine execution exited with unexpected exception", error),
            record("Finished in state Failed('Task run encountered an exception ValueError: a bug')"),
            record("Encountered exception during execution:", ValueError("a bug")),
            record("Encountered exception during execution:", IngestError("another file: corrupt")),
            record("Finished in state Failed('Task run encountered an exception IngestError: short')"),
            record("Encountered exception during execution:", IngestError("short"))]
    assert [once.filter(each) for each in said] == [True, False, False, True, True, True, True, False]
