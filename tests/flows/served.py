"""Helpers for tests of served flows: ``nowcast server`` in its own process, and the Prefect API over http."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from nowcast.flows.params import ROOTS_ENV
from nowcast.processes import free_port


def local_server(tmp_path: Path, stderr, env: dict[str, str] | None = None, stdout=subprocess.DEVNULL,
                 start_new_session: bool = False) -> tuple[subprocess.Popen, list[int]]:
    """``nowcast server`` over ``tmp_path/work`` on two free ports with its own PREFECT_HOME, in ``env``
    (default ``os.environ``): the process and the ports (the API's, the artifact server's)."""
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    env = {**(os.environ if env is None else env), "PREFECT_HOME": str(tmp_path / "prefect"),
           ROOTS_ENV: str(tmp_path), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    env.pop("PREFECT_API_URL", None)
    command = ["server", "--workdir", str(tmp_path / "work"), "--port", str(ports[0]), "--files-port",
               str(ports[1]), "--cron", "0 0 1 1 *"]  # runs only when a test asks
    return subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", *command], env=env, cwd=tmp_path,
                            stdout=stdout, stderr=stderr, start_new_session=start_new_session), ports


def api(url: str, path: str, body: dict | None = None, tries: int = 5) -> object:
    """POST ``body`` to the Prefect API at ``url`` + ``path``; the decoded answer. A 503 (the server's
    SQLite database busy, as when a runner registers its deployments) is retried, as Prefect's client does."""
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body or {}).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == tries - 1:
                raise
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def flow_run(api_url: str, run_id: str) -> dict:
    return api(api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})[0]  # type: ignore[index]
