"""The ``nowcast`` command line: thin wrappers over pipelines/ and flows/.

Every subcommand validates its arguments once, runs the same job functions a
flow or test runs, and turns a known input error into a one-paragraph message
and exit status 2 (nothing half-written is left behind by the jobs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence

from nowcast import __version__
from nowcast.errors import InputError
from nowcast.flows.console import ANSWERS, children_silenced, exit_status, quiet_by_default, reports
from nowcast.flows.options import add_params, flag, params_from_args
from nowcast.flows.params import (
    BackfillParams,
    DemoParams,
    EvaluateParams,
    IngestParams,
    ParameterError,
    ScoreParams,
    TrainParams,
    WindowsParams,
    parse_time,
    placeable,
)
from nowcast.flows.progress import command_line_bars, count_now, count_true, progress
from nowcast.flows.stopping import check_dropped, interruptible, stop_on_signals
from nowcast.text import counted

# Prefect's ephemeral server (used when no PREFECT_API_URL is set) can take
# longer than its default 20 s to start on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def local(flow):
    """``flow`` for parameters validated here: Prefect would validate them again, as a form's, against
    the storage roots that do not bind a user's own command line. When it is called (its parameters
    checked), a ``PREFECT_API_URL`` that does not answer is refused first; without one, the temporary
    server is started apart from Ctrl-C."""
    from nowcast.flows.concurrency import ensure_server

    configured = flow.with_options(validate_parameters=False)

    def run(*args, **kwargs):
        ensure_server()
        return configured(*args, **kwargs)

    return run


def _ingest_extras(parser: argparse.ArgumentParser) -> None:
    """The ingest job's options the form does not have (the form always appends what is new)."""
    group = parser.add_argument_group("command line only")
    group.add_argument("--synthetic", action="store_true", help="generate synthetic precipitation (no input)")
    group.add_argument("--variables", nargs="+", default=None,
                       help="NetCDF variables to ingest (default: every gridded one)")
    group.add_argument("--time-step", default=None, help="ISO 8601 step of a new archive (e.g. PT5M)")
    group.add_argument("--start", default=None, help="first time of a new archive (default: first frame)")
    group.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                       help="rewrite frames already ingested (as score's and backfill's --overwrite)")
    group.add_argument("--repair", action="store_true",
                       help="rewrite only the chunks `nowcast check` finds damaged, from the input's files")


def _radar_extras(parser: argparse.ArgumentParser) -> None:
    """A radar source's options (ingest and watch): which product, quantity and Z-R relation to read."""
    group = parser.add_argument_group("radar files (command line only)")
    group.add_argument("--quantity", default=None, help="ODIM: RATE (rain rate) or DBZH (reflectivity) "
                       "(default: the one every file holds, RATE if both)")
    group.add_argument("--product", default=None,
                       help="BoM: the Rainfields3 product of the folder's files, e.g. prcp-cscn")
    group.add_argument("--zr-a", type=float, default=None,
                       help="reflectivity (FMI, ODIM DBZH): a of Z = a R^b (default: the file's, else 200)")
    group.add_argument("--zr-b", type=float, default=None, help="reflectivity: b of Z = a R^b (default: the "
                       "file's, else 1.6)")


def radar_options(args: argparse.Namespace) -> dict[str, object]:
    """The radar options given on the command line (:func:`_radar_extras`), as the source names them."""
    given = {name: getattr(args, name, None) for name in ("quantity", "product", "zr_a", "zr_b")}
    return {name: value for name, value in given.items() if value is not None}


