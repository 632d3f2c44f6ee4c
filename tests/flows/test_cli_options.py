"""The command line's options come from the flows' parameter models: same names, defaults and checks."""

from __future__ import annotations

import argparse

import pytest

from nowcast.flows import cli
from nowcast.flows.params import (
    BackfillParams,
    EvaluateParams,
    IngestParams,
    Runner,
    ScoreParams,
    TrainParams,
    WindowsParams,
    placeable,
)
from tests.pipelines.jobs.scoring_helpers import MODEL, make_archive, save_tiny_model, synthetic_stats

FORMS = {"ingest": IngestParams, "windows": WindowsParams, "train": TrainParams, "score": ScoreParams,
         "backfill": BackfillParams, "evaluate": EvaluateParams}
RUNNER_FLAGS = {"runner_kind": "kind", "workers": "workers", "dask_address": "dask_address"}
# options a command has that its form has not, each for a reason given in its help
COMMAND_LINE_ONLY = {"ingest": {"synthetic", "variables", "time_step", "start", "overwrite", "repair",
                                "quantity", "product", "zr_a", "zr_b"},
                     "score": {"follow", "interval", "duration"}}
COMMON = {"help", "verbose", "quiet"}


def subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(FORMS))
def test_every_option_default_is_the_form_default(command):
    form = FORMS[command]
    checked = set()
    for action in subparser(command)._actions:
        if action.dest in COMMON:
            continue
        if action.dest == "workers":  # None, so that a --workers given to another runner is refused
            assert action.default is None
            assert f"(default: {Runner.model_fields['workers'].default})" in action.help
            continue
        if action.dest in RUNNER_FLAGS:
            expected = Runner.model_fields[RUNNER_FLAGS[action.dest]].get_default(call_default_factory=True)
        elif action.dest in form.model_fields:
            field = form.model_fields[action.dest]
            if field.is_required():
                assert action.required, action.dest
                checked.add(action.dest)
                continue
            expected = field.get_default(call_default_factory=True)
        else:
            assert action.dest in COMMAND_LINE_ONLY.get(command, ()), \
                f"{command} --{action.dest} is neither a form field nor listed as command line only"
            continue
        assert action.default == expected, f"{command} --{action.dest}: {action.default!r} != {expected!r}"
        checked.add(action.dest)
    assert checked >= set(form.model_fields) - {"runner"}  # every field of the form is an option


@pytest.mark.parametrize("command", sorted(cli.EXAMPLES))
def test_every_command_helps_with_its_defaults_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert "example:" in shown
    assert f"nowcast {command}" in shown
    if command in FORMS:
        assert "(default: " in shown


def test_every_command_has_an_example():
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(cli.EXAMPLES)


def test_version_and_verbosity_before_or_after_the_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("nowcast ")
    parser = cli.build_parser()
    assert parser.parse_args(["windows"]).verbose == 0
    assert parser.parse_args(["-v", "windows"]).verbose == 1
    assert parser.parse_args(["windows", "-vv"]).verbose == 2
    assert parser.parse_args(["windows", "-q"]).quiet


@pytest.mark.fault("command line", "an option out of range or of the wrong type (e.g. --t-in 1, --epochs x)",
                   "exit 2 naming the option and the allowed range, before any work")
def test_a_bad_option_is_named_with_the_forms_message(tmp_path, capsys):
    archive = make_archive(str(tmp_path / "archive.zarr"), 16, (16, 16))
    assert cli.main(["train", "--archive", archive, "--t-in", "1"]) == 2
    assert "--t-in: Input should be greater than or equal to 2" in capsys.readouterr().err
    assert cli.main(["train", "--archive", archive, "--t-in", "2", "--base", "lagrangian_ar"]) == 2
    assert "--t-in is 2; use --t-in 3 or more, or base advection" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--epochs", "x"])
    assert exit_.value.code == 2
    assert "--epochs: invalid int value: 'x'" in capsys.readouterr().err
    assert cli.main(["windows", "--archive", archive, "--split-fractions", "0.5", "0.5", "0.5"]) == 2
    assert "must be three shares from 0 to 1 summing to 1" in capsys.readouterr().err
    assert cli.main(["windows", "--archive", archive, "--split-fractions", "1.2", "-0.1", "-0.1"]) == 2
    assert "from 0 to 1" in capsys.readouterr().err  # they sum to 1: the bound is what is wrong
    assert cli.main(["score", "--archive", str(tmp_path / "none.zarr")]) == 2
    assert not (tmp_path / "runs").exists()


