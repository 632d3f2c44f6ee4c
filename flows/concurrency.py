"""Writers of one store take turns: a Prefect global concurrency limit of one slot per store.

The forecast store's writes are chunk-disjoint per init time, but two runs
that plan the same init time at the same moment (the scheduled forecast and
an overlapping backfill, or two backfills) would both score and write it,
and across a promotion with different model versions. So every scoring job
a flow starts first takes the store's slot (:func:`store_slot`), then plans
inside it (the job skips what is written), so no init time is written
twice. One job still spreads over every worker of its runner; what waits is
the next job on the same store. The limit is created on first use (named
``nowcast-store-<hash of the URL>``, one slot); a run that cannot reach the
Prefect API fails rather than write unguarded.

A slot is a lease the holder renews while it works. A holder that dies
without releasing it (killed, its machine lost) stops renewing, and the
server's repossessor frees the slot once the lease runs out: the lease is
Prefect's shortest, 60 s, so the next writer waits at most about 75 s.

Prefect's temporary server (a command line run without ``PREFECT_API_URL``)
runs none of the server's services, so it would never free the slot of a run
stopped by Ctrl-C (which stops that server too, before the release): its
SQLite database keeps the slot, and every later run on the store waited for
ever. There the flows take no slot; the scoring job's own store lock
(:mod:`nowcast.pipelines.stores.lock`, a lease that expires without any
service) still serialises the writers, and each plans inside it, skipping
what is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from nowcast.errors import InputError
from nowcast.flows import temporary_server

PREFIX = "nowcast-store-"
LEASE_S = 60  # the server's minimum; a dead holder's slot is freed this long after its last renewal

log = logging.getLogger(__name__)


def slot_name(url: str) -> str:
    """The limit's name for a store URL (Prefect names cannot hold every URL character).

    >>> slot_name("s3://bucket/forecasts.zarr")
    'nowcast-store-1e1318b04c742209'
    """
    return PREFIX + hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def ensure_limit(name: str) -> int:
    """Creates the one-slot limit ``name`` unless it exists (two creators racing is fine); its busy slots."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).active_slots
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return 0


def on_a_server() -> bool:
    """Whether flows report to a running Prefect server, rather than a temporary one of this process."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def check_prefect_home() -> None:
    """Refuses a PREFECT_HOME that cannot be a folder (a file, a path under one, a folder not writable):
    Prefect's temporary server keeps its database there, and without it every command retried for
    minutes and hung.

    Raises:
        InputError: naming PREFECT_HOME and the fix.
    """
    from prefect.settings import PREFECT_HOME

    home = Path(PREFECT_HOME.value()).expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".nowcast-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(f"PREFECT_HOME={home} cannot hold Prefect's files ({error.strerror or error}): "
                         "point PREFECT_HOME at a folder you can write, or unset it for ~/.prefect") from None


def ensure_server() -> None:
    """A Prefect server for the command's flows: the one at ``PREFECT_API_URL``, refused naming the fixes
    if it does not answer (Prefect's own error is a 100-line traceback from deep in its client, after the
    flow was set up); without one, Prefect's temporary server, started apart from Ctrl-C
    (:mod:`nowcast.flows.temporary_server`).

    Raises:
        InputError: if the server at ``PREFECT_API_URL`` does not answer its health check.
    """
    if not on_a_server():
        check_prefect_home()
        temporary_server.start()
        return
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        reason = str(error).strip() or type(error).__name__
        # set in Prefect's profile (as `nowcast server` advises), unsetting the variable changes nothing
        unset = ("unset PREFECT_API_URL" if "PREFECT_API_URL" in os.environ
                 else "`prefect config unset PREFECT_API_URL` (set in Prefect's profile)")
        raise InputError(f"the Prefect server at PREFECT_API_URL={PREFECT_API_URL.value()} does not answer "
                         f"({reason}); start it (`nowcast server`, or `nowcast stack up`), fix the URL, or "
                         f"{unset} to run on a temporary local server")


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger inside a run (its log in the UI says why the run waits), else this module's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


@contextlib.contextmanager
def store_slot(url: str, timeout_s: float | None = None) -> Iterator[None]:
    """Holds the store's one slot for the block (waits for it; ``timeout_s`` None: as long as it takes).

    Nothing to hold on Prefect's temporary server (no ``PREFECT_API_URL``; module docstring).
    """
    if not on_a_server():
        yield
        return
    name = slot_name(url)
    busy = ensure_limit(name)
    logger = _run_logger()
    if busy:
        logger.warning("%s is being written by another run; waiting for its turn (a killed writer's slot "
                       "frees within about %d s)", url, LEASE_S + 15)
    started = time.monotonic()
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=LEASE_S, strict=True):
        if busy:
            logger.info("%s: our turn came after %.0f s", url, time.monotonic() - started)
        yield
