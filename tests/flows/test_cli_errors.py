"""What the command line prints when something goes wrong: one message naming the problem and the fix,
exit 2 (bad input), 128 + the signal (Ctrl-C, SIGTERM), 141 (a closed pipe); never a traceback unless -v
asks for it, and with -q nothing but errors. (Each was a traceback or a wrong message in a bad-input
sweep.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from nowcast.flows import cli
from nowcast.pipelines.stores.archive import open_archive
from nowcast.processes import alive
from tests.pipelines.jobs.scoring_helpers import MODEL, make_archive, save_tiny_model, synthetic_stats

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker

FRAMES, SIZE = 16, (16, 16)


def refused(capsys, command: list[str], message: str) -> None:
    """``command`` exits 2 with ``message`` on stderr."""
    assert cli.main(command) == 2, command
    assert message in capsys.readouterr().err


def nowcast(*args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nowcast.flows.cli", *args], capture_output=True, text=True,
                          timeout=300, **popen)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """An archive, a registry with a tiny model of it, and a forecasts store of two init times."""
    root = tmp_path_factory.mktemp("stores")
    archive = make_archive(str(root / "archive.zarr"), FRAMES, SIZE)
    save_tiny_model(root / "models", archive, synthetic_stats(FRAMES, SIZE))
    found = {"archive": archive, "models": str(root / "models"), "forecasts": str(root / "forecasts.zarr")}
    assert cli.main(["score", "--archive", archive, "--models", found["models"], "--model-name", MODEL,
                     "--forecasts", found["forecasts"], "--start", "2024-01-01T00:10",
                     "--end", "2024-01-01T00:15"]) == 0
    return found


@pytest.mark.fault("command line", "`show` of an archive with a chunk that does not decode",
                   "exit 2 with `nowcast check`'s report: the damaged chunk, its times and `ingest --repair`")
def test_show_names_a_damaged_chunk_and_the_repair(stores, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "archive.zarr"
    shutil.copytree(stores["archive"], damaged)
    (damaged / "precip" / "c" / "1" / "0" / "0").write_bytes(os.urandom(100))
    assert cli.main(["show", str(damaged), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "precip chunk 1/0/0" in err
    assert "damaged" in err
    assert "--repair" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.fault("command line", "`show --time` that is not a time; `show ARCHIVE --archive OTHER`",
                   "exit 2 naming the option and an example time; --archive (the observations beside a "
                   "forecast store) refused for an archive, which is shown alone (it was ignored, exit 0)")
def test_show_refuses_a_time_that_is_not_one(stores, tmp_path, capsys):
    assert cli.main(["show", stores["archive"], "--time", "garbage", "--out", str(tmp_path / "x.png")]) == 2
    assert "--time 'garbage' is not an ISO 8601 time" in capsys.readouterr().err
    assert cli.main(["show", stores["archive"], "--archive", stores["archive"], "--out",
                     str(tmp_path / "x.png")]) == 2
    assert "is an archive, shown alone: drop --archive" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.fault("command line", "a picture (`show --out`, `summary --png`) into a folder that cannot be "
                   "written or made; a picture path without .png (summary) or .png/.gif (show)",
                   "exit 2 naming the picture's path and the fix; nothing written")
def test_a_picture_that_cannot_be_written_is_named(stores, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "x.png"
    for command in (["show", stores["archive"], "--out", str(out)],
                    ["summary", stores["archive"], "--png", str(out)]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert f"cannot write the picture {out}: {blocker} is a file, not a folder" in err
        assert "Traceback" not in err
    assert cli.main(["show", stores["archive"], "--out", str(tmp_path / ".gif")]) == 2
    assert "is an extension without a file name; give a name such as map.gif" in capsys.readouterr().err
    for picture, suffixes in ((tmp_path / "noext", ".png"), (tmp_path / "x.jpg", ".png"),
                              (tmp_path / "x.jpg", ".png or .gif")):
        command = (["summary", stores["archive"], "--png", str(picture)] if suffixes == ".png"
                   else ["show", stores["archive"], "--out", str(picture)])
        assert cli.main(command) == 2  # summary wrote noext.png and a JPEG, naming the path it was given
        assert f"{picture} must end in {suffixes} (the picture's format)" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.slow
@pytest.mark.fault("command line", "`evaluate` of a split with no samples, with and without -v",
                   "exit 2 saying the split is empty and how to fill it; without -v only that line (no "
                   "Prefect ERROR logs, no traceback), with -v the run's logs too")
def test_evaluate_of_an_empty_split_is_one_message_unless_verbose(stores, tmp_path, prefect_server):
    """Against the session's Prefect server (its API URL in the environment): no temporary one to start."""
    windows = str(tmp_path / "windows.zarr")
    assert cli.main(["windows", "--archive", stores["archive"], "--windows", windows, "--t-in", "3",
                     "--t-out", "2", "--split-block", "PT30M", "--split-fractions", "0.5", "0.5", "0"]) == 0
    command = ["evaluate", "--windows", windows, "--models", stores["models"], "--model-name", MODEL,
               "--workdir", str(tmp_path / "evaluate")]
    quiet = nowcast(*command)
    assert quiet.returncode == 2, quiet.stderr[-3000:]
    assert quiet.stderr.splitlines() == [f"nowcast evaluate: error: the test split of {windows} has no "
                                         "samples: cut the windows from a longer archive, or with a shorter "
                                         "split_block or a larger share for test in split_fractions"]
    assert quiet.stdout == ""
    verbose = nowcast(*command, "-v")
    assert verbose.returncode == 2
    assert "ERROR prefect.task_runs" in verbose.stderr
    assert "Traceback" in verbose.stderr


@pytest.mark.slow
@pytest.mark.fault("models", "`evaluate` of a version folder copied under another name, on windows cut again "
                   "with every frame as test",
                   "the table names the version by its folder (it named the version it was copied from, "
                   "which is not the one evaluated), and a warning counts the samples holding frames of the "
                   "model's training split")