def test_the_default_base_is_the_best_the_input_frames_allow(tmp_path, monkeypatch):
    from nowcast.flows.params import TrainParams

    monkeypatch.setenv("NOWCAST_STORAGE_ROOTS", str(tmp_path))
    stores = {name: str(tmp_path / name) for name in ("windows", "models", "workdir")}
    archive = make_archive(str(tmp_path / "archive.zarr"), 16, (16, 16))
    assert TrainParams(archive=archive, **stores).chosen_base == "lagrangian_ar"
    assert TrainParams(archive=archive, t_in=2, **stores).chosen_base == "advection"  # the AR needs 3 frames
    assert TrainParams(archive=archive, base="persistence", **stores).chosen_base == "persistence"
    assert cli.build_parser().parse_args(["train", "--t-in", "2"]).base is None  # not a fixed default


def test_command_line_stores_are_the_users_own_paths(tmp_path, monkeypatch):
    """The storage roots guard a server's forms; a path typed on one's own command line is not confined."""
    from nowcast.flows.options import params_from_args

    archive = make_archive(str(tmp_path / "archive.zarr"), 16, (16, 16))
    monkeypatch.setenv("NOWCAST_STORAGE_ROOTS", str(tmp_path / "elsewhere"))
    args = subparser("windows").parse_args(["--archive", archive, "--windows", str(tmp_path / "w.zarr")])
    args.beam_args = []
    assert params_from_args(WindowsParams, args).archive == archive
    with pytest.raises(ValueError, match="outside the configured storage roots"):
        WindowsParams(archive=archive, windows=str(tmp_path / "w.zarr"))  # the form's check


@pytest.mark.fault("command line", "`nowcast models` promote of an unknown version; show or list of a "
                   "model never trained; `--models` naming one model's folder (`models/convlstm`), also to "
                   "train", "exit 2 naming the known versions, or the models there, or the registry; latest "
                   "unchanged (a model's folder was listed as holding no models, exit 0; train made a "
                   "registry in it, whose model the real one listed as damaged)")
