"""The ingest job writes the same bytes on every runner."""

from __future__ import annotations

import pytest

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.jobs.runners import RunnerError, RunnerOptions
from nowcast.pipelines.sources import get_source
from tests.pipelines.jobs.ingest_helpers import snapshot


@pytest.mark.slow
def test_inmemory_multiprocess_and_dask_write_identical_stores(tmp_path, dask_scheduler):
    source = get_source("synthetic", shape=(48, 40), n_frames=60, seed=5, missing=(7, 30))
    stores = {}
    for options in (RunnerOptions("inmemory"), RunnerOptions("multiprocess", workers=2),
                    RunnerOptions("dask", dask_address=dask_scheduler)):
        url = str(tmp_path / f"{options.kind}.zarr")
        result = run(IngestSpec(archive=url, source=source, time_chunk=8), options)
        assert result.frames_written == 58
        assert result.frames_missing == 2
        stores[options.kind] = snapshot(url)
    assert stores["inmemory"] == stores["multiprocess"] == stores["dask"]
    # the workers' check reports went beside the archive (a folder every worker can reach), then away;
    # each archive's writers' lock stays beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{kind}.zarr{lock}" for kind in ("dask", "inmemory", "multiprocess") for lock in ("", ".lock")])


@pytest.mark.slow
def test_beam_flags_pass_through_to_any_beam_runner(tmp_path):
    """``kind="beam"`` runs whatever Beam runner its flags name, with the flags unchanged.

    BundleBasedDirectRunner is the Beam runner here that needs nothing from
    the internet; Flink, Spark and Dataflow need their clusters (checked below
    for their required options only).
    """
    source = get_source("synthetic", shape=(24, 20), n_frames=20, seed=5)
    stores = {}
    for name, options in (("local", RunnerOptions("inmemory")),
                          ("beam", RunnerOptions("beam", extra_args=("--runner=BundleBasedDirectRunner",)))):
        url = str(tmp_path / f"{name}.zarr")
        run(IngestSpec(archive=url, source=source, time_chunk=8), options)
        stores[name] = snapshot(url)
    assert stores["local"] == stores["beam"]


@pytest.mark.fault("command line", "a Beam runner Beam does not know (`--runner=NopeRunner`, a dotted path "
                   "that does not import), or a known one by its short name (`--runner=flink`)",
                   "refused before any store is written, naming Beam's runners (a traceback after an empty "
                   "archive bound the path); the short name gets its required options checked too")
@pytest.mark.parametrize(("flags", "message"), [
    ((), "needs --runner=<Name>"),
    (("--runner=NopeRunner",), "is not a Beam runner: use one of .*FlinkRunner"),
    (("--runner=no.such.Runner",), "is no PipelineRunner class that imports here"),
    (("--runner=flink",), "needs --flink_master"),
    (("--runner=FlinkRunner",), "needs --flink_master"),
    (("--runner=SparkRunner",), "needs --spark_master_url or --spark_rest_url"),
    (("--runner=PortableRunner",), "needs --job_endpoint"),
    (("--runner=DataflowRunner", "--project=p"), "needs --region, --temp_location or --staging_location"),
    (("--runner=DirectRunner",), "downloads the Prism binary"),
])
def test_beam_runners_name_the_option_they_miss(flags, message):
    with pytest.raises(RunnerError, match=message):
        RunnerOptions("beam", extra_args=flags)


def test_beam_flags_are_handed_to_beam_unchanged():
    flags = ("--runner=FlinkRunner", "--flink_master=flink.example.org:8081", "--parallelism=4",
             "--environment_type=DOCKER")
    runner, options = RunnerOptions("beam", extra_args=flags).build()
    assert runner == "FlinkRunner"
    everything = options.get_all_options(retain_unknown_options=True)
    assert (everything["flink_master"], everything["parallelism"]) == ("flink.example.org:8081", 4)
    assert everything["environment_type"] == "DOCKER"


@pytest.mark.fault("command line", "a Beam runner without its required option (e.g. Dataflow project)",
                   "exit 2 naming the option, no traceback")
def test_cli_reports_a_missing_beam_option_with_exit_2(tmp_path, capsys):
    from nowcast.flows.cli import main

    code = main(["ingest", "--archive", str(tmp_path / "a.zarr"), "--synthetic", "--frames", "4", "--size",
                 "16", "--runner", "beam", "--", "--runner=FlinkRunner"])
    assert code == 2
    err = capsys.readouterr().err
    assert "needs --flink_master" in err
    assert "Traceback" not in err
    assert not (tmp_path / "a.zarr").exists()


def test_runner_options_are_validated():
    with pytest.raises(RunnerError, match="unknown runner"):
        RunnerOptions("spark")  # type: ignore[arg-type]
    with pytest.raises(RunnerError, match="needs the beam runner"):
        RunnerOptions("inmemory", extra_args=("--runner=FlinkRunner",))
    with pytest.raises(RunnerError, match="dask_address"):
        RunnerOptions("dask")
    with pytest.raises(RunnerError, match="at least 1"):
        RunnerOptions("multiprocess", workers=0)


@pytest.mark.fault("ingest", "--runner dask with a scheduler address where none answers",
                   "refused before the archive is made, naming the address and the fix (an OSError traceback "
                   "after 30 s, and an empty archive left behind)")
def test_a_dask_scheduler_that_does_not_answer_is_refused_before_any_store(tmp_path):
    from nowcast.processes import free_port

    archive = tmp_path / "archive.zarr"
    address = f"tcp://127.0.0.1:{free_port()}"
    runner = RunnerOptions(kind="dask", dask_address=address)
    with pytest.raises(RunnerError, match=rf"the dask scheduler at {address} does not answer \(.*\): start "
                                          r"it \(`dask scheduler`; .*nothing was written"):
        run(IngestSpec(archive=str(archive), source=get_source("synthetic", n_frames=4, shape=(16, 16))),
            runner)
    assert not archive.exists()
    RunnerOptions(kind="dask", dask_address="inproc://a").check_reachable()  # other protocols: dask's to tell
