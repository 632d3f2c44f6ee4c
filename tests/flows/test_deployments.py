"""Deployments register on a real Prefect server with their schedules and parameter forms;
invalid parameters are refused before the flow does any work."""

from __future__ import annotations

import asyncio
import re

import pytest
from prefect.exceptions import ParameterTypeError

from nowcast.flows.params import ROOTS_ENV, BackfillParams, TrainParams

CRON = "*/5 * * * *"


async def _read_back(names: list[str]) -> dict[str, object]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {name: await client.read_deployment_by_name(name) for name in names}


@pytest.mark.slow
def test_deployments_register_with_schedules_and_forms(tmp_path, prefect_server):
    from nowcast.flows.serve import build_deployments

    for deployment in build_deployments(tmp_path, cron=CRON):
        deployment.apply()
    names = [f"{flow}/local" for flow in ("ingest", "forecast", "backfill", "train", "evaluate")]
    stored = asyncio.run(_read_back(names))
    for name, deployment in stored.items():
        crons = [s.schedule.cron for s in deployment.schedules]
        assert crons == ([CRON] if name.split("/")[0] in ("ingest", "forecast") else []), name
        assert deployment.parameters["params"]  # the form is pre-filled with the workdir's stores
        scheduled = name.split("/")[0] in ("ingest", "forecast")  # as prefect.yaml: late ticks cancelled
        assert deployment.global_concurrency_limit.limit == 1  # on demand queued: the schedule keeps a slot
        assert deployment.concurrency_options.collision_strategy == ("CANCEL_NEW" if scheduled else "ENQUEUE")
    backfill = stored["backfill/local"]
    assert backfill.parameters["params"]["forecasts"] == str(tmp_path / "forecasts.zarr")
    schema = backfill.parameter_openapi_schema
    form = schema["definitions"]["BackfillParams"]
    assert {"start", "end"} <= set(form["required"])
    assert form["properties"]["chunk_size"]["minimum"] == 1
    assert "description" in form["properties"]["concurrency"]


@pytest.mark.fault("flows", "bad flow parameters (end before start, unknown version, outside the roots, a "
                   "store inside the model registry)",
                   "refused with the fix before the flow runs")
def test_parameter_models_refuse_bad_input_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path))
    base = {"archive": str(tmp_path / "a.zarr"), "forecasts": str(tmp_path / "f.zarr"),
            "models": str(tmp_path / "models")}
    with pytest.raises(ValueError, match="end 2024-01-01T01:00:00 is before start"):
        BackfillParams(**base, start="2024-01-01T02:00", end="2024-01-01T01:00")
    with pytest.raises(ValueError, match="outside the configured storage roots"):
        BackfillParams(**{**base, "forecasts": "/elsewhere/f.zarr"}, start="2024-01-01", end="2024-01-02")
    monkeypatch.chdir(tmp_path.parent)  # as a UI form has it: no folder of its own, the server's
    resolved = re.escape(str(tmp_path.parent / "f.zarr"))
    with pytest.raises(ValueError, match=rf"store 'f\.zarr' \(a relative path is taken from the folder the "
                                         rf"flow runs in: {resolved}; give"):
        BackfillParams(**{**base, "forecasts": "f.zarr"}, start="2024-01-01", end="2024-01-02")
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        BackfillParams(**base, start="yesterday", end="2024-01-02")
    with pytest.raises(ValueError, match=r"unknown model convlstm/v9.*no versions"):
        BackfillParams(**base, model_version="v9", start="2024-01-01", end="2024-01-02")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        BackfillParams(**base, chunk_size=0, start="2024-01-01", end="2024-01-02")
    with pytest.raises(ValueError, match="no archive at"):
        TrainParams(archive=base["archive"], windows=str(tmp_path / "w.zarr"), models=base["models"],
                    workdir=str(tmp_path / "train"))
    # the registry listed such a store as a model whose arrays were damaged versions, to be removed
    with pytest.raises(ValueError, match=r"forecasts .*models/f\.zarr lies inside the model registry"):
        BackfillParams(**{**base, "forecasts": f"{base['models']}/f.zarr"}, start="2024-01-01",
                       end="2024-01-02")


@pytest.mark.slow
@pytest.mark.fault("flows", "a flow run with invalid parameters",
                   "fails before any work; nothing created")
def test_flow_with_invalid_parameters_fails_before_any_work(tmp_path, monkeypatch, prefect_server):
    from nowcast.flows.forecast import backfill_flow

    monkeypatch.setenv(ROOTS_ENV, str(tmp_path))
    params = {"archive": str(tmp_path / "a.zarr"), "forecasts": str(tmp_path / "f.zarr"),
              "models": str(tmp_path / "models"), "start": "2024-01-01T02:00", "end": "2024-01-01T01:00"}
    with pytest.raises(ParameterTypeError, match="is before start"):
        backfill_flow(params=params)
    params.update(end="2024-01-02", forecasts="/tmp/outside-the-roots.zarr")
    with pytest.raises(ParameterTypeError, match="outside the configured storage roots"):
        backfill_flow(params=params)
    assert list(tmp_path.iterdir()) == []  # nothing was created