def test_models_list_show_and_promote(tmp_path, capsys):
    archive = make_archive(str(tmp_path / "archive.zarr"), 16, (16, 16))
    models = tmp_path / "models"
    for version in ("v1", "v2"):
        save_tiny_model(models, archive, synthetic_stats(16, (16, 16)), version=version, name="convlstm")
    registry = ["--models", str(models)]
    make_archive(str(models / "fc.zarr"), 4, (16, 16))  # a store left there: no model, not to be removed
    assert cli.main(["models", "list", *registry]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == ["convlstm", listed[1], listed[2]]
    assert "v2" in listed[2]
    assert listed[2].endswith("latest")
    assert cli.main(["models", "promote", "convlstm/v1", *registry]) == 0
    assert cli.main(["models", "show", "convlstm", *registry]) == 0
    out = capsys.readouterr().out
    assert "promoted convlstm/v1" in out
    assert '"version": "v1"' in out
    assert cli.main(["models", "promote", "convlstm/v9", *registry]) == 2
    assert "is not a saved version" in capsys.readouterr().err
    assert cli.main(["models", "show", "cnn_lstm", *registry]) == 2
    err = capsys.readouterr().err
    assert "no promoted version of 'cnn_lstm'" in err
    assert "models there: convlstm" in err  # the name the user meant
    assert cli.main(["score", "--archive", archive, "--model-name", "cnn_lstm", *registry]) == 2
    assert f"no versions of 'cnn_lstm' under {models} (models there: convlstm)" in capsys.readouterr().err
    assert cli.main(["models", "promote", "convlstm", *registry]) == 2
    assert "needs NAME/VERSION" in capsys.readouterr().err
    assert cli.main(["models", "show", *registry]) == 2  # said NAME/VERSION, where NAME alone is taken
    assert "needs NAME (its latest version) or NAME/VERSION" in capsys.readouterr().err
    train = ["train", "--archive", archive, "--windows", str(tmp_path / "w.zarr"), "--workdir",
             str(tmp_path / "t")]  # train built a registry inside the model's folder, listed as damaged
    for command in (["models", "list"], ["score", "--archive", archive], train):  # "no models"; "train one"
        assert cli.main([*command, "--models", str(models / "convlstm")]) == 2
        assert f"is the folder of one model, convlstm, not a registry: give the registry that holds it, " \
               f"--models {models}" in capsys.readouterr().err
    assert cli.main(["models", "show", *registry, "convlstm/v2"]) == 0  # options first: was unrecognised
    assert '"version": "v2"' in capsys.readouterr().out
    # NAME/VERSION as `models` spells it (score refused it as a version named with a '/')
    from nowcast.flows.options import params_from_args

    args = cli.build_parser().parse_args(["score", "--archive", archive, *registry, "--model-version",
                                          "convlstm/v1"])
    args.beam_args = []
    chosen = params_from_args(ScoreParams, args)
    assert (chosen.model_name, chosen.model_version) == ("convlstm", "v1")
    assert cli.main(["score", "--archive", archive, *registry, "--model-version", "cnn_lstm/v1"]) == 2
    assert "names the model 'cnn_lstm', --model-name is 'convlstm': give --model-name 'cnn_lstm'" in \
        capsys.readouterr().err
    assert cli.main(["models", "list", "cnn_lstm", *registry]) == 2  # was listed as a model without versions
    assert "no model 'cnn_lstm'" in capsys.readouterr().err
    assert (models / "convlstm" / "latest").read_text().strip() == "v1"


# (command line, what the refusal says): an option that does nothing for the command as given, or a
# target that is not there, each refused before any work
NOT_APPLYING = {
    "repair of nothing": (["ingest", "--synthetic", "--frames", "6", "--size", "16", "--repair"],
                          "--repair rewrites the damaged chunks of an archive; there is none at"),
    "dask address": (["ingest", "--synthetic", "--frames", "6", "--size", "16", "--dask-address",
                      "tcp://127.0.0.1:1"],
                     "dask_address (tcp://127.0.0.1:1, --dask-address) is the dask runner's"),
    "workers": (["ingest", "--synthetic", "--frames", "6", "--size", "16", "--workers", "8"],
                "--workers 8 sets the multiprocess runner's processes"),
    "workers at the default": (["ingest", "--synthetic", "--frames", "6", "--size", "16", "--workers", "2"],
                               "--workers 2 sets the multiprocess runner's processes: choose it (--runner "
                               "multiprocess), or drop --workers (the inmemory runner does not use it)"),
    "stream pace": (["score", "--interval", "5", "--duration", "30"],
                    "--interval and --duration pace a stream: add --follow"),
    "watch step": (["watch", "--input", "in", "--format", "netcdf", "--time-step", "banana"],
                   "--time-step: time step 'banana' is not an ISO 8601 duration"),
}


@pytest.mark.fault("command line", "an option that does nothing as given (`--repair` with no archive, "
                   "`--workers` or `--dask-address` of another runner, `score --interval/--duration` "
                   "without --follow, a `watch --time-step` that is no duration)",
                   "exit 2 naming the option and the fix, before any work (the first made an empty archive; "
                   "the others were ignored, exit 0; the last failed only once polling began, naming Beam's "
                   "stage)")
@pytest.mark.parametrize("case", sorted(NOT_APPLYING))
def test_an_option_that_does_nothing_as_given_is_refused(case, tmp_path, monkeypatch, capsys):
    argv, message = NOT_APPLYING[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    target = {"ingest": "--archive", "watch": "--archive", "score": "--archive"}[argv[0]]
    assert cli.main([*argv, target, str(tmp_path / "store.zarr")]) == 2
    assert message in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["in"], "something was created before the refusal"


# (command line, the flag the message names, the bound it names): each past a bound, each refused before
# any work (issue 15: every size and count parameter has an upper bound or a check of what it needs)
PAST_A_BOUND = {
    "synthetic frames": (["ingest", "--synthetic", "--frames", "100001"], "--synthetic-frames", "100000"),
    "synthetic grid": (["ingest", "--synthetic", "--size", "4097"], "--synthetic-size", "4096"),
    "time chunk": (["ingest", "--synthetic", "--time-chunk", "10001"], "--time-chunk", "10000"),
    # each bound alone holds; together a chunk is 9.8 GiB, which no writer holds in memory
    "chunk memory": (["ingest", "--synthetic", "--size", "512", "--time-chunk", "10000"], "--time-chunk",
                     "2048 or less"),
    "workers": (["windows", "--runner", "multiprocess", "--workers", "100000"], "--workers", "256"),
    "filters": (["train", "--filters", "8", "100000"], "--filters", "1024"),
    "steps per epoch": (["train", "--steps-per-epoch", "10000000"], "--steps-per-epoch", "100000"),
    "seed": (["train", "--seed", str(2**32)], "--seed", "4294967295"),
    "epochs": (["train", "--epochs", "1001"], "--epochs", "1000"),
    "demo epochs": (["demo", "--epochs", "100000"], "--epochs", "1000"),
    "demo frames": (["demo", "--frames", "1000000000000"], "--frames", "100000"),
    "demo backfill": (["demo", "--backfill-hours", "-1"], "--backfill-hours", "greater than 0"),
    "watch chunk": (["watch", "--input", "in", "--format", "knmi", "--time-chunk", "100000"],
                    "--time-chunk", "1..10000"),
    "watch interval": (["watch", "--input", "in", "--format", "knmi", "--interval", "inf"], "--interval",
                       "86400"),
    "watch duration": (["watch", "--input", "in", "--format", "knmi", "--duration", "1e12"], "--duration",
                       "31622400"),
    "shown frames": (["show", "archive.zarr", "--out", "x.png", "--frames", "0"], "--frames", "1..48"),
    "stack workers": (["stack", "up", "--workers", "1000"], "--workers", "1..64"),
}
STORES = {"ingest": "--archive", "windows": "--archive", "train": "--archive", "demo": "--workdir",
          "watch": "--archive", "stack": "--folder"}


@pytest.mark.fault("command line", "a size or count past its bound (frames, grid, time chunk, a chunk no "
                   "memory holds, workers, filters, steps, seed, epochs, the demo's options, a stream's "
                   "interval or duration, frames shown, stack workers)",
                   "exit 2 naming the option, its bound and the fix, before anything is created")
@pytest.mark.parametrize("case", sorted(PAST_A_BOUND))
def test_a_size_or_count_past_its_bound_is_refused_before_any_work(case, tmp_path, monkeypatch, capsys):
    argv, flag, bound = PAST_A_BOUND[case]
    monkeypatch.chdir(tmp_path)  # every default store (runs/demo/...) would land here
    target = STORES.get(argv[0])
    argv = [*argv, target, str(tmp_path / "store")] if target else argv
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err, err
    assert bound in err, err
    assert list(tmp_path.iterdir()) == [], "something was created before the refusal"


def test_synthetic_frames_follow_the_time_step_given(tmp_path):
    """``--time-step`` sets the generator's step too: its frames are then on the new archive's axis."""
    from nowcast.flows import cli
    from nowcast.pipelines.stores.archive import read_info

    url = str(tmp_path / "ten.zarr")
    assert cli.main(["-q", "ingest", "--synthetic", "--frames", "6", "--size", "32", "--time-step", "PT10M",
                     "--archive", url]) == 0
    info = read_info(url)
    assert (str(info.time_step), info.length) == ("600 seconds", 6)


@pytest.mark.fault("command line", "PREFECT_API_URL names a server that does not answer (train, backfill, "
                   "demo, serve)",
                   "exit 2 naming the URL and the fixes (start it, fix it, or unset it: the variable, or in "
                   "Prefect's profile where it is set there), after the options are checked and before any "
                   "work (it was a 115-line traceback from Prefect's client)")
@pytest.mark.parametrize("command", ["train", "backfill", "demo", "serve"])
def test_a_prefect_server_that_does_not_answer_is_named(command, tmp_path, monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from nowcast.processes import free_port

    archive = make_archive(str(tmp_path / "archive.zarr"), 16, (16, 16))
    save_tiny_model(tmp_path / "models", archive, synthetic_stats(16, (16, 16)))
    stores = ["--archive", archive, "--models", str(tmp_path / "models"), "--model-name", MODEL]
    argv = {"train": ["train", "--archive", archive],
            "backfill": ["backfill", *stores, "--start", "2024-01-01", "--end", "2024-01-02"]}.get(command,
                                                                                              [command])
    port = free_port()  # a port nothing listens on
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{port}/api"
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings({PREFECT_API_URL: url}):  # as from Prefect's profile
        assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert f"the Prefect server at PREFECT_API_URL={url} does not answer" in error
    assert "`prefect config unset PREFECT_API_URL` (set in Prefect's profile)" in error
    monkeypatch.setenv("PREFECT_API_URL", url)
    with temporary_settings({PREFECT_API_URL: url}):
        assert cli.main(argv) == 2
    assert "or unset PREFECT_API_URL to run" in capsys.readouterr().err
    created = {"archive.zarr", "archive.zarr.lock", "models"}  # by make_archive, which takes the store's lock
    assert {path.name for path in tmp_path.iterdir()} == created  # nothing more


@pytest.mark.fault("command line", "a store path with `~` the shell left (`--archive=~/a.zarr`, a quoted "
                   "path); a `--workdir` that is a file",
                   "`~` is the home folder for every command (ingest wrote a folder named `~` in the working "
                   "folder, and readers called the archive missing); a file as work folder is refused before "
                   "any work (train had cut its windows, then failed with a traceback)")
def test_home_is_expanded_and_a_file_is_no_work_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["ingest", "--synthetic", "--frames", "8", "--size", "16", "--archive=~/a.zarr"]) == 0
    assert (tmp_path / "home" / "a.zarr" / "zarr.json").exists()
    assert not (tmp_path / "~").exists()
    assert cli.main(["check", "~/a.zarr"]) == 0
    assert cli.main(["summary", "--archive=~/a.zarr"]) == 0  # the older spelling
    assert cli.main(["summary", "~/a.zarr"]) == 0
    capsys.readouterr()
    (tmp_path / "afile").write_text("")
    for argv in (["train", "--archive=~/a.zarr", "--windows", "w.zarr"], ["evaluate", "--windows", "w.zarr"],
                 ["demo"]):
        assert cli.main([*argv, "--workdir", "afile"]) == 2
        assert f"workdir {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile", "home"]


@pytest.mark.fault("command line", "a store path that is a link to nothing, lies under a file or holds "
                   "'::' (fsspec chaining), or a "
                   "`--models`, `--forecasts` or `--windows` that is a file; evaluate's forecasts or archive "
                   "that do not exist; an `--archive` that is a file; a name longer than the file system "
                   "holds, with the suffix of the store's staging copy",
                   "exit 2 naming the path before any work (each was a traceback: one after a whole training "
                   "run, evaluate's after its verification; an archive that is a file was said to be "
                   "missing, 'run the ingest flow first', which fails there; a long name was a traceback, "
                   "exit 1)")
def test_store_paths_that_cannot_exist_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    (tmp_path / "dangling.zarr").symlink_to(tmp_path / "nowhere.zarr")
    archive = make_archive(str(tmp_path / "archive.zarr"), 12, (16, 16), 4)
    models = tmp_path / "models"
    save_tiny_model(models, archive, synthetic_stats(12, (16, 16)), patch=(16, 16), t_in=3, t_out=2)
    model = ["--models", str(models), "--model-name", MODEL]
    cases = [
        (["ingest", "--synthetic", "--frames", "4", "--size", "16", "--archive", "dangling.zarr"],
         "is a symbolic link to"),
        (["ingest", "--synthetic", "--frames", "4", "--size", "16", "--archive", "dbl::colon.zarr"],
         "'::' chains URLs"),
        (["score", "--archive", archive, "--forecasts", "afile/f.zarr"], "afile is a file, not a folder"),
        (["score", "--archive", archive, "--forecasts", "afile"],
         "forecasts " + str(tmp_path / "afile") + " is a file, not a folder"),
        (["windows", "--archive", archive, "--windows", "afile"],
         "windows " + str(tmp_path / "afile") + " is a file, not a folder"),
        (["train", "--archive", archive, "--windows", "w.zarr", "--models", "afile"],
         "models " + str(tmp_path / "afile") + " is a file, not a folder"),
        (["evaluate", "--windows", "w.zarr", "--workdir", "afile/ev"], "afile is a file, not a folder"),
        (["evaluate", *model, "--windows", "w.zarr", "--archive", archive, "--forecasts", "none.zarr"],
         "no forecast store at"),
        (["evaluate", *model, "--windows", "w.zarr", "--archive", "none.zarr", "--forecasts", archive],
         "no archive at"),
        (["windows", "--archive", "afile", "--windows", "w.zarr"], "afile is a file, not a store folder"),
        (["watch", "--archive", "afile", "--input", ".", "--format", "knmi", "--duration", "3"],
         "afile is a file, not a store folder"),
        (["ingest", "--synthetic", "--archive", "a" * 240 + ".zarr"],
         "is 245 bytes; the file system holds 255"),
        (["windows", "--archive", archive, "--windows", "b" * 300 + "/w.zarr"], "give a name of at most 255"),
        (["score", *model, "--archive", "afile", "--forecasts", "f.zarr"], "afile is a file, not a store"),
    ]
    long_name = tmp_path / ("c" * 225 + ".zarr")  # a store copied in under a name nowcast could not build
    long_name.mkdir()
    assert placeable(str(long_name)) == str(long_name)  # read, and written in place: room for .check-*
    long_name.rmdir()
    before = sorted(path.name for path in tmp_path.iterdir())
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_summary_takes_its_archive_as_show_and_check_do(capsys):
    """Positional like show's and check's store; --archive, the older spelling, still works alone."""
    assert cli.main(["summary"]) == 2
    assert "summary needs an archive: nowcast summary STORE" in capsys.readouterr().err
    assert cli.main(["summary", "a.zarr", "--archive", "b.zarr"]) == 2
    assert "two archives given (a.zarr and --archive b.zarr): give one" in capsys.readouterr().err


def test_serve_and_server_name_the_forms_model_as_the_other_commands_do():
    """--model-name, as score and backfill spell it (serve had --model); --model still reaches it."""
    for command in ("serve", "server"):
        assert cli.build_parser().parse_args([command, "--model-name", "cnn_lstm"]).model_name == "cnn_lstm"
        assert cli.build_parser().parse_args([command, "--model", "cnn_lstm"]).model_name == "cnn_lstm"
        assert cli.build_parser().parse_args([command]).model_name == "convlstm"


@pytest.mark.fault("command line", "`train --base none` or `--base ''`, which the help offers (empty: the "
                   "default base)", "taken as no base given (argparse refused None among the choices)")
def test_an_optional_choice_takes_none(capsys):
    parser = cli.build_parser()
    for given, taken in (("none", None), ("", None), ("advection", "advection")):
        assert parser.parse_args(["train", "--base", given]).base == taken
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--base", "bogus"])
    assert ("invalid choice: 'bogus' (choose from persistence, advection, lagrangian_ar, or none)"
            in capsys.readouterr().err)


@pytest.mark.fault("command line", "Beam's flags after `--` given to a command that runs no Beam job (`check "
                   "STORE -- --foo`), or -v with -q",
                   "exit 2 naming the problem (the flags were ignored, exit 0; -v -q printed half of each)")
def test_flags_that_cannot_apply_are_refused(capsys):
    assert cli.main(["check", "a.zarr", "--", "--foo"]) == 2
    assert "Beam's flags after '--' configure the runner of the commands with --runner; check has none" in \
        capsys.readouterr().err
    assert cli.main(["-v", "-q", "check", "a.zarr"]) == 2
    assert "-v and -q ask for more and for less: give one" in capsys.readouterr().err


def test_overwrite_is_spelt_alike_in_every_command():
    """ingest's --overwrite was a plain flag where score's and backfill's have --no-overwrite too."""
    parser = cli.build_parser()
    for command in (["ingest"], ["score"], ["backfill", "--start", "2024-01-01", "--end", "2024-01-02"]):
        assert parser.parse_args([*command, "--overwrite"]).overwrite is True
        assert parser.parse_args([*command, "--no-overwrite"]).overwrite is False
