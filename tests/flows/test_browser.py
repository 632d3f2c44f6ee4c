"""The Prefect UI in headless Chromium: find the deployments, fill the backfill form, run it to completion.

A real ``prefect server start`` (SQLite in a temporary PREFECT_HOME) on a free
loopback port, the deployments served by ``nowcast serve`` in another process,
and Debian's ``chromium`` driven by Playwright (never ``playwright install``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nowcast.flows.params import ROOTS_ENV
from nowcast.flows.serve import stop_process, wait_for_api
from nowcast.pipelines.stores.forecasts import written_flags
from nowcast.processes import free_port
from tests.flows.served import api, flow_run
from tests.pipelines.jobs.scoring_helpers import make_archive, save_tiny_model, synthetic_stats

# how long the UI may take to react: a liveness bound, not a speed check (a loaded 2-core CI
# machine once took over 60 s for one navigation)
UI_WAIT_MS = 180_000
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
FRAMES, SIZE = 40, (32, 32)


@pytest.fixture
def served(tmp_path):
    """(UI url, API url, workdir): a Prefect server and the served deployments, a tiny archive and model."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_UI_API_URL": api_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", ROOTS_ENV: str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, cwd=tmp_path,
                              stdout=open(logs / "server.log", "w"),  # noqa: SIM115 (open while the server runs)
                              stderr=subprocess.STDOUT)
    workdir = tmp_path / "work"
    archive = make_archive(str(workdir / "archive.zarr"), FRAMES, SIZE, time_chunk=8)
    save_tiny_model(workdir / "models", archive, synthetic_stats(FRAMES, SIZE), patch=(16, 16), t_in=3,
                    t_out=2, name="convlstm")
    worker = None
    try:
        wait_for_api(api_url, timeout_s=180)
        worker = subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", "serve",
                                   "--workdir", str(workdir),
                                   "--cron", "0 0 1 1 *"],
                                  env={**env, "PREFECT_API_URL": api_url,
                                       "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
                                  cwd=REPO, stderr=subprocess.STDOUT,
                                  stdout=open(logs / "serve.log", "w"))  # noqa: SIM115 (open while it serves)
        deadline = time.monotonic() + 180
        while len(api(api_url, "/deployments/filter")) < 5:  # type: ignore[arg-type]
            assert worker.poll() is None, (logs / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the deployments were not registered"
            time.sleep(1)
        yield f"http://127.0.0.1:{port}", api_url, workdir
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(server)
        shutil.rmtree(tmp_path / "prefect", ignore_errors=True)


ERROR_TOAST = "Something went wrong"
SUBMITS = 3  # a loaded CI machine once answered the UI's create-run request with an error toast


def submitted_runs(api_url: str, deployment_id: str, page, failures: list[str],
                   server_log: Path) -> list[dict]:
    """The flow runs the form's Submit created, read from the API (the UI's redirect after a submit can lag
    on a loaded machine). When the UI shows its error toast and no run exists, Submit is pressed again, as a
    user would; after ``SUBMITS`` tries the failed API calls, the page and the server's log are reported."""
    def runs() -> list[dict]:
        return api(api_url, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})  # type: ignore[return-value]

    for _ in range(SUBMITS):
        toasts = page.get_by_text(ERROR_TOAST).count()  # any shown before this submit are not its answer
        page.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + UI_WAIT_MS / 1000
        while time.monotonic() < deadline:
            if found := runs():
                return found
            if page.get_by_text(ERROR_TOAST).count() > toasts:
                time.sleep(5)  # a run the server created after all shows up here, and is not submitted twice
                if found := runs():
                    return found
                break
            time.sleep(1)
    log = server_log.read_text()[-3000:] if server_log.exists() else "(no server log)"
    raise AssertionError(f"the form created no flow run after {SUBMITS} submits; failed API calls: "
                         f"{failures[-10:]}; the page shows: {page.inner_text('body')[:1500]}\n"
                         f"server log:\n{log}")


@pytest.mark.slow
def test_backfill_from_the_ui_form_runs_to_completion(served):
    from playwright.sync_api import sync_playwright

    ui, api_url, workdir = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_WAIT_MS)  # clicks and fills too, not only the waits below
            failures: list[str] = []
            page.on("response", lambda r: failures.append(f"{r.request.method} {r.url} -> {r.status}")
                    if r.status >= 400 else None)
            page.on("requestfailed", lambda r: failures.append(f"{r.method} {r.url} failed: {r.failure}"))
            page.goto(f"{ui}/deployments", wait_until="networkidle", timeout=UI_WAIT_MS)
            for flow_name in ("ingest", "forecast", "backfill", "train", "evaluate"):
                page.get_by_text(flow_name, exact=True).first.wait_for(timeout=UI_WAIT_MS)
            row = page.locator("tr", has=page.get_by_text("backfill", exact=True))
            row.get_by_role("link", name="local").click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()
            page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]+/run"), timeout=UI_WAIT_MS)

            def field(label: str):
                prop = page.locator(".schema-form-property",
                                    has=page.locator(".schema-form-property__label",
                                                     has_text=re.compile(rf"^{label}( \(Optional\))?$")))
                return prop.last.locator("textarea, input").first

            field("Start").fill("2024-01-01T01:00")
            field("End").fill("2024-01-01T02:00")
            field("Chunk Size").fill("5")
            assert field("Model Version").input_value() == "latest"
            deployment_id = re.search(r"/deployment/([0-9a-f-]+)/run", page.url).group(1)
            runs = submitted_runs(api_url, deployment_id, page, failures,
                                  workdir.parent / "logs" / "server.log")
            assert len(runs) == 1, runs  # the form's submission
            run_id = runs[0]["id"]
            deadline = time.monotonic() + 240
            while True:
                state = flow_run(api_url, run_id)["state"]
                if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                assert time.monotonic() < deadline, f"flow run still {state['type']}"
                time.sleep(1)
            assert state["type"] == "COMPLETED", state
            page.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle", timeout=UI_WAIT_MS)
            page.get_by_text("Completed").first.wait_for(timeout=UI_WAIT_MS)
            page.get_by_text("backfill progress").first.wait_for(timeout=UI_WAIT_MS)  # the run's logs
        finally:
            browser.close()
    flags = written_flags(str(workdir / "forecasts.zarr"))
    assert flags[12:25].all()
    assert flags.sum() == 13
    params = flow_run(api_url, run_id)["parameters"]["params"]
    assert params["chunk_size"] == 5
    assert params["start"] == "2024-01-01T01:00"
    progress = api(api_url, "/artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]}}})
    assert [a["data"] for a in progress] == [100.0]