def cmd_ingest(args: argparse.Namespace) -> int:
    from nowcast.flows.ingest import source_for, warn_of_other_inputs
    from nowcast.flows.views import archive_summary
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.sources import folder_source
    from nowcast.pipelines.sources.base import sorted_unique
    from nowcast.pipelines.sources.radar import flag
    from nowcast.pipelines.stores.archive import valid_flags

    _one_source(args)
    params = params_from_args(IngestParams, args, **({"input_dir": None} if args.synthetic else {}))
    if args.synthetic and (radar := radar_options(args)):  # ignored, exit 0
        given = " and ".join(flag(name) for name in radar)
        raise InputError(f"{given}: radar file options, not the generator's (--synthetic): drop them, or "
                         "give --input")
    source = (folder_source(params.input_dir, params.format, args.variables, **radar_options(args))
              if params.input_dir else source_for(params, args.time_step))
    start = str(parse_time(args.start, "--start")) if args.start else None
    spec = IngestSpec(archive=params.archive, source=source, time_step=args.time_step, start=start,
                      time_chunk=params.time_chunk, overwrite=args.overwrite, repair=args.repair)
    warn_of_other_inputs(source, params.input_dir)
    items = sorted_unique(source.items())  # listed once: the bar's total and the job's input
    valid = functools.partial(valid_flags, params.archive)
    with progress("ingest frames", len(items), count_true(valid, count_now(valid)), enabled=_bars(args)):
        result = ingest_items(spec, items, params.runner.options())
    print(result.summary())
    print(archive_summary(params.archive))
    return 0


STREAM_INTERVAL_S = 5.0  # score --follow's default poll
INGEST_ALIASES = {"input_dir": "--input", "synthetic_frames": "--frames", "synthetic_size": "--size"}
SYNTHETIC_ONLY = ("synthetic_frames", "synthetic_size", "synthetic_start", "synthetic_density", "seed")


def _one_source(args: argparse.Namespace) -> None:
    """Refuses options of the source a command does not read: the input folder's with ``--synthetic``, the
    generator's without it (they were ignored with exit 0: ``--input DIR --synthetic`` ingested
    synthetic rain)."""
    def given(names: Sequence[str]) -> list[str]:  # as the README spells them: --input, --frames, --size
        fields = IngestParams.model_fields
        return [INGEST_ALIASES.get(name, flag(name)) for name in names
                if getattr(args, name) != fields[name].default]

    # an empty --input is the generator, as in the form (--input "" --frames 3 was told to add --synthetic)
    synthetic = args.synthetic or args.input_dir is None
    folder, generator = given(("input_dir", "format")), given(SYNTHETIC_ONLY)
    if args.synthetic and folder:
        raise ParameterError(f"--synthetic generates its frames, and {' and '.join(folder)} name files it "
                             "would not read: give --synthetic or the input, not both")
    if not synthetic and generator:
        raise ParameterError(f"{', '.join(generator)} shape the synthetic generator's frames and do nothing "
                             "for files: add --synthetic, or drop them")


