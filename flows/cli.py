"""The ``nowcast`` command line: thin wrappers over pipelines/ and flows/.

Every subcommand validates its arguments once, runs the same job functions a
flow or test runs, and turns a known input error into a one-paragraph message
and exit status 2 (nothing half-written is left behind by the jobs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from nowcast.errors import InputError
from nowcast.pipelines.jobs.runners import KINDS, RunnerOptions

EXIT_BAD_INPUT = 2

# Prefect's ephemeral server (used when no PREFECT_API_URL is set) can take
# longer than its default 20 s to start on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _runner_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runner")
    group.add_argument("--runner", default="inmemory", choices=list(KINDS),
                       help="Beam runner (default: inmemory FnApiRunner); beam: any Beam runner, configured "
                            "by Beam's own flags after '--' (e.g. -- --runner=FlinkRunner "
                            "--flink_master=host:8081)")
    group.add_argument("--workers", type=int, default=2, help="worker processes for multiprocess")
    group.add_argument("--dask-address", default=None, help="dask scheduler address for --runner dask")


def _source_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("source (one of --input or --synthetic)")
    group.add_argument("--input", help="folder (or file glob) of radar or NetCDF files")
    group.add_argument("--format", default="auto",
                       help="knmi, bom, fmi, mch, odim, netcdf, or auto (from the files)")
    group.add_argument("--variables", nargs="*", default=None, help="NetCDF variables to ingest")
    group.add_argument("--synthetic", action="store_true", help="generate synthetic precipitation")
    group.add_argument("--frames", type=int, default=288, help="synthetic: number of frames")
    group.add_argument("--size", type=int, default=256, help="synthetic: grid size (square)")
    group.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    group.add_argument("--synthetic-start", default="2024-01-01T00:00", help="synthetic: first time")


def runner_from_args(args: argparse.Namespace) -> RunnerOptions:
    return RunnerOptions(kind=args.runner, workers=args.workers, dask_address=args.dask_address,
                         extra_args=tuple(getattr(args, "beam_args", ())))


def source_from_args(args: argparse.Namespace):
    from nowcast.pipelines.sources import folder_source, get_source

    if args.synthetic == bool(args.input):
        raise InputError("give exactly one of --input DIR or --synthetic")
    if args.synthetic:
        return get_source("synthetic", shape=(args.size, args.size), n_frames=args.frames,
                          start=args.synthetic_start, time_step=args.time_step or "PT5M",
                          seed=args.seed)
    return folder_source(args.input, args.format, args.variables)


def cmd_ingest(args: argparse.Namespace) -> int:
    from nowcast.flows.views import archive_summary
    from nowcast.pipelines.jobs.ingest import IngestSpec, run

    spec = IngestSpec(archive=args.archive, source=source_from_args(args), time_step=args.time_step,
                      start=args.start, time_chunk=args.time_chunk, overwrite=args.overwrite,
                      repair=args.repair)
    result = run(spec, runner_from_args(args))
    print(result.summary())
    print(archive_summary(args.archive))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from nowcast.pipelines.jobs.watch import WatchSpec, run_watch

    spec = WatchSpec(archive=args.archive, directory=args.input, fmt=args.format,
                     interval_s=args.interval, duration_s=args.duration, time_step=args.time_step,
                     time_chunk=args.time_chunk)
    result = run_watch(spec)
    print(result.summary())
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from nowcast.flows.views import archive_summary, plot_frames

    print(archive_summary(args.archive))
    if args.png:
        print(f"frames saved to {plot_frames(args.archive, args.png)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from nowcast.pipelines.stores.integrity import StoreDamagedError, check_store

    def progress(done: int, total: int) -> None:
        if args.verbose:
            print(f"  read {done} of {total} chunks", file=sys.stderr)

    report = check_store(args.store, progress)
    if not report.ok:
        raise StoreDamagedError(report.text())
    print(report.text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from nowcast.flows.demo import demo_flow

    demo_flow(workdir=args.workdir, frames=args.frames, size=args.size, epochs=args.epochs)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from nowcast.flows.serve import serve_deployments

    serve_deployments(args.workdir, args.cron, model_name=args.model)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from nowcast.flows.serve import run_local_server

    run_local_server(args.workdir, args.port, args.files_port, args.cron)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from nowcast.flows import stack

    try:
        return _stack_action(stack, args)
    except stack.StackError as error:  # a service that did not start: its log says why
        print(f"nowcast stack {args.action}: error: {error}", file=sys.stderr)
        return 1


def _stack_action(stack, args: argparse.Namespace) -> int:
    if args.action == "up":
        state = stack.up(args.folder, workers=args.workers)
        env = stack.client_env(state)
        print(f"stack up in {state['folder']}: Prefect UI {env['PREFECT_API_URL'].removesuffix('/api')}, "
              f"S3 {env['AWS_ENDPOINT_URL']}, dask {env['NOWCAST_DASK_ADDRESS']}; stores in "
              f"{env['NOWCAST_STORES']}")
        print("client environment (export these to use it):")
    elif args.action == "down":
        stopped = stack.down(args.folder)
        print(f"stopped {', '.join(stopped)}" if stopped else f"no stack was up in {args.folder}")
        return 0
    state = stack.read_state(args.folder)
    for key, value in stack.client_env(state).items():
        print(f"export {key}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nowcast", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of every chunk")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="ingest radar, NetCDF or synthetic frames into an archive")
    ingest.add_argument("--archive", required=True, help="archive store URL or path")
    _source_args(ingest)
    ingest.add_argument("--time-step", default=None, help="ISO 8601 step of a new archive (e.g. PT5M)")
    ingest.add_argument("--start", default=None, help="first time of a new archive (default: first frame)")
    ingest.add_argument("--time-chunk", type=int, default=24, help="frames per chunk of a new archive")
    ingest.add_argument("--overwrite", action="store_true", help="rewrite frames already ingested")
    ingest.add_argument("--repair", action="store_true",
                        help="rewrite only the chunks `nowcast check` finds damaged, from the input's files")
    _runner_args(ingest)
    ingest.set_defaults(func=cmd_ingest)

    watch = sub.add_parser("watch", help="append radar files to an archive as they arrive (streaming)")
    watch.add_argument("--archive", required=True)
    watch.add_argument("--input", required=True, help="folder to watch")
    watch.add_argument("--format", required=True, help="knmi, bom, fmi, mch or odim")
    watch.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    watch.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    watch.add_argument("--time-step", default=None)
    watch.add_argument("--time-chunk", type=int, default=24)
    watch.set_defaults(func=cmd_watch)

    summary = sub.add_parser("summary", help="print an archive's summary, optionally save a PNG")
    summary.add_argument("--archive", required=True)
    summary.add_argument("--png", default=None)
    summary.set_defaults(func=cmd_summary)

    check = sub.add_parser("check", help="read every chunk of an archive, forecasts or windows store and "
                                         "list the damaged ones with the fix (exit 2 if any)")
    check.add_argument("store", help="store URL or path")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="the whole chain on synthetic data with local defaults")
    demo.add_argument("--workdir", default="runs/demo", help="where stores and pictures go")
    demo.add_argument("--frames", type=int, default=288, help="synthetic frames (5-min steps)")
    demo.add_argument("--size", type=int, default=128, help="grid size")
    demo.add_argument("--epochs", type=int, default=4, help="training epochs (small model, CPU)")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="register the flows' deployments with PREFECT_API_URL and run them")
    serve.add_argument("--workdir", default="runs/demo", help="where the stores are")
    serve.add_argument("--cron", default="*/5 * * * *", help="cron of the ingest and forecast deployments")
    serve.add_argument("--model", default="convlstm", help="registry model name the forms default to")
    serve.set_defaults(func=cmd_serve)

    server = sub.add_parser("server", help="a local Prefect server (SQLite) with every deployment served")
    server.add_argument("--workdir", default="runs/demo", help="where the stores are")
    server.add_argument("--port", type=int, default=4200, help="Prefect UI and API port")
    server.add_argument("--files-port", type=int, default=4201, help="port serving the PNG artifacts")
    server.add_argument("--cron", default="*/5 * * * *", help="cron of the ingest and forecast deployments")
    server.set_defaults(func=cmd_server)

    stack = sub.add_parser("stack", help="the deployment on this machine: PostgreSQL-backed Prefect server, "
                                         "a process worker, S3 (moto), a dask cluster")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--folder", default="runs/stack", help="state, logs and the database")
    stack.add_argument("--workers", type=int, default=2, help="dask worker processes")
    stack.set_defaults(func=cmd_stack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Beam's own pipeline flags follow '--' and pass through unchanged (the beam runner)
    beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.beam_args = beam_args
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # a failing worker's traceback is logged by Beam, then raised to this command
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except InputError as error:  # bad input; anything else is a bug and keeps its traceback
        print(f"nowcast {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
