"""The command line's progress bars follow a job's own count and stay off where nobody watches."""

from __future__ import annotations

import io
import time

from rich.console import Console

from nowcast.flows.progress import count_true, progress


def test_the_bar_follows_the_count_and_ends_at_the_total():
    flags = [True, True] + [False] * 4  # two set before the job: not counted
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with progress("score init times", 4, count_true(lambda: flags, 2), enabled=True, console=console,
                  poll_s=0.05):
        flags[2:4] = [True, True]
        deadline = time.monotonic() + 60  # a bound for a bar that never draws, not an expectation
        while "2/4" not in screen.getvalue():  # drawn while the job runs, not only at the end
            assert time.monotonic() < deadline, screen.getvalue()
            time.sleep(0.05)
        flags[4:] = [True, True]
    assert "4/4" in screen.getvalue()


def test_no_bar_off_a_terminal_or_when_nothing_is_to_do():
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True)
    with progress("ingest frames", 0, lambda: 0, enabled=True, console=console):
        pass
    with progress("ingest frames", 3, lambda: 3, console=console):  # pytest's stderr is no terminal
        pass
    assert screen.getvalue() == ""


def shown_while_running(run_id: str, value: float, timeout_s: float = 120) -> float | None:
    """Waits for the run's progress artifact to show ``value`` (what the UI shows while the job runs);
    returns what it showed last."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    deadline, shown = time.monotonic() + timeout_s, None
    while shown != value and time.monotonic() < deadline:
        time.sleep(0.05)
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["test-progress"])))
        shown = next((a.data for a in found if str(a.flow_run_id) == run_id), None)
    return shown


def test_inside_a_flow_run_the_same_count_moves_a_progress_artifact(prefect_server):
    """The flows' progress in the UI: a progress artifact of the run, at 100 % when the count is done."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    seen: list[float] = []

    @flow(name="progress-artifact")
    def counted() -> str:
        from prefect.runtime import flow_run

        count = [0]
        with progress("frames", 4, lambda: count[0], enabled=False, artifact="test-progress", poll_s=0.05):
            for step in range(1, 4):
                count[0] = step
                seen.append(shown_while_running(flow_run.id, 100.0 * step / 4))
            count[0] = 4
        return flow_run.id

    run_id = counted()
    with get_client(sync_client=True) as client:
        artifacts = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["test-progress"]))) if str(a.flow_run_id) == run_id]
    assert [a.type for a in artifacts] == ["progress"]
    assert artifacts[0].data == 100.0
    assert seen == [25.0, 50.0, 75.0]  # it moved during the run, not only at the end


def test_outside_a_run_no_artifact_is_made_and_the_job_still_runs():
    with progress("frames", 2, lambda: 2, enabled=False, artifact="never-made"):
        pass  # no Prefect run context: nothing to attach an artifact to, and no API is needed
