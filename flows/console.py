"""How the command line talks: log levels for -q/-v, silenced child processes, and exit statuses.

Bad input is a one-paragraph message and exit status 2; Ctrl-C or SIGTERM one
line and 128 + the signal's number; a closed output pipe silence and 141;
anything else is a bug and keeps its traceback. Quiet by default: TensorFlow's
C++ lines, Prefect's run chatter, Beam's workers and pysteps' banner show only
with ``-v``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import TextIO

from nowcast.errors import InputError, chain

EXIT_BAD_INPUT = 2
EXIT_CLOSED_PIPE = 128 + 13  # SIGPIPE's status, as a shell tool ends
# commands whose output is what was asked for: -q keeps it (every other command's report goes)
ANSWERS = ("models", "summary", "stack")
SERVICES = ("serve", "server")  # run until stopped: a signal is their normal end, nothing to continue


def _beam_through_root(record: logging.LogRecord) -> bool:
    """False for what Beam logs through the root logger below ERROR (platform notes such as 'Resource
    module is not available'), which the apache_beam logger's level does not reach."""
    return record.levelno >= logging.ERROR or f"{os.sep}apache_beam{os.sep}" not in record.pathname


# the command's verbosity (-1 quiet .. 2 -vv), for the flow runs that Prefect starts in processes of their
# own (`nowcast server`'s deployments, the stack's worker): they apply it as they import the flows
VERBOSITY_ENV = "NOWCAST_VERBOSITY"
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
BEAM_IMPORT_LOGGERS = ("apache_beam.io.gcp", "apache_beam.typehints")
# Prefect's background senders log under their class names, not under "prefect"
PREFECT_QUEUE_SERVICES = ("EventsWorker", "APILogWorker")


def _not_a_run_failure(record: logging.LogRecord) -> bool:
    """False for Prefect's report of a failed task or flow run (its traceback, then its final state): the
    command reports the same error itself, as one message or, for a bug, one traceback."""
    return record.levelno < logging.ERROR or record.name not in RUN_LOGGERS


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Plain(logging.Formatter):
    """``warning: message``: what a user acts on, without the time and the module (-v shows them)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}" + (
            f"\n{self.formatException(record.exc_info)}" if record.exc_info else "")


def quiet_by_default(verbosity: int) -> None:
    """Log levels for the command's verbosity (-1 quiet, 0 default, 1 -v, 2 -vv), set before the heavy
    imports: TensorFlow's C++ start-up lines, Prefect's run chatter, Beam's workers and pysteps' banner
    show only when asked for."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    os.environ[VERBOSITY_ENV] = str(verbosity)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbosity >= 2 else "2")
    # Prefect's console, not its loggers: flow runs still send INFO logs to the API for the UI
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", logging.getLevelName(level))
    # Beam's import may have given the root logger a handler already (so basicConfig alone would not
    # apply the level): set the level either way
    logging.basicConfig(format=LOG_FORMAT)
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:  # records propagated from other loggers meet only these
        if type(handler) is logging.StreamHandler:  # the console's (not a test harness's capture)
            handler.setLevel(level)
            # by default a warning reads as the command's errors do; -v keeps the time and the logger
            handler.setFormatter(logging.Formatter(LOG_FORMAT) if verbosity >= 1 else _Plain())
            if verbosity < 1:
                handler.addFilter(_not_a_run_failure)
    if verbosity == 1:  # Beam's import notes (BigQuery clients, type hints) are no stage's log: -vv
        logging.getLogger().addFilter(_beam_through_root)
        for chatter in BEAM_IMPORT_LOGGERS:
            logging.getLogger(chatter).setLevel(logging.WARNING)
    if verbosity < 1:  # a failing worker's traceback is logged by Beam, then raised to this command
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
        logging.getLogger().addFilter(_beam_through_root)  # also its import's notes on GCP clients
        for library in ("pysteps", "apache_beam"):  # numerical and platform notes nobody can act on
            warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
        for client in ("s3fs", "gcsfs"):  # a retry's traceback; the command words the failure itself
            logging.getLogger(client).setLevel(logging.CRITICAL)
        for service in PREFECT_QUEUE_SERVICES:  # "Still processing items: 1 items remaining..." at exit
            logging.getLogger(service).setLevel(logging.ERROR)


def quiet_flow_run() -> None:
    """In a flow run that Prefect started in a process of its own, the verbosity of the command that
    served it: Beam's import notes and TensorFlow's C++ start-up lines filled the server's terminal (the
    runner passes on all the run writes). Below -v, what the process writes other than through Python
    goes to /dev/null for the rest of its life, as :func:`children_silenced` does for a command."""
    served = os.environ.get(VERBOSITY_ENV, "")
    if not os.environ.get("PREFECT__FLOW_RUN_ID") or not served.lstrip("-").isdigit():
        return
    verbosity = int(served)
    quiet_by_default(verbosity)
    if verbosity < 1 and sys.__stderr__ is not None and sys.stderr is sys.__stderr__:
        every = [logger for logger in logging.Logger.manager.loggerDict.values()
                 if isinstance(logger, logging.Logger)]
        _, consoles = _python_stderr_only([logging.getLogger(), *every])  # Prefect's console handlers too
        once = BadInputOnce()  # one per run: each served run is a process of its own
        for handler in consoles:
            handler.setFormatter(BadInputOnOneLine(handler.formatter))
            handler.addFilter(_said_once)
            handler.addFilter(once)


# Prefect's engine reports refused parameters three times (pydantic's raw error list, then the message
# twice); the run's own last line, which names it, stays
SAID_AGAIN = (("prefect.flows", "Parameter validation failed for flow"),
              ("prefect.engine", "Validation of flow parameters failed with error"))


def _said_once(record: logging.LogRecord) -> bool:
    said = record.getMessage()
    return not any(record.name == name and said.startswith(start) for name, start in SAID_AGAIN)


def bad_input(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it was raised from) is the user's to fix: an :class:`InputError`, or a
    flow run's parameters refused by their form."""
    return any(isinstance(seen, InputError) or type(seen).__name__ == "ParameterTypeError"
               for seen in chain(error))


