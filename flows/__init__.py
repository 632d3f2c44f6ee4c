"""Prefect flows (ingest, train, forecast, backfill, evaluate, demo), their parameter forms,
artifacts, deployments and the ``nowcast`` command line: thin shells over the jobs.
"""

from nowcast.flows.console import quiet_flow_run as _quiet_flow_run

_quiet_flow_run()
