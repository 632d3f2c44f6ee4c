"""A new user's session: the whole workflow through `nowcast` subcommands only, as a shell would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from nowcast.pipelines.stores.forecasts import written_flags

SIZE, FRAMES = "32", "96"  # 8 hours of 5-minute frames


def nowcast(*args: str, cwd) -> subprocess.CompletedProcess:
    """One command as a user types it; its exit status and output are the test's to check."""
    return subprocess.run([sys.executable, "-m", "nowcast.flows.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.mark.slow
def test_ingest_windows_train_score_evaluate_show(tmp_path, prefect_server):
    """The stores land under runs/demo (the default workdir); every step prints a short report and exits 0."""
    work = tmp_path / "runs" / "demo"
    steps = [
        ("ingest", "--synthetic", "--frames", FRAMES, "--size", SIZE, "--synthetic-density", "40"),
        ("windows", "--t-out", "2"),
        ("train", "--t-out", "2", "--epochs", "1", "--filters", "4", "--lstm-units", "4",
         "--promote", "always"),
        ("models", "list"),
        ("score", "--start", "2024-01-01T06:00"),
        # the streaming scorer: its first poll finds the init times before 06:00 unscored, and the run
        # ends only once what it emitted is written
        ("score", "--follow", "--duration", "4", "--interval", "1"),
        ("evaluate", "--archive", str(work / "archive.zarr"), "--forecasts", str(work / "forecasts.zarr"),
         "--max-samples", "8"),
        ("show", str(work / "forecasts.zarr"), "--out", str(tmp_path / "forecast.gif")),
        ("show", str(work / "archive.zarr"), "--out", str(tmp_path / "frames.png")),
    ]
    outputs = {}
    for step in steps:
        result = nowcast(*step, cwd=tmp_path)
        assert result.returncode == 0, f"nowcast {' '.join(step)}:\n{result.stderr[-3000:]}"
        outputs[" ".join(step[:2]) if step[1] == "--follow" else step[0]] = result.stdout
        assert len(result.stdout.splitlines()) <= 30, f"nowcast {step[0]} printed:\n{result.stdout}"
        assert "Traceback" not in result.stderr
    assert "ingested 96 frames" in outputs["ingest"]
    assert "samples: train" in outputs["windows"]
    assert "promoted" in outputs["train"]
    assert "against the baselines on the validation split of" in outputs["train"]  # the table's caption
    for command in ("train", "evaluate"):  # and its key
        assert "csi_T: critical success index at T mm/h" in outputs[command]
    assert "latest" in outputs["models"]
    assert "scored 24 init times" in outputs["score"]
    assert "(stored)" in outputs["evaluate"]
    for store in ("archive.zarr", "windows.zarr", "forecasts.zarr", "models/convlstm/latest",
                  "evaluate/stored_maps.png"):
        assert (work / store).exists(), store
    emitted = int(re.search(r"(\d+) init times? emitted", outputs["score --follow"]).group(1))
    assert emitted > 0
    assert written_flags(str(work / "forecasts.zarr")).sum() == 24 + emitted
    with Image.open(tmp_path / "forecast.gif") as gif:
        assert gif.n_frames == 2  # one per lead
    with Image.open(tmp_path / "frames.png") as png:
        assert png.width > png.height  # the frames in a row


@pytest.mark.slow
def test_quiet_by_default_and_the_workers_log_with_v(tmp_path):
    """Beam's worker processes log at the command's level: nothing by default, their start-up with -v
    (given after the command, where a user types it)."""
    command = ("ingest", "--synthetic", "--frames", "8", "--size", "16", "--runner", "multiprocess",
               "--workers", "1", "--archive")
    quiet = nowcast(*command, str(tmp_path / "quiet.zarr"), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr == ""
    assert len(quiet.stdout.splitlines()) <= 8
    verbose = nowcast(*command, str(tmp_path / "verbose.zarr"), "-v", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "sdk harness" in verbose.stderr.lower()


FLOW_RUN = """
import logging, sys
from prefect.logging.configuration import setup_logging
setup_logging()  # as Prefect's engine does before it loads a flow
import nowcast.flows.train  # the flow's module, as the engine imports it
import tensorflow  # its C++ start-up lines
logging.getLogger("prefect.nowcast").warning("the run's own warning")
print("python's stderr", file=sys.stderr)
from nowcast.errors import InputError
for error in (InputError("no promoted version of convlstm: train one first"), RuntimeError("a bug")):
    try:
        raise error
    except Exception:
        logging.getLogger("prefect.nowcast").error("the run failed:", exc_info=True)
logging.getLogger("prefect.flows").error("Parameter validation failed for flow 'train': [{'type': ...}]")
logging.getLogger("prefect.engine").error("%s %s", "Validation of flow parameters failed with error:", "no")
"""


@pytest.mark.slow
@pytest.mark.fault("command line", "flow runs that `nowcast server` (or the stack's worker) starts in "
                   "processes of their own",
                   "they keep the serving command's verbosity: TensorFlow's C++ start-up lines and Beam's "
                   "import notes no longer fill the server's terminal, and bad input (a scheduled forecast "
                   "with no model yet) is one line there, not a traceback every 5 minutes; the runs' own "
                   "warnings and bugs' tracebacks still show")
@pytest.mark.parametrize("verbosity", ["0", None])
def test_a_flow_run_in_its_own_process_is_as_quiet_as_its_server(tmp_path, verbosity):
    from nowcast.flows.console import VERBOSITY_ENV

    env = {**os.environ, "PREFECT__FLOW_RUN_ID": "0", "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop(VERBOSITY_ENV, None)
    if verbosity is not None:
        env[VERBOSITY_ENV] = verbosity  # what `nowcast server` leaves to its runs
    run = subprocess.run([sys.executable, "-c", FLOW_RUN], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "the run's own warning" in run.stderr
    assert "python's stderr" in run.stderr
    assert "RuntimeError: a bug" in run.stderr
    if verbosity is None:  # no serving command's verbosity: everything, as before
        assert "absl" in run.stderr
        assert run.stderr.count("Traceback") == 2
        assert "Parameter validation failed" in run.stderr
    else:
        assert "absl" not in run.stderr
        assert "oneDNN" not in run.stderr
        assert "apitools" not in run.stderr
        # bad input in one line (its traceback is the UI's), a bug with its traceback
        assert "the run failed: no promoted version of convlstm: train one first" in run.stderr
        assert run.stderr.count("Traceback") == 1
        assert "Parameter validation failed" not in run.stderr  # Prefect's other reports of refused ones
        assert "Validation of flow parameters failed" not in run.stderr