class BadInputOnce(logging.Filter):
    """Drops a record that repeats bad input already said: Prefect reports an error a task raised three
    times (the task's final state, the flow's exception, the engine's exit), each a line in the serving
    terminal. The first stays; the run's page in the UI keeps them all."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        said = _bad_input_said(record)
        if said is None:
            return True
        if said in self.said:
            return False
        self.said.add(said)
        return True


def _bad_input_said(record: logging.LogRecord) -> str | None:
    """The start of the bad input a record reports (its exception's, or one a final state names), as a
    key; None for any other record."""
    error = record.exc_info[1] if record.exc_info else None
    if error is not None:
        return str(error).strip()[:SAID_KEY] if bad_input(error) else None
    named = re.search(r"exception (\w+): (.+)", record.getMessage())
    if named and named[1] in _input_error_names():
        return named[2].strip().removesuffix("')").removesuffix('")')[:SAID_KEY]
    return None


SAID_KEY = 60  # characters: a final state quotes the message with its quotes escaped further on


def _input_error_names() -> frozenset[str]:
    """The class names of every kind of bad input (:class:`InputError` and its subclasses) imported so far:
    the one a record names has been raised, so its module is imported."""
    found, todo = set(), [InputError]
    while todo:
        kind = todo.pop()
        found.add(kind.__name__)
        todo.extend(kind.__subclasses__())
    return frozenset(found)


class BadInputOnOneLine(logging.Formatter):
    """A console's formatter that writes bad input's record without its traceback (a scheduled forecast
    without a trained model printed one every 5 minutes); the run's page in the UI keeps it."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and bad_input(error):
            text, said = record.getMessage(), str(error).strip()
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "args": None, "msg": text if said in text else f"{text} {said}"})
        return self._inner.format(record)


@contextlib.contextmanager
def children_silenced(silenced: bool) -> Iterator[None]:
    """Sends what other processes and C libraries write to this process's stderr to /dev/null while the
    command runs: Beam's worker processes log their start-up at INFO whatever the command's level, and
    TensorFlow's C++ lines bypass Python. Python's own stderr, its logging and the progress bars keep the
    terminal. Only for a real command line: not when a test captures stderr in-process."""
    if not silenced or sys.__stderr__ is None or sys.stderr is not sys.__stderr__:
        yield
        return
    terminal, handlers = _python_stderr_only([logging.getLogger()])
    try:
        yield
    finally:
        terminal.flush()
        os.dup2(terminal.fileno(), 2)
        sys.stderr = sys.__stderr__
        for handler in handlers:
            _point(handler, sys.__stderr__)
        terminal.close()


def _python_stderr_only(loggers: list[logging.Logger]) -> tuple[TextIO, list[logging.StreamHandler]]:
    """Points file descriptor 2 at /dev/null and Python's stderr (``sys.stderr`` and the handlers of
    ``loggers`` writing to it, Prefect's console included) at a copy of what it was; returns that copy
    and the handlers moved."""
    assert sys.__stderr__ is not None
    sys.__stderr__.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    handlers = list({id(h): h for logger in loggers for h in logger.handlers
                     if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__}.values())
    for handler in handlers:
        _point(handler, terminal)
    sys.stderr = terminal
    return terminal, handlers


def _point(handler: logging.StreamHandler, stream: TextIO) -> None:
    """``handler`` writing to ``stream``; Prefect's console handler draws through a rich Console that
    holds its stream too."""
    handler.setStream(stream)
    console = getattr(handler, "console", None)
    if console is not None and hasattr(console, "file"):
        console.file = stream


def reports(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Where the command's report goes: nowhere with -q (errors only), except a query's answer."""
    if not args.quiet or args.command in ANSWERS:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(io.StringIO())


def exit_status(args: argparse.Namespace, error: BaseException, signum: int | None) -> int:
    """The exit status of a command that raised ``error``: bad input is a one-paragraph message (2), a
    signal one line (128 + its number), a closed output pipe silence (141); anything else is a bug and
    keeps its traceback."""
    if signum is not None:
        return _interrupted(args, signum)
    if isinstance(error, BrokenPipeError):  # `nowcast summary | head`: the reader has what it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error flushing at exit
        return EXIT_CLOSED_PIPE
    if isinstance(error, InputError):
        print(f"nowcast {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from nowcast.pipelines.stores.groups import object_store_message

    message = object_store_message(error, vars(args).values())  # the command's URLs: which bucket or endpoint
    if message is not None:
        print(f"nowcast {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    raise error


def _interrupted(args: argparse.Namespace, signum: int) -> int:
    """One line for Ctrl-C or SIGTERM (the traceback with -v). The stores' writes are already safe to stop
    at any point, and the locks were released on the way out; what the shutdown prints after this (a
    Prefect server stopped by the same Ctrl-C, Beam's workers) is silenced without -v."""
    if args.verbose:
        traceback.print_exc()
    name = signal.Signals(signum).name
    print(f"nowcast {args.command}: stopped ({name})" if args.command in SERVICES else
          f"nowcast {args.command}: interrupted ({name}); what was written is consistent: rerun the command "
          "to continue", file=sys.stderr, flush=True)
    console = sys.__stderr__
    if not args.verbose and console is not None and sys.stderr is console:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), console.fileno())
    return 128 + signum