def test_evaluate_names_the_folder_and_warns_of_training_frames(stores, tmp_path, prefect_server):
    import shutil

    from nowcast.model.train import training_range
    from nowcast.pipelines.stores.windows import WindowsStore, describe_archive

    def windows(name: str, *fractions: str) -> str:
        url = str(tmp_path / name)
        assert cli.main(["windows", "--archive", stores["archive"], "--windows", url, "--t-in", "3",
                         "--t-out", "2", "--split-block", "PT20M", "--split-method", "contiguous",
                         "--split-fractions", *fractions]) == 0
        return url

    train = WindowsStore(windows("trained.zarr", "0.5", "0.25", "0.25"), "train")
    models = tmp_path / "models"
    saved = Path(save_tiny_model(models, stores["archive"], synthetic_stats(FRAMES, SIZE), recorded={
        "window_spec": train.attrs["window_spec"], "training_range": [training_range(train, 3, 2)],
        "training_archives": [describe_archive(train.url).to_dict()]}))
    shutil.copytree(saved, saved.parent / "candidate")
    every = windows("all-test.zarr", "0", "0", "1")
    run = nowcast("evaluate", "--windows", every, "--models", str(models), "--model-name", MODEL,
                  "--model-version", "candidate", "--workdir", str(tmp_path / "evaluate"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"| {MODEL}/candidate |" in run.stdout
    assert saved.name not in run.stdout
    total = WindowsStore(every, "test").num_samples
    assert f"of the {total} test samples of {every} hold frames of {MODEL}/candidate's training split: " \
           "their scores flatter it" in run.stderr, run.stderr
    # every sample verified (fewer than --max-samples): not "spread over the split", said whenever capped
    assert total < 64
    assert f"the test split of {every}: {total} samples\n" in run.stdout


@pytest.mark.fault("stores", "a forecast store whose member's zarr.json is empty (a copy onto a full disk)",
                   "score, show and the jobs' readers (a windows store's too) exit 2 naming the file and "
                   "the fix, as check does (they printed json's bare 'Expecting value: line 1 column 1 "
                   "(char 0)', or its traceback)")
def test_a_damaged_member_of_a_forecast_store_is_named(stores, tmp_path, capsys):
    import shutil

    from nowcast.pipelines.stores.forecasts import written_flags
    from nowcast.pipelines.stores.groups import StoreError
    from nowcast.pipelines.stores.windows import WindowsStore

    damaged = tmp_path / "forecasts.zarr"
    shutil.copytree(stores["forecasts"], damaged)
    (damaged / "written" / "zarr.json").write_text("")
    named = f"{damaged}: the metadata of written/zarr.json (Expecting value: line 1 column 1 (char 0)) is " \
            "damaged: restore the store from a copy"
    score = ["score", "--archive", stores["archive"], "--models", stores["models"], "--model-name", MODEL]
    show = ["show", str(damaged), "--out", str(tmp_path / "x.png")]
    for command in ([*score, "--forecasts", str(damaged)], show):
        assert cli.main(command) == 2
        assert named in capsys.readouterr().err
    with pytest.raises(StoreError) as raised:  # what the jobs read, past the command's checks
        written_flags(str(damaged))
    assert named in str(raised.value)
    windows = tmp_path / "windows.zarr"  # and a windows store's split
    assert cli.main(["windows", "--archive", stores["archive"], "--windows", str(windows), "--t-in", "3",
                     "--t-out", "2"]) == 0
    (windows / "test" / "zarr.json").write_text("garbage")
    with pytest.raises(StoreError, match=r"the metadata of test/zarr\.json"):
        WindowsStore(str(windows), "test")


@pytest.mark.fault("command line", "`evaluate --forecasts` without `--archive`, or `--archive` without "
                   "`--forecasts`",
                   "exit 2 saying the two go together (the forecasts, then the archive, were ignored without "
                   "a word)")
def test_evaluate_forecasts_needs_the_archive(stores, tmp_path, capsys):
    evaluate = ["evaluate", "--windows", str(tmp_path / "w.zarr"), "--models", stores["models"],
                "--model-name", MODEL]
    assert cli.main([*evaluate, "--forecasts", stores["forecasts"]]) == 2
    assert "give archive too" in capsys.readouterr().err
    assert cli.main([*evaluate, "--archive", stores["archive"]]) == 2
    assert "--archive is the one --forecasts were scored from" in capsys.readouterr().err


@pytest.mark.fault("command line", "a store of another kind given as `score --archive` or `--forecasts` (or "
                   "`evaluate --forecasts`)",
                   "exit 2 saying which kind of store it is (offering a new path only where the run creates "
                   "one); nothing written")
def test_a_store_of_another_kind_is_named_as_such(stores, tmp_path, capsys):
    import shutil

    from tests.pipelines.jobs.ingest_helpers import snapshot

    before = {kind: snapshot(stores[kind]) for kind in ("archive", "forecasts")}
    other = str(shutil.copytree(stores["archive"], tmp_path / "other.zarr"))
    common = ["score", "--models", stores["models"], "--model-name", MODEL]
    assert cli.main([*common, "--archive", stores["archive"], "--forecasts", other]) == 2
    assert f"{other} is an archive, not a forecasts store" in capsys.readouterr().err
    assert cli.main([*common, "--archive", stores["archive"], "--forecasts", stores["archive"]]) == 2
    assert f"archive and forecasts are both {stores['archive']}" in capsys.readouterr().err
    assert cli.main(["evaluate", "--windows", str(tmp_path / "w.zarr"), "--models", stores["models"],
                     "--model-name", MODEL, "--archive", stores["archive"], "--forecasts", other]) == 2
    err = capsys.readouterr().err  # evaluate reads the forecasts: no new store is offered
    assert "is an archive, not a forecasts store" in err
    assert "new path" not in err
    assert cli.main([*common, "--archive", stores["forecasts"], "--forecasts", str(tmp_path / "f.zarr")]) == 2
    assert f"{stores['forecasts']} is a forecasts store, not an archive" in capsys.readouterr().err
    assert {kind: snapshot(stores[kind]) for kind in before} == before
    assert not (tmp_path / "f.zarr").exists()


@pytest.mark.fault("command line", "`check` of a folder that is not a store",
                   "exit 2 saying it is not a store nowcast reads (not advice for a new store)")
def test_check_of_a_folder_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("precious")
    assert cli.main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a store nowcast reads" in err
    assert "new store" not in err


def test_quiet_prints_nothing_but_a_querys_answer(tmp_path, capsys):
    archive = str(tmp_path / "archive.zarr")
    assert cli.main(["-q", "ingest", "--synthetic", "--frames", "8", "--size", "16", "--archive",
                     archive]) == 0
    assert cli.main(["windows", "-q", "--archive", archive, "--windows", str(tmp_path / "w.zarr"),
                     "--t-in", "2", "--t-out", "1", "--split-block", "PT10M"]) == 0
    assert capsys.readouterr() == ("", "")
    assert cli.main(["-q", "summary", archive]) == 0  # what was asked for
    assert capsys.readouterr().out.startswith(f"archive   {archive}")


def test_a_time_with_an_offset_is_converted_without_a_warning():
    from nowcast.flows.params import parse_time

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "no explicit representation of timezones" once leaked
        assert parse_time("2024-01-01T03:00+02:00", "start") == parse_time("2024-01-01T01:00", "start")
        assert parse_time("2024-01-01T03:00Z", "start") == parse_time("2024-01-01T03:00", "start")
        assert parse_time("2024-01-01T0300", "start") == parse_time("2024-01-01T03:00", "start")  # basic form
        assert parse_time("20240101", "start") == parse_time("2024-01-01", "start")  # a basic date, no number


@pytest.mark.fault("command line", "a time with a fraction of a second, a non-finite number, a share that "
                   "leaves no validation split",
                   "exit 2 naming the flag (not the form's field) and the fix; the fraction was cut off "
                   "without a word, nan was answered with the bound, the split named `split_fractions`")
def test_values_the_forms_cannot_hold_name_their_flag(tmp_path, capsys):
    archive = str(tmp_path / "archive.zarr")
    tiny = ("--synthetic", "--frames", "4", "--size", "16", "--archive", archive)
    assert cli.main(["ingest", *tiny, "--start", "2024-01-01T00:00:00.5"]) == 2
    assert "--start '2024-01-01T00:00:00.5' has a fraction of a second" in capsys.readouterr().err
    assert cli.main(["ingest", *tiny, "--synthetic-start", "2024-01-01T00:00:00.25"]) == 2
    assert "--synthetic-start '2024-01-01T00:00:00.25' has a fraction" in capsys.readouterr().err
    assert cli.main(["ingest", *tiny, "--synthetic-density", "nan"]) == 2
    assert "--synthetic-density: Input should be a finite number" in capsys.readouterr().err
    for flag in ("--start", "--synthetic-start"):  # numpy read it as the year 1704103200, exit 0
        assert cli.main(["ingest", *tiny, flag, "1704103200"]) == 2
        assert f"{flag} '1704103200' is a number, not an ISO 8601 time" in capsys.readouterr().err
    assert not os.path.exists(archive)
    # as the maps and messages write a time, which --start took and the generator failed on
    assert cli.main(["-q", "ingest", *tiny, "--synthetic-start", "2024-01-01 10:00 UTC"]) == 0
    assert str(open_archive(archive)["time"].values[0]) == "2024-01-01T10:00:00.000000000"
    shutil.rmtree(archive)
    assert cli.main(["-q", "ingest", *tiny, "--start", "2024-01-01T00:00:00.000"]) == 0  # no fraction
    assert cli.main(["train", "--archive", archive, "--windows", str(tmp_path / "w.zarr"),
                     "--split-fractions", "1", "0", "0"]) == 2
    assert "--split-fractions gives no validation share" in capsys.readouterr().err


@pytest.mark.fault("train", "`train` whose window settings leave the validation split empty (one split "
                   "block, or events with gaps)",
                   "refused from the plan before the windows store is cut or replaced, naming --split-method "
                   "hash for gaps (it cut and replaced the store, then refused)")
def test_train_refuses_an_empty_validation_split_before_cutting(stores, tmp_path, capsys):
    windows = tmp_path / "w.zarr"
    refused(capsys, ["train", "--archive", stores["archive"], "--windows", str(windows), "--models",
                     str(tmp_path / "m"), "--workdir", str(tmp_path / "run"), "--t-in", "3", "--t-out", "2",
                     "--split-block", "P1D"], "the val split of")
    assert not windows.exists()


@pytest.mark.fault("windows", "a split given a share in --split-fractions that ends with no samples",
                   "a warning names the empty split and the fix (silent until evaluate found it empty)")
def test_a_split_left_empty_is_warned_of(stores, tmp_path, caplog):
    windows = str(tmp_path / "w.zarr")
    command = ["windows", "--archive", stores["archive"], "--windows", windows, "--t-in", "3", "--t-out", "2",
               "--split-block", "PT30M"]
    assert cli.main([*command, "--split-fractions", "0.5", "0.4", "0.1"]) == 0
    assert f"the val and test splits of {windows}: no samples although split_fractions gives" in caplog.text
    caplog.clear()
    assert cli.main([*command, "--split-fractions", "1", "0", "0"]) == 0  # no share asked: no warning
    assert "no samples" not in caplog.text


@pytest.mark.slow
def test_output_into_a_closed_pipe_ends_quietly(stores):
    """`nowcast summary | head -1`: the reader closes the pipe before the summary is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "nowcast.flows.cli", "summary",
                                 stores["archive"]], stdout=write, stderr=subprocess.PIPE, text=True,
                                timeout=300)
    finally:
        os.close(write)
    assert result.returncode == 141
    assert result.stderr == ""


@pytest.mark.slow
@pytest.mark.fault("command line", "Ctrl-C (SIGINT) or SIGTERM while `ingest` writes",
                   "exit 130 or 143 with one line, no traceback; the store lock is released, so the next "
                   "writer does not wait for it")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_ingest_says_so_in_one_line_and_releases_its_lock(tmp_path, signum):
    archive = tmp_path / "archive.zarr"
    lock = Path(f"{archive}.lock")
    ingest = subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", "ingest", "--synthetic",
                               "--frames", "20000", "--size", "256", "--archive", str(archive)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (archive / "zarr.json").exists():  # writing: the lock is held
            assert ingest.poll() is None, ingest.communicate()
            assert time.monotonic() < deadline, "the ingest never created its archive"
            time.sleep(0.1)
        ingest.send_signal(signum)
        _, err = ingest.communicate(timeout=120)
    finally:
        ingest.kill()
    assert ingest.returncode == 128 + signum, err[-3000:]
    assert err.splitlines() == [f"nowcast ingest: interrupted ({signal.Signals(signum).name}); what was "
                                "written is consistent: rerun the command to continue"]
    leases = [json.loads(path.read_text()) for path in sorted(lock.iterdir())]
    assert leases[-1]["released"] is True


@pytest.mark.fault("flows", "evaluate of stored forecasts against another archive than their own",
                   "refused naming both fingerprints (init time i once met the other archive's frame i, "
                   "giving wrong scores with exit 0)")
def test_forecasts_are_not_verified_against_another_archive(stores, tmp_path):
    from nowcast.model.verify import verify_forecasts
    from nowcast.pipelines.stores.forecasts import ForecastStoreError

    other = make_archive(str(tmp_path / "other.zarr"), FRAMES, SIZE, start="2024-01-01T01:00")
    with pytest.raises(ForecastStoreError, match="another archive"):
        verify_forecasts(stores["forecasts"], other, 10)
    assert verify_forecasts(stores["forecasts"], stores["archive"], 10) is not None


@pytest.mark.fault("command line", "`show` of a forecast store with another archive than its own, or "
                   "after its archive moved",
                   "exit 2 naming both fingerprints, or the archive's old path and `--archive`; no picture "
                   "(the other archive's frames were drawn as observed, exit 0; a moved archive was to be "
                   "ingested again)")
def test_show_draws_forecasts_only_beside_their_own_archive(stores, tmp_path, capsys):
    import shutil

    import zarr

    other = make_archive(str(tmp_path / "other.zarr"), FRAMES, SIZE, start="2024-01-01T01:00")
    picture = tmp_path / "f.png"
    assert cli.main(["show", stores["forecasts"], "--archive", other, "--out", str(picture)]) == 2
    assert "holds forecasts of another archive" in capsys.readouterr().err
    moved = shutil.copytree(stores["forecasts"], tmp_path / "moved.zarr")
    zarr.open_group(str(moved), mode="r+").attrs["archive_url"] = str(tmp_path / "gone.zarr")  # it moved
    assert cli.main(["show", str(moved), "--out", str(picture)]) == 2
    assert f"is not at {tmp_path / 'gone.zarr'} any more: give its path now with --archive" in (
        capsys.readouterr().err)
    assert not picture.exists()
    assert cli.main(["show", str(moved), "--archive", stores["archive"], "--out", str(picture)]) == 0


@pytest.mark.fault("score", "`score` or `backfill` of an archive without a valid frame",
                   "exit 2 saying so and how to fix it, before any forecast store is created (an empty store "
                   "was created, exit 0, where windows, show and summary refuse the same archive)")
def test_an_archive_without_data_is_not_scored(stores, tmp_path, capsys):
    empty = make_archive(str(tmp_path / "empty.zarr"), 8, SIZE, missing=tuple(range(8)))
    common = ["--archive", empty, "--models", stores["models"], "--model-name", MODEL,
              "--forecasts", str(tmp_path / "f.zarr")]
    for argv in (["score", *common], ["backfill", *common, "--start", "2024-01-01", "--end", "2024-01-02"]):
        assert cli.main(argv) == 2
        assert f"archive {empty} has no valid frame (all 8 are missing)" in capsys.readouterr().err
    assert not (tmp_path / "f.zarr").exists()


def _cut(stores, tmp_path, t_in: str, block: str, fractions: list[str]) -> str:
    """Windows of the stores' archive with ``t_in`` inputs and 2 leads, split in ``block`` blocks."""
    windows = str(tmp_path / "windows.zarr")
    assert cli.main(["windows", "--archive", stores["archive"], "--windows", windows, "--t-in", t_in,
                     "--t-out", "2", "--split-block", block, "--split-fractions", *fractions]) == 0
    return windows


@pytest.mark.fault("flows", "`evaluate` of windows cut with other input or lead counts than the model's",
                   "exit 2 naming the model's counts, the windows' and the `nowcast windows` options that "
                   "fit (the message named two array shapes and no fix)")
def test_windows_that_do_not_fit_the_model_are_named(stores, tmp_path):
    from nowcast.model.forecaster import ForecastError
    from nowcast.model.verify import split_forecaster, verify_split

    windows = _cut(stores, tmp_path, "4", "PT30M", ["0.5", "0", "0.5"])
    forecaster = split_forecaster(stores["models"], MODEL, "latest", windows)
    with pytest.raises(ForecastError, match=r"takes 3 input frames of \['precip'\] and forecasts 2 leads; "
                       r".* was cut with t_in 4, t_out 2 .*nowcast windows --t-in 3 --t-out 2"):
        verify_split(windows, "test", forecaster, MODEL)


STARTS_THE_TEMPORARY_SERVER = """
import time
from prefect.server.api.server import SubprocessASGIServer
from nowcast.flows.concurrency import ensure_server
ensure_server()  # what train, evaluate, backfill, demo and serve do first
print(SubprocessASGIServer().server_process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.fault("flows", "Ctrl-C in a terminal during `train`, `evaluate` or `backfill` without "
                   "PREFECT_API_URL; the command killed outright (SIGKILL, a closed terminal)",
                   "Prefect's temporary server is in a process group of its own, so the terminal's Ctrl-C "
                   "leaves it to record the run's end (the command exited in 4 s, not 146 s, measured); it "
                   "ends with the command that started it, even one killed outright")
def test_the_temporary_server_is_apart_from_ctrl_c_and_ends_with_its_command():
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    command = subprocess.Popen([sys.executable, "-c", STARTS_THE_TEMPORARY_SERVER], stdout=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    try:
        server = int(command.stdout.readline())  # type: ignore[union-attr]
        assert os.getpgid(server) != os.getpgid(command.pid)  # the terminal's Ctrl-C goes to the command's
        os.killpg(command.pid, signal.SIGKILL)
        command.wait(timeout=60)
        deadline = time.monotonic() + 60
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(server), "the temporary server outlived the command that started it"
    finally:
        command.kill()


@pytest.mark.fault("command line", "Ctrl-C that lands while Python runs a finaliser (`__del__`, e.g. "
                   "TensorFlow's resource deleter during train's verification)",
                   "the command still ends as interrupted (exit 130), without Python's 'Exception ignored' "
                   "fragment; it went on, promoted the version and exited 0")
def test_an_interrupt_dropped_in_a_finaliser_still_interrupts(capfd):
    from nowcast.flows.stopping import check_dropped, interruptible

    class Finalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here, where Python drops it

    with interruptible() as signalled:
        Finalised()  # collected at once: the interrupt is raised inside __del__ and dropped
        with pytest.raises(KeyboardInterrupt) as raised:
            check_dropped()
        assert signalled(raised.value) == signal.SIGINT
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.mark.fault("command line", "`serve`/`server` with a cron Prefect refuses, a work folder that is a "
                   "file or under one, a port in use, out of range, or given twice",
                   "exit 2 naming the option before anything starts (tracebacks, some after the server's "
                   "start; a port in use waited 2 minutes)")
def test_serving_options_are_checked_before_anything_starts(tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing answers there
    (tmp_path / "plain").write_text("a file")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()  # as a running server holds it
        busy = taken.getsockname()[1]
        work = ["--workdir", str(tmp_path / "w")]
        for command, message in (
                (["serve", *work, "--cron", "61 * * * *"], "is not a cron expression"),
                (["server", "--workdir", str(tmp_path / "plain")], "is a file, not a folder"),
                (["serve", "--workdir", str(tmp_path / "plain" / "w")], "plain is a file, not a folder"),
                (["server", *work, "--port", str(busy)], f"port {busy} on 127.0.0.1 is in use"),
                (["server", *work, "--port", "99999"], "is not a TCP port"),
                (["server", *work, "--port", "4300", "--files-port", "4300"], "give two ports")):
            refused(capsys, command, message)
    assert not (tmp_path / "w").exists()


@pytest.mark.fault("command line", "a PREFECT_HOME that cannot be a folder (under a file) for a command that "
                   "runs a flow on Prefect's temporary server",
                   "exit 2 naming PREFECT_HOME and the fix (it retried the server for minutes and hung, "
                   "leaving an empty forecasts store)")
def test_a_prefect_home_that_cannot_be_a_folder_is_named(stores, tmp_path):
    (tmp_path / "plain").write_text("a file")
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "plain" / "prefect")
    result = nowcast("backfill", "--archive", stores["archive"], "--models", stores["models"], "--model-name",
                     MODEL, "--forecasts", str(tmp_path / "f.zarr"), "--start", "2024-01-01T00:10", "--end",
                     "2024-01-01T00:20", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"PREFECT_HOME={tmp_path / 'plain' / 'prefect'} cannot hold Prefect's files" in result.stderr
    assert not (tmp_path / "f.zarr").exists()


@pytest.mark.fault("command line", "outputs that share a path (`--workdir` = `--windows`, `--models` = "
                   "`--archive`) or lie inside a zarr store (a registry, work folder or picture in "
                   "archive.zarr; the demo's, serve's or server's work folder), and an unknown `--format`",
                   "exit 2 naming both paths or the store, before any work (the files written into a store "
                   "made every later read of it warn; a work folder cut again as windows lost the "
                   "checkpoints; a scheduled ingest with any format 'succeeded' while the folder was empty)")
def test_outputs_keep_apart_and_out_of_stores(stores, tmp_path, capsys):
    from tests.pipelines.jobs.ingest_helpers import snapshot

    archive, before = stores["archive"], snapshot(stores["archive"])
    train = ["train", "--archive", archive, "--epochs", "1"]
    for command, message in (
            ([*train, "--windows", str(tmp_path / "w.zarr"), "--workdir", str(tmp_path / "w.zarr")],
             f"windows and workdir are both {tmp_path / 'w.zarr'}"),
            ([*train, "--windows", str(tmp_path / "w.zarr"), "--models", archive],
             f"archive and models are both {archive}"),
            ([*train, "--windows", str(tmp_path / "w.zarr"), "--models", f"{archive}/models"],
             f"models {archive}/models lies inside the zarr store {archive}"),
            # the demo's was a ValidationError traceback; serve wrote its incoming folder into the archive
            (["demo", "--workdir", archive], f"--workdir {archive} is a zarr store, not a folder of"),
            (["serve", "--workdir", archive], f"--workdir {archive} is a zarr store, not a folder of"),
            (["server", "--workdir", f"{archive}/work"],
             f"--workdir {archive}/work lies inside the zarr store {archive}"),
            (["demo", "--workdir", str(tmp_path / "demo"), "--frames", "10"], "frames"),  # no folder left
            (["show", archive, "--out", f"{archive}/x.png"], f"lies inside the zarr store {archive}"),
            (["ingest", "--archive", str(tmp_path / "a.zarr"), "--input", str(tmp_path), "--format", "xyz"],
             "format 'xyz' is not one nowcast reads")):
        refused(capsys, command, message)
    assert snapshot(archive) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == []


@pytest.mark.fault("command line", "a train patch size (or, without one, a grid) that the encoder's "
                   "downsampling does not divide; a demo grid of such a size",
                   "exit 2 naming the sizes and the factor before any window is cut (it came after 19 s of "
                   "cutting, with the windows store left; the demo's after the ingest and its picture)")
def test_sizes_the_encoder_cannot_take_are_refused_before_any_work(stores, tmp_path, capsys):
    train = ["train", "--archive", stores["archive"], "--windows", str(tmp_path / "w.zarr"), "--models",
             str(tmp_path / "m"), "--workdir", str(tmp_path / "t"), "--epochs", "1"]
    refused(capsys, [*train, "--patch-size", "9"], "--patch-size 9 does not divide by 4, the downsampling")
    refused(capsys, [*train, "--filters", "2", "2", "2", "2", "2"],
            "the archive's grid 16x16 (no --patch-size) does not divide by 32")
    refused(capsys, [*train, "--patch-size", "9", "--filters", "4"],  # one level: no fewer filters to give
            "--patch-size 9 does not divide by 2, the downsampling of 1 encoder levels (filters [4]): give "
            "a --patch-size that is a multiple of 2\n")
    refused(capsys, ["demo", "--workdir", str(tmp_path / "demo"), "--size", "50"],
            "--size: Input should be a multiple of 4")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


@pytest.mark.fault("command line", "`ingest` given options of the source it does not read: --synthetic with "
                   "--input or --format, or the generator's --frames/--size/--seed with files",
                   "exit 2 naming the options as typed and the choice to make, nothing written (they were "
                   "ignored with exit 0: --input DIR --synthetic ingested synthetic rain); an empty --input "
                   "is the generator, with its options")
def test_ingest_refuses_options_of_the_source_it_does_not_read(tmp_path, capsys):
    archive = str(tmp_path / "archive.zarr")
    folder = tmp_path / "files"
    folder.mkdir()
    refused(capsys, ["ingest", "--archive", archive, "--synthetic", "--input", str(folder)],
            "--synthetic generates its frames, and --input name files it would not read")
    refused(capsys, ["ingest", "--archive", archive, "--synthetic", "--format", "knmi"],
            "and --format name files")
    refused(capsys, ["ingest", "--archive", archive, "--input", str(folder), "--frames", "10", "--seed", "5"],
            "--frames, --seed shape the synthetic generator's frames and do nothing for files")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["files"]
    # an empty --input is the generator, as the help says (it was told to add --synthetic)
    empty = ["-q", "ingest", "--archive", archive, "--input", ""]
    assert cli.main([*empty, "--frames", "3", "--size", "8"]) == 0
    assert open_archive(archive).sizes["time"] == 3


@pytest.mark.fault("command line", "`models` with --models of nothing, of a zarr store, or a version that is "
                   "not there; a scoring range inside the archive that falls between two frames",
                   "exit 2 naming the path (it listed 'no models' with exit 0), the versions there, or the "
                   "archive's step (it said to give a range that overlaps the archive)")
def test_registries_versions_and_ranges_are_named(stores, tmp_path, capsys):
    refused(capsys, ["models", "list", "--models", str(tmp_path / "nowhere")], "no model registry at")
    refused(capsys, ["models", "list", "--models", stores["archive"]],
            "is a zarr store, not a model registry")
    refused(capsys, ["models", "show", f"{MODEL}/nope", "--models", stores["models"]],
            f"versions of {MODEL} there: ")
    refused(capsys, ["score", "--archive", stores["archive"], "--models", stores["models"], "--model-name",
                     MODEL, "--forecasts", str(tmp_path / "f.zarr"), "--start", "2024-01-01T00:11",
                     "--end", "2024-01-01T00:13"],
            "the archive's frames are PT5M apart from 2024-01-01T00:00:00")
    assert not (tmp_path / "f.zarr").exists()


@pytest.mark.fault("train", "`train --variable` of a field that is not a rain rate (a temperature in K)",
                   "exit 2 naming the units before any work (it trained, scored every CSI 1.000 and "
                   "reported its MAE in mm/h)")
def test_training_a_field_that_is_not_rain_is_refused(tmp_path, capsys):
    import numpy as np

    from tests.pipelines.jobs.windows_testing import make_archive, random_frames

    info = make_archive(tmp_path / "a.zarr", random_frames(np.random.default_rng(0), 16, 8, 8),
                        np.ones(16, bool), 8)
    assert cli.main(["train", "--archive", info.url, "--variable", "temp", "--windows",
                     str(tmp_path / "w.zarr"), "--models", str(tmp_path / "m"), "--epochs", "1"]) == 2
    assert "variable 'temp' is in 'K', not a rain rate (mm h-1)" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.zarr"]


@pytest.mark.fault("command line", "`show --frames N` of a forecast store",
                   "N leads spread from the first to the last beside their observations (it was ignored: "
                   "every lead was drawn)")
def test_show_of_forecasts_draws_as_many_leads_as_asked(stores):
    from nowcast.flows.views import _forecast_panels
    from nowcast.pipelines.stores.forecasts import open_forecasts

    ds = open_forecasts(stores["forecasts"])
    minutes = [int(lead / np.timedelta64(1, "m")) for lead in ds["lead_time"].values]
    assert len(minutes) == 2  # the tiny model's
    for count, shown in ((None, minutes), (5, minutes), (2, minutes), (1, minutes[:1])):
        rows = _forecast_panels(ds, stores["archive"], None, count)
        assert [row[1][1].split()[-2] for row in rows] == [f"+{m}" for m in shown]
    # a forecast's panel names its model and init time (the version alone read like another time)
    observed, forecast = rows[0][0][1], rows[0][1][1]
    init = np.datetime64(observed.split(" ", 1)[1].removesuffix(" UTC").replace(" ", "T")) - \
        ds["lead_time"].values[0]
    assert forecast.startswith(f"{ds.attrs['model_name']} "), forecast
    assert f"from {str(init)[11:16]}, +" in forecast, (observed, forecast)


@pytest.mark.fault("flows", "`evaluate --max-samples N` of a split of many init times",
                   "N samples spread over the split, the count printed (the first N in store order: one init "
                   "time, the top rows of the grid, often all outside coverage)")
def test_max_samples_are_spread_over_the_split(stores, tmp_path):
    from nowcast.model.verify import split_forecaster, spread, verify_split
    from nowcast.pipelines.stores.windows import WindowsStore

    windows = _cut(stores, tmp_path, "3", "PT20M", ["0.25", "0", "0.75"])
    store = WindowsStore(windows, "test")
    assert store.num_samples > 4
    picked = spread(store.num_samples, 4)
    assert picked[0] == 0
    assert picked[-1] == store.num_samples - 1
    assert len(np.unique(store.init_times()[picked])) > 1
    forecaster = split_forecaster(stores["models"], MODEL, "latest", windows)
    assert verify_split(windows, "test", forecaster, MODEL, max_samples=4).samples == 4


@pytest.mark.fault("command line", "a picture path that is an object-store URL (`show --out s3://...`, "
                   "`summary --png s3://...`) or empty",
                   "exit 2 saying pictures are local files (an s3:// path was written to a local folder "
                   "named 's3:', exit 0, reported as saved to 's3:/...')")
def test_a_picture_is_a_local_file(stores, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["show", stores["archive"], "--out", "s3://bucket/x.png"],
                    ["summary", stores["archive"], "--png", "s3://bucket/x.png"]):
        assert cli.main(command) == 2
        assert "s3://bucket/x.png: pictures are written to local files" in capsys.readouterr().err
    assert cli.main(["show", stores["archive"], "--out", ""]) == 2
    assert "the picture's path is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault("command line", "`show --out x.gif` of a forecast store",
                   "one colour bar in the animation (every frame had two side by side)")
def test_an_animation_has_one_colour_bar(stores, tmp_path, monkeypatch):
    from nowcast.flows import views

    bars = []
    draw = views._draw

    def counting(*args, colorbar: bool, **kwargs):
        bars.append(colorbar)
        return draw(*args, colorbar=colorbar, **kwargs)

    monkeypatch.setattr(views, "_draw", counting)
    assert cli.main(["show", stores["forecasts"], "--out", str(tmp_path / "f.gif")]) == 0
    assert sum(bars) == 1
    assert len(bars) > 2


@pytest.mark.fault("command line", "`show --time` of an init time a forecast store does not hold",
                   "exit 2 naming the nearest held init times (it named a range whose times were not all "
                   "held)")
def test_show_names_the_nearest_held_init_times(stores, tmp_path, capsys):
    assert cli.main(["show", stores["forecasts"], "--time", "2024-01-01T00:05",
                     "--out", str(tmp_path / "f.png")]) == 2
    assert ("no written forecast at 2024-01-01T00:05; the nearest: 2024-01-01 00:10 UTC after it, of 2 "
            "from 2024-01-01 00:10 UTC to 2024-01-01 00:15 UTC") in capsys.readouterr().err


@pytest.mark.fault("command line", "`show` of a forecast whose lead falls on a frame missing from the "
                   "archive",
                   "the panel says the frame is missing (it said 'not yet', as for a time after the "
                   "archive's last frame)")
def test_a_missing_frame_is_not_called_not_yet(stores, tmp_path):
    from nowcast.flows.views import _forecast_panels
    from nowcast.pipelines.stores.forecasts import open_forecasts

    gappy = make_archive(str(tmp_path / "gappy.zarr"), FRAMES, SIZE, missing=(3,))  # 00:15
    rows = _forecast_panels(open_forecasts(stores["forecasts"]), gappy, "2024-01-01T00:10", None)
    assert [row[0][1] for row in rows] == ["observed 2024-01-01 00:15 UTC (missing)",
                                           "observed 2024-01-01 00:20 UTC"]


@pytest.mark.fault("train", "`nowcast windows --t-out 6`, then `nowcast train` (whose form cuts its own "
                   "windows) into the same windows store",
                   "a warning naming the settings replaced and the fix (the six leads became three without "
                   "a word)")
def test_training_says_which_windows_it_replaces(stores, tmp_path):
    from nowcast.flows.params import TrainParams
    from nowcast.flows.train import replaced_windows

    windows = str(tmp_path / "windows.zarr")
    common = {"archive": stores["archive"], "windows": windows, "models": str(tmp_path / "m"),
              "workdir": str(tmp_path / "t"), "split_block": "PT30M"}
    params = TrainParams.model_validate({**common, "t_in": 3, "t_out": 2}, context={"local_user": True})
    assert replaced_windows(params) is None  # nothing there yet
    assert cli.main(["windows", "--archive", stores["archive"], "--windows", windows, "--t-in", "3",
                     "--t-out", "4", "--split-block", "PT30M"]) == 0
    note = replaced_windows(params)
    assert note is not None
    assert f"into {windows}, which holds windows cut with other settings (t_out 4 -> 2)" in note
    same = TrainParams.model_validate({**common, "t_in": 3, "t_out": 4}, context={"local_user": True})
    assert replaced_windows(same) is None


@pytest.mark.fault("command line", "`show` of an archive ingested from NetCDF with ascending y, or with "
                   "descending x",
                   "drawn north up and west left (it was drawn upside down, or mirrored: rows and columns in "
                   "the file's order, row 0 at the top, column 0 at the left)")
def test_pictures_are_drawn_north_up():
    import xarray as xr

    from nowcast.flows.views import north_up

    frame = np.arange(6.0).reshape(3, 2)
    ascending = xr.Dataset(coords={"y": [0.0, 1.0, 2.0], "x": [0.0, 1.0]})
    np.testing.assert_array_equal(north_up(ascending, frame), frame[::-1])
    descending = xr.Dataset(coords={"y": [2.0, 1.0, 0.0], "x": [0.0, 1.0]})
    np.testing.assert_array_equal(north_up(descending, frame), frame)
    westward = xr.Dataset(coords={"y": [2.0, 1.0, 0.0], "x": [1.0, 0.0]})
    np.testing.assert_array_equal(north_up(westward, frame), frame[:, ::-1])
    both = xr.Dataset(coords={"y": [0.0, 1.0, 2.0], "x": [1.0, 0.0]})
    np.testing.assert_array_equal(north_up(both, frame), frame[::-1, ::-1])


@pytest.mark.fault("command line", "`show` of an archive holding several variables (NetCDF sensor fields)",
                   "`--variable` picks the one drawn, its name on the colour bar; one it does not hold is "
                   "exit 2 naming those it does (only the first could be drawn, labelled by its units alone)")
def test_show_draws_the_variable_asked_for(stores, tmp_path, capsys, monkeypatch):
    from nowcast.flows import views
    from tests.pipelines.sources.test_netcdf import sensor_dataset, write

    folder = tmp_path / "sensors"
    folder.mkdir()
    ds = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=1)
    write(ds, folder / "a.nc")
    archive = str(tmp_path / "sensors.zarr")
    assert cli.main(["ingest", "--input", str(folder), "--archive", archive, "-q"]) == 0
    drawn = []

    def recording(ax, frame, field, title, colorbar, limits=None, aspect=1.0):
        drawn.append((field, frame))
        ranges.add(limits)

    ranges = set()

    monkeypatch.setattr(views, "_draw", recording)
    assert cli.main(["show", archive, "--variable", "temperature", "--out", str(tmp_path / "t.png")]) == 0
    assert {field for field, _ in drawn} == {("temperature", "K")}
    np.testing.assert_array_equal(drawn[-1][1], ds.temperature.values[-1])  # the newest frame last
    frames = ds.temperature.values
    # one colour range for every panel (each had its own under one bar)
    assert ranges == {(float(np.nanmin(frames)), float(np.nanmax(frames)))}
    drawn.clear()
    assert cli.main(["show", archive, "--out", str(tmp_path / "first.png")]) == 0
    assert {field for field, _ in drawn} == {("humidity", "%")}  # the first that summary lists
    capsys.readouterr()
    assert cli.main(["show", archive, "--variable", "precip", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert f"{archive} holds no variable 'precip'; its variables: humidity, temperature" in err
    assert cli.main(["show", stores["forecasts"], "--variable", "temperature", "--out",
                     str(tmp_path / "f.png")]) == 2
    assert "hold precip alone, not temperature: leave --variable out" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
    assert not (tmp_path / "f.png").exists()


@pytest.mark.fault("command line", "`show` of a field other than rain whose frames differ in range (a "
                   "temperature 15 K warmer each frame), or with unobserved pixels",
                   "every panel and every frame of an animation on one colour range, the one its bar shows, "
                   "and unobserved pixels grey (each panel had its own range under one bar, so the frames "
                   "looked the same; NaN was white on white)")
def test_a_field_other_than_rain_is_drawn_on_one_scale(tmp_path):
    from PIL import Image

    from nowcast.flows import views

    frames = [np.full((10, 12), 260.0 + 15 * i) + np.arange(12) for i in range(4)]
    frames[0][:, :3] = np.nan
    steps = [[(frame, f"t{i}")] for i, frame in enumerate(frames)]
    assert views._limits(steps, ("temperature", "K")) == (263.0, 316.0)  # 260-262 K: NaN
    assert views._limits(steps, ("precip", "mm h-1")) is None  # rain keeps its fixed scale
    assert views._limits([[(np.full((2, 2), np.nan), "t")]], ("temperature", "K")) is None
    views._draw_steps(steps, ("temperature", "K"), tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    grey = np.array([0xBF, 0xBF, 0xBF])
    assert (pixels == grey).all(axis=-1).sum() > 100  # the unobserved columns of the first frame


@pytest.mark.fault("command line", "`show --frames 48` of an archive, or frames with missing ones between "
                   "them",
                   "the frames wrapped 8 to a row (they made one strip 11584 px wide), and a panel after a "
                   "gap says how many frames are missing before it (they sat side by side as if consecutive)")
def test_many_frames_wrap_and_a_gap_is_told(tmp_path):
    from PIL import Image

    from nowcast.flows import views

    steps = [[(np.zeros((16, 16)), f"t{i}")] for i in range(20)]
    views._draw_steps(steps, ("precip", "mm h-1"), tmp_path / "many.png")
    with Image.open(tmp_path / "many.png") as png:
        assert png.width < 4 * png.height  # 3 rows of 8, 8 and 4 frames, not one row of 20
    picks = np.array([3, 4, 7, 8])
    assert [views._missing_before(picks, n) for n in range(4)] == ["", "", "\n(2 frames missing before)", ""]


def test_verification_maps_name_their_init_and_valid_times(tmp_path, monkeypatch):
    """A forecaster cannot tell which forecast the maps show without a time (they said "+5 min" only)."""
    import matplotlib.figure

    from nowcast.model import verification

    titles = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: titles.extend(
        [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]))
    frames = np.zeros((3, 8, 8))
    verification.plot_maps(frames, {"m": frames}, [0, 2], tmp_path / "maps.png",
                           init=np.datetime64("2016-07-11T22:40"))
    assert titles[0] == "forecasts from 2016-07-11 22:40 UTC"
    assert "observed 22:45 UTC\n+5 min" in titles
    assert "observed 22:55 UTC\n+15 min" in titles
    assert "m\n+15 min" in titles


@pytest.mark.fault("command line", "`show` of a grid much larger than its panel (FMI's 1226 x 760), or much "
                   "wider or taller than square",
                   "a large grid is reduced by blocks before it is drawn, rain to each block's maximum, so a "
                   "heavy core stays visible (nearest-pixel sampling showed 114 pixels of 16 mm/h or more as "
                   "one); a panel is as wide as the grid is, within bounds (a 30 x 600 grid was a sliver)")
def test_large_and_oblong_grids_are_drawn_readably(tmp_path):
    from PIL import Image

    from nowcast.flows import views

    frame = np.zeros((1200, 700))
    frame[500:503, 300:303] = 40.0  # a 3 px core
    frame[:, :50] = np.nan
    reduced = views.shown(frame, ("precip", "mm h-1"), (232, 232))
    assert reduced.shape == (200, 117)  # blocks of 6
    assert np.nanmax(reduced) == 40.0
    assert np.isnan(reduced[:, :8]).all()  # outside coverage stays outside
    assert np.nanmax(views.shown(frame, ("t", "K"), (232, 232))) == pytest.approx(40.0 * 9 / 36)  # a mean
    small = np.ones((100, 100))
    assert views.shown(small, ("precip", "mm h-1"), (232, 232)) is small
    views._draw_steps([[(np.zeros((30, 600)), "wide")]], ("precip", "mm h-1"), tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as png:
        assert png.width > 3 * png.height  # a square panel made 304 x 232 px


@pytest.mark.fault("command line", "`show` of precipitation in another rate's units (a CF precipitation_flux "
                   "in kg m-2 s-1, as NWP and reanalyses give it)",
                   "drawn in mm/h on the rain scale (it was a generic field, dry dark purple); an "
                   "evaporation flux in the same units stays a generic field")
def test_precipitation_in_other_units_is_drawn_as_rain():
    import xarray as xr

    from nowcast.flows import views

    frame = np.full((2, 2), 1e-3)
    ds = xr.Dataset({"pr": (("y", "x"), frame, {"units": "kg m-2 s-1",
                                                "standard_name": "precipitation_flux"}),
                     "evspsbl": (("y", "x"), frame, {"units": "kg m-2 s-1",
                                                     "standard_name": "water_evapotranspiration_flux"})})
    assert views._labelled(ds, "pr") == ("pr", "mm h-1")
    assert views._rate(ds, "pr") == 3600.0  # 1e-3 kg m-2 s-1 = 3.6 mm/h
    assert views._labelled(ds, "evspsbl") == ("evspsbl", "kg m-2 s-1")
    assert views._rate(ds, "evspsbl") == 1.0


@pytest.mark.fault("command line", "`show` of a longitude/latitude grid (0.34 x 0.22 degree cells at 45 N)",
                   "pixels drawn as tall as they are on the ground (they were drawn square, 2.1 times too "
                   "wide)")
def test_a_longitude_latitude_grid_keeps_its_shape():
    import xarray as xr

    from nowcast.flows import views

    lonlat = xr.Dataset(coords={"y": ("y", [45.0, 45.34], {"units": "degrees_north"}),
                                "x": ("x", [0.0, 0.22], {"units": "degrees_east"})})
    assert views._aspect(lonlat) == pytest.approx(0.34 / 0.22 / np.cos(np.radians(45.17)), rel=1e-3)
    metres = xr.Dataset(coords={"y": ("y", [2000.0, 1000.0], {"units": "m"}),
                                "x": ("x", [0.0, 1000.0], {"units": "m"})})
    assert views._aspect(metres) == 1.0


@pytest.mark.fault("command line", "an output the system cannot make (under /proc, where root passes the "
                   "access check): windows, ingest, score, evaluate's work folder",
                   "exit 2 naming the path (windows and evaluate were a FileNotFoundError traceback; ingest "
                   "and score said the disk had 0 B free)")
def test_an_output_the_system_cannot_make_is_named(stores, tmp_path, capsys):
    refused(capsys, ["windows", "--archive", stores["archive"], "--windows", "/proc/nowcast-w.zarr"],
            "the store's lock folder /proc/nowcast-w.zarr.lock cannot be made")
    refused(capsys, ["ingest", "--synthetic", "--frames", "2", "--size", "16", "--archive",
                     "/proc/nowcast-a.zarr"],
            "the store's lock folder /proc/nowcast-a.zarr.lock cannot be made")
    refused(capsys, ["score", "--archive", stores["archive"], "--models", stores["models"], "--model-name",
                     MODEL, "--forecasts", "/proc/nowcast-f.zarr", "--start", "2024-01-01T00:10", "--end",
                     "2024-01-01T00:15"], "/proc/nowcast-f.zarr")
    assert "free" not in capsys.readouterr().err
    from nowcast.pipelines.stores.groups import StoreError, check_writable

    with pytest.raises(StoreError, match=r"the work folder /proc/nowcast-ev cannot be written \(a file "
                                         r"cannot be made in /proc"):
        check_writable("/proc/nowcast-ev", "the work folder")


@pytest.mark.fault("command line", "radar options on the command line: an ODIM folder of reflectivity beside "
                   "rain rate, a Z-R relation, a BoM product; or such an option with --synthetic",
                   "--quantity, --zr-a/--zr-b and --product on ingest and watch, checked as the source "
                   "checks them (the refusal's fix named a Python argument the command line did not have); "
                   "with --synthetic refused (it would be ignored)")
def test_radar_options_reach_the_source(tmp_path, capsys):
    from tests.pipelines.sources.test_odim import write_odim

    folder = tmp_path / "odim"
    folder.mkdir()
    write_odim(folder / "a.h5", time="120000")
    write_odim(folder / "b.h5", time="120500")
    archive = str(tmp_path / "a.zarr")
    for value in ("RATE", "VRAD"):
        assert cli.main(["ingest", "--input", str(folder), "--archive", archive, "--quantity", value]) == 2
        assert "quantity" in capsys.readouterr().err
    assert cli.main(["ingest", "--input", str(folder), "--archive", archive, "--quantity", "dbzh",
                     "--zr-a", "300", "--zr-b", "1.4"]) == 0
    capsys.readouterr()
    from nowcast.pipelines.sources.odim import read_data

    dbz, _ = read_data(str(folder / "a.h5"), "DBZH")  # undetect -inf: 0 mm/h; nodata NaN
    expected = (10.0 ** (dbz / 10.0) / 300.0) ** (1.0 / 1.4)
    stored = open_archive(archive)["precip"].isel(time=0).values
    np.testing.assert_allclose(stored, expected, rtol=1e-5, equal_nan=True)
    refused(capsys, ["ingest", "--synthetic", "--archive", str(tmp_path / "s.zarr"), "--zr-a", "300"],
            "--zr-a: radar file options, not the generator's (--synthetic)")
    refused(capsys, ["watch", "--input", str(folder), "--archive", str(tmp_path / "w.zarr"), "--format",
                     "odim", "--product", "prcp-cscn", "--duration", "1"],
            "--product prcp-cscn (product='prcp-cscn' in Python) applies to BoM")