def cmd_windows(args: argparse.Namespace) -> int:
    from nowcast.flows.train import cut

    params = params_from_args(WindowsParams, args)
    result = cut(params, bar=_bars(args))
    print(result.summary())  # after the bar's last line, not before it
    print(f"wrote {params.windows}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nowcast.flows.train import train_flow
    from nowcast.model.verification import TABLE_KEY

    params = params_from_args(TrainParams, args)
    run = local(train_flow)(params)  # its fit task draws the epochs' bar
    print(f"{params.architecture}/{run.version} against the baselines on the validation split of "
          f"{params.windows}:")
    print(run.table)
    print(f"{TABLE_KEY}\n")
    print(f"{'promoted' if run.promoted else 'registered (not promoted)'} {run.path}: {run.verdict}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from nowcast.flows.forecast import scoring_spec
    from nowcast.pipelines.jobs import scoring

    streaming = [flag for flag, value in (("--interval", args.interval), ("--duration", args.duration))
                 if value is not None]
    if streaming and not args.follow:  # ignored: the batch scored the whole archive, exit 0
        raise ParameterError(f"{' and '.join(streaming)} pace a stream: add --follow, or drop them")
    params = params_from_args(ScoreParams, args)
    if not args.follow:  # a stream may wait for the archive's first frame with data
        refuse_without_data(params.archive)
        spec = scoring_spec(params, start=params.start, end=params.end)
        with scoring_progress(spec, args) as finished:
            result = scoring.run(spec, params.runner.options())
            finished()
        print(result.summary())  # after the bar's last line, not before it
        return 0
    from nowcast.pipelines.jobs.scoring_stream import StreamSpec, run_stream

    if params.start or params.end or params.runner.kind != "inmemory":
        raise InputError("--follow scores every new frame on the local runner: drop --start, --end and "
                         "--runner")
    interval = STREAM_INTERVAL_S if args.interval is None else args.interval
    stream = StreamSpec(scoring=scoring_spec(params), interval_s=interval, duration_s=args.duration)
    with stop_on_signals("nowcast score --follow") as stop:
        print(run_stream(stream, stop=stop).summary())
    return 0


def refuse_without_data(archive: str) -> None:
    """Refuses to score an archive without a valid frame, before a forecast store is created (it was
    created empty, exit 0, where windows, show and summary refuse the same archive)."""
    from nowcast.pipelines.stores.archive import valid_flags

    valid = valid_flags(archive)
    if not valid.any():
        raise InputError(f"archive {archive} has no valid frame (all {len(valid)} are missing): nothing to "
                         "forecast from; ingest frames with data first")


@contextlib.contextmanager
def scoring_progress(spec, args: argparse.Namespace) -> Iterator[Callable[[], None]]:
    """A bar over the init times ``spec`` still has to score, moved by the store's ``written`` flags;
    yields ``finished()``, which fills the bar once the job returned (with ``overwrite`` the flags are set
    already and cannot move it: it sat at 0/N to the end)."""
    from nowcast.pipelines.jobs import scoring
    from nowcast.pipelines.stores.forecasts import written_flags

    _, tasks, _ = scoring.plan(spec)  # creates or grows the store, as the run will
    todo = sum(len(task.indices) for task in tasks)
    written = functools.partial(written_flags, spec.forecasts)
    flagged = (lambda: 0) if spec.overwrite or not todo else count_true(written, count_now(written))
    done = [False]
    with progress("score init times", todo, lambda: todo if done[0] else flagged(), enabled=_bars(args)):
        yield lambda: done.__setitem__(0, True)


def _bars(args: argparse.Namespace) -> bool | None:
    """Progress bars: on a terminal (None: decided by :func:`progress`), never with -q."""
    return False if args.quiet else None


def cmd_backfill(args: argparse.Namespace) -> int:
    from nowcast.flows.concurrency import ensure_server
    from nowcast.flows.forecast import backfill_flow, scoring_spec

    params = params_from_args(BackfillParams, args)
    refuse_without_data(params.archive)
    ensure_server()  # before the bar's planning creates the store
    with scoring_progress(scoring_spec(params, start=params.start, end=params.end), args) as finished:
        run = local(backfill_flow)(params)
        finished()
    print(f"backfill: {counted(run.scored, 'init time')} scored in {counted(run.chunks, 'chunk')}, "
          f"{run.already_written} already written, {run.missing_input} without complete input")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nowcast.flows.evaluate import evaluate_flow
    from nowcast.model.verification import TABLE_KEY
    from nowcast.pipelines.stores.windows import WindowsStore

    if args.archive and not args.forecasts:  # the form allows it (a UI form keeps its pre-filled archive)
        raise InputError("--archive is the one --forecasts were scored from, to verify them: add "
                         "--forecasts, or drop --archive (the split's windows need no archive)")
    params = params_from_args(EvaluateParams, args)
    run = local(evaluate_flow)(params)
    # capped: spread over a larger split (it was said when every sample was verified too)
    total = WindowsStore(params.windows, params.split).num_samples
    print(f"the {params.split} split of {params.windows}: {run.samples} samples"
          + (f" of {total}, spread over the split" if run.samples < total else ""))
    print(run.table)
    if run.stored_table:
        print(run.stored_table)
    print(f"{TABLE_KEY}\n")
    for kind, path in run.pictures.items():
        print(f"{kind}: {path}")
    return 0


def _a_registry(models: str) -> None:
    """Refuses a local --models that is no registry: nothing there (a typo listed "no models" with exit 0)
    or a zarr store."""
    from nowcast.pipelines.stores.groups import filesystem, is_local, local_path

    if not is_local(models):
        fs, prefix = filesystem(models)
        if not fs.exists(prefix):  # a misspelt prefix or bucket listed "no models", exit 0
            raise InputError(f"no model registry at {models} (nothing there): give --models of the folder "
                             "`nowcast train` registers into")
        return
    path = local_path(models)
    if not os.path.isdir(path):
        raise InputError(f"no model registry at {models} ({'a file' if os.path.exists(path) else 'nothing'} "
                         "there): give --models of the folder `nowcast train` registers into")
    if os.path.isfile(os.path.join(path, "zarr.json")):
        raise InputError(f"{models} is a zarr store, not a model registry: give --models of the folder "
                         "`nowcast train` registers into")


def cmd_models(args: argparse.Namespace) -> int:
    from nowcast.model import registry

    _a_registry(args.models)
    if args.action == "promote":
        name, version = _model_version(args.model, "promote")
        if change := registry.archive_change(args.models, name, version):
            print(f"nowcast models promote: warning: {change}", file=sys.stderr)
        registry.promote_version(args.models, name, version)
        print(f"promoted {name}/{version}: latest now points at it")
        return 0
    if args.action == "show":
        name, version = _model_version(args.model, "show", default=registry.LATEST)
        try:
            path = registry.resolve_version(args.models, name, version)
        except registry.RegistryError as error:
            known = registry.list_versions(args.models, name)
            there = (f"versions of {name} there: {', '.join(known)}" if known else
                     f"models there: {', '.join(registry.list_names(args.models)) or 'none'}")
            raise registry.RegistryError(f"{error}; {there} (`nowcast models list`)") from None
        metadata = registry.read_metadata(path)
        metrics = registry.read_metadata(path, registry.METRICS_FILE)
        shown = {k: v for k, v in metadata.items() if k != "packages"}
        try:  # checksums too: a truncated model or edited metrics were shown as they are, as sound
            registry.verify_version(args.models, name, registry.version_name(path), archive=None)
            damage = None
        except registry.RegistryError as error:
            damage = str(error)
        print(json.dumps({"path": path, "damaged": damage, **shown,
                          "metrics": {k: v for k, v in metrics.items() if k != "history"}},
                         indent=2, default=str))
        if damage:
            print(f"nowcast models show: warning: {damage}", file=sys.stderr)
        return 0
    known = registry.list_names(args.models, incomplete=True)  # a name whose versions are incomplete too
    if args.model and args.model not in known:
        raise InputError(f"no model {args.model!r} in {args.models} (models there: "
                         f"{', '.join(known) or 'none'}); check the name or --models")
    names = [args.model] if args.model else known
    if not names and (deeper := registry.one_models_folder(args.models)):
        raise InputError(deeper)
    if not names:
        print(f"no models in {args.models}; train one with `nowcast train`")
    for name in names:  # a damaged version or pointer is listed as such, never hides the sound ones
        print(name)
        try:
            promoted = registry.promoted_version(args.models, name)
        except registry.RegistryError as error:
            promoted = None
            print(f"  latest: {error}")
        versions = registry.list_versions(args.models, name)
        if promoted is not None and promoted not in versions:
            print(f"  latest: points at {promoted}, which is not a saved version: promote one "
                  f"(`nowcast models promote {name}/VERSION`)")
        for version in registry.list_versions(args.models, name, complete=False):  # were left out
            print(f"  {version}  incomplete: no {registry.METADATA_FILE} (a save in progress, one stopped "
                  "part way, or a partial copy): unless a save runs, remove the folder or restore it")
        for version in versions:
            mark = "  latest" if version == promoted else ""
            try:  # checksums too: a truncated model.keras was listed as sound, and as latest
                metadata = registry.verify_version(args.models, name, version, archive=None).metadata
            except registry.RegistryError as error:
                print(f"  {version}  damaged: {error}{mark}")
                continue
            print(f"  {version}  saved {metadata.get('saved_at', '?')}{mark}")
    return 0


def _model_version(text: str | None, action: str, default: str | None = None) -> tuple[str, str]:
    """NAME/VERSION (or NAME with a default version) from the command line."""
    name, _, version = (text or "").partition("/")
    if not name or not (version or default):
        which = "NAME/VERSION" if default is None else f"NAME (its {default} version) or NAME/VERSION"
        raise InputError(f"`nowcast models {action}` needs {which}, e.g. convlstm/20240101T000000Z "
                         "(`nowcast models list` shows them)")
    return name, version or str(default)


def cmd_watch(args: argparse.Namespace) -> int:
    from nowcast.pipelines.jobs.watch import WatchSpec, run_watch
    from nowcast.pipelines.sources.base import not_a_local_folder
    from nowcast.pipelines.stores.groups import not_a_store

    spec = WatchSpec(archive=args.archive, directory=args.input, fmt=args.format,
                     interval_s=args.interval, duration_s=args.duration, time_step=args.time_step,
                     time_chunk=args.time_chunk, radar=radar_options(args),
                     start=str(parse_time(args.start, "--start")) if args.start else None)  # its bounds first
    placeable(args.archive)
    if problem := not_a_store(args.archive):  # a file: refused once polling began, a lock left beside it
        raise InputError(problem)
    if not_a_local_folder(args.input):  # it polled, warned, exit 0
        raise InputError(f"the folder to watch, {args.input}, does not exist or is not a folder: give the "
                         "folder the files land in (create it first if they have not started arriving)")
    with stop_on_signals("nowcast watch") as stop:
        print(run_watch(spec, stop=stop).summary())
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from nowcast.flows.views import archive_summary, picture_path, plot_frames

    archive = _summary_store(args)
    if args.png:
        picture_path(args.png, (".png",))  # before the summary is printed
    print(archive_summary(archive))
    if args.png:
        print(f"frames saved to {plot_frames(archive, args.png)}")
    return 0


def _summary_store(args: argparse.Namespace) -> str:
    """The archive, positional as show's and check's store, or --archive as before."""
    if args.store and args.archive and args.store != args.archive:
        raise InputError(f"two archives given ({args.store} and --archive {args.archive}): give one")
    if not (args.store or args.archive):
        raise InputError("summary needs an archive: nowcast summary STORE (a path or URL)")
    return args.store or args.archive


def cmd_show(args: argparse.Namespace) -> int:
    from nowcast.flows.views import show

    saved = show(args.store, args.out, time=args.time, count=args.frames, archive=args.archive,
                 variable=args.variable)
    print(f"saved {saved}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from nowcast.pipelines.stores.groups import not_a_store
    from nowcast.pipelines.stores.integrity import StoreDamagedError, check_store

    if not_a_store(args.store):  # its message advises a path for a new store, which check never makes
        raise InputError(f"{args.store} is not a store nowcast reads: check reads archive, forecasts and "
                         "windows stores (zarr v3 folders with a zarr.json); give the path of one")

    def progress(done: int, total: int) -> None:
        if args.verbose:
            print(f"  read {done} of {total} chunks", file=sys.stderr)

    report = check_store(args.store, progress)
    if not report.ok:
        raise StoreDamagedError(report.text())
    print(report.text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from nowcast.flows.concurrency import ensure_server
    from nowcast.flows.demo import demo_flow

    params = params_from_args(DemoParams, args)  # checked before the demo starts
    ensure_server()
    demo_flow(**params.model_dump())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from nowcast.flows.concurrency import ensure_server
    from nowcast.flows.serve import DEPLOYED, DEPLOYMENT, check_serving, serve_deployments

    folder = check_serving(args.workdir, args.cron)  # before the server is looked for: each was a traceback
    ensure_server()
    from prefect.settings import PREFECT_API_URL

    server = PREFECT_API_URL.value() or ("Prefect's temporary server, which ends with this command (for a "
                                         "lasting one: nowcast server, or PREFECT_API_URL)")
    print(f"nowcast serve: running the deployments ({', '.join(DEPLOYED)} / {DEPLOYMENT}) of {server} here; "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    serve_deployments(folder, args.cron, model_name=args.model_name)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from nowcast.flows.serve import run_local_server

    run_local_server(args.workdir, args.port, args.files_port, args.cron, args.model_name)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from nowcast.flows import stack

    try:
        return _stack_action(stack, args)
    except stack.StackError as error:  # a service that did not start: its log says why
        print(f"nowcast stack {args.action}: error: {error}", file=sys.stderr)
        return 1


def _worker_alone_stopped(stack, folder: str) -> bool:
    try:
        return stack.only_the_worker_gone(stack.read_state(folder))
    except stack.StackStateError:  # none up, or a state up cannot read: up says so
        return False


def _stack_action(stack, args: argparse.Namespace) -> int:
    if args.action == "up" and _worker_alone_stopped(stack, args.folder):
        lost = stack.restart_worker(args.folder)
        print(f"started a new Prefect worker in the stack in {args.folder}"
              + (f"; flow runs the stopped one had left Running are marked Crashed (run them again): "
                 f"{', '.join(lost)}" if lost else ""))
        return 0
    if args.action == "up":
        state = stack.up(args.folder, workers=args.workers)
        env = stack.client_env(state)
        print(f"stack up in {state['folder']}: Prefect UI {env['PREFECT_API_URL'].removesuffix('/api')}, "
              f"S3 {env['AWS_ENDPOINT_URL']}, dask {env['NOWCAST_DASK_ADDRESS']}; stores in "
              f"{env['NOWCAST_STORES']}")
        print("client environment (export these to use it):")
    elif args.action == "down":
        recorded = os.path.isfile(os.path.join(args.folder, stack.STATE_FILE))
        stopped = stack.down(args.folder)
        print(f"stopped {', '.join(stopped)}; the object store's contents (moto keeps them in memory) went "
              "with it" if stopped else
              f"the stack in {args.folder} was no longer running; its state is cleared" if recorded else
              f"no stack was up in {args.folder}")
        return 0
    state = stack.read_state(args.folder)
    gone = stack.not_running(state)
    if args.action == "status" and gone:  # a crash, a reboot, an up killed part way: exit 0 said it was up
        fix = ("nowcast stack up starts a new worker, and marks Crashed the flow runs the stopped one had"
               if stack.only_the_worker_gone(state) else
               "nowcast stack down, then stack up (the object store's contents, which moto keeps in memory, "
               "go with it)")
        raise stack.StackStateError(f"the stack in {args.folder} is not whole ({'; '.join(gone)}): {fix}")
    for key, value in stack.client_env(state).items():
        print(f"export {key}={value}")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help, examples kept as written; a help that names its own default
    (``(default: first frame)``) does not get argparse's ``(default: None)`` after it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and ("(default:" in action.help or action.required or action.default is None):
            return action.help  # a required option's, or one left out, read "(default: None)"
        return super()._get_help_string(action)


EXAMPLES = {
    "ingest": "nowcast ingest --synthetic --frames 288 --archive runs/demo/archive.zarr\n"
              "  nowcast ingest --input ../shared/data/radar/knmi/20100826 --archive knmi.zarr",
    "watch": "nowcast watch --input incoming/ --format knmi --archive archive.zarr --duration 3600",
    "windows": "nowcast windows --archive runs/demo/archive.zarr --windows runs/demo/windows.zarr --t-in 4",
    "train": "nowcast train --archive runs/demo/archive.zarr --epochs 4 --promote if_better",
    "score": "nowcast score --start 2024-01-01T20:00 --end 2024-01-01T23:55\n"
             "  nowcast score --follow --interval 60    # every new frame, until stopped",
    "backfill": "nowcast backfill --start 2024-01-01T00:00 --end 2024-01-02T00:00 --chunk-size 24",
    "evaluate": "nowcast evaluate --split test --baselines persistence extrapolation",
    "models": "nowcast models list\n  nowcast models show convlstm\n"
              "  nowcast models promote convlstm/20240101T000000Z",
    "summary": "nowcast summary runs/demo/archive.zarr --png frames.png",
    "check": "nowcast check runs/demo/forecasts.zarr",
    "show": "nowcast show runs/demo/forecasts.zarr --out forecast.gif\n"
            "  nowcast show runs/demo/archive.zarr --out frames.png --frames 6",
    "demo": "nowcast demo --workdir runs/demo",
    "serve": "PREFECT_API_URL=http://127.0.0.1:4200/api nowcast serve --workdir runs/demo",
    "server": "nowcast server --workdir runs/demo --port 4200",
    "stack": "nowcast stack up --folder runs/stack",
}


def _verbosity(defaults: bool) -> argparse.ArgumentParser:
    """-v/-q, before or after the subcommand (after it, only when given)."""
    parser = argparse.ArgumentParser(add_help=False)
    unset = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="count", help="-v: each stage's log and Beam's workers; "
                        "-vv: everything", **({"default": 0} if defaults else unset))
    parser.add_argument("-q", "--quiet", action="store_true",
                        help=f"errors only (the commands {', '.join(ANSWERS)} still print their answer)",
                        **({"default": False} if defaults else unset))
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nowcast",
                                     description="Nowcasts of gridded rain: ingest radar files into an "
                                                 "archive, train a forecaster, score and evaluate forecasts.",
                                     parents=[_verbosity(defaults=True)])
    parser.add_argument("--version", action="version", version=f"nowcast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _verbosity(defaults=False)

    def command(name: str, helptext: str, func, model=None, **params) -> argparse.ArgumentParser:
        described = f"\n\n{inspect.cleandoc(model.__doc__)}" if model is not None else ""  # no indented lines
        description = f"{helptext}.{described}"
        found = sub.add_parser(name, help=helptext, description=description, parents=[common],
                               formatter_class=_Help, epilog=f"example:\n  {EXAMPLES[name]}")
        if model is not None:
            add_params(found, model, **params)
        found.set_defaults(func=func)
        return found

    ingest = command("ingest", "ingest radar, NetCDF or synthetic frames into an archive", cmd_ingest,
                     IngestParams, aliases=INGEST_ALIASES)
    _ingest_extras(ingest)
    _radar_extras(ingest)

    watch = command("watch", "append radar files to an archive as they arrive (streaming)", cmd_watch)
    watch.add_argument("--archive", required=True, help="archive store URL or path")
    watch.add_argument("--input", required=True, help="folder to watch")
    watch.add_argument("--format", required=True, help="knmi, bom, fmi, mch, odim or netcdf")
    watch.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    watch.add_argument("--duration", type=float, default=None,
                       help="stop after this many seconds (default: until Ctrl-C or SIGTERM, which stop it "
                            "after the poll in progress)")
    watch.add_argument("--time-step", default=None, help="ISO 8601 step of a new archive")
    watch.add_argument("--time-chunk", type=int, default=24, help="frames per chunk of a new archive")
    watch.add_argument("--start", default=None, help="first time of a new archive (default: the first file's "
                       "of the first poll; a file from before it that arrives later is refused)")
    _radar_extras(watch)

    command("windows", "cut training windows from an archive", cmd_windows, WindowsParams)
    command("train", "cut windows, fit, verify against LK extrapolation, register", cmd_train, TrainParams)
    score = command("score", "forecast init times of the archive with a registered model", cmd_score,
                    ScoreParams)
    follow = score.add_argument_group("streaming (command line only)")
    follow.add_argument("--follow", action="store_true",
                        help="keep scoring every new frame as it arrives (the streaming scorer)")
    follow.add_argument("--interval", type=float, default=None,
                        help=f"--follow: seconds between polls (default: {STREAM_INTERVAL_S:g})")
    follow.add_argument("--duration", type=float, default=None,
                        help="--follow: stop after this many seconds (default: until Ctrl-C or SIGTERM, "
                             "which stop it once the init times in flight are written)")
    command("backfill", "forecast a historical range, chunk by chunk, resumable", cmd_backfill,
            BackfillParams)
    command("evaluate", "verify a model and the stored forecasts against baselines", cmd_evaluate,
            EvaluateParams)
    models = command("models", "list, show or promote registered model versions", cmd_models)
    # one parser per action, so that options may come before the model too (`models show --models DIR
    # NAME`: with one optional positional beside the action, argparse left NAME unrecognised)
    actions = models.add_subparsers(dest="action", required=True, metavar="{list,show,promote}")
    for action, model_help, model_nargs in (("list", "only this model's versions", "?"),
                                            ("show", "NAME (its latest) or NAME/VERSION", "?"),
                                            ("promote", "NAME/VERSION to point latest at", None)):
        found = actions.add_parser(action, parents=[common], formatter_class=_Help,
                                   help=f"{action} model versions",
                                   epilog=f"example:\n  {EXAMPLES['models']}")
        found.add_argument("model", nargs=model_nargs, default=None, help=model_help)
        found.add_argument("--models", default=BackfillParams.model_fields["models"].default,
                           help="model registry folder")

    summary = command("summary", "print an archive's summary, optionally save a PNG", cmd_summary)
    summary.add_argument("store", nargs="?", default=None, help="archive store URL or path")
    summary.add_argument("--archive", default=None, help="the same as STORE (the older spelling)")
    summary.add_argument("--png", default=None, help="save its frames as this PNG")

    show = command("show", "a picture of an archive, or of forecasts beside the observation (PNG or "
                           "animated GIF)", cmd_show)
    show.add_argument("store", help="archive or forecasts store URL or path")
    show.add_argument("--out", required=True, help="the picture: .png, or .gif for an animation")
    show.add_argument("--time", default=None,
                      help="archive: the last frame shown; forecasts: the init time (default: the newest "
                           "frame; the newest forecast whose every lead is observed)")
    show.add_argument("--frames", type=int, default=None,
                      help="archive: frames shown; forecasts: leads shown, spread from the first to the last "
                           "(default: 6 frames; every lead)")
    show.add_argument("--archive", default=None,
                      help="forecasts: the archive with the observations (default: the one scored from)")
    show.add_argument("--variable", default=None,
                      help="archive: the variable shown (default: the first that summary lists)")

    check = command("check", "read every chunk of an archive, forecasts or windows store and list the "
                             "damaged ones with the fix (exit 2 if any)", cmd_check)
    check.add_argument("store", help="store URL or path")

    command("demo", "the whole chain on synthetic data with local defaults", cmd_demo, DemoParams)

    serve = command("serve", "register the flows' deployments with PREFECT_API_URL and run them", cmd_serve)
    server = command("server", "a local Prefect server (SQLite) with every deployment served", cmd_server)
    for served in (serve, server):
        served.add_argument("--workdir", default="runs/demo", help="where the stores are")
        served.add_argument("--cron", default="*/5 * * * *",
                            help="cron of the ingest and forecast deployments")
        served.add_argument("--model-name", default=ScoreParams.model_fields["model_name"].default,
                            help="registry model name the forms default to")
    server.add_argument("--port", type=int, default=4200, help="Prefect UI and API port")
    server.add_argument("--files-port", type=int, default=4201, help="port serving the PNG artifacts")

    stack = command("stack", "the deployment on this machine: PostgreSQL-backed Prefect server, a process "
                             "worker, S3 (moto), a dask cluster", cmd_stack)
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--folder", default="runs/stack", help="state, logs and (except as root) the database")
    stack.add_argument("--workers", type=int, default=2, help="dask worker processes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Beam's own pipeline flags follow '--' and pass through unchanged (the beam runner)
    beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.beam_args = beam_args
    problem = None
    if "--" in argv and not hasattr(args, "runner_kind"):  # they were ignored, exit 0
        problem = (f"Beam's flags after '--' configure the runner of the commands with --runner; "
                   f"{args.command} has none: drop them")
    if args.verbose and args.quiet:  # -q won the log, -v the children's output: half of each
        problem = "-v and -q ask for more and for less: give one"
    if problem:
        print(f"nowcast {args.command}: error: {problem}", file=sys.stderr)
        return 2
    quiet_by_default(-1 if args.quiet else args.verbose)
    command_line_bars(_bars(args))
    with interruptible() as signalled:
        try:
            with children_silenced(args.quiet or args.verbose < 1), reports(args):
                code = args.func(args)
                check_dropped()  # a Ctrl-C lost in a finaliser: still an interrupted command
                sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
                return code
        except BaseException as error:  # each kind sorted out, the rest re-raised
            return exit_status(args, error, signalled(error))


if __name__ == "__main__":
    sys.exit(main())
